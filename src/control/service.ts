// The control plane on one host: decides THAT an app runs (wake on request,
// sleep when idle) and records everything in the store. HOW is the node's job
// (src/node/local.ts). Every state change is one compare-and-set transition
// (src/state.ts); operations on one app are also serialized in-process.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import { buildAppImage } from '../image/build.ts';
import { extractAppTarball } from '../image/tarball.ts';
import { validateAppName } from '../image/validate.ts';
import type { LocalNode } from '../node/local.ts';
import type { AppDirectory, WakeResult } from '../router/types.ts';
import type { AppRow, SeedRow, Store, WakeRow } from '../store/types.ts';
import type { AppView, ControlService, DeployResult } from './types.ts';
import { Metrics } from './metrics.ts';
import { KeyedMutex } from './mutex.ts';
import type { Replication } from './replication.ts';

export interface ServiceOptions {
  store: Store;
  node: LocalNode;
  dataDir: string;
  log: Logger;
  domain: string;
  routerPort: number;
  idleTimeoutS: number;
  diskMiB: number;
  maxAppBytes: number;
  maxTarballBytes: number;
  replication: Replication;
}

export class Service implements ControlService, AppDirectory {
  private readonly mutex = new KeyedMutex();
  /** Seeds dropped while a VM may still use their disk; purged once the app's VM is gone. */
  private readonly stale = new Map<string, SeedRow>();
  /** Mirror of what the router needs, kept in step with every write. */
  private readonly routes = new Map<string, { address: { host: string; port: number } | null; idleTimeoutS: number }>();
  readonly metrics_ = new Metrics();
  /** Told about every wake, so the router idles apps woken through the API too. */
  onWoke: (name: string, address: { host: string; port: number }, idleTimeoutS: number) => void = () => {};

  constructor(private readonly o: ServiceOptions) {
    o.node.onAppExit = (app, e) => {
      o.log.warn({ app, code: e.code, signal: e.signal }, 'app exited; VM deleted, next request wakes it again');
      void this.mutex.run(app, async () => {
        await o.node.stop(app);
        await this.o.store.transition(app, 'running', 'failed', { vmId: null, hostPort: null, error: `app exited (code ${e.code}, signal ${e.signal})` }).catch(() => {});
        this.route(await this.o.store.findApp(app));
      });
    };
  }

  /** Load apps; apps a killed predecessor left mid-flight are asleep now (their VMs were killed by recover()). */
  async start(): Promise<void> {
    for (const a of await this.o.store.listApps()) {
      let row = a;
      if (a.state === 'running' || a.state === 'waking' || a.state === 'sleeping') row = await this.o.store.transition(a.name, a.state, 'asleep', { vmId: null, hostPort: null });
      else if (a.state === 'building') row = await this.o.store.transition(a.name, 'building', 'failed', { error: 'interrupted while building; deploy again' });
      else if (a.state === 'deleting') {
        await this.purgeApp(a);
        continue;
      }
      this.route(row);
    }
  }

  private route(a: AppRow | null): void {
    if (!a) return;
    const run = this.o.node.running.get(a.name);
    this.routes.set(a.name, { address: a.state === 'running' && run ? run.vm.appAddress : null, idleTimeoutS: a.idleTimeoutS });
  }

  private view(a: AppRow): AppView {
    return { ...a, url: `http://${a.name}.${this.o.domain}:${this.o.routerPort}/` };
  }

  // ---- AppDirectory (router) -------------------------------------------------
  lookup(name: string) {
    return this.routes.get(name) ?? null;
  }

  async wake(name: string): Promise<WakeRow & WakeResult> {
    return this.mutex.run(name, () => this.wakeLocked(name));
  }

  async sleep(name: string): Promise<{ baked: boolean; seed: SeedRow | null }> {
    return this.mutex.run(name, () => this.sleepLocked(name));
  }

