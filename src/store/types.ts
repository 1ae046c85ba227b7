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
  /** How long the router holds a request for this app's wake; null: the router's default. */
  wakeTimeoutS: number | null;
  error: string | null;
  createdAt: string;
  updatedAt: string;
  lastWakeAt: string | null;
}

/** The non-state fields of an app a caller may change. */
export type AppPatch = Partial<Pick<AppRow, 'deployId' | 'node' | 'vmId' | 'hostPort' | 'error' | 'idleTimeoutS' | 'wakeTimeoutS' | 'seedId'>>;

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
  /** From the wake's start (as the router saw it) to the first byte of the app's answer; null when no request waited for the wake. */
  firstByteMs?: number | null;
  /** How long the wake waited for an admission slot on its node (ms; included in wallMs). */
  queuedMs?: number;
  /**
   * What became of the app's seed: 'used' (thawed), 'none' (no seed), 'kept:CASE'
   * (a thaw failed for a reason that does not make the seed bad: deadline,
   * cancelled, shutdown, unavailable, …) or 'dropped:CASE' (proven bad:
   * hash-mismatch, missing, mismatch, gate-failed, fs-errors, restore-error,
   * dead-guest). Null for wakes recorded before it existed.
   */
  seedOutcome?: string | null;
  /** 'ok' (an app serves), 'deadline' (overall wake deadline), 'cancelled' (dropped from the queue, or node shutdown), 'failed'. */
  outcome?: 'ok' | 'deadline' | 'cancelled' | 'failed';
  stages: Record<string, number>;
}

/** What put an app to sleep. */
export type SleepTrigger = 'idle' | 'manual' | 'redeploy' | 'shutdown' | 'node-leaving';

/** One sleep: drain, SIGTERM (grace, SIGKILL), then bake or delete the VM. Times in ms. */
export interface SleepRow {
  id: string;
  app: string;
  at: string;
  trigger: SleepTrigger;
  node: string | null;
  /** Waiting for in-flight requests after routing to the VM stopped. */
  drainMs: number;
  /** Requests still in flight when the drain time ran out (cut with the VM). */
  cutRequests: number;
  /** The app's exit code, or the signal that ended it (SIGKILL after the grace period); both null when no app ran. */
  exitCode: number | null;
  exitSignal: string | null;
  /** SIGTERM until the app was gone; null when the node did not say. */
  shutdownMs: number | null;
  baked: boolean;
  seedId: string | null;
  totalMs: number;
  /** Per-step times on the node (stop_app, keep_logs, bake_or_delete, ...). */
  stages: Record<string, number>;
  error: string | null;
  /** The volume backup this sleep made (absent: none; the app has no volume or no object storage). */
  backup?: VolumeBackup | null;
}

/**
 * A backup of an app's volume, made by one sleep (its id is the sleep's id): packed on the
 * volume's home node after the VM was gone (packMs, step backup_volume), then uploaded
 * to object storage (uploadMs) under `key`. Only the newest few stay stored; older ones are purged.
 */
export interface VolumeBackup {
  id: string;
  key: string;
  /** The node whose volume file it copies. */
  node: string;
  /** SHA-256 of the object's bytes (checked on every download). */
  sha256: string;
  /** Compressed bytes (the object's size). */
  bytes: number;
  /** The volume file's apparent size. */
  apparentBytes: number;
  packMs: number;
  uploadMs: number | null;
  state: 'uploading' | 'stored' | 'failed' | 'purged';
  error?: string;
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
  /** Record the wake's first response (only the first call per wake counts); the updated row, or null when no such wake. */
  setWakeFirstByte(id: string, ms: number): Promise<WakeRow | null>;
  /** Newest first. */
  listWakes(app: string, limit?: number): Promise<WakeRow[]>;
  // sleeps
  addSleep(s: SleepRow): Promise<void>;
  /** Newest first. */
  listSleeps(app: string, limit?: number): Promise<SleepRow[]>;
  /** Set (replace) the volume backup of sleep `id`. */
  setSleepBackup(id: string, backup: VolumeBackup): Promise<void>;
  // volumes (one per app)
  /** VOLUME_CONFLICT when the app already has one. */
  addVolume(v: { app: string; path: string; sizeBytes: number }): Promise<VolumeRow>;
  getVolume(app: string): Promise<VolumeRow | null>;
  listVolumes(): Promise<VolumeRow[]>;
  updateVolume(app: string, patch: Partial<Pick<VolumeRow, 'sizeBytes' | 'node'>>): Promise<VolumeRow>;
  deleteVolume(app: string): Promise<void>;
  /**
   * Take the one-writer lease for `holder`: won when no one holds it, or when the app's
   * state says no VM of it exists (asleep, failed, created: a holder left by a crash), except
   * from a volume transfer (holder `transfer-…`, which runs while the app is asleep) younger than an hour.
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
