// Seed replication through S3-compatible object storage, and the node's seed
// cache (LRU under a byte cap, TTL for abandoned seeds). Object storage is the
// durable copy: a bake uploads in the background (never delaying the sleep),
// a wake on a node without the seed pulls and verifies it first.
import type { Logger } from 'pino';
import { asThawError } from '../errors.ts';
import { seedsDir } from '../lifecycle/bake.ts';
import { writeVerified } from '../lifecycle/verify.ts';
import type { LocalNode } from '../node/local.ts';
import { SeedCache } from '../seed/cache.ts';
import { SeedStore } from '../seed/s3.ts';
import type { SeedRow, Store } from '../store/types.ts';

export interface ReplicationOptions {
  /** Object storage; null keeps seeds local only. */
  s3: { endpoint?: string; bucket: string; region?: string } | null;
  capBytes: number;
  ttlMs: number;
  store: Store;
  node: LocalNode;
  log: Logger;
  /** Called when a seed is gone for good (evicted without a durable copy, TTL, purge). */
  onSeedGone: (seed: SeedRow) => Promise<void>;
}

export class Replication {
  readonly s3: SeedStore | null;
  readonly cache: SeedCache;
  private readonly pending = new Map<string, SeedRow>();
  private readonly uploading = new Set<string>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly o: ReplicationOptions) {
    this.s3 = o.s3 ? new SeedStore({ ...o.s3, forcePathStyle: true }) : null;
    this.cache = new SeedCache({ root: seedsDir(o.node.ctx), capBytes: o.capBytes, ttlMs: o.ttlMs, inUse: (id) => this.inUse(id) });
  }

  private inUse(seedId: string): boolean {
    return [...this.o.node.running.values()].some((r) => r.seedId === seedId);
  }

  async start(): Promise<void> {
    await this.cache.scan();
    if (this.s3) await this.s3.ensureBucket().catch((err) => this.o.log.warn({ err: asThawError(err).message }, 'object storage unreachable; seeds stay local until it returns'));
    for (const s of await this.o.store.listSeeds()) if (this.s3 && !s.replicated && this.o.node.hasSeed(s.id)) this.pending.set(s.id, s);
    // Retry uploads that failed (object storage down) and reap abandoned seeds.
    this.timer = setInterval(() => void this.tick(), 15_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.s3?.destroy();
  }

  /** A new seed exists on this node: account for it, evict others over the cap, upload it. */
  async added(seed: SeedRow): Promise<void> {
    const evicted = await this.cache.add(seed.id);
    for (const id of evicted) await this.evicted(id);
    if (this.s3) {
      this.pending.set(seed.id, seed);
      void this.upload(seed);
    }
  }

  used(seedId: string): void {
    this.cache.touch(seedId);
  }

  private async evicted(seedId: string): Promise<void> {
    const row = (await this.o.store.listSeeds()).find((s) => s.id === seedId);
    this.o.log.info({ seedId, replicated: row?.replicated }, 'seed evicted from the node cache');
    if (row && !row.replicated) await this.o.onSeedGone(row);
  }

  private async upload(seed: SeedRow): Promise<void> {
    // One upload per seed at a time: the retry timer must not start a second one
    // that rewrites the object while the first completes (or a node reads it).
    if (!this.s3 || !this.pending.has(seed.id) || this.uploading.has(seed.id)) return;
    this.uploading.add(seed.id);
    try {
      const r = await this.s3.upload(this.o.node.seedDir(seed.id), this.s3.key(seed.app, seed.id));
      this.pending.delete(seed.id);
      const row = (await this.o.store.listSeeds()).find((s) => s.id === seed.id);
      if (row) await this.o.store.putSeed({ ...row, replicated: true, bytesCompressed: r.bytesCompressed });
      this.o.log.info({ seedId: seed.id, bytes: r.bytesCompressed, ms: r.ms }, 'seed replicated');
    } catch (err) {
      this.o.log.warn({ seedId: seed.id, err: asThawError(err).message }, 'seed upload failed; will retry');
    } finally {
      this.uploading.delete(seed.id);
    }
  }

  /** Fetch a seed this node does not hold. Throws (the wake then cold-boots). */
  async pull(seed: SeedRow): Promise<void> {
    if (!this.s3) throw new Error('no object storage configured');
    await this.s3.pull(this.s3.key(seed.app, seed.id), this.o.node.seedDir(seed.id));
    await writeVerified(this.o.node.seedDir(seed.id)); // unpack verified every byte
    for (const id of await this.cache.add(seed.id)) await this.evicted(id);
  }

  /** Delete a seed everywhere: this node and object storage. */
  async purge(seed: Pick<SeedRow, 'id' | 'app'>): Promise<void> {
    this.pending.delete(seed.id);
    await this.cache.remove(seed.id).catch(() => {});
    await this.o.node.deleteSeed(seed.id);
    if (this.s3) await this.s3.remove(this.s3.key(seed.app, seed.id)).catch((err) => this.o.log.warn({ err: asThawError(err).message }, 'could not delete seed object'));
  }

  private async tick(): Promise<void> {
    try {
      await this.tickOnce();
    } catch (err) {
      this.o.log.warn({ err: asThawError(err).message }, 'seed maintenance failed; will retry');
    }
  }

  private async tickOnce(): Promise<void> {
    for (const s of [...this.pending.values()]) await this.upload(s);
    const cutoff = Date.now() - this.o.ttlMs;
    for (const s of await this.o.store.listSeeds()) {
      if (Date.parse(s.lastUsedAt) < cutoff && !this.inUse(s.id)) {
        this.o.log.info({ seedId: s.id }, 'seed TTL expired; deleting it everywhere');
        await this.purge(s);
        await this.o.onSeedGone(s);
      }
    }
  }
}
