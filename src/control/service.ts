// The control plane: decides THAT an app runs (wake on request, sleep when
// idle) and WHERE (src/control/cluster.ts), and records everything in the
// store. HOW is the node agents' job (src/node). Every state change is one
// compare-and-set transition (src/state.ts); operations on one app hold the
// store's app lock (in-process and, on Postgres, across processes and hosts).
import { rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { ThawError, asThawError, isThawError } from '../errors.ts';
import { validateAppName } from '../image/validate.ts';
import type { AppDirectory, WakeResult } from '../router/types.ts';
import type { AppRow, SeedRow, Store, WakeRow } from '../store/types.ts';
import type { HeartbeatResponse, NodeInfo, NodeStatus, NodeWakeResponse } from '../wire/node.ts';
import { appRoot, buildDeploy, imagePath } from './build.ts';
import { Fleet } from './fleet.ts';
import { Placements } from './placements.ts';
import type { Cluster, Member } from './cluster.ts';
import { streamImage } from './images.ts';
import type { AppView, ControlService, DeployResult } from './types.ts';
import { Metrics } from './metrics.ts';
import { seedRef, type Replication } from './replication.ts';

export interface ServiceOptions {
  store: Store;
  cluster: Cluster;
  /** Base root folder of app images (the guest assets' rootfs). */
  baseRootfs: string;
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
  /** Seeds dropped while a VM may still use their disk; purged once the app's VM is gone. */
  private readonly stale = new Map<string, SeedRow>();
  private readonly placed: Placements;
  private readonly fleet: Fleet;
  readonly metrics_ = new Metrics();
  /** Told about every wake, so the router idles apps woken through the API too. */
  onWoke: (name: string, address: { host: string; port: number }, idleTimeoutS: number) => void = () => {};

  constructor(private readonly o: ServiceOptions) {
    this.placed = new Placements(o.cluster, o.log);
    this.fleet = new Fleet({ store: o.store, cluster: o.cluster, placements: this.placed, replication: o.replication, log: o.log });
  }

  /** Serialize operations on one app (the store's lock works across processes). */
  private lock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    return this.o.store.withAppLock(name, fn);
  }

  private route(a: AppRow | null): void {
    this.placed.route(a);
  }

  private stopApp(name: string): Promise<void> {
    return this.placed.stop(name);
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

  private view(a: AppRow): AppView {
    return { ...a, url: `http://${a.name}.${this.o.domain}:${this.o.routerPort}/` };
  }

  // ---- AppDirectory (router) -------------------------------------------------
  lookup(name: string) {
    return this.placed.lookup(name);
  }

  async wake(name: string): Promise<WakeRow & WakeResult> {
    return this.lock(name, () => this.wakeLocked(name));
  }

  async sleep(name: string): Promise<{ baked: boolean; seed: SeedRow | null }> {
    return this.lock(name, () => this.sleepLocked(name));
  }

  private async wakeLocked(name: string): Promise<WakeRow & WakeResult> {
    const app = await this.o.store.getApp(name);
    const here = this.placed.get(name);
    if (app.state === 'running' && here) {
      const last = (await this.o.store.listWakes(name, 1))[0];
      if (last) return { ...last, address: here.address, wallMs: 0, wakeId: last.id };
    }
    if (!app.deployId) throw new ThawError('APP_NOT_DEPLOYED', `${name} has no deploy yet`);
    const deploy = (await this.o.store.listDeploys(name)).find((d) => d.id === app.deployId);
    if (!deploy) throw new ThawError('APP_NOT_DEPLOYED', `deploy ${app.deployId} of ${name} is gone`);
    await this.o.store.transition(name, ['asleep', 'failed'], 'waking', { error: null });
    let out: NodeWakeResponse | null = null;
    let member: Member | null = null;
    try {
      const env = await this.o.store.getEnv(name);
      const seedRow = app.seedId ? await this.o.store.getSeed(name) : null;
      const seed = seedRow && seedRow.id === app.seedId ? seedRow : null;
      // Schedule; a node that breaks off (killed mid-pull or mid-thaw) is marked down and the next one tries.
      const tried: string[] = [];
      while (!out) {
        const p = this.o.cluster.pick(app.seedId, new Set(tried));
        if (!p) throw new ThawError('NO_NODE', tried.length ? `no node could wake ${name} (tried ${tried.join(', ')})` : `no live node with capacity to wake ${name}`);
        const placement = tried.length ? `${p.reason} (after ${tried.join(', ')} broke off)` : p.reason;
        tried.push(p.member.name);
        try {
          out = await p.member.api.wake({ app: name, deployId: deploy.id, image: deploy.imagePath, seed: seed ? seedRef(seed) : null, env, placement });
          member = p.member;
        } catch (err) {
          if (!isThawError(err, 'NODE_UNREACHABLE')) throw err;
          this.o.log.warn({ app: name, node: p.member.name, err: err.message }, 'node broke off the wake; trying another node');
          await this.o.cluster.markDown(p.member.name, err.message);
        }
      }
      const m = member!;
      const record: WakeRow = { ...out.record, placement: out.record.placement ?? null };
      await this.o.store.addWake(record);
      let seedPatch = {};
      if (record.bootMode === 'cold' && app.seedId) {
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
      if (record.seedSource === 'pulled' && app.seedId) m.seeds.add(app.seedId);
      this.placed.set(name, { node: m.name, vmId: out.vmId, address: out.address });
      const row = await this.o.store.transition(name, 'waking', 'running', { vmId: out.vmId, hostPort: out.address.port, node: m.name, ...seedPatch });
      this.route(row);
      this.metrics_.wake(record);
      this.onWoke(name, out.address, row.idleTimeoutS);
      // Bookkeeping for the TTL, off the wake's critical path.
      if (record.bootMode === 'snapshot' && app.seedId) {
        this.seedUsed(name, app.seedId).catch((err) => this.o.log.warn({ app: name, err: asThawError(err).message }, 'could not record seed use'));
      }
      return { ...record, address: out.address, wakeId: record.id };
    } catch (err) {
      const e = asThawError(err, 'WAKE_FAILED');
      this.metrics_.wakeFailed();
      if (out && member) {
        // The VM woke but a later step failed: delete it.
        this.placed.set(name, { node: member.name, vmId: out.vmId, address: out.address });
        await this.stopApp(name);
      }
      const row = await this.o.store.transition(name, 'waking', 'failed', { error: e.message.slice(0, 2000) }).catch(() => null);
      this.route(row);
      throw e;
    }
  }

  private async seedUsed(name: string, seedId: string): Promise<void> {
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
    // Not running, or running under another control plane sharing the database: not ours to bake.
    if (app.state !== 'running' || !this.placed.has(name)) return { baked: false, seed: null };
    await this.o.store.transition(name, 'running', 'sleeping');
    this.route(await this.o.store.getApp(name));
    const pl = this.placed.get(name);
    const m = this.o.cluster.get(pl?.node ?? app.node);
    let seed: SeedRow | null = null;
    let error: string | null = null;
    try {
      if (!pl || !m || m.state !== 'up') throw new ThawError('NODE_UNREACHABLE', `node ${pl?.node ?? app.node} of ${name} is down; its VM is gone`);
      const r = await m.api.sleep({ app: name, haveSeed: !!app.seedId && m.hasSeed(app.seedId) });
      error = r.error;
      if (r.baked) {
        const now = new Date().toISOString();
        seed = {
          id: r.baked.seedId,
          app: name,
          deployId: app.deployId ?? '',
          node: m.name,
          bytesApparent: r.baked.bytesApparent,
          bytesAllocated: r.baked.bytesAllocated,
          bytesCompressed: null,
          replicated: false,
          manifestSha256: r.baked.manifestSha256,
          createdAt: now,
          lastUsedAt: now,
        };
        await this.o.store.putSeed(seed);
        m.seeds.add(seed.id);
        this.o.replication.added(seed);
      }
    } catch (err) {
      // Whatever failed, the VM is gone (a node's sleep always deletes it): the app is asleep.
      if (m && m.state === 'up') await m.api.stop(name, pl?.vmId).catch(() => {});
      error = asThawError(err).message.slice(0, 2000);
      this.o.log.error({ app: name, err: error }, 'sleep failed');
    } finally {
      this.placed.delete(name);
      const row = await this.o.store.transition(name, 'sleeping', 'asleep', { vmId: null, hostPort: null, ...(seed ? { seedId: seed.id } : {}), error });
      this.route(row);
      await this.purgeStale(name);
    }
    return { baked: !!seed, seed };
  }

  /** Delete seeds dropped earlier whose files no VM of the app can be using any more. */
  private async purgeStale(name: string): Promise<void> {
    if (this.placed.has(name)) return;
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
    await this.lock(name, async () => {
      const app = await this.o.store.getApp(name);
      const row = await this.o.store.transition(name, app.state, 'deleting');
      this.placed.unroute(name);
      await this.purgeApp(row);
    });
  }

  private async purgeApp(app: AppRow): Promise<void> {
    await this.stopApp(app.name);
    await this.purgeStale(app.name);
    for (const s of (await this.o.store.listSeeds()).filter((s) => s.app === app.name)) await this.o.replication.purge(s);
    await rm(appRoot(this.o.dataDir, app.name), { recursive: true, force: true });
    await Promise.all(this.o.cluster.live().map((m) => m.api.deleteLogs(app.name).catch(() => {})));
    await this.o.store.deleteApp(app.name);
  }

  async deploy(name: string, tarball: Readable, opts: { env?: Record<string, string>; idleTimeoutS?: number; onProgress?: (line: string) => void } = {}): Promise<DeployResult> {
    validateAppName(name);
    const progress = opts.onProgress ?? (() => {});
    return this.lock(name, async () => {
      const t0 = performance.now();
      let app = await this.o.store.findApp(name);
      if (!app) app = await this.o.store.createApp({ name, idleTimeoutS: opts.idleTimeoutS ?? this.o.idleTimeoutS });
      else if (opts.idleTimeoutS !== undefined) app = await this.o.store.updateApp(name, { idleTimeoutS: opts.idleTimeoutS });
      if (opts.env && Object.keys(opts.env).length) await this.o.store.setEnv(name, opts.env);
      if (app.state === 'running') {
        progress('stopping the running VM');
        await this.stopApp(name);
        await this.purgeStale(name);
        app = await this.o.store.transition(name, 'running', 'asleep', { vmId: null, hostPort: null });
      }
      const prev = app;
      await this.o.store.transition(name, ['created', 'asleep', 'failed'], 'building', { error: null });
      this.route(await this.o.store.getApp(name));
      try {
        const built = await buildDeploy(this.o, name, tarball, progress);
        const deploy = await this.o.store.addDeploy({ id: built.deployId, app: name, imagePath: built.image, imageBytes: built.bytesAllocated });
        // A seed froze the old code: it is worthless now.
        const old = await this.o.store.getSeed(name);
        let purgedSeed: string | null = null;
        if (old) {
          await this.o.replication.purge(old);
          await this.o.store.deleteSeed(old.id);
          purgedSeed = old.id;
        }
        const row = await this.o.store.transition(name, 'building', 'asleep', { deployId: deploy.id, seedId: null });
        this.route(row);
        // The previous image is no longer needed.
        if (prev.deployId) await rm(imagePath(this.o.dataDir, name, prev.deployId), { force: true });
        progress(`deployed ${deploy.id} in ${Math.round(performance.now() - t0)} ms`);
        return { app: name, deploy, purgedSeed, buildMs: Math.round(performance.now() - t0) };
      } catch (err) {
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
    // The app's log lives on the node it last ran on.
    const read = async () => {
      const m = this.o.cluster.get(this.placed.get(name)?.node ?? (await this.o.store.findApp(name))?.node ?? null);
      return m && m.state === 'up' ? m.api.logs(name).catch(() => '') : '';
    };
    return (async function* () {
      let sent = 0;
      for (;;) {
        const text = await read();
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
    const r = await this.metrics_.render(apps, seeds, this.o.cluster.list(), this.o.replication.stats);
    // The in-process node's own metrics (transfers, VMs, cache) follow the control plane's.
    for (const m of this.o.cluster.all()) if (m.agent) r.body += await m.agent.renderMetrics();
    return r;
  }

  /** A node's heartbeat: record it; answer with VMs it runs that are placed elsewhere (stop them). */
  heartbeat(st: NodeStatus): Promise<HeartbeatResponse> {
    return this.fleet.heartbeat(st);
  }

  async nodes(): Promise<NodeInfo[]> {
    return this.o.cluster.list();
  }

  async deployImage(name: string, deployId: string): Promise<{ stream: Readable; bytes: number }> {
    const d = (await this.o.store.listDeploys(name)).find((x) => x.id === deployId);
    if (!d) throw new ThawError('NOT_FOUND', `no deploy ${deployId} of ${name}`);
    return streamImage(d.imagePath);
  }

  /** Stop every VM (graceful shutdown), waiting for wakes in flight: their apps are asleep from now on. */
  async shutdown(): Promise<void> {
    const apps = (await this.o.store.listApps()).map((a) => a.name);
    await Promise.all(
      apps.map((name) =>
        this.lock(name, async () => {
          await this.stopApp(name);
          await this.o.store.transition(name, ['running', 'sleeping', 'waking'], 'asleep', { vmId: null, hostPort: null }).catch(() => {});
          await this.purgeStale(name);
        }),
      ),
    );
  }
}
