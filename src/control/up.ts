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
import { createRouter, type RouterTimeouts } from '../router/router.ts';
import { s3FromFlags } from '../seed/s3.ts';
import { untilSignal } from '../signals.ts';
import { openStore } from '../store/index.ts';
import type { AppRow } from '../store/index.ts';
import { crossesNetwork, plainHttpWarning } from '../http/tls.ts';
import { Cluster } from './cluster.ts';
import { EventFeed, observeStore } from './events.ts';
import { toAppWire, toSeedWire, toWakeWire } from '../api/schemas.ts';
import { controlTls, joinCommand, localUrl, networkHost, readNodeCa, type ControlTlsOptions } from './join.ts';
import { Replication } from './replication.ts';
import { Service } from './service.ts';

export const DEFAULT_MAX_UPLOAD_MIB = 4096;
export const DEFAULT_MAX_DISK_MIB = 8192;

export interface UpOptions extends ControlTlsOptions {
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
  /** Bind address of the router (default 127.0.0.1). */
  host?: string;
  /** Bind address of the control API (default: host). */
  apiHost?: string;
  /** Run a node agent in this process (default true); false: control plane and router only. */
  localNode?: boolean;
  /** A `thaw node` silent this long is marked down (default 5000 ms). */
  nodeDownAfterMs?: number;
  /** Largest upload, uncompressed and compressed each (MiB, default 4096): `thaw up --max-upload-mib`. */
  maxUploadMiB?: number;
  /** Largest disk image (MiB, default 8192; images are sized from their content): `thaw up --max-disk-mib`. */
  maxDiskMiB?: number;
  /** Seed upload retry / TTL period (default 15000 ms). */
  maintenanceMs?: number;
  /** Router proxy timeouts (src/router/types.ts RouterTimeouts); unset: its defaults. */
  routerTimeouts?: Partial<RouterTimeouts>;
  /** Default hold time of a request for a wake (apps may set their own), ms. */
  wakeTimeoutMs?: number;
  /** Every sleep waits this long for in-flight requests; also the router's grace on shutdown (ms, default 30000). */
  drainMs?: number;
  /** Every sleep gives the app this long after SIGTERM before SIGKILL (ms, default 10000). */
  stopGraceMs?: number;
  /** Hypervisor driver of the local node (default qemu). */
  driver?: import('../hypervisor/types.ts').DriverName;
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
  /** With TLS: what clients pin (the cluster CA's fingerprint, or the certificate's). */
  apiFingerprint: string | null;
  /** The cluster CA file made by --tls. */
  caFile: string | null;
  /** `thaw node …` for a node on another host (holds the token). */
  joinCommand: string;
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
  // Every change the store records is published to the dashboard's event feed.
  const feed = new EventFeed();
  let service: Service | null = null;
  const appWire = (a: AppRow) => toAppWire(service ? service.view(a) : { ...a, url: '' });
  const store = observeStore(await openStore({ url: o.database, ...(o.databaseSchema ? { pgSchema: o.databaseSchema } : {}), sqlitePath: path.join(data, 'thaw.db'), envKey, lockWaitMs: 10 * 60_000 }), feed, { app: appWire, wake: toWakeWire, seed: toSeedWire });
  const assets = await ensureAssets((l) => log.info(l));
  const s3 = s3FromFlags(o);
  const host = o.host ?? '127.0.0.1';
  const apiHost = o.apiHost ?? host;
  const tls = await controlTls(o, data, apiHost);
  const nodeCa = await readNodeCa(o.nodeCa);
  const cluster = new Cluster({ store, token, log, downAfterMs: o.nodeDownAfterMs ?? 5000, ...(nodeCa ? { nodeCa } : {}) });
  let agent: NodeAgent | null = null;
  if (o.localNode !== false) {
    agent = await createNodeAgent({ dir: nodeDir(data), name: 'local', s3, capBytes: o.seedCacheBytes ?? 20 * 1024 ** 3, images: () => sharedImages, log, ...(o.driver ? { driver: o.driver } : {}), ...wakeLimits(o) });
    cluster.addLocal(agent);
  }
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
    diskMiB: o.maxDiskMiB ?? DEFAULT_MAX_DISK_MIB,
    maxAppBytes: (o.maxDiskMiB ?? DEFAULT_MAX_DISK_MIB) * 1024 * 1024,
    maxTarballBytes: (o.maxUploadMiB ?? DEFAULT_MAX_UPLOAD_MIB) * 1024 * 1024,
    replication,
    ...(o.drainMs !== undefined ? { drainMs: o.drainMs } : {}),
    ...(o.stopGraceMs !== undefined ? { stopGraceMs: o.stopGraceMs } : {}),
  });
  await replication.start();
  await service.start();
  cluster.start();
  const router = createRouter({
    dir: service,
    suffix: o.domain,
    log,
    closeGraceMs: o.drainMs ?? 30_000,
    ...(o.routerTimeouts ? { timeouts: o.routerTimeouts } : {}),
    ...(o.wakeTimeoutMs !== undefined ? { wakeTimeoutMs: o.wakeTimeoutMs } : {}),
  });
  service.onWoke = (name, address, idle) => router.adopt(name, address, idle);
  service.gate = router;
  const routerPort = await router.listen(o.port, host);
  service.routerPort = routerPort;
  const api = await createApiServer({ service, token, logger: false, ui: { feed }, ...(tls ? { tls: tls.server } : {}) });
  await api.listen({ port: o.apiPort, host: apiHost });
  const apiPort = (api.server.address() as { port: number }).port;
  const scheme = tls ? 'https' : 'http';
  const apiUrl = localUrl(scheme, apiHost, apiPort);
  const routerUrl = `http://${o.domain}:${routerPort}`;
  const apiFingerprint = tls?.fingerprint ?? null;
  await writeInstance(data, { api_url: apiUrl, router_url: routerUrl, pid: process.pid, ...(apiFingerprint ? { api_fingerprint: apiFingerprint } : {}) }, token);
  const networkApiUrl = localUrl(scheme, networkHost(apiHost), apiPort);
  if (!tls && crossesNetwork(networkApiUrl)) log.warn(plainHttpWarning('the control API at', networkApiUrl));
  log.info({ api: apiUrl, router: routerUrl, data, localNode: !!agent, tls: tls ? (tls.caFile ? 'cluster CA' : 'certificate') : 'off' }, 'thaw is up');
  let stopping: Promise<void> | null = null;
  return {
    service,
    cluster,
    apiUrl,
    token,
    apiFingerprint,
    caFile: tls?.caFile ?? null,
    joinCommand: joinCommand({ apiUrl: networkApiUrl, token, fingerprint: apiFingerprint }),
    routerUrl: localUrl('http', host, routerPort),
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
  if (t.apiFingerprint || crossesNetwork(t.joinCommand.split(' ')[3]!)) {
    process.stderr.write(`\nJoin a node on another host with (this holds the cluster token):\n  ${t.joinCommand}\n\n`);
  }
  await untilSignal(log, 'shutting down: held requests get 503, VMs are deleted', t.stop);
}
