// The volumes table (one row per app), written once over a Driver. The lease is
// one compare-and-set UPDATE: a volume is mounted by at most one VM, whatever
// the number of control planes sharing the database.
import { ThawError } from '../errors.ts';
import { toVolume } from './schema.ts';
import type { Driver, VolumeRow } from './types.ts';

/** A transfer's lease (holder `transfer-…`) counts as left by a crash after this long. */
export const TRANSFER_LEASE_MS = 60 * 60_000;
const now = (): string => new Date().toISOString();
const missing = (app: string) => new ThawError('VOLUME_NOT_FOUND', `${app} has no volume`, { details: { app } });

export class VolumeTable {
  constructor(private readonly db: Driver) {}

  async add(v: { app: string; path: string; sizeBytes: number }): Promise<VolumeRow> {
    const t = now();
    const rows = await this.db.all('INSERT INTO volumes (app, path, size_bytes, node, holder, leased_at, created_at, updated_at) VALUES (?, ?, ?, NULL, NULL, NULL, ?, ?) ON CONFLICT (app) DO NOTHING RETURNING *', [v.app, v.path, v.sizeBytes, t, t]);
    if (!rows[0]) throw new ThawError('VOLUME_CONFLICT', `${v.app} already has a volume`);
    return toVolume(rows[0]);
  }

  async get(app: string): Promise<VolumeRow | null> {
    const rows = await this.db.all('SELECT * FROM volumes WHERE app = ?', [app]);
    return rows[0] ? toVolume(rows[0]) : null;
  }

  async list(): Promise<VolumeRow[]> {
    return (await this.db.all('SELECT * FROM volumes ORDER BY app')).map(toVolume);
  }

  async update(app: string, patch: Partial<Pick<VolumeRow, 'sizeBytes' | 'node'>>): Promise<VolumeRow> {
    const sets: string[] = ['updated_at = ?'];
    const params: (string | number | null)[] = [now()];
    if (patch.sizeBytes !== undefined) {
      sets.push('size_bytes = ?');
      params.push(patch.sizeBytes);
    }
    if (patch.node !== undefined) {
      sets.push('node = ?');
      params.push(patch.node);
    }
    const rows = await this.db.all(`UPDATE volumes SET ${sets.join(', ')} WHERE app = ? RETURNING *`, [...params, app]);
    if (!rows[0]) throw missing(app);
    return toVolume(rows[0]);
  }

  async delete(app: string): Promise<void> {
    await this.db.batch([{ sql: 'DELETE FROM volumes WHERE app = ?', params: [app] }]);
  }

  /**
   * Take the volume for `holder` (compare-and-set). Free, already ours, or the app has no VM
   * (asleep, failed, created): taken. A wake's lease (`wake-*`) is tied to the app's state: the
   * one wake that moved the app to `waking` takes over a `wake-*` lease left by an earlier VM
   * (a control plane that died while its app ran). Any other holder (a move) gives VOLUME_BUSY.
   */
  async lease(app: string, holder: string): Promise<VolumeRow> {
    // A wake's lease left by a crash is taken over once the app is asleep; a transfer's
    // (volume restore or move, which run while the app is asleep) only once it is stale.
    const staleTransfer = new Date(Date.now() - TRANSFER_LEASE_MS).toISOString();
    const wake = holder.startsWith('wake-');
    const rows = await this.db.all(
      `UPDATE volumes SET holder = ?, leased_at = ?
       WHERE app = ? AND (holder IS NULL OR holder = ?
         OR (EXISTS (SELECT 1 FROM apps WHERE name = ? AND state IN ('asleep', 'failed', 'created'))
             AND (holder NOT LIKE 'transfer-%' OR leased_at < ?))
         ${wake ? "OR (holder LIKE 'wake-%' AND EXISTS (SELECT 1 FROM apps WHERE name = ? AND state = 'waking'))" : ''})
       RETURNING *`,
      [holder, now(), app, holder, app, staleTransfer, ...(wake ? [app] : [])],
    );
    if (rows[0]) return toVolume(rows[0]);
    const v = await this.get(app);
    if (!v) throw missing(app);
    throw new ThawError('VOLUME_BUSY', `the volume of ${app} is held by ${v.holder} since ${v.leasedAt}`, { details: { holder: v.holder } });
  }

  async release(app: string, holder: string): Promise<void> {
    await this.db.batch([{ sql: 'UPDATE volumes SET holder = NULL, leased_at = NULL WHERE app = ? AND holder = ?', params: [app, holder] }]);
  }
}
