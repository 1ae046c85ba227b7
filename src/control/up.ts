// `thaw up`: one process runs the control API, the router and a local node
// agent on embedded defaults (SQLite, a local seed folder, QEMU).
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { createApiServer } from '../api/server.ts';
import { removeInstance, writeInstance } from '../cli/instance.ts';
import { ensureAssets } from '../guest/assets.ts';
import { QemuDriver } from '../hypervisor/qemu.ts';
import type { NodeContext } from '../lifecycle/context.ts';
import { LocalNode } from '../node/local.ts';
import { createRouter } from '../router/router.ts';
import { openStore } from '../store/index.ts';
import { Service } from './service.ts';

export interface UpOptions {
  data: string;
  port: number;
  apiPort: number;
  domain: string;
  idleTimeout: number;
  /** postgres://... for the state store; default SQLite in the data folder. */
  database?: string;
  /** Bind address of the router and API (default 127.0.0.1). */
  host?: string;
}

export interface Running {
  service: Service;
  apiUrl: string;
  routerUrl: string;
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
  const store = await openStore({ url: o.database, sqlitePath: path.join(data, 'thaw.db'), envKey });
  const assets = await ensureAssets((l) => log.info(l));
  const hv = new QemuDriver({ probeAssets: async () => assets });
  const accel = await hv.accel();
  log.info({ accel }, 'hypervisor ready');
  const ctx: NodeContext = {
    hv,
    assets,
    dataDir: path.join(data, 'node'),
    log,
    memMiB: Number(process.env.THAW_VM_MEM_MIB ?? 512),
    vcpus: Number(process.env.THAW_VM_VCPUS ?? 2),
    guestPort: 8080,
    appStartTimeoutMs: 60_000,
    bootTimeoutMs: 90_000,
  };
  const node = new LocalNode(ctx);
  const rec = await node.recover();
  if (rec.killed || rec.removed) log.warn(rec, 'cleaned up after a previous run');
  const host = o.host ?? '127.0.0.1';
  const service = new Service({
    store,
    node,
    dataDir: data,
    log,
    domain: o.domain,
    routerPort: o.port,
    idleTimeoutS: o.idleTimeout,
    diskMiB: Number(process.env.THAW_DISK_MIB ?? 1024),
    maxAppBytes: 512 * 1024 * 1024,
    maxTarballBytes: 256 * 1024 * 1024,
  });
  await service.start();
  const router = createRouter({ dir: service, suffix: o.domain, log });
  const routerPort = await router.listen(o.port, host);
  const api = await createApiServer({ service, token, logger: false });
  await api.listen({ port: o.apiPort, host });
  const apiPort = (api.server.address() as { port: number }).port;
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const routerUrl = `http://${o.domain}:${routerPort}`;
  await writeInstance(data, { api_url: apiUrl, router_url: routerUrl, pid: process.pid }, token);
  log.info({ api: apiUrl, router: routerUrl, data }, 'thaw is up');
  let stopping: Promise<void> | null = null;
  return {
    service,
    apiUrl,
    routerUrl: `http://127.0.0.1:${routerPort}`,
    stop: () =>
      (stopping ??= (async () => {
        await api.close();
        await router.close();
        await service.shutdown();
        await store.close();
        await removeInstance(data);
      })()),
  };
}

/** The `thaw up` command: run until SIGINT/SIGTERM, then shut down cleanly. */
export async function runUp(o: UpOptions): Promise<void> {
  const log = pino({ level: process.env.THAW_LOG_LEVEL ?? 'info' });
  const t = await startThaw(o, log);
  await new Promise<void>((resolve) => {
    const onSig = (sig: string) => {
      log.info({ sig }, 'shutting down: held requests get 503, VMs are deleted');
      void t.stop().then(resolve, resolve);
    };
    process.once('SIGINT', onSig);
    process.once('SIGTERM', onSig);
  });
}
