// `thaw up`: one process runs the control API, the router and (unless
// --no-local-node) a local node agent, on embedded defaults (SQLite, a local
// seed folder, QEMU). More nodes join with `thaw node --control URL`.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { createApiServer } from '../api/server.ts';
import { removeInstance, writeInstance } from '../cli/instance.ts';
import { ensureAssets, nodeRootfs } from '../guest/assets.ts';
import { sharedImages, type NodeAgent } from '../node/agent.ts';
import { createNodeAgent, nodeDir, wakeLimits } from '../node/bootstrap.ts';
import { createRouter } from '../router/router.ts';
import { s3FromFlags } from '../seed/s3.ts';
import { untilSignal } from '../signals.ts';
import { openStore } from '../store/index.ts';
import { Cluster } from './cluster.ts';
import { Replication } from './replication.ts';
import { Service } from './service.ts';

export interface UpOptions {
  data: string;
  port: number;
  apiPort: number;
  domain: string;
  idleTimeout: number;
  /** postgres://... for the state store; default SQLite in the data folder. */
  database?: string;
  /** Postgres only: keep Thaw's tables in this schema (created if missing). */
  databaseSchema?: string;
  /** S3-compatible object storage for seed replication (credentials from the AWS_* env vars). */
  s3Endpoint?: string;
  s3Bucket?: string;
  s3Region?: string;
  /** Byte cap of the local node's seed cache (least recently used seeds not in use are evicted). */
  seedCacheBytes?: number;
  /** Seeds of apps not woken for this many seconds are deleted everywhere. */
  seedTtl?: number;
  /** Bind address of the router and API (default 127.0.0.1). */
  host?: string;
  /** Run a node agent in this process (default true); false: control plane and router only. */
  localNode?: boolean;
  /** A `thaw node` silent this long is marked down (default 5000 ms). */
  nodeDownAfterMs?: number;
  /** Seed upload retry / TTL period (default 15000 ms). */
  maintenanceMs?: number;
  /** The local node's most concurrent wakes (default: one per CPU). */
  maxConcurrentWakes?: number;
  /** Overall deadline of one wake on the local node, ms (default 180000). */
  wakeDeadlineMs?: number;
}

export interface Running {
  service: Service;
  cluster: Cluster;
  apiUrl: string;
  routerUrl: string;
  token: string;
  stop(): Promise<void>;
}

async function secret(file: string, make: () => string): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    const v = make();
    await writeFile(file, `${v}\n`, { mode: 0o600, flag: 'wx' }).catch(() => {});
    return (await readFile(file, 'utf8')).trim();
  }
}

/** Start everything; resolves once the API and the router listen. */
export async function startThaw(o: UpOptions, log: Logger = pino({ level: process.env.THAW_LOG_LEVEL ?? 'info' })): Promise<Running> {
  const data = path.resolve(o.data);
  await mkdir(data, { recursive: true, mode: 0o700 });
  const token = await secret(path.join(data, 'token'), () => randomBytes(24).toString('base64url'));
  const envKey = Buffer.from(await secret(path.join(data, 'env.key'), () => randomBytes(32).toString('base64')), 'base64');
  // A wake holds its app's lock through a pull and a cold boot.
  const store = await openStore({ url: o.database, ...(o.databaseSchema ? { pgSchema: o.databaseSchema } : {}), sqlitePath: path.join(data, 'thaw.db'), envKey, lockWaitMs: 10 * 60_000 });
  const assets = await ensureAssets((l) => log.info(l));
  const s3 = s3FromFlags(o);
  const cluster = new Cluster({ store, token, log, downAfterMs: o.nodeDownAfterMs ?? 5000 });
  let agent: NodeAgent | null = null;
  if (o.localNode !== false) {
    agent = await createNodeAgent({ dir: nodeDir(data), name: 'local', s3, capBytes: o.seedCacheBytes ?? 20 * 1024 ** 3, images: () => sharedImages, log, ...wakeLimits(o) });
    cluster.addLocal(agent);
  }
  const host = o.host ?? '127.0.0.1';
  let service: Service | null = null;
  const replication = new Replication({
    s3,
    ttlMs: (o.seedTtl ?? 7 * 24 * 3600) * 1000,
    store,
    cluster,
    log,
    onSeedGone: async (seed) => service?.seedGone(seed),
    ...(o.maintenanceMs ? { tickMs: o.maintenanceMs } : {}),
  });
  service = new Service({
    store,
    cluster,
    baseRootfs: nodeRootfs,
    dataDir: data,
    log,
    domain: o.domain,
    routerPort: o.port,
    idleTimeoutS: o.idleTimeout,
    diskMiB: Number(process.env.THAW_DISK_MIB ?? 1024),
    maxAppBytes: 512 * 1024 * 1024,
    maxTarballBytes: 256 * 1024 * 1024,
    replication,
  });
  await replication.start();
  await service.start();
  cluster.start();
  const router = createRouter({ dir: service, suffix: o.domain, log });
  service.onWoke = (name, address, idle) => router.adopt(name, address, idle);
  const routerPort = await router.listen(o.port, host);
  const api = await createApiServer({ service, token, logger: false });
  await api.listen({ port: o.apiPort, host });
  const apiPort = (api.server.address() as { port: number }).port;
  const apiUrl = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${apiPort}`;
  const routerUrl = `http://${o.domain}:${routerPort}`;
  await writeInstance(data, { api_url: apiUrl, router_url: routerUrl, pid: process.pid }, token);
  log.info({ api: apiUrl, router: routerUrl, data, localNode: !!agent }, 'thaw is up');
  let stopping: Promise<void> | null = null;
  return {
    service,
    cluster,
    apiUrl,
    token,
    routerUrl: `http://127.0.0.1:${routerPort}`,
    stop: () =>
      (stopping ??= (async () => {
        await api.close();
        await router.close();
        await service!.shutdown();
        replication.stop();
        await agent?.close();
        await cluster.close();
        await store.close();
        await removeInstance(data);
      })()),
  };
}

/** The `thaw up` command: run until SIGINT/SIGTERM, then shut down cleanly. */
export async function runUp(o: UpOptions): Promise<void> {
  const log = pino({ level: process.env.THAW_LOG_LEVEL ?? 'info' });
  const t = await startThaw(o, log);
  await untilSignal(log, 'shutting down: held requests get 503, VMs are deleted', t.stop);
}
