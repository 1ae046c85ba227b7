// The one schema definition: migrations in portable SQL, the few dialect
// differences (in DIALECT), placeholder conversion and row mappers.
import type { State } from '../state.ts';
import { RunConfig } from '../wire/run.ts';
import type { AppRow, DeployRow, NodeRow, SeedRow, SleepRow, VolumeBackup, VolumeRow, WakeRow } from './types.ts';

export interface Migration {
  version: number;
  name: string;
  /** Statements; `{{TOKEN}}` is replaced per dialect from DIALECT. */
  up: string[];
}

/** Every per-dialect difference in the schema lives here. */
const DIALECT: Record<'sqlite' | 'pg', Record<string, string>> = {
  sqlite: { BOOL: 'INTEGER' },
  pg: { BOOL: 'BOOLEAN' },
};

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial',
    up: [
      `CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        deploy_id TEXT,
        seed_id TEXT,
        node TEXT,
        vm_id TEXT,
        host_port INTEGER,
        idle_timeout_s INTEGER NOT NULL,
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_wake_at TEXT
      )`,
      `CREATE TABLE deploys (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        image_path TEXT NOT NULL,
        image_bytes BIGINT NOT NULL,
        created_at TEXT NOT NULL
      )`,
      `CREATE INDEX deploys_app ON deploys(app, created_at)`,
      `CREATE TABLE env (
        app TEXT NOT NULL REFERENCES apps(name),
        key TEXT NOT NULL,
        value_enc TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (app, key)
      )`,
      `CREATE TABLE seeds (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        deploy_id TEXT NOT NULL,
        node TEXT,
        bytes_apparent BIGINT NOT NULL,
        bytes_allocated BIGINT NOT NULL,
        bytes_compressed BIGINT,
        replicated {{BOOL}} NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT NOT NULL
      )`,
      `CREATE INDEX seeds_app ON seeds(app, created_at)`,
      `CREATE TABLE wakes (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        at TEXT NOT NULL,
        wall_ms INTEGER NOT NULL,
        boot_mode TEXT NOT NULL,
        boot_ms INTEGER NOT NULL,
        gate_ms INTEGER,
        app_start_ms INTEGER NOT NULL,
        pid INTEGER,
        fs_errors INTEGER NOT NULL,
        fallback_reason TEXT,
        node TEXT,
        seed_source TEXT NOT NULL,
        stages TEXT NOT NULL
      )`,
      `CREATE INDEX wakes_app_at ON wakes(app, at)`,
      `CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        running INTEGER NOT NULL,
        seeds TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL
      )`,
      // Lease rows for withAppLock on SQLite (Postgres uses advisory locks).
      `CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        pid INTEGER NOT NULL,
        acquired_at TEXT NOT NULL
      )`,
    ],
  },
  {
    version: 2,
    name: 'wake placement',
    up: [`ALTER TABLE wakes ADD COLUMN placement TEXT`],
  },
  {
    version: 3,
    name: 'deploy run config',
    // JSON of src/wire/run.ts RunConfig; NULL for deploys made before it (derived from the image).
    up: [`ALTER TABLE deploys ADD COLUMN run_config TEXT`],
  },
  {
    version: 4,
    name: 'sleep records and per-app wake timeout',
    up: [
      // One row per sleep, whatever triggered it (src/control/runs.ts).
      `CREATE TABLE sleeps (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name),
        at TEXT NOT NULL,
        triggered_by TEXT NOT NULL,
        node TEXT,
        drain_ms INTEGER NOT NULL,
        cut_requests INTEGER NOT NULL,
        exit_code INTEGER,
        exit_signal TEXT,
        shutdown_ms INTEGER,
        baked {{BOOL}} NOT NULL,
        seed_id TEXT,
        total_ms INTEGER NOT NULL,
        stages TEXT NOT NULL,
        error TEXT
      )`,
      `CREATE INDEX sleeps_app_at ON sleeps(app, at)`,
      `ALTER TABLE apps ADD COLUMN wake_timeout_s INTEGER`,
    ],
  },
  {
    version: 5,
    name: 'wake first byte',
    // Set by the router once the app's first answer after the wake starts (src/router); NULL for wakes no request waited for.
    up: [`ALTER TABLE wakes ADD COLUMN first_byte_ms INTEGER`],
  },
  {
    version: 6,
    name: 'wake admission and seed outcome',
    // queued_ms: wait for an admission slot; seed_outcome: used|none|kept:CASE|dropped:CASE; outcome: ok|deadline|cancelled|failed.
    up: [`ALTER TABLE wakes ADD COLUMN queued_ms INTEGER`, `ALTER TABLE wakes ADD COLUMN seed_outcome TEXT`, `ALTER TABLE wakes ADD COLUMN outcome TEXT`],
  },
  {
    // One volume per app: its guest path, size, home node and
    // the lease of the one VM that may mount it (holder NULL: none).
    version: 7,
    name: 'volumes',
    up: [
      `CREATE TABLE volumes (
        app TEXT PRIMARY KEY REFERENCES apps(name),
        path TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        node TEXT,
        holder TEXT,
        leased_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
      )`,
    ],
  },
  {
    // The volume backup a sleep made (JSON VolumeBackup: object key, SHA-256, bytes, ms, state); NULL: none.
    version: 8,
    name: 'sleep volume backup',
    up: [`ALTER TABLE sleeps ADD COLUMN backup TEXT`],
  },
];