  private async wakeLocked(name: string): Promise<WakeRow & WakeResult> {
    const app = await this.o.store.getApp(name);
    if (app.state === 'running' && this.o.node.running.has(name)) {
      const run = this.o.node.running.get(name)!;
      const last = (await this.o.store.listWakes(name, 1))[0];
      if (last) return { ...last, address: run.vm.appAddress, wallMs: 0, wakeId: last.id };
    }
    if (!app.deployId) throw new ThawError('APP_NOT_DEPLOYED', `${name} has no deploy yet`);
    const deploy = (await this.o.store.listDeploys(name)).find((d) => d.id === app.deployId);
    if (!deploy) throw new ThawError('APP_NOT_DEPLOYED', `deploy ${app.deployId} of ${name} is gone`);
    await this.o.store.transition(name, ['asleep', 'failed'], 'waking', { error: null });
    try {
      const env = await this.o.store.getEnv(name);
      const where = await this.seedHere(name, app.seedId);
      const out = await this.o.node.wake({ app: name, deployId: deploy.id, image: deploy.imagePath, seedId: app.seedId, env }, where);
      await this.o.store.addWake(out.record);
      let seedPatch = {};
      if (out.record.bootMode === 'cold' && app.seedId) {
        // The seed was not used (refused, failed its gate, unreachable): forget it, so
        // the next idle bakes a fresh one. Its files may back this VM's disk: they are
        // deleted once the VM is gone.
        const old = await this.o.store.getSeed(name);
        if (old) {
          this.stale.set(old.id, old);
          await this.o.store.deleteSeed(old.id);
        }
        seedPatch = { seedId: null };
      }
      const row = await this.o.store.transition(name, 'waking', 'running', { vmId: out.run.vm.id, hostPort: out.run.vm.appAddress.port, node: this.o.node.name, ...seedPatch });
      this.route(row);
      this.metrics_.wake(out.record);
      this.onWoke(name, out.run.vm.appAddress, row.idleTimeoutS);
      // Bookkeeping for the LRU/TTL, off the wake's critical path.
      if (out.record.bootMode === 'snapshot' && app.seedId) {
        this.seedUsed(name, app.seedId).catch((err) => this.o.log.warn({ app: name, err: asThawError(err).message }, 'could not record seed use'));
      }
      return { ...out.record, address: out.run.vm.appAddress, wakeId: out.record.id };
    } catch (err) {
      const e = asThawError(err, 'WAKE_FAILED');
      this.metrics_.wakeFailed();
      await this.o.node.stop(name).catch(() => {}); // a VM that woke before a later step failed
      const row = await this.o.store.transition(name, 'waking', 'failed', { error: e.message.slice(0, 2000) }).catch(() => null);
      this.route(row);
      throw e;
    }
  }

  /** Make sure this node holds the app's seed: pull it from object storage when it does not. */
  private async seedHere(name: string, seedId: string | null): Promise<{ seedSource: 'local' | 'pulled'; seedUnavailable?: string }> {
    if (!seedId || this.o.node.hasSeed(seedId)) return { seedSource: 'local' };
    const row = await this.o.store.getSeed(name);
    if (!row || row.id !== seedId || !row.replicated || !this.o.replication.s3) {
      return { seedSource: 'local', seedUnavailable: `seed-unavailable: seed ${seedId} is not on node ${this.o.node.name} and has no replicated copy` };
    }
    try {
      await this.o.replication.pull(row);
      return { seedSource: 'pulled' };
    } catch (err) {
      const e = asThawError(err);
      return { seedSource: 'local', seedUnavailable: `seed-unavailable: ${e.code}: ${e.message}` };
    }
  }

  private async seedUsed(name: string, seedId: string): Promise<void> {
    this.o.replication.used(seedId);
    const row = await this.o.store.getSeed(name);
    if (row?.id === seedId) await this.o.store.putSeed({ ...row, lastUsedAt: new Date().toISOString() });
  }

  /** A seed is gone for good (TTL, evicted without a durable copy): forget it; the next wake cold-boots. */
  async seedGone(seed: SeedRow): Promise<void> {
    await this.o.store.deleteSeed(seed.id);
    const app = await this.o.store.findApp(seed.app);
    if (app?.seedId === seed.id) await this.o.store.updateApp(seed.app, { seedId: null });
  }

