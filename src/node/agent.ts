// A node agent: one host's VMs and seed cache, behind the NodeApi the control
// plane calls (in-process for `thaw up`'s local node, over HTTP for `thaw
// node`). It owns HOW: thawing or cold-booting (pulling a seed it lacks first),
// baking, and keeping its seed folder under a byte cap (LRU; seeds a VM uses are
// never evicted). Seed pulls and uploads are src/node/seed-transfer.ts, volume
// backups and moves src/node/volume-transfer.ts.
// Wakes pass admission control (src/node/admission.ts) and run under one
// overall deadline (src/lifecycle/deadline.ts).
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import { seedsDir } from '../lifecycle/bake.ts';
import { WAKE_DEADLINE_MS, wakeDeadline } from '../lifecycle/deadline.ts';
import type { WakeRow } from '../store/types.ts';
import { Admission, defaultWakeSlots } from './admission.ts';
import { SeedCache } from '../seed/cache.ts';
import type { SeedStore } from '../seed/s3.ts';
import type { NodeEvent, NodeSleepRequest, NodeSleepResponse, NodeStatus, NodeUploadResponse, NodeWakeRequest, NodeWakeResponse, SeedRef, VolumePacked, VolumeTransferResult } from '../wire/node.ts';
import type { LocalNode } from './local.ts';
import { NodeMetrics } from './metrics.ts';
import { SeedTransfers } from './seed-transfer.ts';
import { withRecord } from './wake-record.ts';
import type { InProcessNode } from './types.ts';
import { VolumeTransfers } from './volume-transfer.ts';
import type { Readable } from 'node:stream';

/** Where a node finds a deploy's disk image. */
export interface ImageSource {
  ensure(app: string, deployId: string, controlPath: string): Promise<string>;
  /** The app was deleted: drop its images. */
  remove?(app: string): Promise<void>;
}

/** The in-process node shares the control plane's folder. */
export const sharedImages: ImageSource = { ensure: async (_app, _id, p) => p };

export interface NodeAgentOptions {
  node: LocalNode;
  /** Object storage for pulls and uploads; null: seeds stay on this node. */
  s3: SeedStore | null;
  /** Byte cap of the seed folder. */
  capBytes: number;
  /** Most VMs at once. */
  capacity: number;
  images: ImageSource;
  log: Logger;
  /** Most wakes at once (--max-concurrent-wakes); default: one per CPU. */
  maxConcurrentWakes?: number;
  /** Overall deadline of one wake from admission (ms, --wake-deadline). */
  wakeDeadlineMs?: number;
}

/** Options of one wake call. */
export interface WakeCallOptions {
  /** Aborted when nobody waits for the wake any more: a still-queued wake is dropped (WAKE_CANCELLED). */
  signal?: AbortSignal;
}

export class NodeAgent implements InProcessNode {
  readonly cache: SeedCache;
  readonly metrics = new NodeMetrics();
  readonly admission: Admission;
  /** Events not yet delivered (heartbeat) or handed to onEvent (in-process). */
  private events: NodeEvent[] = [];
  private readonly seeds: SeedTransfers;
  readonly volumes: VolumeTransfers;
  /** Wakes waiting for a slot, by app: aborting drops one from the queue. */
  private readonly queuedWakes = new Map<string, AbortController>();
  /** Aborted when the node shuts down: every started wake stops at its next step and undoes itself. */
  private readonly closing = new AbortController();
  /** Started wakes (admitted, running the lifecycle), so a shutdown can wait for them to unwind. */
  private readonly started = new Set<Promise<unknown>>();
  /** app -> the seed its VM was woken with (thawed from it, or cold-booted on its disk copy). */
  private readonly seedOfApp = new Map<string, string>();
  /** Seeds to delete once no VM uses them any more. */
  private readonly deferred = new Set<string>();
  /** Set by an in-process control plane: events are delivered at once instead of queued. */
  onEvent: ((e: NodeEvent) => void) | null = null;

