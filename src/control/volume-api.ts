// The control plane's volume operations, as the API and CLI call them: list,
// resize, remove, restore and move (each under the app's lock), the checks a
// delete of an app with a volume needs, and what its purge removes (the file on
// the home node, the backups in object storage). The parts: volumes.ts (the
// one-writer lease and home node), volume-backups.ts (backup at every sleep),
// volume-moves.ts (restore and move).
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import type { SeedStore } from '../seed/s3.ts';
import type { Store, VolumeRow } from '../store/types.ts';
import type { Cluster } from './cluster.ts';
import { VolumeBackups } from './volume-backups.ts';
import { VolumeMoves, type VolumeMoveResult, type VolumeRestoreResult } from './volume-moves.ts';
import { VolumeControl } from './volumes.ts';

export interface VolumeApiOptions {
  store: Store;
  cluster: Cluster;
  /** Object storage for backups (the seeds' bucket); null: none. */
  s3: SeedStore | null;
  log: Logger;
  /** Serialize operations on one app (the store's app lock). */
  lock: <T>(app: string, fn: () => Promise<T>) => Promise<T>;
}

export class VolumeApi {
  readonly control: VolumeControl;
  readonly backups: VolumeBackups;
  private readonly moves: VolumeMoves;

  constructor(private readonly o: VolumeApiOptions) {
    this.control = new VolumeControl({ store: o.store, cluster: o.cluster, log: o.log });
    this.backups = new VolumeBackups({ store: o.store, s3: o.s3, log: o.log });
    this.moves = new VolumeMoves({ store: o.store, cluster: o.cluster, backups: this.backups, log: o.log });
  }

  list(): Promise<VolumeRow[]> {
    return this.control.list();
  }

  resize(app: string, sizeBytes: number): Promise<VolumeRow> {
    return this.o.lock(app, () => this.control.resize(app, sizeBytes));
  }

  remove(app: string): Promise<void> {
    return this.o.lock(app, () => this.control.remove(app));
  }

  /** Bring a stored backup (the newest, or the one sleep `backupId` made) onto `node`, the volume's new home. */
  restore(app: string, node: string, backupId?: string): Promise<VolumeRestoreResult> {
    return this.o.lock(app, () => this.moves.restore(app, node, backupId));
  }

  /** Move the volume to node `to` while its app is asleep. */
  move(app: string, to: string): Promise<VolumeMoveResult> {
    return this.o.lock(app, () => this.moves.move(app, to));
  }

  /** Before deleting an app: one with a volume needs deleteVolume (VOLUME_IN_USE). */
  async checkDelete(app: string, deleteVolume: boolean): Promise<void> {
    const vol = await this.o.store.getVolume(app);
    if (vol && !deleteVolume) throw new ThawError('VOLUME_IN_USE', `${app} has a volume at ${vol.path}: pass --delete-volume to delete it with the app`);
  }

  /** The app is being deleted: its volume file on the home node and its backups go. */
  async purge(app: string): Promise<void> {
    const vol = await this.o.store.getVolume(app);
    if (!vol) return;
    if (vol.node) await this.o.cluster.get(vol.node)?.api.deleteVolume(app).catch((err) => this.o.log.warn({ app, err: asThawError(err).message }, 'volume file not deleted'));
    await this.backups.purgeAll(app).catch((err) => this.o.log.warn({ app, err: asThawError(err).message }, 'volume backups not deleted'));
  }
}
