// Seed replication, decided by the control plane and carried out by nodes.
// Object storage is the durable copy: after a bake the node that holds the seed
// packs and uploads it in the background (never delaying the sleep); a seed is
// marked replicated only once the node checked the object. Failed uploads are
// retried (object storage down, node busy). Abandoned seeds (TTL) and seeds of
// old deploys are deleted from object storage and from every node.
import type { Logger } from 'pino';
import { asThawError } from '../errors.ts';
import { SeedStore } from '../seed/s3.ts';
import type { SeedRow, Store } from '../store/types.ts';
import type { SeedRef } from '../wire/node.ts';
import type { Cluster } from './cluster.ts';

export interface ReplicationOptions {
  /** Object storage; null keeps seeds on the node that baked them. */
  s3: { endpoint?: string; bucket: string; region?: string } | null;
  ttlMs: number;
  store: Store;
  cluster: Cluster;
  log: Logger;
  /** Called when a seed is gone for good (evicted without a durable copy, TTL). */
  onSeedGone: (seed: SeedRow) => Promise<void>;
  /** Retry and TTL period (default 15 s). */
  tickMs?: number;
}

export const seedRef = (s: SeedRow): SeedRef => ({ id: s.id, app: s.app, replicated: s.replicated, manifestSha256: s.manifestSha256 });

export class Replication {
  readonly s3: SeedStore | null;
  private readonly pending = new Map<string, SeedRow>();
  private readonly uploading = new Set<string>();
  /** node/seed -> when a node was first seen holding a seed the store does not know. */
  private readonly unknown = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  readonly stats = { uploads: 0, uploadFailures: 0, uploadedBytes: 0 };

  constructor(private readonly o: ReplicationOptions) {
    this.s3 = o.s3 ? new SeedStore({ ...o.s3, forcePathStyle: true }) : null;
  }