  constructor(private readonly o: NodeAgentOptions) {
    this.admission = new Admission(o.maxConcurrentWakes ?? defaultWakeSlots());
    this.admission.onAdmit = (ms) => this.metrics.wakeQueueSeconds.observe(ms / 1000);
    this.cache = new SeedCache({ root: seedsDir(o.node.ctx), capBytes: o.capBytes, ttlMs: Number.MAX_SAFE_INTEGER, inUse: (id) => this.inUse(id) });
    this.seeds = new SeedTransfers({ node: o.node, s3: o.s3, cache: this.cache, metrics: this.metrics, log: o.log, onEvicted: (id) => this.evicted(id) });
    this.volumes = new VolumeTransfers({ node: o.node, s3: o.s3, log: o.log });
    o.node.onAppExit = (app, e) => {
      const run = o.node.running.get(app);
      this.emit({ type: 'app_exit', app, vmId: run?.vm.id ?? '', code: e.code ?? null, signal: e.signal ?? null });
    };
  }

  get name(): string {
    return this.o.node.name;
  }

  get node(): LocalNode {
    return this.o.node;
  }

  get capacity(): number {
    return this.o.capacity;
  }

  private emit(e: NodeEvent): void {
    if (this.onEvent) this.onEvent(e);
    else this.events.push(e);
  }

  /** A running VM was thawed from the seed or may have its disk copy as backing file. */
  private inUse(seedId: string): boolean {
    return [...this.seedOfApp.values()].includes(seedId) || [...this.o.node.running.values()].some((r) => r.seedId === seedId);
  }

  /** The app's VM is gone: a seed whose deletion waited for it goes now. */
  private async released(app: string): Promise<void> {
    const id = this.seedOfApp.get(app);
    this.seedOfApp.delete(app);
    if (id && this.deferred.has(id) && !this.inUse(id)) {
      this.deferred.delete(id);
      await this.deleteSeed(id);
    }
  }

  async start(): Promise<void> {
    const r = await this.cache.scan();
    await this.volumes.sweep();
    if (r.removed.length || r.evicted.length) this.o.log.info(r, 'seed cache scanned');
  }

  hasSeed(seedId: string | null): boolean {
    return this.o.node.hasSeed(seedId);
  }

  runningCount(): number {
    return this.o.node.running.size;
  }

  wakeSlots(): number {
    return this.admission.limit;
  }

  /** 'queued' while the app's wake waits for a slot, 'running' while it runs, else null. */
  wakeState(app: string): 'queued' | 'running' | null {
    return this.admission.state(app);
  }

  seedCount(): number {
    return this.cache.list().length;
  }

  seedIds(): string[] {
    return this.cache.list().map((s) => s.seedId);
  }

