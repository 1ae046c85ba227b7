// Test helpers for the control plane: a fake in-process node (no VMs). Used
// by the scheduler, service and replication tests only; never as proof that a
// thaw works (test/vm/ boots real VMs).
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { ThawError } from '../errors.ts';
import type { InProcessNode } from '../node/types.ts';
import type { NodeEvent, NodeSleepRequest, NodeWakeRequest, NodeWakeResponse, SeedRef } from '../wire/node.ts';

let vmSeq = 0;

/** An in-process node without VMs: wakes, bakes and seeds are bookkeeping. */
export class FakeNode implements InProcessNode {
  capacity = 4;
  onEvent: ((e: NodeEvent) => void) | null = null;
  readonly running = new Map<string, string>();
  readonly seeds = new Set<string>();
  readonly calls: string[] = [];
  unreachable = false;
  wakeDelayMs = 0;
  lastWake: NodeWakeRequest | null = null;
  lastSleep: NodeSleepRequest | null = null;
  /** What the app's SIGTERM handler exits with on the next sleeps. */
  exitCode = 0;
  /** Wake slots reported to the scheduler (admission control); null: not reported. */
  slots: number | null = null;
  /** The next wake fails with this error (its details may carry a record). */
  failNext: ThawError | null = null;
  /** seedOutcome of a cold wake's record (what the node proved about the seed). */
  coldSeedOutcome = 'dropped:gate-failed';

  constructor(readonly name: string) {}
  hasSeed(id: string | null) { return !!id && this.seeds.has(id); }
  runningCount() { return this.running.size; }
  seedCount() { return this.seeds.size; }
  seedIds() { return [...this.seeds]; }
  async renderMetrics() { return ''; }
  wakeSlots() { return this.slots ?? Infinity; }

  async wake(req: NodeWakeRequest): Promise<NodeWakeResponse> {
    this.calls.push(`wake ${req.app}`);
    this.lastWake = req;
    if (this.unreachable) throw new ThawError('NODE_UNREACHABLE', `node ${this.name} is gone`);
    await new Promise((r) => setTimeout(r, this.wakeDelayMs));
    const fail = this.failNext;
    this.failNext = null;
    if (fail) throw fail;
    const vmId = `${this.name}-vm${++vmSeq}`;
    this.running.set(req.app, vmId);
    const had = !!req.seed && this.seeds.has(req.seed.id);
    const pulled = !!req.seed && !had && req.seed.replicated;
    if (pulled) this.seeds.add(req.seed!.id);
    const snapshot = had || pulled;
    return {
      vmId,
      address: { host: '127.0.0.1', port: 40000 + vmSeq },
      record: {
        id: `w${vmSeq}`, app: req.app, at: new Date().toISOString(), wallMs: 10, bootMode: snapshot ? 'snapshot' : 'cold', bootMs: 5, gateMs: snapshot ? 1 : null,
        appStartMs: 3, pid: 100 + vmSeq, fsErrors: 0, fallbackReason: req.seed && !snapshot ? 'seed-unavailable: test' : null, node: this.name,
        seedSource: pulled ? 'pulled' : snapshot ? 'local' : 'none', placement: req.placement ?? null, stages: {},
        seedOutcome: snapshot ? 'used' : req.seed ? this.coldSeedOutcome : 'none',
      },
    };
  }

  async sleep(req: NodeSleepRequest) {
    this.calls.push(`sleep ${req.app}`);
    this.lastSleep = req;
    this.running.delete(req.app);
    const backup = req.backupId && this.objects && this.volumeData.has(req.app) ? await this.packVolume(req.app, req.backupId) : null;
    const stopped = { exit: { code: this.exitCode, signal: null }, shutdownMs: 2, stages: { stop_app: 2 }, backup };
    if (req.haveSeed || req.bake === false) return { baked: null, error: null, ...stopped };
    const seedId = `seed-${this.name}-${++vmSeq}`;
    this.seeds.add(seedId);
    return { baked: { seedId, bytesApparent: 300, bytesAllocated: 100, manifestSha256: 'ab'.repeat(32) }, error: null, ...stopped };
  }

  async stop(app: string, vmId?: string) {
    this.calls.push(`stop ${app}`);
    if (!vmId || this.running.get(app) === vmId) this.running.delete(app);
  }
  async logs() { return ''; }
  async forgetApp() {}
  async deleteVolume(app: string) {
    this.calls.push(`delete-volume ${app}`);
  }
  uploadFails = false;
  async uploadSeed(seed: SeedRef) {
    this.calls.push(`upload ${seed.id}`);
    if (this.uploadFails) throw new ThawError('S3_ERROR', 'object storage is down');
    return { bytesCompressed: 10, ms: 1 };
  }
  async deleteSeed(id: string) {
    this.calls.push(`delete ${id}`);
    this.seeds.delete(id);
  }
  /** Volume files on this fake node: app -> content; packed backups: app/id -> content. */
  readonly volumeData = new Map<string, string>();
  readonly packed = new Map<string, string>();
  /** A shared fake object storage for volume backups: key -> content (null: the node has none). */
  objects: Map<string, string> | null = null;
  private pack(app: string, id: string) {
    if (this.running.has(app)) throw new ThawError('VOLUME_CONFLICT', `${app} runs on ${this.name}`);
    const data = this.volumeData.get(app);
    if (data === undefined) throw new ThawError('VOLUME_NOT_FOUND', `no volume file of ${app} on ${this.name}`);
    this.packed.set(`${app}/${id}`, data);
    return { sha256: sha(data), bytes: data.length, apparentBytes: 1 << 30, ms: 1 };
  }
  async packVolume(app: string, id: string) {
    this.calls.push(`pack-volume ${app} ${id}`);
    return this.pack(app, id);
  }
  async uploadVolumeBackup(app: string, id: string, key: string) {
    this.calls.push(`upload-volume ${app} ${id}`);
    const data = this.packed.get(`${app}/${id}`);
    this.packed.delete(`${app}/${id}`);
    if (!this.objects) throw new ThawError('VOLUME_BACKUP_UNAVAILABLE', 'no object storage');
    if (data === undefined) throw new ThawError('VOLUME_BACKUP_NOT_FOUND', 'not packed');
    this.objects.set(key, data);
    return { bytes: data.length, ms: 1 };
  }
  async readPackedVolume(app: string, id: string) {
    return Readable.from([this.packed.get(`${app}/${id}`) ?? '']);
  }
  async dropPackedVolume(app: string, id: string) {
    this.packed.delete(`${app}/${id}`);
  }
  async importVolume(app: string, body: Readable, sha256: string) {
    this.calls.push(`import-volume ${app}`);
    let data = '';
    for await (const c of body) data += String(c);
    if (sha(data) !== sha256) throw new ThawError('VOLUME_BACKUP_CORRUPT', 'hash mismatch');
    this.volumeData.set(app, data);
    return { bytes: data.length, ms: 1 };
  }
  async restoreVolume(app: string, key: string, sha256: string) {
    this.calls.push(`restore-volume ${app} ${key}`);
    const data = this.objects?.get(key);
    if (data === undefined) throw new ThawError('VOLUME_BACKUP_NOT_FOUND', key);
    if (sha(data) !== sha256) throw new ThawError('VOLUME_BACKUP_CORRUPT', 'hash mismatch');
    this.volumeData.set(app, data);
    return { bytes: data.length, ms: 1 };
  }
  async close() {}
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
