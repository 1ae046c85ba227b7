// A node's local seed folder: `root/<seedId>` per seed. Tracks each seed's
// allocated bytes (sparse files count what they occupy) and last use, evicts
// least recently used seeds over a byte cap, reaps seeds unused for a TTL,
// and never deletes a seed that is in use. Recency survives restarts through
// the seed folder's mtime (touch() updates it).
//
// Recency is a plain insertion-ordered Map rather than lru-cache: eviction here
// must skip in-use seeds and delete folders asynchronously, which lru-cache's
// own (synchronous, unconditional) eviction cannot express.
import { utimesSync } from 'node:fs';
import { lstat, mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { readManifest } from './files.ts';

export type EvictReason = 'lru' | 'ttl' | 'purge';

export interface SeedCacheOptions {
  root: string;
  capBytes: number;
  ttlMs: number;
  inUse: (seedId: string) => boolean;
  onEvict?: (seedId: string, reason: EvictReason) => void;
}

export interface CachedSeed { seedId: string; bytes: number; lastUsed: number }

const SEED_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function checkId(seedId: string): void {
  if (!SEED_ID.test(seedId) || seedId.includes('.partial-')) {
    throw new ThawError('INVALID_REQUEST', `invalid seed id ${JSON.stringify(seedId)}`);
  }
}

/** Bytes allocated on disk by the files of a (flat) seed folder. */
export async function allocatedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const ent of await readdir(dir, { withFileTypes: true })) {
    const st = await lstat(path.join(dir, ent.name));
    total += st.blocks * 512;
  }
  return total;
}

export class SeedCache {
  /** Least recently used first. */
  private readonly seeds = new Map<string, { bytes: number; lastUsed: number }>();

  constructor(private readonly opts: SeedCacheOptions) {}

  /** Folder of a seed (whether or not it is cached). */
  dir(seedId: string): string {
    checkId(seedId);
    return path.join(this.opts.root, seedId);
  }

  has(seedId: string): boolean {
    return this.seeds.has(seedId);
  }

  /** Mark a seed as just used; false when it is not cached. */
  touch(seedId: string, now = Date.now()): boolean {
    const entry = this.seeds.get(seedId);
    if (!entry) return false;
    this.seeds.delete(seedId);
    this.seeds.set(seedId, { ...entry, lastUsed: now });
    try {
      utimesSync(this.dir(seedId), now / 1000, now / 1000);
    } catch {
      // recency on disk is best effort; memory is authoritative while running
    }
    return true;
  }

  /**
   * Register a seed folder that just appeared (bake or pull), as most recently
   * used, then evict least recently used idle seeds until under the cap.
   * Returns the evicted seed ids.
   */
  async add(seedId: string, now = Date.now()): Promise<string[]> {
    const dir = this.dir(seedId);
    const isDir = await stat(dir).then((st) => st.isDirectory(), () => false);
    if (!isDir) throw new ThawError('SEED_MISSING', `no seed folder ${dir}`);
    const bytes = await allocatedBytes(dir);
    this.seeds.delete(seedId);
    this.seeds.set(seedId, { bytes, lastUsed: now });
    return this.evictToCap(seedId);
  }

  /** Purge a seed (tracked or not) from disk. */
  async remove(seedId: string): Promise<void> {
    const dir = this.dir(seedId);
    this.seeds.delete(seedId);
    await rm(dir, { recursive: true, force: true });
    this.opts.onEvict?.(seedId, 'purge');
  }

  /** Delete seeds not used for ttlMs (unless in use). Returns their ids. */
  async reapExpired(now = Date.now()): Promise<string[]> {
    const expired = [...this.seeds].filter(([id, e]) => now - e.lastUsed >= this.opts.ttlMs && !this.opts.inUse(id)).map(([id]) => id);
    for (const id of expired) await this.evict(id, 'ttl');
    return expired;
  }

  /**
   * Rebuild state from disk (at start). Folders named `*.partial-*` or
   * without a valid manifest.json are garbage and removed. Recency comes from
   * folder mtimes. Evicts down to the cap afterwards.
   */
  async scan(): Promise<{ seeds: number; removed: string[]; evicted: string[] }> {
    await mkdir(this.opts.root, { recursive: true });
    const found: [string, { bytes: number; lastUsed: number }][] = [];
    const removed: string[] = [];
    for (const ent of await readdir(this.opts.root, { withFileTypes: true })) {
      if (!ent.isDirectory()) continue;
      const dir = path.join(this.opts.root, ent.name);
      const valid = SEED_ID.test(ent.name) && !ent.name.includes('.partial-')
        && (await readManifest(dir).then(() => true, () => false));
      if (!valid) {
        await rm(dir, { recursive: true, force: true });
        removed.push(ent.name);
        continue;
      }
      const st = await stat(dir);
      found.push([ent.name, { bytes: await allocatedBytes(dir), lastUsed: st.mtimeMs }]);
    }
    found.sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    this.seeds.clear();
    for (const [id, e] of found) this.seeds.set(id, e);
    const evicted = await this.evictToCap();
    return { seeds: this.seeds.size, removed, evicted };
  }

  totalBytes(): number {
    let sum = 0;
    for (const e of this.seeds.values()) sum += e.bytes;
    return sum;
  }

  /** Cached seeds, most recently used first. */
  list(): CachedSeed[] {
    return [...this.seeds].reverse().map(([seedId, e]) => ({ seedId, ...e }));
  }

  private async evictToCap(keep?: string): Promise<string[]> {
    const evicted: string[] = [];
    let total = this.totalBytes();
    for (const [id, e] of [...this.seeds]) {
      if (total <= this.opts.capBytes) break;
      if (id === keep || this.opts.inUse(id)) continue;
      await this.evict(id, 'lru');
      total -= e.bytes;
      evicted.push(id);
    }
    return evicted;
  }

  private async evict(seedId: string, reason: EvictReason): Promise<void> {
    this.seeds.delete(seedId);
    await rm(path.join(this.opts.root, seedId), { recursive: true, force: true });
    this.opts.onEvict?.(seedId, reason);
  }
}