  private async sleepLocked(name: string): Promise<{ baked: boolean; seed: SeedRow | null }> {
    const app = await this.o.store.getApp(name);
    if (app.state !== 'running') return { baked: false, seed: null };
    await this.o.store.transition(name, 'running', 'sleeping');
    this.route(await this.o.store.getApp(name));
    let seed: SeedRow | null = null;
    let error: string | null = null;
    try {
      const r = await this.o.node.sleep(name, { haveSeed: this.o.node.hasSeed(app.seedId) && !!app.seedId });
      error = r.error;
      if (r.baked) {
        const now = new Date().toISOString();
        const f = r.baked.manifest.files;
        seed = {
          id: r.baked.seedId,
          app: name,
          deployId: app.deployId ?? '',
          node: this.o.node.name,
          bytesApparent: f['mem.ram'].bytes + f['state.bin'].bytes + f['disk.img'].bytes,
          bytesAllocated: f['mem.ram'].allocated + f['state.bin'].allocated + f['disk.img'].allocated,
          bytesCompressed: null,
          replicated: false,
          manifestSha256: r.baked.manifestSha256,
          createdAt: now,
          lastUsedAt: now,
        };
        await this.o.store.putSeed(seed);
        await this.o.replication.added(seed);
      }
    } catch (err) {
      // Whatever failed, the VM is gone (node.sleep always deletes it): the app is asleep.
      await this.o.node.stop(name).catch(() => {});
      error = asThawError(err).message.slice(0, 2000);
      this.o.log.error({ app: name, err: error }, 'sleep failed');
    } finally {
      const row = await this.o.store.transition(name, 'sleeping', 'asleep', { vmId: null, hostPort: null, ...(seed ? { seedId: seed.id } : {}), error });
      this.route(row);
      await this.purgeStale(name);
    }
    return { baked: !!seed, seed };
  }

  /** Delete seeds dropped earlier whose files no VM of the app can be using any more. */
  private async purgeStale(name: string): Promise<void> {
    if (this.o.node.running.has(name)) return;
    for (const s of [...this.stale.values()].filter((x) => x.app === name)) {
      this.stale.delete(s.id);
      await this.o.replication.purge(s).catch(() => {});
    }
  }

  // ---- ControlService (API) --------------------------------------------------
  async createApp(name: string, opts: { idleTimeoutS?: number } = {}): Promise<AppView> {
    validateAppName(name);
    const row = await this.o.store.createApp({ name, idleTimeoutS: opts.idleTimeoutS ?? this.o.idleTimeoutS });
    this.route(row);
    return this.view(row);
  }

  async listApps(): Promise<AppView[]> {
    return (await this.o.store.listApps()).map((a) => this.view(a));
  }

  async getApp(name: string): Promise<AppView> {
    return this.view(await this.o.store.getApp(name));
  }

  async deleteApp(name: string): Promise<void> {
    await this.mutex.run(name, async () => {
      const app = await this.o.store.getApp(name);
      const row = await this.o.store.transition(name, app.state, 'deleting');
      this.routes.delete(name);
      await this.purgeApp(row);
    });
  }

  private async purgeApp(app: AppRow): Promise<void> {
    await this.o.node.stop(app.name);
    await this.purgeStale(app.name);
    for (const s of (await this.o.store.listSeeds()).filter((s) => s.app === app.name)) await this.o.replication.purge(s);
    await rm(path.join(this.o.dataDir, 'apps', app.name), { recursive: true, force: true });
    await this.o.node.deleteLogs(app.name);
    await this.o.store.deleteApp(app.name);
  }