export const MIGRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`;

export function dialectSql(sql: string, dialect: 'sqlite' | 'pg'): string {
  return sql.replace(/\{\{(\w+)\}\}/g, (_, t: string) => {
    const v = DIALECT[dialect][t];
    if (v === undefined) throw new Error(`unknown dialect token ${t}`);
    return v;
  });
}

/** `?` placeholders to `$1..$n`, leaving quoted text alone. */
export function toPgPlaceholders(sql: string): string {
  let n = 0;
  let out = '';
  let quote: string | null = null;
  for (const ch of sql) {
    if (quote) {
      if (ch === quote) quote = null;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
    } else if (ch === '?') {
      out += `$${++n}`;
      continue;
    }
    out += ch;
  }
  return out;
}

type Raw = Record<string, unknown>;
const str = (v: unknown): string => String(v);
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
/** Postgres returns BIGINT as a string. */
const num = (v: unknown): number => Number(v);
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

export function toApp(r: Raw): AppRow {
  return {
    name: str(r.name),
    state: str(r.state) as State,
    version: num(r.version),
    deployId: strOrNull(r.deploy_id),
    seedId: strOrNull(r.seed_id),
    node: strOrNull(r.node),
    vmId: strOrNull(r.vm_id),
    hostPort: numOrNull(r.host_port),
    idleTimeoutS: num(r.idle_timeout_s),
    wakeTimeoutS: numOrNull(r.wake_timeout_s),
    error: strOrNull(r.error),
    createdAt: str(r.created_at),
    updatedAt: str(r.updated_at),
    lastWakeAt: strOrNull(r.last_wake_at),
  };
}

/** AppPatch field -> column. */
export const PATCH_COLUMNS = {
  deployId: 'deploy_id',
  node: 'node',
  vmId: 'vm_id',
  hostPort: 'host_port',
  error: 'error',
  idleTimeoutS: 'idle_timeout_s',
  wakeTimeoutS: 'wake_timeout_s',
  seedId: 'seed_id',
} as const;

export function toDeploy(r: Raw): DeployRow {
  return { id: str(r.id), app: str(r.app), imagePath: str(r.image_path), imageBytes: num(r.image_bytes), createdAt: str(r.created_at), runConfig: r.run_config == null ? null : RunConfig.parse(JSON.parse(str(r.run_config))) };
}

export function toSeed(r: Raw): SeedRow {
  return {
    id: str(r.id),
    app: str(r.app),
    deployId: str(r.deploy_id),
    node: strOrNull(r.node),
    bytesApparent: num(r.bytes_apparent),
    bytesAllocated: num(r.bytes_allocated),
    bytesCompressed: numOrNull(r.bytes_compressed),
    replicated: Boolean(r.replicated),
    manifestSha256: str(r.manifest_sha256),
    createdAt: str(r.created_at),
    lastUsedAt: str(r.last_used_at),
  };
}

export function toWake(r: Raw): WakeRow {
  return {
    id: str(r.id),
    app: str(r.app),
    at: str(r.at),
    wallMs: num(r.wall_ms),
    bootMode: str(r.boot_mode) as WakeRow['bootMode'],
    bootMs: num(r.boot_ms),
    gateMs: numOrNull(r.gate_ms),
    appStartMs: num(r.app_start_ms),
    pid: numOrNull(r.pid),
    fsErrors: num(r.fs_errors),
    fallbackReason: strOrNull(r.fallback_reason),
    node: strOrNull(r.node),
    seedSource: str(r.seed_source) as WakeRow['seedSource'],
    placement: strOrNull(r.placement),
    firstByteMs: numOrNull(r.first_byte_ms),
    queuedMs: num(r.queued_ms ?? 0),
    seedOutcome: strOrNull(r.seed_outcome),
    outcome: (strOrNull(r.outcome) ?? 'ok') as NonNullable<WakeRow['outcome']>,
    stages: JSON.parse(str(r.stages)) as Record<string, number>,
  };
}

export function toSleep(r: Raw): SleepRow {
  return {
    id: str(r.id),
    app: str(r.app),
    at: str(r.at),
    trigger: str(r.triggered_by) as SleepRow['trigger'],
    node: strOrNull(r.node),
    drainMs: num(r.drain_ms),
    cutRequests: num(r.cut_requests),
    exitCode: numOrNull(r.exit_code),
    exitSignal: strOrNull(r.exit_signal),
    shutdownMs: numOrNull(r.shutdown_ms),
    baked: Boolean(r.baked),
    seedId: strOrNull(r.seed_id),
    totalMs: num(r.total_ms),
    stages: JSON.parse(str(r.stages)) as Record<string, number>,
    error: strOrNull(r.error),
    ...(r.backup ? { backup: JSON.parse(str(r.backup)) as VolumeBackup } : {}),
  };
}

export function toNode(r: Raw): NodeRow {
  return {
    name: str(r.name),
    url: str(r.url),
    capacity: num(r.capacity),
    running: num(r.running),
    seeds: JSON.parse(str(r.seeds)) as string[],
    heartbeatAt: str(r.heartbeat_at),
  };
}

export function toVolume(r: Raw): VolumeRow {
  return {
    app: str(r.app),
    path: str(r.path),
    sizeBytes: num(r.size_bytes),
    node: strOrNull(r.node),
    holder: strOrNull(r.holder),
    leasedAt: strOrNull(r.leased_at),
    createdAt: str(r.created_at),
    updatedAt: str(r.updated_at),
  };
}
