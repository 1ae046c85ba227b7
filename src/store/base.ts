// The Store logic, written once over a Driver (SQLite or Postgres).
import { ThawError, isThawError } from '../errors.ts';
import { canTransition, isState, type State } from '../state.ts';
import { checkEnvKey, checkEnvVars, decryptValue, encryptValue } from './envcrypt.ts';
import { MIGRATIONS, MIGRATIONS_TABLE, PATCH_COLUMNS, dialectSql, toApp, toDeploy, toNode, toSeed, toSleep, toWake } from './schema.ts';
import type { RunConfig } from '../wire/run.ts';
import type { AppPatch, AppRow, DeployRow, Driver, NodeRow, Param, SeedRow, SleepRow, Stmt, Store, VolumeBackup, VolumeRow, WakeRow } from './types.ts';
import { VolumeTable } from './volumes.ts';

export type Constraint = 'unique' | 'foreign_key';

/** Drivers wrap every database error with this, naming the violated constraint kind. */
export function storeError(cause: unknown, constraint?: Constraint): ThawError {
  const msg = cause instanceof Error ? cause.message : String(cause);
  return new ThawError('STORE_ERROR', `state database: ${msg}`, { cause, details: constraint ? { constraint } : undefined });
}

function violated(err: unknown, c: Constraint): boolean {
  return isThawError(err, 'STORE_ERROR') && err.details?.constraint === c;
}

const APP_NAME_RE = /^[a-z][a-z0-9-]{0,39}$/;
const now = (): string => new Date().toISOString();
const notFound = (name: string): ThawError => new ThawError('APP_NOT_FOUND', `no app named ${name}`, { details: { app: name } });

/** Serializes callers per key inside one process. */
class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const result = prev.then(fn, fn);
    const tail = result.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await result;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

function patchSets(patch: AppPatch): { sets: string[]; params: Param[] } {
  const sets: string[] = [];
  const params: Param[] = [];
  for (const [field, col] of Object.entries(PATCH_COLUMNS)) {
    const v = (patch as Record<string, unknown>)[field];
    if (v === undefined) continue;
    if (field === 'idleTimeoutS' && !(Number.isInteger(v) && (v as number) > 0)) {
      throw new ThawError('INVALID_REQUEST', 'idleTimeoutS must be a positive integer');
    }
    sets.push(`${col} = ?`);
    params.push(v as Param);
  }
  return { sets, params };
}

export class SqlStore implements Store {
  private readonly locks = new KeyedMutex();
  private readonly volumes: VolumeTable;

  constructor(
    private readonly db: Driver,
    private readonly envKey: Buffer,
  ) {
    checkEnvKey(envKey);
    this.volumes = new VolumeTable(db);
  }

