// SQLite driver (better-sqlite3, synchronous): one host, WAL, busy_timeout,
// foreign keys on. withAppLock uses a lease row in `locks`, claimed inside a
// BEGIN IMMEDIATE transaction; a lease whose owner process died is taken over.
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { ThawError } from '../errors.ts';
import { storeError } from './base.ts';
import type { Driver, Param, Stmt } from './types.ts';

const BUSY_TIMEOUT_MS = 5000;
const LOCK_POLL_MS = 10;

function classify(err: unknown): ThawError {
  if (err instanceof ThawError) return err;
  const code = (err as { code?: unknown }).code;
  if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') return storeError(err, 'unique');
  if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return storeError(err, 'foreign_key');
  return storeError(err);
}

/** better-sqlite3 binds no booleans: they become 0/1 (the BOOL column is INTEGER here). */
const bind = (params: Param[]): (string | number | null)[] => params.map((p) => (typeof p === 'boolean' ? (p ? 1 : 0) : p));

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class SqliteDriver implements Driver {
  readonly dialect = 'sqlite' as const;
  private readonly db: Database.Database;
  private readonly stmts = new Map<string, Database.Statement>();

  constructor(
    path: string,
    private readonly lockWaitMs = 60_000,
  ) {
    try {
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('synchronous = NORMAL');
    } catch (err) {
      throw storeError(err);
    }
  }

  private prep(sql: string): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  private sync<T>(f: () => T): T {
    try {
      return f();
    } catch (err) {
      throw classify(err);
    }
  }

  async all<T = Record<string, unknown>>(sql: string, params: Param[] = []): Promise<T[]> {
    return this.sync(() => {
      const s = this.prep(sql);
      if (s.reader) return s.all(...bind(params)) as T[];
      s.run(...bind(params));
      return [];
    });
  }

  async batch(stmts: Stmt[]): Promise<number[]> {
    return this.sync(() => this.db.transaction(() => stmts.map((st) => this.prep(st.sql).run(...bind(st.params)).changes)).immediate());
  }

  /** Holds the write lock while fn runs; everything on this connection meanwhile is part of it (used by migrate only). */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    await this.beginImmediate();
    try {
      const result = await fn();
      this.sync(() => this.db.exec('COMMIT'));
      return result;
    } catch (err) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      throw err;
    }
  }

  /**
   * BEGIN IMMEDIATE without blocking the event loop: a synchronous busy wait could
   * deadlock against another connection of this process that holds the lock across an await.
   */
  private async beginImmediate(): Promise<void> {
    const deadline = Date.now() + BUSY_TIMEOUT_MS;
    this.db.pragma('busy_timeout = 0');
    try {
      for (;;) {
        try {
          this.db.exec('BEGIN IMMEDIATE');
          return;
        } catch (err) {
          if ((err as { code?: unknown }).code !== 'SQLITE_BUSY' || Date.now() > deadline) throw classify(err);
        }
        await sleep(LOCK_POLL_MS);
      }
    } finally {
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  async lock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const owner = `${process.pid}:${randomUUID()}`;
    const deadline = Date.now() + this.lockWaitMs;
    while (!this.tryClaim(key, owner)) {
      if (Date.now() > deadline) throw new ThawError('APP_BUSY', `lock ${key} is held by another process`, { details: { lock: key } });
      await sleep(LOCK_POLL_MS);
    }
    try {
      return await fn();
    } finally {
      this.sync(() => this.prep('DELETE FROM locks WHERE name = ? AND owner = ?').run(key, owner));
    }
  }

  private tryClaim(key: string, owner: string): boolean {
    const claim = this.db.transaction((): boolean => {
      const held = this.prep('SELECT pid FROM locks WHERE name = ?').get(key) as { pid: number } | undefined;
      if (held && pidAlive(held.pid)) return false;
      this.prep(
        `INSERT INTO locks (name, owner, pid, acquired_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, acquired_at = excluded.acquired_at`,
      ).run(key, owner, process.pid, new Date().toISOString());
      return true;
    });
    return this.sync(() => claim.immediate());
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
