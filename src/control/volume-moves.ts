// `thaw volume restore APP --node B` and `thaw volume move APP --to B`: the
// app's volume file lands on node B, which becomes its home (the next wake
// goes there). Both need the app asleep and take the volume's lease in the
// store for the whole transfer, so no wake (of this or another control plane)
// mounts the volume mid-way. Restore brings a stored backup from object
// storage; move packs the file on its home node and sends it through object
// storage when there is one, else straight to B over the node API (streamed
// through the control plane, SHA-256 checked on B before it replaces anything).
// Callers hold the app's lock.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { ThawError } from '../errors.ts';
import type { Store, VolumeRow } from '../store/types.ts';
import { backupKey } from '../volume/backup-store.ts';
import type { Cluster, Member } from './cluster.ts';
import type { VolumeBackups } from './volume-backups.ts';

/** What `volume restore` did: where the data came from (which sleep) and where it is now. */
export interface VolumeRestoreResult {
  app: string;
  node: string;
  previousNode: string | null;
  /** The backup's id (= the id of the sleep that made it), object key, SHA-256 and size. */
  backup: { id: string; key: string; sha256: string; bytes: number };
  /** The sleep whose data this is. */
  sleep: { id: string; at: string; trigger: string; node: string | null };
  ms: number;
}

/** What `volume move` did. */
export interface VolumeMoveResult {
  app: string;
  from: string | null;
  to: string;
  /** 'object-storage' (a fresh backup), 'direct' (node to node) or 'none' (no file yet, or already there). */
  via: 'object-storage' | 'direct' | 'none';
  bytes: number;
  sha256: string | null;
  ms: number;
}

const NO_VM = new Set(['created', 'asleep', 'failed']);

export class VolumeMoves {
  constructor(private readonly o: { store: Store; cluster: Cluster; backups: VolumeBackups; log: Logger }) {}

  private async asleep(app: string): Promise<VolumeRow> {
    const state = (await this.o.store.getApp(app)).state;
    const v = await this.o.store.getVolume(app);
    if (!v) throw new ThawError('VOLUME_NOT_FOUND', `${app} has no volume`, { details: { app } });
    if (!NO_VM.has(state)) throw new ThawError('VOLUME_CONFLICT', `${app} is ${state}: a volume moves only while its app is asleep (thaw sleep ${app})`, { details: { app, state } });
    return v;
  }

  private node(name: string): Member {
    const m = this.o.cluster.get(name);
    if (!m) throw new ThawError('NOT_FOUND', `no node named ${name} (see thaw nodes)`, { details: { node: name } });
    if (m.state !== 'up') throw new ThawError('NODE_UNREACHABLE', `node ${name} is ${m.state}`, { details: { node: name } });
    return m;
  }

  /** Hold the volume's lease for `fn` (VOLUME_BUSY when a VM or another transfer has it). */
  private async leased<T>(app: string, fn: () => Promise<T>): Promise<T> {
    const token = `transfer-${randomUUID()}`;
    await this.o.store.leaseVolume(app, token);
    try {
      return await fn();
    } finally {
      await this.o.store.releaseVolume(app, token).catch((err) => this.o.log.warn({ app, err: (err as Error).message }, 'could not release the volume lease'));
    }
  }

  /** The old home's file goes once the new one is in place (best effort: a down node keeps a stale copy nobody reads). */
  private async dropOld(app: string, from: string | null, to: string): Promise<void> {
    const old = from && from !== to ? this.o.cluster.get(from) : undefined;
    if (old?.state === 'up') await old.api.deleteVolume(app).catch((err) => this.o.log.warn({ app, node: from, err: (err as Error).message }, 'old volume file not deleted'));
  }

  async restore(app: string, node: string, backupId?: string): Promise<VolumeRestoreResult> {
    const v = await this.asleep(app);
    const { sleep, backup } = await this.o.backups.find(app, backupId);
    const m = this.node(node);
    const t0 = performance.now();
    return this.leased(app, async () => {
      await m.api.restoreVolume(app, backup.key, backup.sha256);
      await this.o.store.updateVolume(app, { node });
      await this.dropOld(app, v.node, node);
      this.o.log.info({ app, node, backup: backup.id, from: v.node }, 'volume restored');
      return {
        app, node, previousNode: v.node,
        backup: { id: backup.id, key: backup.key, sha256: backup.sha256, bytes: backup.bytes },
        sleep: { id: sleep.id, at: sleep.at, trigger: sleep.trigger, node: sleep.node },
        ms: Math.round(performance.now() - t0),
      };
    });
  }

  async move(app: string, to: string): Promise<VolumeMoveResult> {
    const v = await this.asleep(app);
    const dst = this.node(to);
    const t0 = performance.now();
    const done = (via: VolumeMoveResult['via'], bytes: number, sha256: string | null): VolumeMoveResult => ({ app, from: v.node, to, via, bytes, sha256, ms: Math.round(performance.now() - t0) });
    if (v.node === to) return done('none', 0, null);
    if (!v.node) {
      // No wake made the file yet: the next one makes it on the new home.
      await this.o.store.updateVolume(app, { node: to });
      return done('none', 0, null);
    }
    const from = v.node;
    const src = this.o.cluster.get(from);
    if (!src || src.state !== 'up') {
      throw new ThawError('VOLUME_UNAVAILABLE', `the volume of ${app} lives on node ${from}, which is down: restore its last backup instead (thaw volume restore ${app} --node ${to})`, { details: { node: from } });
    }
    return this.leased(app, async () => {
      const id = `move-${randomUUID()}`;
      const packed = await src.api.packVolume(app, id);
      let via: VolumeMoveResult['via'] = 'direct';
      try {
        if (this.o.backups.enabled) {
          const key = backupKey(app, id);
          await src.api.uploadVolumeBackup(app, id, key, packed.sha256);
          await dst.api.restoreVolume(app, key, packed.sha256);
          await this.o.backups.removeObject(key);
          via = 'object-storage';
        } else {
          await dst.api.importVolume(app, await src.api.readPackedVolume(app, id), packed.sha256);
        }
      } finally {
        await src.api.dropPackedVolume(app, id).catch(() => {});
      }
      await this.o.store.updateVolume(app, { node: to });
      await this.dropOld(app, from, to);
      this.o.log.info({ app, from, to, via, bytes: packed.bytes }, 'volume moved');
      return done(via, packed.bytes, packed.sha256);
    });
  }
}