  async wake(req: NodeWakeRequest, call: WakeCallOptions = {}): Promise<NodeWakeResponse> {
    // The control plane placed this wake here, so a VM this node still runs for the app is stale
    // (left from before the node was marked down): delete it first.
    if (this.o.node.running.has(req.app)) {
      this.o.log.warn({ app: req.app }, 'deleting a stale VM of the app before waking it again');
      await this.stop(req.app);
    }
    let t = performance.now();
    const image = await this.o.images.ensure(req.app, req.deployId, req.image);
    const imageMs = performance.now() - t;
    let extra: { seedSource: 'local' | 'pulled'; seedUnavailable?: string } = { seedSource: 'local' };
    t = performance.now();
    if (req.seed && !this.o.node.hasSeed(req.seed.id)) extra = await this.seeds.pullForWake(req.seed);
    const pullMs = performance.now() - t;
    let ticket;
    const drop = new AbortController();
    const onAbort = () => drop.abort();
    call.signal?.addEventListener('abort', onAbort, { once: true });
    if (call.signal?.aborted) drop.abort();
    this.queuedWakes.set(req.app, drop);
    try {
      ticket = await this.admission.acquire(req.app, drop.signal);
    } catch (err) {
      this.metrics.wakesDropped.inc();
      throw withRecord(this.name, req, asThawError(err), { outcome: 'cancelled', queuedMs: Number(asThawError(err).details?.queued_ms ?? 0) });
    } finally {
      call.signal?.removeEventListener('abort', onAbort);
      if (this.queuedWakes.get(req.app) === drop) this.queuedWakes.delete(req.app);
    }
    const deadline = wakeDeadline(this.o.wakeDeadlineMs ?? WAKE_DEADLINE_MS, req.app);
    const signal = AbortSignal.any([deadline.signal, this.closing.signal]);
    let out;
    try {
      const running = this.o.node.wake({ app: req.app, deployId: req.deployId, image, seedId: req.seed?.id ?? null, env: req.env, run: req.run, volume: req.volume ?? null, signal }, extra);
      this.started.add(running);
      out = await running.finally(() => this.started.delete(running));
    } catch (err) {
      const e = asThawError(err);
      const rec = e.details?.record as WakeRow | undefined;
      if (rec) rec.queuedMs = ticket.queuedMs;
      if (rec) rec.placement = req.placement ?? null;
      throw e;
    } finally {
      deadline.clear();
      ticket.release();
    }
    if (req.seed) this.seedOfApp.set(req.app, req.seed.id);
    if (out.record.bootMode === 'snapshot' && req.seed) this.cache.touch(req.seed.id);
    // The wake's wall clock includes fetching what it needed and waiting for a slot.
    const record = { ...out.record, placement: req.placement ?? null, queuedMs: ticket.queuedMs, wallMs: Math.round(out.record.wallMs + imageMs + pullMs + ticket.queuedMs), stages: { ...out.record.stages } };
    if (imageMs >= 1) record.stages.image_fetch = Math.round(imageMs);
    if (extra.seedSource === 'pulled' || extra.seedUnavailable) record.stages.seed_pull = Math.round(pullMs);
    return { record, address: out.run.vm.appAddress, vmId: out.run.vm.id };
  }

  /** Drop the app's wake if it still waits for a slot (nobody waits for it any more); a started wake goes on. */
  cancelQueuedWake(app: string): void {
    if (this.admission.state(app) === 'queued') this.queuedWakes.get(app)?.abort();
  }

  /** Prometheus text of this node's metrics. */
  async renderMetrics(): Promise<string> {
    this.metrics.runningVms.set(this.o.node.running.size);
    this.metrics.cacheBytes.set(this.cache.totalBytes());
    const w = this.admission.stats();
    this.metrics.wakeSlots.set(w.limit);
    this.metrics.wakesRunning.set(w.running);
    this.metrics.wakesQueued.set(w.queued);
    return this.metrics.registry.metrics();
  }

  private evicted(seedId: string): void {
    this.o.log.info({ seedId }, 'seed evicted from the node cache');
    this.emit({ type: 'seed_evicted', seedId });
  }

  async sleep(req: NodeSleepRequest): Promise<NodeSleepResponse> {
    const opts = { haveSeed: req.haveSeed, ...(req.bake !== undefined ? { bake: req.bake } : {}), ...(req.graceMs !== undefined ? { graceMs: req.graceMs } : {}) };
    const r = await this.o.node.sleep(req.app, opts).finally(() => this.released(req.app));
    if (r === null) return { baked: null, error: null, gone: true };
    const backup = req.backupId ? await this.volumes.packForSleep(req.app, req.backupId, r.stages) : null;
    const stopped = { exit: r.exit, shutdownMs: r.shutdownMs, stages: r.stages, backup };
    if (!r.baked) return { baked: null, error: r.error, ...stopped };
    const f = r.baked.manifest.files;
    for (const id of await this.cache.add(r.baked.seedId)) this.evicted(id);
    return {
      baked: {
        seedId: r.baked.seedId,
        bytesApparent: f['mem.ram'].bytes + f['state.bin'].bytes + f['disk.img'].bytes,
        bytesAllocated: f['mem.ram'].allocated + f['state.bin'].allocated + f['disk.img'].allocated,
        manifestSha256: r.baked.manifestSha256,
      },
      error: r.error,
      ...stopped,
    };
  }

