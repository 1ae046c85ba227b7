// Volume backups, decided by the control plane and carried out by the volume's
// home node. A sleep of an app with a volume (and object storage) asks its node
// to pack the volume file once the VM is gone (step backup_volume, the
// consistent copy); the sleep record names that backup (state 'uploading').
// The upload runs after the app is asleep and its lock is free, so a wake
// that arrives meanwhile is routed at once: the volume file on the home node
// is authoritative, the backup is a copy. Once the object is checked, the
// backup is 'stored' and all but the newest KEEP_BACKUPS are purged.
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import type { SeedStore } from '../seed/s3.ts';
import type { SleepRow, Store, VolumeBackup } from '../store/types.ts';
import { backupKey, removeBackup } from '../volume/backup-store.ts';
import type { VolumePacked } from '../wire/node.ts';
import type { Member } from './cluster.ts';

/** Stored backups kept per app (older ones are purged from object storage). */
export const KEEP_BACKUPS = 3;
/** How far back restore and retention look (sleep records). */
const HISTORY = 200;

export interface VolumeBackupsOptions {
  store: Store;
  /** Object storage (the seeds' bucket); null: no backups. */
  s3: SeedStore | null;
  log: Logger;
  keep?: number;
}

export class VolumeBackups {
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly o: VolumeBackupsOptions) {}

  get enabled(): boolean {
    return this.o.s3 !== null;
  }

  /** A sleep of `app` makes a backup: object storage is configured and the app has a volume. */
  async wanted(app: string): Promise<boolean> {
    return this.enabled && (await this.o.store.getVolume(app)) !== null;
  }

  /** The record of the backup a sleep's node packed (state 'uploading'). */
  pending(app: string, sleepId: string, node: string, packed: VolumePacked): VolumeBackup {
    return { id: sleepId, key: backupKey(app, sleepId), node, sha256: packed.sha256, bytes: packed.bytes, apparentBytes: packed.apparentBytes, packMs: packed.ms, uploadMs: null, state: 'uploading' };
  }

  /** Upload the sleep's packed backup from its node, in the background; then purge old ones. */
  upload(sleep: SleepRow, m: Member): void {
    const p = this.uploadNow(sleep, m).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  /** Uploads still running (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  private async uploadNow(sleep: SleepRow, m: Member): Promise<void> {
    const b = sleep.backup;
    if (!b) return;
    try {
      const r = await m.api.uploadVolumeBackup(sleep.app, b.id, b.key, b.sha256);
      await this.o.store.setSleepBackup(sleep.id, { ...b, uploadMs: r.ms, state: 'stored' });
      this.o.log.info({ app: sleep.app, key: b.key, bytes: b.bytes, uploadMs: r.ms }, 'volume backup stored');
      await this.purgeOld(sleep.app);
    } catch (err) {
      const error = asThawError(err).message.slice(0, 1000);
      this.o.log.warn({ app: sleep.app, key: b.key, err: error }, 'volume backup upload failed');
      await this.o.store.setSleepBackup(sleep.id, { ...b, state: 'failed', error }).catch(() => {});
      await m.api.dropPackedVolume(sleep.app, b.id).catch(() => {});
    }
  }

  /** Stored backups of the app, newest first, with the sleep that made each. */
  async stored(app: string): Promise<Array<{ sleep: SleepRow; backup: VolumeBackup }>> {
    const sleeps = await this.o.store.listSleeps(app, HISTORY);
    return sleeps.filter((s) => s.backup?.state === 'stored').map((s) => ({ sleep: s, backup: s.backup! }));
  }

  /** The newest stored backup, or the one made by sleep `id`. VOLUME_BACKUP_UNAVAILABLE / VOLUME_BACKUP_NOT_FOUND. */
  async find(app: string, id?: string): Promise<{ sleep: SleepRow; backup: VolumeBackup }> {
    if (!this.enabled) throw new ThawError('VOLUME_BACKUP_UNAVAILABLE', 'no object storage is configured (--s3-bucket): there are no volume backups to restore; `thaw volume move` copies a volume from node to node', { details: { app } });
    const all = await this.stored(app);
    if (id) {
      const hit = all.find((x) => x.backup.id === id);
      if (!hit) throw new ThawError('VOLUME_BACKUP_NOT_FOUND', `${app} has no stored volume backup ${id}`, { details: { app, backup: id } });
      return hit;
    }
    if (!all[0]) throw new ThawError('VOLUME_BACKUP_UNAVAILABLE', `${app} has no stored volume backup yet (one is made at every sleep)`, { details: { app } });
    return all[0];
  }

  /** Keep the newest `keep` stored backups; delete the others' objects and mark them purged. */
  async purgeOld(app: string): Promise<void> {
    const s3 = this.o.s3;
    if (!s3) return;
    for (const { sleep, backup } of (await this.stored(app)).slice(this.o.keep ?? KEEP_BACKUPS)) {
      await removeBackup(s3, backup.key);
      await this.o.store.setSleepBackup(sleep.id, { ...backup, state: 'purged' });
    }
  }

  /** Delete one object (a move's transfer copy). */
  async removeObject(key: string): Promise<void> {
    if (this.o.s3) await removeBackup(this.o.s3, key);
  }

  /** The app is deleted: every backup object goes. */
  async purgeAll(app: string): Promise<void> {
    const s3 = this.o.s3;
    if (!s3) return;
    for (const s of await this.o.store.listSleeps(app, HISTORY)) if (s.backup && s.backup.state !== 'purged') await removeBackup(s3, s.backup.key).catch(() => {});
  }
}
