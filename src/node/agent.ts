// A node agent: one host's VMs and seed cache, behind the NodeApi the control
// plane calls (in-process for `thaw up`'s local node, over HTTP for `thaw
// node`). It owns HOW: pulling a seed it lacks (streamed, verified, renamed into
// place), thawing or cold-booting, baking, uploading its seeds, and keeping its
// seed folder under a byte cap (LRU; seeds a VM uses are never evicted).
// Wakes pass admission control (src/node/admission.ts) and run under one
// overall deadline (src/lifecycle/deadline.ts).
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import { seedsDir } from '../lifecycle/bake.ts';
import { writeVerified } from '../lifecycle/verify.ts';
import { WAKE_DEADLINE_MS, wakeDeadline } from '../lifecycle/deadline.ts';
import type { WakeRow } from '../store/types.ts';
import { Admission, defaultWakeSlots } from './admission.ts';
import { SeedCache } from '../seed/cache.ts';
import { sha256File } from '../seed/files.ts';
import type { SeedStore } from '../seed/s3.ts';
import type { NodeEvent, NodeSleepRequest, NodeSleepResponse, NodeStatus, NodeUploadResponse, NodeWakeRequest, NodeWakeResponse, SeedRef } from '../wire/node.ts';
import type { LocalNode } from './local.ts';
import { NodeMetrics, type Direction } from './metrics.ts';
import type { InProcessNode } from './types.ts';
import path from 'node:path';

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
  private readonly uploads = new Map<string, Promise<NodeUploadResponse>>();
  private readonly pulls = new Map<string, Promise<{ ms: number; bytes: number }>>();
  /** Wakes waiting for a slot, by app: aborting drops one from the queue. */
  private readonly queuedWakes = new Map<string, AbortController>();
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
    if (req.seed && !this.o.node.hasSeed(req.seed.id)) extra = await this.pullForWake(req.seed);
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
      throw this.withRecord(req, asThawError(err), { outcome: 'cancelled', queuedMs: Number(asThawError(err).details?.queued_ms ?? 0) });
    } finally {
      call.signal?.removeEventListener('abort', onAbort);
      if (this.queuedWakes.get(req.app) === drop) this.queuedWakes.delete(req.app);
    }
    const deadline = wakeDeadline(this.o.wakeDeadlineMs ?? WAKE_DEADLINE_MS, req.app);
    let out;
    try {
      out = await this.o.node.wake({ app: req.app, deployId: req.deployId, image, seedId: req.seed?.id ?? null, env: req.env, run: req.run, volume: req.volume ?? null, signal: deadline.signal }, extra);
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

  /** A wake that ended before it started (dropped from the queue): the error carries its record. */
  private withRecord(req: NodeWakeRequest, e: ThawError, r: { outcome: NonNullable<WakeRow['outcome']>; queuedMs: number }): ThawError {
    const record: WakeRow = {
      id: randomUUID(), app: req.app, at: new Date().toISOString(), wallMs: r.queuedMs, bootMode: req.seed ? 'snapshot' : 'cold', bootMs: 0, gateMs: null,
      appStartMs: 0, pid: null, fsErrors: 0, fallbackReason: `${e.code}: ${e.message}`.slice(0, 1000), node: this.name, seedSource: req.seed ? 'local' : 'none',
      placement: req.placement ?? null, queuedMs: r.queuedMs, seedOutcome: req.seed ? `kept:${e.code === 'SHUTTING_DOWN' ? 'shutdown' : 'cancelled'}` : 'none', outcome: r.outcome, stages: {},
    };
    return new ThawError(e.code, e.message, { cause: e, details: { ...e.details, record } });
  }

  /** Pull a seed for a wake; a failure is not an error but the wake's fallback reason. */
  private async pullForWake(seed: SeedRef): Promise<{ seedSource: 'local' | 'pulled'; seedUnavailable?: string }> {
    if (!this.o.s3 || !seed.replicated) {
      return { seedSource: 'local', seedUnavailable: `seed-unavailable: seed ${seed.id} is not on node ${this.name} and has no replicated copy` };
    }
    try {
      await this.pull(seed);
      return { seedSource: 'pulled' };
    } catch (err) {
      const e = asThawError(err);
      return { seedSource: 'local', seedUnavailable: `seed-unavailable: ${e.code}: ${e.message}` };
    }
  }

  /** Fetch a seed from object storage: streamed, unpacked beside the cache, every file verified, renamed into place. */
  async pull(seed: SeedRef): Promise<{ ms: number; bytes: number }> {
    const running = this.pulls.get(seed.id);
    if (running) return running;
    const p = this.pullOnce(seed).finally(() => this.pulls.delete(seed.id));
    this.pulls.set(seed.id, p);
    return p;
  }

  private async pullOnce(seed: SeedRef): Promise<{ ms: number; bytes: number }> {
    const s3 = this.o.s3;
    if (!s3) throw new ThawError('SEED_MISSING', 'no object storage configured on this node');
    const dir = this.o.node.seedDir(seed.id);
    this.o.log.info({ seedId: seed.id, app: seed.app }, 'seed pull started');
    const r = await this.transfer('pull', seed.id, (onProgress) => s3.pull(s3.key(seed.app, seed.id), dir, { onProgress }));
    // The object matched its own manifest; it must also be the seed the control plane recorded.
    const sha = await sha256File(path.join(dir, 'manifest.json'));
    if (sha !== seed.manifestSha256) {
      await this.o.node.deleteSeed(seed.id);
      throw new ThawError('SEED_CORRUPT', `object for seed ${seed.id} holds another manifest (${sha.slice(0, 12)}…, expected ${seed.manifestSha256.slice(0, 12)}…)`);
    }
    await writeVerified(dir); // unpack verified every byte
    for (const id of await this.cache.add(seed.id)) this.evicted(id);
    this.o.log.info({ seedId: seed.id, bytes: r.bytesCompressed, ms: r.ms }, 'seed pulled');
    return { ms: r.ms, bytes: r.bytesCompressed };
  }

  /** Run a transfer with progress logs (every 64 MiB compressed) and metrics. */
  private async transfer<T extends { ms: number }>(dir: Direction, seedId: string, fn: (onProgress: (bytes: number) => void) => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const onProgress = this.metrics.progress(dir, (bytes) => this.o.log.info({ seedId, bytes }, `seed ${dir} progress`));
    try {
      const r = await fn(onProgress);
      this.metrics.done(dir, true, r.ms);
      return r;
    } catch (err) {
      this.metrics.done(dir, false, performance.now() - t0);
      throw err;
    }
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
    const stopped = { exit: r.exit, shutdownMs: r.shutdownMs, stages: r.stages };
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

  /** One upload per seed at a time: a retry must not rewrite the object while the first upload completes. */
  uploadSeed(seed: SeedRef): Promise<NodeUploadResponse> {
    const running = this.uploads.get(seed.id);
    if (running) return running;
    const p = this.uploadOnce(seed).finally(() => this.uploads.delete(seed.id));
    this.uploads.set(seed.id, p);
    return p;
  }

  private async uploadOnce(seed: SeedRef): Promise<NodeUploadResponse> {
    const s3 = this.o.s3;
    if (!s3) throw new ThawError('S3_ERROR', `node ${this.name} has no object storage configured`);
    if (!this.o.node.hasSeed(seed.id)) throw new ThawError('SEED_MISSING', `seed ${seed.id} is not on node ${this.name}`);
    this.o.log.info({ seedId: seed.id }, 'seed upload started');
    const r = await this.transfer('upload', seed.id, (onProgress) => s3.upload(this.o.node.seedDir(seed.id), s3.key(seed.app, seed.id), { onProgress }));
    this.o.log.info({ seedId: seed.id, bytes: r.bytesCompressed, ms: r.ms }, 'seed uploaded');
    return { bytesCompressed: r.bytesCompressed, ms: r.ms };
  }

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

  async close(): Promise<void> {
    this.admission.close();
    await this.stopAll();
    await this.o.node.ctx.net?.shutdown(); // the pool's ready namespaces, then the host table
    this.o.s3?.destroy();
  }
}