  async stop(app: string, vmId?: string): Promise<void> {
    const run = this.o.node.running.get(app);
    if (!run || (vmId && run.vm.id !== vmId)) return;
    await this.o.node.stop(app);
    await this.released(app);
  }

  logs(app: string): Promise<string> {
    return this.o.node.logs(app);
  }

  async forgetApp(app: string): Promise<void> {
    await this.stop(app);
    await this.o.node.deleteLogs(app);
    await this.o.images.remove?.(app);
  }

  deleteVolume(app: string): Promise<void> {
    return this.o.node.deleteVolume(app);
  }

  /** Pack and upload a seed this node holds (one upload per seed at a time). */
  uploadSeed(seed: SeedRef): Promise<NodeUploadResponse> {
    return this.seeds.upload(seed);
  }

  // ---- volumes (src/node/volume-transfer.ts; NodeApi documents them) ---------
  packVolume = (app: string, id: string): Promise<VolumePacked> => this.volumes.pack(app, id);
  uploadVolumeBackup = (app: string, id: string, key: string, sha256: string): Promise<VolumeTransferResult> => this.volumes.upload(app, id, key, sha256);
  readPackedVolume = async (app: string, id: string): Promise<Readable> => (await this.volumes.read(app, id)).stream;
  dropPackedVolume = (app: string, id: string): Promise<void> => this.volumes.drop(app, id);
  importVolume = (app: string, body: Readable, sha256: string): Promise<VolumeTransferResult> => this.volumes.import(app, body, sha256);
  restoreVolume = (app: string, key: string, sha256: string): Promise<VolumeTransferResult> => this.volumes.restore(app, key, sha256);

  /** Deleted now, or once the VM that uses it is gone. */
  async deleteSeed(seedId: string): Promise<void> {
    if (this.inUse(seedId)) {
      this.deferred.add(seedId);
      return;
    }
    await this.cache.remove(seedId).catch(() => {});
    await this.o.node.deleteSeed(seedId);
  }

  /** The heartbeat body; takes the queued events (put them back with requeue() if it was not delivered). */
  status(url: string): NodeStatus {
    const events = this.events;
    this.events = [];
    return {
      name: this.name,
      url,
      capacity: this.o.capacity,
      running: [...this.o.node.running.values()].map((r) => ({ app: r.app, vmId: r.vm.id })),
      seeds: this.seedIds(),
      events,
      wakes: { ...this.admission.stats(), queuedApps: this.admission.queuedKeys() },
    };
  }

  requeue(events: NodeEvent[]): void {
    this.events = [...events, ...this.events];
  }

  /** Delete every VM (shutdown, or a node that lost its control plane). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.o.node.running.keys()].map((app) => this.stop(app)));
  }

  /**
   * Shutting down: no wake is admitted any more, queued ones fail, and every started wake
   * (a cold boot or a thaw in progress) is aborted with SHUTTING_DOWN at its next step, which
   * deletes its VM. Resolves once they have all unwound. Without this a wake in flight kept
   * its VMM, its HTTP request and so the whole node process alive after SIGTERM.
   */
  async abortWakes(): Promise<void> {
    this.admission.close();
    if (!this.closing.signal.aborted) this.closing.abort(new ThawError('SHUTTING_DOWN', 'the node is shutting down'));
    await Promise.allSettled([...this.started]);
  }

  async close(): Promise<void> {
    await this.abortWakes();
    await this.stopAll();
    await this.o.node.ctx.net?.shutdown(); // the pool's ready namespaces, then the host table
    this.o.s3?.destroy();
  }
}