  async migrate(): Promise<void> {
    await this.db.exclusive(async () => {
      await this.db.batch([{ sql: MIGRATIONS_TABLE, params: [] }]);
      const done = new Set((await this.db.all<{ version: unknown }>('SELECT version FROM schema_migrations')).map((r) => Number(r.version)));
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        const stmts: Stmt[] = m.up.map((sql) => ({ sql: dialectSql(sql, this.db.dialect), params: [] }));
        stmts.push({ sql: 'INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)', params: [m.version, m.name, now()] });
        await this.db.batch(stmts);
      }
    });
  }

  close(): Promise<void> {
    return this.db.close();
  }

  // --- apps ------------------------------------------------------------------
  async createApp(a: { name: string; idleTimeoutS: number }): Promise<AppRow> {
    if (typeof a.name !== 'string' || !APP_NAME_RE.test(a.name)) throw new ThawError('INVALID_APP_NAME', `invalid app name: ${JSON.stringify(a.name)}`);
    if (!Number.isInteger(a.idleTimeoutS) || a.idleTimeoutS <= 0) throw new ThawError('INVALID_REQUEST', 'idleTimeoutS must be a positive integer');
    const t = now();
    try {
      const rows = await this.db.all(
        `INSERT INTO apps (name, state, version, idle_timeout_s, created_at, updated_at) VALUES (?, 'created', 1, ?, ?, ?) RETURNING *`,
        [a.name, a.idleTimeoutS, t, t],
      );
      return toApp(rows[0]!);
    } catch (err) {
      if (violated(err, 'unique')) throw new ThawError('APP_EXISTS', `app ${a.name} already exists`, { details: { app: a.name } });
      throw err;
    }
  }

  async findApp(name: string): Promise<AppRow | null> {
    const rows = await this.db.all('SELECT * FROM apps WHERE name = ?', [name]);
    return rows[0] ? toApp(rows[0]) : null;
  }

  async getApp(name: string): Promise<AppRow> {
    const app = await this.findApp(name);
    if (!app) throw notFound(name);
    return app;
  }

  async listApps(): Promise<AppRow[]> {
    return (await this.db.all('SELECT * FROM apps ORDER BY name')).map(toApp);
  }

  async transition(name: string, from: State | readonly State[], to: State, patch: AppPatch = {}): Promise<AppRow> {
    const froms: readonly State[] = typeof from === 'string' ? [from] : from;
    const bad = !isState(to) || froms.length === 0 || froms.some((f) => !isState(f) || !canTransition(f, to));
    if (bad) throw new ThawError('INTERNAL', `illegal transition ${froms.join('|')} -> ${to} for app ${name}`, { details: { from: froms, to } });
    const t = now();
    const { sets, params } = patchSets(patch);
    sets.unshift('state = ?');
    params.unshift(to);
    if (to === 'waking') {
      sets.push('last_wake_at = ?');
      params.push(t);
    }
    const rows = await this.db.all(
      `UPDATE apps SET ${sets.join(', ')}, version = version + 1, updated_at = ? WHERE name = ? AND state IN (${froms.map(() => '?').join(', ')}) RETURNING *`,
      [...params, t, name, ...froms],
    );
    if (rows[0]) return toApp(rows[0]);
    const cur = await this.findApp(name);
    if (!cur) throw notFound(name);
    throw new ThawError('APP_BUSY', `app ${name} is ${cur.state}, expected ${froms.join(' or ')}`, {
      details: { app: name, expected: [...froms], actual: cur.state },
    });
  }

  async updateApp(name: string, patch: AppPatch): Promise<AppRow> {
    const { sets, params } = patchSets(patch);
    if (sets.length === 0) return this.getApp(name);
    const rows = await this.db.all(`UPDATE apps SET ${sets.join(', ')}, version = version + 1, updated_at = ? WHERE name = ? RETURNING *`, [
      ...params,
      now(),
      name,
    ]);
    if (!rows[0]) throw notFound(name);
    return toApp(rows[0]);
  }

  async deleteApp(name: string): Promise<void> {
    const counts = await this.db.batch(
      ['env', 'deploys', 'seeds', 'wakes', 'sleeps', 'volumes'].map((t) => ({ sql: `DELETE FROM ${t} WHERE app = ?`, params: [name] })).concat([{ sql: 'DELETE FROM apps WHERE name = ?', params: [name] }]),
    );
    if (counts[counts.length - 1] === 0) throw notFound(name);
  }

  // --- deploys ---------------------------------------------------------------
  async addDeploy(d: { id: string; app: string; imagePath: string; imageBytes: number; runConfig?: RunConfig | null; createdAt?: string }): Promise<DeployRow> {
    const rows = await this.insert(d.app, `deploy ${d.id}`, 'INSERT INTO deploys (id, app, image_path, image_bytes, created_at, run_config) VALUES (?, ?, ?, ?, ?, ?) RETURNING *', [
      d.id,
      d.app,
      d.imagePath,
      d.imageBytes,
      d.createdAt ?? now(),
      d.runConfig ? JSON.stringify(d.runConfig) : null,
    ]);
    return toDeploy(rows[0]!);
  }

  async listDeploys(app: string): Promise<DeployRow[]> {
    return (await this.db.all('SELECT * FROM deploys WHERE app = ? ORDER BY created_at, id', [app])).map(toDeploy);
  }

  // --- env -------------------------------------------------------------------
  async setEnv(app: string, vars: Record<string, string>): Promise<void> {
    checkEnvVars(vars);
    checkEnvVars({ ...(await this.getEnv(app)), ...vars });
    const t = now();
    await this.db.batch(
      Object.entries(vars).map(([k, v]) => ({
        sql: `INSERT INTO env (app, key, value_enc, updated_at) VALUES (?, ?, ?, ?)
              ON CONFLICT (app, key) DO UPDATE SET value_enc = excluded.value_enc, updated_at = excluded.updated_at`,
        params: [app, k, encryptValue(this.envKey, app, k, v), t],
      })),
    );
  }

  async unsetEnv(app: string, keys: string[]): Promise<void> {
    await this.getApp(app);
    await this.db.batch(keys.map((k) => ({ sql: 'DELETE FROM env WHERE app = ? AND key = ?', params: [app, String(k)] })));
  }

  async getEnv(app: string): Promise<Record<string, string>> {
    await this.getApp(app);
    const rows = await this.db.all<{ key: string; value_enc: string }>('SELECT key, value_enc FROM env WHERE app = ? ORDER BY key', [app]);
    return Object.fromEntries(rows.map((r) => [r.key, decryptValue(this.envKey, app, r.key, r.value_enc)]));
  }

  async listEnvKeys(app: string): Promise<{ key: string; updatedAt: string }[]> {
    await this.getApp(app);
    const rows = await this.db.all<{ key: string; updated_at: string }>('SELECT key, updated_at FROM env WHERE app = ? ORDER BY key', [app]);
    return rows.map((r) => ({ key: r.key, updatedAt: r.updated_at }));
  }

  // --- seeds -----------------------------------------------------------------
  async putSeed(s: SeedRow): Promise<void> {
    await this.insert(
      s.app,
      `seed ${s.id}`,
      `INSERT INTO seeds (id, app, deploy_id, node, bytes_apparent, bytes_allocated, bytes_compressed, replicated, manifest_sha256, created_at, last_used_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET app = excluded.app, deploy_id = excluded.deploy_id, node = excluded.node,
         bytes_apparent = excluded.bytes_apparent, bytes_allocated = excluded.bytes_allocated, bytes_compressed = excluded.bytes_compressed,
         replicated = excluded.replicated, manifest_sha256 = excluded.manifest_sha256, created_at = excluded.created_at, last_used_at = excluded.last_used_at`,
      [s.id, s.app, s.deployId, s.node, s.bytesApparent, s.bytesAllocated, s.bytesCompressed, s.replicated, s.manifestSha256, s.createdAt, s.lastUsedAt],
    );
  }

  async markSeedReplicated(id: string, bytesCompressed: number): Promise<void> {
    await this.db.batch([{ sql: 'UPDATE seeds SET replicated = ?, bytes_compressed = ? WHERE id = ?', params: [true, bytesCompressed, id] }]);
  }

  async touchSeed(id: string, at: string): Promise<void> {
    await this.db.batch([{ sql: 'UPDATE seeds SET last_used_at = ? WHERE id = ?', params: [at, id] }]);
  }

  async getSeed(app: string): Promise<SeedRow | null> {
    const rows = await this.db.all(
      `SELECT s.* FROM seeds s JOIN apps a ON a.name = s.app WHERE s.app = ?
       ORDER BY CASE WHEN s.id = a.seed_id THEN 1 ELSE 0 END DESC, s.created_at DESC, s.id DESC LIMIT 1`,
      [app],
    );
    return rows[0] ? toSeed(rows[0]) : null;
  }

  async listSeeds(): Promise<SeedRow[]> {
    return (await this.db.all('SELECT * FROM seeds ORDER BY app, created_at, id')).map(toSeed);
  }

  async deleteSeed(id: string): Promise<void> {
    await this.db.batch([{ sql: 'DELETE FROM seeds WHERE id = ?', params: [id] }]);
  }

  // --- wakes -----------------------------------------------------------------
  async addWake(w: WakeRow): Promise<void> {
    await this.insert(
      w.app,
      `wake ${w.id}`,
      `INSERT INTO wakes (id, app, at, wall_ms, boot_mode, boot_ms, gate_ms, app_start_ms, pid, fs_errors, fallback_reason, node, seed_source, stages, placement, first_byte_ms, queued_ms, seed_outcome, outcome)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      // Milliseconds are whole numbers in the store (INTEGER columns; Postgres refuses fractions).
      [w.id, w.app, w.at, Math.round(w.wallMs), w.bootMode, Math.round(w.bootMs), w.gateMs === null ? null : Math.round(w.gateMs), Math.round(w.appStartMs), w.pid, w.fsErrors, w.fallbackReason, w.node, w.seedSource, JSON.stringify(w.stages ?? {}), w.placement ?? null,
        w.firstByteMs == null ? null : Math.round(w.firstByteMs), Math.round(w.queuedMs ?? 0), w.seedOutcome ?? null, w.outcome ?? 'ok'],
    );
  }

  async setWakeFirstByte(id: string, ms: number): Promise<WakeRow | null> {
    const [n] = await this.db.batch([{ sql: 'UPDATE wakes SET first_byte_ms = ? WHERE id = ? AND first_byte_ms IS NULL', params: [Math.round(ms), id] }]);
    if (!n) return null;
    return (await this.db.all('SELECT * FROM wakes WHERE id = ?', [id])).map(toWake)[0] ?? null;
  }

  async listWakes(app: string, limit = 100): Promise<WakeRow[]> {
    return (await this.newest('wakes', app, limit)).map(toWake);
  }

  // --- sleeps ----------------------------------------------------------------
  async addSleep(r: SleepRow): Promise<void> {
    const ms = (v: number | null) => (v === null ? null : Math.round(v));
    await this.insert(
      r.app,
      `sleep ${r.id}`,
      `INSERT INTO sleeps (id, app, at, triggered_by, node, drain_ms, cut_requests, exit_code, exit_signal, shutdown_ms, baked, seed_id, total_ms, stages, error, backup)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [r.id, r.app, r.at, r.trigger, r.node, ms(r.drainMs), r.cutRequests, r.exitCode, r.exitSignal, ms(r.shutdownMs), r.baked, r.seedId, ms(r.totalMs), JSON.stringify(r.stages), r.error, r.backup ? JSON.stringify(r.backup) : null],
    );
  }

  async setSleepBackup(id: string, backup: VolumeBackup): Promise<void> {
    await this.db.batch([{ sql: 'UPDATE sleeps SET backup = ? WHERE id = ?', params: [JSON.stringify(backup), id] }]);
  }

  async listSleeps(app: string, limit = 100): Promise<SleepRow[]> {
    return (await this.newest('sleeps', app, limit)).map(toSleep);
  }

  /** The newest `limit` rows of a per-app record table. */
  private newest(table: 'wakes' | 'sleeps', app: string, limit: number): Promise<Record<string, unknown>[]> {
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ThawError('INVALID_REQUEST', 'limit must be an integer from 1 to 10000');
    return this.db.all(`SELECT * FROM ${table} WHERE app = ? ORDER BY at DESC, id DESC LIMIT ?`, [app, limit]);
  }

  // --- volumes (src/store/volumes.ts) ----------------------------------------
  async addVolume(v: { app: string; path: string; sizeBytes: number }): Promise<VolumeRow> {
    await this.getApp(v.app);
    return this.volumes.add(v);
  }
  getVolume = (app: string) => this.volumes.get(app);
  listVolumes = () => this.volumes.list();
  updateVolume = (app: string, patch: Partial<Pick<VolumeRow, 'sizeBytes' | 'node'>>) => this.volumes.update(app, patch);
  deleteVolume = (app: string) => this.volumes.delete(app);
  leaseVolume = (app: string, holder: string) => this.volumes.lease(app, holder);
  releaseVolume = (app: string, holder: string) => this.volumes.release(app, holder);

  // --- nodes -----------------------------------------------------------------
  async upsertNode(n: NodeRow): Promise<void> {
    await this.db.batch([
      {
        sql: `INSERT INTO nodes (name, url, capacity, running, seeds, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)
              ON CONFLICT (name) DO UPDATE SET url = excluded.url, capacity = excluded.capacity, running = excluded.running,
                seeds = excluded.seeds, heartbeat_at = excluded.heartbeat_at`,
        params: [n.name, n.url, n.capacity, n.running, JSON.stringify(n.seeds), n.heartbeatAt],
      },
    ]);
  }

  async listNodes(): Promise<NodeRow[]> {
    return (await this.db.all('SELECT * FROM nodes ORDER BY name')).map(toNode);
  }

  withAppLock<T>(app: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(app, () => this.db.lock(`app:${app}`, fn));
  }

  /** An insert into a table that references apps: a missing app is APP_NOT_FOUND, a duplicate id INVALID_REQUEST. */
  private async insert(app: string, what: string, sql: string, params: Param[]): Promise<Record<string, unknown>[]> {
    try {
      return await this.db.all(sql, params);
    } catch (err) {
      if (violated(err, 'foreign_key')) throw notFound(app);
      if (violated(err, 'unique')) throw new ThawError('INVALID_REQUEST', `${what} already exists`, { cause: err });
      throw err;
    }
  }
}
