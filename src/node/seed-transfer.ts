// A node's seed transfers through object storage (src/seed/s3.ts): pulling a
// seed it lacks (streamed, unpacked beside the cache, every file verified,
// renamed into place) and uploading one it baked. One transfer per seed at a
// time; progress is logged every 64 MiB and counted in the node's metrics.
import path from 'node:path';
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import { writeVerified } from '../lifecycle/verify.ts';
import type { SeedCache } from '../seed/cache.ts';
import { sha256File } from '../seed/files.ts';
import type { SeedStore } from '../seed/s3.ts';
import type { NodeUploadResponse, SeedRef } from '../wire/node.ts';
import type { LocalNode } from './local.ts';
import type { Direction, NodeMetrics } from './metrics.ts';

export interface SeedTransferOptions {
  node: LocalNode;
  s3: SeedStore | null;
  cache: SeedCache;
  metrics: NodeMetrics;
  log: Logger;
  /** A seed the cache evicted to make room. */
  onEvicted: (seedId: string) => void;
}

export class SeedTransfers {
  private readonly uploads = new Map<string, Promise<NodeUploadResponse>>();
  private readonly pulls = new Map<string, Promise<{ ms: number; bytes: number }>>();

  constructor(private readonly o: SeedTransferOptions) {}

  private get name(): string {
    return this.o.node.name;
  }

  /** Pull a seed for a wake; a failure is not an error but the wake's fallback reason. */
  async pullForWake(seed: SeedRef): Promise<{ seedSource: 'local' | 'pulled'; seedUnavailable?: string }> {
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
    for (const id of await this.o.cache.add(seed.id)) this.o.onEvicted(id);
    this.o.log.info({ seedId: seed.id, bytes: r.bytesCompressed, ms: r.ms }, 'seed pulled');
    return { ms: r.ms, bytes: r.bytesCompressed };
  }

  /** Run a transfer with progress logs (every 64 MiB compressed) and metrics. */
  private async transfer<T extends { ms: number }>(dir: Direction, seedId: string, fn: (onProgress: (bytes: number) => void) => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const onProgress = this.o.metrics.progress(dir, (bytes) => this.o.log.info({ seedId, bytes }, `seed ${dir} progress`));
    try {
      const r = await fn(onProgress);
      this.o.metrics.done(dir, true, r.ms);
      return r;
    } catch (err) {
      this.o.metrics.done(dir, false, performance.now() - t0);
      throw err;
    }
  }

  /** One upload per seed at a time: a retry must not rewrite the object while the first upload completes. */
  upload(seed: SeedRef): Promise<NodeUploadResponse> {
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
}