  async start(): Promise<void> {
    if (this.s3) await this.s3.ensureBucket().catch((err) => this.o.log.warn({ err: asThawError(err).message }, 'object storage unreachable; seeds stay local until it returns'));
    if (this.s3) for (const s of await this.o.store.listSeeds()) if (!s.replicated) this.pending.set(s.id, s);
    this.timer = setInterval(() => void this.tick(), this.o.tickMs ?? 15_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.s3?.destroy();
  }

  /** A node baked a new seed: upload it in the background. */
  added(seed: SeedRow): void {
    if (!this.s3) return;
    this.pending.set(seed.id, seed);
    void this.upload(seed);
  }

  /** A node evicted a seed from its cache: without a durable copy elsewhere, it is gone. */
  async evicted(node: string, seedId: string): Promise<void> {
    const first = (await this.o.store.listSeeds()).find((s) => s.id === seedId);
    if (!first) return;
    await this.o.store.withAppLock(first.app, async () => {
      const row = (await this.o.store.listSeeds()).find((s) => s.id === seedId);
      if (!row || row.replicated) return;
      if (this.o.cluster.holders(seedId).some((m) => m.name !== node)) return;
      this.pending.delete(seedId);
      this.o.log.warn({ seedId, node }, 'an unreplicated seed was evicted; the next wake cold-boots');
      await this.o.onSeedGone(row);
    });
  }

  private async upload(seed: SeedRow): Promise<void> {
    if (!this.s3 || !this.pending.has(seed.id) || this.uploading.has(seed.id)) return;
    const holder = this.o.cluster.holders(seed.id)[0];
    if (!holder) return; // its node is down; retried when it is back
    this.uploading.add(seed.id);
    try {
      const r = await holder.api.uploadSeed(seedRef(seed));
      this.pending.delete(seed.id);
      await this.o.store.markSeedReplicated(seed.id, r.bytesCompressed);
      this.stats.uploads++;
      this.stats.uploadedBytes += r.bytesCompressed;
      this.o.log.info({ seedId: seed.id, node: holder.name, bytes: r.bytesCompressed, ms: r.ms }, 'seed replicated');
    } catch (err) {
      this.stats.uploadFailures++;
      this.o.log.warn({ seedId: seed.id, node: holder.name, err: asThawError(err).message }, 'seed upload failed; will retry');
    } finally {
      this.uploading.delete(seed.id);
    }
  }

  /** Delete a seed everywhere: every live node's cache and object storage. */
  async purge(seed: Pick<SeedRow, 'id' | 'app'>): Promise<void> {
    this.pending.delete(seed.id);
    await Promise.all(
      this.o.cluster.live().map((m) => m.api.deleteSeed(seed.id).catch((err) => this.o.log.warn({ node: m.name, seedId: seed.id, err: asThawError(err).message }, 'could not delete seed on node'))),
    );
    if (this.s3) await this.s3.remove(this.s3.key(seed.app, seed.id)).catch((err) => this.o.log.warn({ err: asThawError(err).message }, 'could not delete seed object'));
  }

  /**
   * Objects whose seed is no longer recorded (deleted while object storage was
   * down, or an upload that finished after its seed was dropped). Listed before
   * the seed rows are read, and a seed row exists before its upload starts, so a
   * live seed's object is never taken for an orphan.
   */
  private async removeOrphans(): Promise<void> {
    if (!this.s3) return;
    const objects = await this.s3.list();
    const known = new Set((await this.o.store.listSeeds()).map((s) => s.id));
    for (const obj of objects) {
      const m = /\/([^/]+)\.tar\.zst$/.exec(obj.key);
      if (!m || known.has(m[1]!)) continue;
      this.o.log.info({ key: obj.key }, 'deleting an orphaned seed object');
      await this.s3.remove(obj.key);
    }
  }

  /**
   * Seeds a node holds that the store no longer knows (deleted while the node was
   * down or unreachable). A grace period covers a bake whose seed row is being
   * written right now.
   */
  async removeStrays(now = Date.now(), graceMs = 60_000): Promise<string[]> {
    const known = new Set((await this.o.store.listSeeds()).map((s) => s.id));
    const removed: string[] = [];
    const seen = new Set<string>();
    for (const m of this.o.cluster.live()) {
      const held = m.agent ? m.agent.seedIds() : [...m.seeds];
      for (const id of held) {
        if (known.has(id)) continue;
        const key = `${m.name}/${id}`;
        seen.add(key);
        const first = this.unknown.get(key) ?? now;
        this.unknown.set(key, first);
        if (now - first < graceMs) continue;
        this.o.log.info({ node: m.name, seedId: id }, 'deleting a seed the store no longer knows');
        await m.api.deleteSeed(id).catch(() => {});
        m.seeds.delete(id);
        this.unknown.delete(key);
        removed.push(key);
      }
    }
    for (const k of [...this.unknown.keys()]) if (!seen.has(k)) this.unknown.delete(k);
    return removed;
  }

  private async tick(): Promise<void> {
    try {
      await this.tickOnce();
    } catch (err) {
      this.o.log.warn({ err: asThawError(err).message }, 'seed maintenance failed; will retry');
    }
  }

  /** Retry pending uploads; delete orphaned objects and seeds of apps not woken for the TTL. */
  async tickOnce(): Promise<void> {
    for (const s of [...this.pending.values()]) await this.upload(s);
    await this.removeOrphans();
    await this.removeStrays();
    const cutoff = Date.now() - this.o.ttlMs;
    for (const s of await this.o.store.listSeeds()) {
      if (Date.parse(s.lastUsedAt) >= cutoff) continue;
      // Under the app's lock, so no wake is thawing from it meanwhile.
      await this.o.store.withAppLock(s.app, async () => {
        const row = (await this.o.store.listSeeds()).find((x) => x.id === s.id);
        if (!row || Date.parse(row.lastUsedAt) >= cutoff) return;
        const app = await this.o.store.findApp(s.app);
        if (app && ['waking', 'running', 'sleeping'].includes(app.state)) return; // a VM may use its disk
        this.o.log.info({ seedId: s.id }, 'seed TTL expired; deleting it everywhere');
        await this.purge(row);
        await this.o.onSeedGone(row);
      });
    }
  }
}