  async deploy(name: string, tarball: Readable, opts: { env?: Record<string, string>; idleTimeoutS?: number; onProgress?: (line: string) => void } = {}): Promise<DeployResult> {
    validateAppName(name);
    const progress = opts.onProgress ?? (() => {});
    return this.mutex.run(name, async () => {
      const t0 = performance.now();
      let app = await this.o.store.findApp(name);
      if (!app) app = await this.o.store.createApp({ name, idleTimeoutS: opts.idleTimeoutS ?? this.o.idleTimeoutS });
      else if (opts.idleTimeoutS !== undefined) app = await this.o.store.updateApp(name, { idleTimeoutS: opts.idleTimeoutS });
      if (opts.env && Object.keys(opts.env).length) await this.o.store.setEnv(name, opts.env);
      if (app.state === 'running') {
        progress('stopping the running VM');
        await this.o.node.stop(name);
        await this.purgeStale(name);
        app = await this.o.store.transition(name, 'running', 'asleep', { vmId: null, hostPort: null });
      }
      const prev = app;
      await this.o.store.transition(name, ['created', 'asleep', 'failed'], 'building', { error: null });
      this.route(await this.o.store.getApp(name));
      const deployId = `d-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
      const appRoot = path.join(this.o.dataDir, 'apps', name);
      const src = path.join(appRoot, `src-${deployId}`);
      const image = path.join(appRoot, `${deployId}.img`);
      try {
        await mkdir(appRoot, { recursive: true });
        progress('receiving app tarball');
        const x = await extractAppTarball(tarball, src, { maxBytes: this.o.maxTarballBytes });
        progress(`unpacked ${x.files} files (${x.bytes} bytes); building disk image`);
        const assets = this.o.node.ctx.assets;
        const built = await buildAppImage({ appDir: src, baseRootfs: assets.rootfs, out: image, diskMiB: this.o.diskMiB, maxAppBytes: this.o.maxAppBytes, log: progress });
        await chmod(image, 0o444);
        const deploy = await this.o.store.addDeploy({ id: deployId, app: name, imagePath: image, imageBytes: built.bytesAllocated });
        // A seed froze the old code: it is worthless now.
        const old = await this.o.store.getSeed(name);
        let purgedSeed: string | null = null;
        if (old) {
          await this.o.replication.purge(old);
          await this.o.store.deleteSeed(old.id);
          purgedSeed = old.id;
        }
        const row = await this.o.store.transition(name, 'building', 'asleep', { deployId, seedId: null });
        this.route(row);
        // Old images and sources are no longer needed.
        if (prev.deployId) await rm(path.join(appRoot, `${prev.deployId}.img`), { force: true });
        await rm(src, { recursive: true, force: true });
        progress(`deployed ${deployId} in ${Math.round(performance.now() - t0)} ms`);
        return { app: name, deploy, purgedSeed, buildMs: Math.round(performance.now() - t0) };
      } catch (err) {
        await rm(src, { recursive: true, force: true });
        await rm(image, { force: true });
        const back = prev.deployId ? 'asleep' : 'failed';
        const row = await this.o.store.transition(name, 'building', back, { error: asThawError(err).message.slice(0, 2000) }).catch(() => null);
        this.route(row);
        throw err;
      }
    });
  }

  async setEnv(name: string, vars: Record<string, string>): Promise<void> {
    await this.o.store.getApp(name);
    await this.o.store.setEnv(name, vars);
  }

  async unsetEnv(name: string, keys: string[]): Promise<void> {
    await this.o.store.getApp(name);
    await this.o.store.unsetEnv(name, keys);
  }

  async listEnv(name: string) {
    await this.o.store.getApp(name);
    return this.o.store.listEnvKeys(name);
  }

  async wakes(name: string, limit?: number): Promise<WakeRow[]> {
    await this.o.store.getApp(name);
    return this.o.store.listWakes(name, limit);
  }

  async seeds(): Promise<SeedRow[]> {
    return this.o.store.listSeeds();
  }

  async logs(name: string, opts: { follow: boolean; signal?: AbortSignal }): Promise<AsyncIterable<string>> {
    await this.o.store.getApp(name);
    const node = this.o.node;
    return (async function* () {
      let sent = 0;
      for (;;) {
        const text = await node.logs(name);
        if (text.length > sent) {
          yield text.slice(sent);
          sent = text.length;
        } else if (text.length < sent) sent = text.length;
        if (!opts.follow || opts.signal?.aborted) return;
        await new Promise((r) => setTimeout(r, 1000));
        if (opts.signal?.aborted) return;
      }
    })();
  }

  async metrics(): Promise<{ contentType: string; body: string }> {
    const apps = await this.o.store.listApps();
    const seeds = await this.o.store.listSeeds();
    return this.metrics_.render(apps, seeds);
  }

  /** Stop every VM (graceful shutdown), waiting for wakes in flight: their apps are asleep from now on. */
  async shutdown(): Promise<void> {
    const apps = (await this.o.store.listApps()).map((a) => a.name);
    await Promise.all(
      apps.map((name) =>
        this.mutex.run(name, async () => {
          await this.o.node.stop(name);
          await this.o.store.transition(name, ['running', 'sleeping', 'waking'], 'asleep', { vmId: null, hostPort: null }).catch(() => {});
          await this.purgeStale(name);
        }),
      ),
    );
  }
}
