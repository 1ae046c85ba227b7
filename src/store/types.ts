// Row types and the Store interface shared by the SQLite and Postgres backends.
import type { RunConfig } from '../wire/run.ts';
import type { State } from '../state.ts';

export interface AppRow {
  name: string;
  state: State;
  /** Bumped by every write to the row; lets callers detect changes. */
  version: number;
  deployId: string | null;
  seedId: string | null;
  node: string | null;
  vmId: string | null;
  hostPort: number | null;
  idleTimeoutS: number;
  error: string | null;
  createdAt: string;
  updatedAt: string;
  lastWakeAt: string | null;
}

/** The non-state fields of an app a caller may change. */
export type AppPatch = Partial<Pick<AppRow, 'deployId' | 'node' | 'vmId' | 'hostPort' | 'error' | 'idleTimeoutS' | 'seedId'>>;

export interface DeployRow {
  id: string;
  app: string;
  imagePath: string;
  imageBytes: number;
  createdAt: string;
  /** How the program starts in the guest; null for deploys made before run configs (derived from the image at wake). */
  runConfig: RunConfig | null;
}

export interface SeedRow {
  id: string;
  app: string;
  deployId: string;
  /** Node where it was baked. */
  node: string | null;
  bytesApparent: number;
  bytesAllocated: number;
  bytesCompressed: number | null;
  replicated: boolean;
  manifestSha256: string;
  createdAt: string;
  lastUsedAt: string;
}

export interface WakeRow {
  id: string;
  app: string;
  at: string;
  wallMs: number;
  bootMode: 'snapshot' | 'cold';
  bootMs: number;
  gateMs: number | null;
  appStartMs: number;
  pid: number | null;
  fsErrors: number;
  fallbackReason: string | null;
  node: string | null;
  seedSource: 'local' | 'pulled' | 'none';
  /** The scheduler's choice of node and why (null for wakes before nodes were scheduled). */
  placement?: string | null;
  stages: Record<string, number>;
}

/** An app's volume (src/volume): where it mounts, how big, which node holds the file, who holds the lease. */
export interface VolumeRow {
  app: string;
  /** Absolute guest path. */
  path: string;
  sizeBytes: number;
  /** Home node: the node that holds the file (null until the first wake makes it). */
  node: string | null;
  /** Lease: the wake that may mount it (one writer); null when no VM has it. */
  holder: string | null;
  leasedAt: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface NodeRow {
  name: string;
  url: string;
  capacity: number;
  running: number;
  seeds: string[];
  heartbeatAt: string;
}

export interface Store {
  /** Idempotent; applies pending migrations recorded in schema_migrations. */
  migrate(): Promise<void>;
  close(): Promise<void>;
  // apps
  createApp(a: { name: string; idleTimeoutS: number }): Promise<AppRow>;
  getApp(name: string): Promise<AppRow>;
  findApp(name: string): Promise<AppRow | null>;
  listApps(): Promise<AppRow[]>;
  /** The one compare-and-set state change: APP_BUSY when the state is not in `from`. */
  transition(name: string, from: State | readonly State[], to: State, patch?: AppPatch): Promise<AppRow>;
  /** Non-state fields only. */
  updateApp(name: string, patch: AppPatch): Promise<AppRow>;
  /** Removes the app and its env, deploys, seeds and wake rows. */
  deleteApp(name: string): Promise<void>;
  // deploys
  addDeploy(d: { id: string; app: string; imagePath: string; imageBytes: number; runConfig?: RunConfig | null; createdAt?: string }): Promise<DeployRow>;
  listDeploys(app: string): Promise<DeployRow[]>;
  // env (AES-256-GCM at rest)
  setEnv(app: string, vars: Record<string, string>): Promise<void>;
  unsetEnv(app: string, keys: string[]): Promise<void>;
  /** Decrypted values, for delivering to the VM only. */
  getEnv(app: string): Promise<Record<string, string>>;
  listEnvKeys(app: string): Promise<{ key: string; updatedAt: string }[]>;
  // seeds
  /** Upsert by id. */
  putSeed(s: SeedRow): Promise<void>;
  /** Only these columns, so concurrent writers of other columns lose nothing. */
  markSeedReplicated(id: string, bytesCompressed: number): Promise<void>;
  touchSeed(id: string, at: string): Promise<void>;
  /** The seed apps.seed_id points to, else the newest seed row of the app. */
  getSeed(app: string): Promise<SeedRow | null>;
  listSeeds(): Promise<SeedRow[]>;
  deleteSeed(id: string): Promise<void>;
  // wakes
  addWake(w: WakeRow): Promise<void>;
  /** Newest first. */
  listWakes(app: string, limit?: number): Promise<WakeRow[]>;
  // volumes (one per app)
  /** VOLUME_CONFLICT when the app already has one. */
  addVolume(v: { app: string; path: string; sizeBytes: number }): Promise<VolumeRow>;
  getVolume(app: string): Promise<VolumeRow | null>;
  listVolumes(): Promise<VolumeRow[]>;
  updateVolume(app: string, patch: Partial<Pick<VolumeRow, 'sizeBytes' | 'node'>>): Promise<VolumeRow>;
  deleteVolume(app: string): Promise<void>;
  /**
   * Take the one-writer lease for `holder`: won when no one holds it, or when the app's
   * state says no VM of it exists (asleep, failed, created: a holder left by a crash).
   * VOLUME_BUSY otherwise. Compare-and-set in one UPDATE, so two control planes never both win.
   */
  leaseVolume(app: string, holder: string): Promise<VolumeRow>;
  /** Give the lease back (only if `holder` still has it). */
  releaseVolume(app: string, holder: string): Promise<void>;
  // nodes
  upsertNode(n: NodeRow): Promise<void>;
  listNodes(): Promise<NodeRow[]>;
  /** One-winner lock per app, safe across processes (and, on Postgres, hosts). */
  withAppLock<T>(app: string, fn: () => Promise<T>): Promise<T>;
}

export type Param = string | number | boolean | null;
export interface Stmt {
  sql: string;
  params: Param[];
}

/** What a backend provides; SQL uses `?` placeholders and portable syntax. */
export interface Driver {
  readonly dialect: 'sqlite' | 'pg';
  all<T = Record<string, unknown>>(sql: string, params?: Param[]): Promise<T[]>;
  /** Runs all statements in one transaction; returns each one's changed-row count. */
  batch(stmts: Stmt[]): Promise<number[]>;
  /** Database-wide exclusive section (used by migrate). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** Cross-process lock on `key` held while fn runs. */
  lock<T>(key: string, fn: () => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
