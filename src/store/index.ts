// The state store: SQLite on one host (default) or Postgres shared by nodes,
// with one schema and one Store implementation over both.
import { ThawError } from '../errors.ts';
import { SqlStore } from './base.ts';
import { checkEnvKey } from './envcrypt.ts';
import { PgDriver } from './postgres.ts';
import { SqliteDriver } from './sqlite.ts';
import type { Store } from './types.ts';

export type { AppPatch, AppRow, DeployRow, NodeRow, SeedRow, Store, VolumeRow, WakeRow } from './types.ts';
export { MIGRATIONS } from './schema.ts';

export interface OpenStoreOptions {
  /** postgres:// or postgresql:// selects Postgres; anything else SQLite at sqlitePath. */
  url?: string;
  sqlitePath?: string;
  /** 32-byte AES-256-GCM key for env values at rest. */
  envKey: Buffer;
  /** Postgres only: keep all tables in this schema (created if missing). */
  pgSchema?: string;
  /** Apply pending migrations on open (default true; migrate() is idempotent). */
  migrate?: boolean;
  /** How long withAppLock waits before APP_BUSY (default 60 s). */
  lockWaitMs?: number;
}

export function isPostgresUrl(url: string | undefined): url is string {
  return url !== undefined && /^postgres(ql)?:\/\//.test(url);
}

export async function openStore(opts: OpenStoreOptions): Promise<Store> {
  checkEnvKey(opts.envKey);
  let store: Store;
  let init = async (): Promise<void> => undefined;
  if (isPostgresUrl(opts.url)) {
    const driver = new PgDriver(opts.url, opts.pgSchema, opts.lockWaitMs);
    store = new SqlStore(driver, opts.envKey);
    init = () => driver.init();
  } else {
    if (!opts.sqlitePath) throw new ThawError('INVALID_REQUEST', 'openStore needs a postgres:// url or a sqlitePath');
    store = new SqlStore(new SqliteDriver(opts.sqlitePath, opts.lockWaitMs), opts.envKey);
  }
  try {
    await init();
    if (opts.migrate !== false) await store.migrate();
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
  return store;
}
