// The control plane: decides THAT an app runs (wake on request, sleep when
// idle) and WHERE (src/control/cluster.ts), and records everything in the
// store. HOW is the node agents' job (src/node). Every state change is one
// compare-and-set transition (src/state.ts); operations on one app hold the
// store's app lock (in-process and, on Postgres, across processes and hosts).
import { rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import type { BaseRootfsFor } from '../image/build.ts';
import { validateAppName } from '../image/validate.ts';
import type { AppDirectory, RequestGate, WakeResult } from '../router/types.ts';
import type { AppRow, SeedRow, SleepRow, Store, WakeRow } from '../store/types.ts';
import type { HeartbeatResponse, NodeInfo, NodeStatus } from '../wire/node.ts';
import { appRoot, buildDeploy, buildImageDeploy, imagePath } from './build.ts';
import { Fleet } from './fleet.ts';
import { Runs } from './runs.ts';
import { Placements } from './placements.ts';
import type { Cluster } from './cluster.ts';
import { streamImage } from './images.ts';
import { isImageSource, type AppView, type ControlService, type DeployOptions, type DeployResult, type ImageSource } from './types.ts';
import { Metrics } from './metrics.ts';
import type { Replication } from './replication.ts';
import { VolumeApi } from './volume-api.ts';
import { drainNode } from './drain.ts';
import { followLogs } from './logs.ts';

export interface ServiceOptions {
  store: Store;
  cluster: Cluster;
  /** Base root folder of Node-folder app images, or the function that gives it per Node line (the guest assets' `nodeRootfs`). */
  baseRootfs: string | BaseRootfsFor;
  dataDir: string;
  log: Logger;
  domain: string;
  routerPort: number;
  idleTimeoutS: number;
  diskMiB: number;
  maxAppBytes: number;
  maxTarballBytes: number;
  replication: Replication;
  /** See FleetOptions.reportGraceMs. */
  reportGraceMs?: number;
  /** Every sleep waits this long for in-flight requests (ms, default 30000). */
  drainMs?: number;
  /** Every sleep gives the app this long after SIGTERM before SIGKILL (ms, default 10000). */
  stopGraceMs?: number;
}

export class Service implements ControlService, AppDirectory {
  private readonly placed: Placements;
  private readonly fleet: Fleet;
  readonly metrics_ = new Metrics();
  private readonly runs: Runs;
  /** Volume operations (src/control/volume-api.ts). */
  readonly volumeApi: VolumeApi;

  /** Told about every wake, so the router idles apps woken through the API too. */
  set onWoke(fn: Runs['onWoke']) {
    this.runs.onWoke = fn;
  }

  /** The router: every sleep holds new requests and drains in-flight ones through it. */
  set gate(g: RequestGate) {
    this.runs.gate = g;
  }

  constructor(private readonly o: ServiceOptions) {
    this.placed = new Placements(o.cluster, o.log);
    const stopping = { ...(o.drainMs !== undefined ? { drainMs: o.drainMs } : {}), ...(o.stopGraceMs !== undefined ? { stopGraceMs: o.stopGraceMs } : {}) };
    this.volumeApi = new VolumeApi({ store: o.store, cluster: o.cluster, s3: o.replication.s3, log: o.log, lock: (n, fn) => this.lock(n, fn) });
    this.runs = new Runs({ store: o.store, cluster: o.cluster, placements: this.placed, replication: o.replication, metrics: this.metrics_, volumes: this.volumeApi.control, backups: this.volumeApi.backups, log: o.log, ...stopping });
    this.fleet = new Fleet({ store: o.store, cluster: o.cluster, placements: this.placed, replication: o.replication, log: o.log, ...(o.reportGraceMs !== undefined ? { reportGraceMs: o.reportGraceMs } : {}) });
  }

  /** The router's bound port, once it listens (apps' URLs name it; `--port 0` binds a free one). */
  set routerPort(port: number) {
    this.o.routerPort = port;
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
    // Remote nodes may still run VMs of apps that count as asleep from now on: let them
    // heartbeat once (and be told to stop those) before the first wake.
    if ((await this.o.store.listNodes()).length > 0) this.runs.settleUntil = Date.now() + 2500;
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

  /** The API's view of an app row: the row plus its public URL on the router. */
  view(a: AppRow): AppView {
    return { ...a, url: `http://${a.name}.${this.o.domain}:${this.o.routerPort}/` };
  }

  // ---- AppDirectory (router) -------------------------------------------------
  lookup(name: string) {
    return this.placed.lookup(name);
  }

  /** Wake `name`. Aborting `opts.signal` (the router has nobody waiting any more) drops a wake still queued on its node. */
  async wake(name: string, opts: { signal?: AbortSignal } = {}): Promise<WakeRow & WakeResult> {
    return this.lock(name, () => this.runs.wake(name, opts.signal));
  }

  /** The app's wake waits in its node's admission queue (it has not started). */
  wakeQueued(name: string): boolean {
    return this.o.cluster.live().some((m) => m.queued(name));
  }

  /** `thaw sleep` ('manual') or the router's idle timer ('idle'). */
  async sleep(name: string, trigger: 'idle' | 'manual' = 'manual'): Promise<{ baked: boolean; seed: SeedRow | null; record: SleepRow | null }> {
    return this.lock(name, () => this.runs.sleep(name, trigger));
  }

  async sleeps(name: string, limit?: number): Promise<SleepRow[]> {
    await this.o.store.getApp(name);
    return this.o.store.listSleeps(name, limit);
  }

  /** The router saw the first byte of the app's answer after this wake (AppDirectory.firstByte). */
  async firstByte(_name: string, wakeId: string, ms: number): Promise<void> {
    await this.o.store.setWakeFirstByte(wakeId, ms);
  }

  /** A seed is gone for good (TTL, evicted without a durable copy): forget it; the next wake cold-boots. */
  async seedGone(seed: SeedRow): Promise<void> {
    await this.o.store.deleteSeed(seed.id);
    const app = await this.o.store.findApp(seed.app);
    if (app?.seedId === seed.id) await this.o.store.updateApp(seed.app, { seedId: null });
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

  async deleteApp(name: string, opts: { deleteVolume?: boolean } = {}): Promise<void> {
    await this.lock(name, async () => {
      const app = await this.o.store.getApp(name);
      await this.volumeApi.checkDelete(name, !!opts.deleteVolume);
      const row = await this.o.store.transition(name, app.state, 'deleting');
      this.placed.unroute(name);
      await this.purgeApp(row);
    });
  }

  private async purgeApp(app: AppRow): Promise<void> {
    await this.stopApp(app.name);
    await this.runs.purgeStale(app.name);
    for (const s of (await this.o.store.listSeeds()).filter((s) => s.app === app.name)) await this.o.replication.purge(s);
    await rm(appRoot(this.o.dataDir, app.name), { recursive: true, force: true });
    await Promise.all(this.o.cluster.live().map((m) => m.api.forgetApp(app.name).catch(() => {})));
    await this.volumeApi.purge(app.name);
    await this.o.store.deleteApp(app.name);
  }

  async deploy(name: string, source: Readable | ImageSource, opts: DeployOptions = {}): Promise<DeployResult> {
    validateAppName(name);
    const progress = opts.onProgress ?? (() => {});
    return this.lock(name, async () => {
      const t0 = performance.now();
      let app = await this.o.store.findApp(name);
      if (!app) app = await this.o.store.createApp({ name, idleTimeoutS: opts.idleTimeoutS ?? this.o.idleTimeoutS });
      else if (opts.idleTimeoutS !== undefined) app = await this.o.store.updateApp(name, { idleTimeoutS: opts.idleTimeoutS });
      if (opts.wakeTimeoutS !== undefined) app = await this.o.store.updateApp(name, { wakeTimeoutS: opts.wakeTimeoutS });
      if (opts.env && Object.keys(opts.env).length) await this.o.store.setEnv(name, opts.env);
      const volume = await this.volumeApi.control.declare(name, opts.volume);
      if (volume) progress(`volume ${volume.path} (${volume.sizeBytes} bytes) is kept across deploys`);
      const build = () => (isImageSource(source) ? buildImageDeploy(this.o, name, source, progress) : buildDeploy(this.o, name, source, progress, opts.build));
      let built: Awaited<ReturnType<typeof build>> | null = null;
      if (app.state === 'running') {
        // Build while the running deploy serves: a failed build leaves it untouched.
        built = await build();
        app = await this.o.store.getApp(name);
      }
      if (app.state === 'running') {
        progress('draining requests and stopping the running app');
        await this.runs.sleep(name, 'redeploy');
        app = await this.o.store.getApp(name);
        if (app.state === 'running') {
          // Placed under another control plane: not ours to drain.
          await this.stopApp(name);
          await this.volumeApi.control.release(name);
          await this.runs.purgeStale(name);
          app = await this.o.store.transition(name, 'running', 'asleep', { vmId: null, hostPort: null });
        }
      }
      const prev = app;
      await this.o.store.transition(name, ['created', 'asleep', 'failed'], 'building', { error: null });
      this.route(await this.o.store.getApp(name));
      try {
        built ??= await build();
        const deploy = await this.o.store.addDeploy({ id: built.deployId, app: name, imagePath: built.image, imageBytes: built.bytesAllocated, runConfig: opts.egress ? { ...built.run, egress: opts.egress } : built.run });
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

  // Volumes: src/control/volume-api.ts (ControlService documents them).
  listVolumes = () => this.volumeApi.list();
  resizeVolume = (name: string, sizeBytes: number) => this.volumeApi.resize(name, sizeBytes);
  removeVolume = (name: string) => this.volumeApi.remove(name);
  restoreVolume = (name: string, node: string, backupId?: string) => this.volumeApi.restore(name, node, backupId);
  moveVolume = (name: string, to: string) => this.volumeApi.move(name, to);

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
    return followLogs(async () => {
      const m = this.o.cluster.get(this.placed.get(name)?.node ?? (await this.o.store.findApp(name))?.node ?? null);
      return m && m.state === 'up' ? m.api.logs(name).catch(() => '') : '';
    }, opts);
  }

  async metrics(): Promise<{ contentType: string; body: string }> {
    const apps = await this.o.store.listApps();
    const seeds = await this.o.store.listSeeds();
    const r = await this.metrics_.render(apps, seeds, this.o.cluster.list(), this.o.replication.stats);
    // The in-process node's own metrics (transfers, VMs, cache) follow the control plane's.
    for (const m of this.o.cluster.all()) if (m.agent) r.body += await m.agent.renderMetrics();
    return r;
  }

  /** A node's heartbeat: record it; answer with VMs it runs that are placed elsewhere (stop them). A draining one's apps sleep first (src/control/drain.ts). */
  heartbeat(st: NodeStatus): Promise<HeartbeatResponse> {
    if (!st.draining) return this.fleet.heartbeat(st);
    return drainNode({ cluster: this.o.cluster, placements: this.placed, fleet: this.fleet, runs: this.runs, log: this.o.log, lock: (n, fn) => this.lock(n, fn) }, st);
  }

  async nodes(): Promise<NodeInfo[]> {
    return this.o.cluster.list();
  }

  async seedHolders(): Promise<Record<string, string[]>> {
    const out: Record<string, string[]> = {};
    const members = this.o.cluster.all().filter((m) => m.state === 'up');
    for (const s of await this.o.store.listSeeds()) out[s.id] = members.filter((m) => m.hasSeed(s.id)).map((m) => m.name);
    return out;
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
          // Graceful: drain (the router closed first and waited), SIGTERM, grace; no bake.
          await this.runs.sleep(name, 'shutdown').catch((err) => this.o.log.warn({ app: name, err: asThawError(err).message }, 'graceful stop failed'));
          await this.stopApp(name);
          await this.o.store.transition(name, ['running', 'sleeping', 'waking'], 'asleep', { vmId: null, hostPort: null }).catch(() => {});
          await this.volumeApi.control.release(name);
          await this.volumeApi.backups.settled();
          await this.runs.purgeStale(name);
        }),
      ),
    );
  }
}
