// Postgres driver (`pg` pool): state shared by all nodes. Locks are advisory
// locks, so they vanish with a crashed holder's connection.
import pg from 'pg';
import { ThawError } from '../errors.ts';
import { storeError } from './base.ts';
import { toPgPlaceholders } from './schema.ts';
import type { Driver, Param, Stmt } from './types.ts';

/** First key of every Thaw advisory lock ("th"), so other users of the database do not collide. */
const LOCK_NS = 0x7468;
const MIGRATE_KEY = 0;

function classify(err: unknown): ThawError {
  if (err instanceof ThawError) return err;
  const code = (err as { code?: unknown }).code;
  if (code === '23505') return storeError(err, 'unique');
  if (code === '23503') return storeError(err, 'foreign_key');
  return storeError(err);
}

const noop = (): void => undefined;

async function q(c: pg.PoolClient, sql: string, params: Param[] = []): Promise<pg.QueryResult> {
  try {
    return await c.query(sql, params);
  } catch (err) {
    throw classify(err);
  }
}

export class PgDriver implements Driver {
  readonly dialect = 'pg' as const;
  private readonly pool: pg.Pool;
  /**
   * Connections that hold advisory locks. Separate from the query pool: a lock is
   * held while its operation runs queries, so lock holders sharing the query pool
   * could take every connection and wait forever for one more.
   */
  private readonly lockPool: pg.Pool;

  /** `schema` (optional) puts every table in that Postgres schema, created if missing. */
  constructor(
    url: string,
    private readonly schema?: string,
    private readonly lockWaitMs = 60_000,
  ) {
    if (schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new ThawError('INVALID_REQUEST', `invalid Postgres schema name: ${schema}`);
    const opts = { connectionString: url, ...(schema ? { options: `-c search_path=${schema}` } : {}) };
    this.pool = new pg.Pool({ ...opts, max: 10 });
    this.lockPool = new pg.Pool({ ...opts, max: 64 });
    // An idle client losing its connection must not crash the process; the next query reports it.
    this.pool.on('error', noop);
    this.lockPool.on('error', noop);
  }

  /** A dedicated connection; destroyed instead of reused when fn reports it broken. */
  private async client<T>(fn: (c: pg.PoolClient, broken: () => void) => Promise<T>, pool = this.pool): Promise<T> {
    const c = await pool.connect().catch((err: unknown) => {
      throw classify(err);
    });
    c.on('error', noop);
    let destroy = false;
    try {
      return await fn(c, () => (destroy = true));
    } finally {
      c.off('error', noop);
      c.release(destroy);
    }
  }

  /** fn in a transaction, rolled back when it throws; fn's own errors pass through unchanged. */
  private tx<T>(fn: (c: pg.PoolClient) => Promise<T>, pool = this.pool): Promise<T> {
    return this.client(async (c, broken) => {
      await q(c, 'BEGIN');
      let result: T;
      try {
        result = await fn(c);
      } catch (err) {
        await c.query('ROLLBACK').catch(broken);
        throw err;
      }
      await q(c, 'COMMIT');
      return result;
    }, pool);
  }

  async init(): Promise<void> {
    // Under the migrate lock: concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
    const schema = this.schema;
    if (schema) await this.exclusive(() => this.all(`CREATE SCHEMA IF NOT EXISTS ${schema}`));
  }

  async all<T = Record<string, unknown>>(sql: string, params: Param[] = []): Promise<T[]> {
    try {
      return (await this.pool.query(toPgPlaceholders(sql), params)).rows as T[];
    } catch (err) {
      throw classify(err);
    }
  }

  batch(stmts: Stmt[]): Promise<number[]> {
    return this.tx(async (c) => {
      const counts: number[] = [];
      for (const st of stmts) counts.push((await q(c, toPgPlaceholders(st.sql), st.params)).rowCount ?? 0);
      return counts;
    });
  }

  /** Session advisory lock on a dedicated connection; fn's own queries use the pool. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.client(async (c, broken) => {
      await q(c, 'SELECT pg_advisory_lock($1, $2)', [LOCK_NS, MIGRATE_KEY]);
      try {
        return await fn();
      } finally {
        await c.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_NS, MIGRATE_KEY]).catch(broken);
      }
    }, this.lockPool);
  }

  /** Transaction-scoped advisory lock, held on a dedicated connection while fn runs. */
  lock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.tx(async (c) => {
      await q(c, `SET LOCAL lock_timeout = ${Math.max(1, Math.floor(this.lockWaitMs))}`);
      try {
        await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_NS, key]);
      } catch (err) {
        if ((err as { code?: unknown }).code === '55P03') {
          throw new ThawError('APP_BUSY', `lock ${key} is held by another process`, { cause: err, details: { lock: key } });
        }
        throw classify(err);
      }
      return fn();
    }, this.lockPool);
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.end(), this.lockPool.end()]);
  }
}
