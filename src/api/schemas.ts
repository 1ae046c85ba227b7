// Wire schemas of the control API, shared by the server (request bodies) and
// the client (response bodies). Field names on the wire are snake_case; the
// camelCase store rows are converted at the boundary by the to*Wire functions
// (one per row type). Validation is done with zod in the handlers through
// parseOrThrow() (src/http/parse.ts); refinements made with coded() select
// INVALID_APP_NAME, INVALID_ENV_KEY or ENV_VALUE_TOO_LARGE.
import { ErrorBody } from '../http/errors.ts';
import { z } from 'zod';
import { coded } from '../http/parse.ts';
import { validateAppName } from '../image/validate.ts';
import { STATES } from '../state.ts';
import type { AppView, DeployResult } from '../control/types.ts';
import type { DeployRow, SeedRow, SleepRow, WakeRow } from '../store/types.ts';

export const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const ENV_KEY_MAX = 128;
export const ENV_VALUE_MAX_BYTES = 32 * 1024;
export const ENV_TOTAL_MAX_BYTES = 256 * 1024;


function isAppName(s: string): boolean {
  try {
    validateAppName(s);
    return true;
  } catch {
    return false;
  }
}

export const AppName = z.string().refine(isAppName, coded('INVALID_APP_NAME', 'invalid app name'));
export const EnvKey = z
  .string()
  .refine((k) => k.length <= ENV_KEY_MAX && ENV_KEY_RE.test(k), coded('INVALID_ENV_KEY', `env keys match ${ENV_KEY_RE.source}, at most ${ENV_KEY_MAX} chars`));
export const EnvValue = z
  .string()
  .refine((v) => Buffer.byteLength(v, 'utf8') <= ENV_VALUE_MAX_BYTES, coded('ENV_VALUE_TOO_LARGE', `env values are at most ${ENV_VALUE_MAX_BYTES} bytes`))
  .refine((v) => !v.includes('\0'), coded('INVALID_REQUEST', 'env values cannot contain NUL bytes'));
export const EnvVars = z
  .record(EnvKey, EnvValue)
  .refine(
    (vars) => Object.values(vars).reduce((n, v) => n + Buffer.byteLength(v, 'utf8'), 0) <= ENV_TOTAL_MAX_BYTES,
    coded('ENV_VALUE_TOO_LARGE', `env values are at most ${ENV_TOTAL_MAX_BYTES} bytes in total`),
  );
export const IdleTimeout = z.number().int().min(1).max(7 * 24 * 3600);

// ---- requests -------------------------------------------------------------------

export const CreateAppBody = z.strictObject({ name: AppName, idle_timeout_s: IdleTimeout.optional() });
export const SetEnvBody = z.strictObject({ vars: EnvVars });
export const UnsetEnvBody = z.strictObject({ keys: z.array(EnvKey).min(1).max(1000) });
export const NameParams = z.object({ name: AppName });
export const WakesQuery = z.object({ limit: z.coerce.number().int().min(1).max(1000).optional() });
const flag = z.enum(['0', '1', 'true', 'false']).optional().transform((v) => v === '1' || v === 'true');
export const LogsQuery = z.object({ follow: flag });
export const DeployQuery = z.object({ progress: flag });
/** `x-thaw-idle-timeout` header (seconds). */
export const IdleTimeoutHeader = z.coerce.number().pipe(IdleTimeout);
/** `x-thaw-wake-timeout` header: seconds a request is held for the app's wake. */
export const WakeTimeoutHeader = z.coerce.number().pipe(z.number().int().min(1).max(3600));

// ---- responses ------------------------------------------------------------------

export const AppWire = z.object({
  name: z.string(),
  state: z.enum(STATES),
  version: z.number(),
  deploy_id: z.string().nullable(),
  seed_id: z.string().nullable(),
  node: z.string().nullable(),
  vm_id: z.string().nullable(),
  host_port: z.number().nullable(),
  idle_timeout_s: z.number(),
  error: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
  last_wake_at: z.string().nullable(),
  url: z.string(),
});
export const DeployWire = z.object({ id: z.string(), app: z.string(), image_path: z.string(), image_bytes: z.number(), created_at: z.string() });
export const SeedWire = z.object({
  id: z.string(),
  app: z.string(),
  deploy_id: z.string(),
  node: z.string().nullable(),
  bytes_apparent: z.number(),
  bytes_allocated: z.number(),
  bytes_compressed: z.number().nullable(),
  replicated: z.boolean(),
  manifest_sha256: z.string(),
  created_at: z.string(),
  last_used_at: z.string(),
});
export const WakeWire = z.object({
  id: z.string(),
  app: z.string(),
  at: z.string(),
  wall_ms: z.number(),
  boot_mode: z.enum(['snapshot', 'cold']),
  boot_ms: z.number(),
  gate_ms: z.number().nullable(),
  app_start_ms: z.number(),
  pid: z.number().nullable(),
  fs_errors: z.number(),
  fallback_reason: z.string().nullable(),
  node: z.string().nullable(),
  seed_source: z.enum(['local', 'pulled', 'none']),
  placement: z.string().nullable().optional(),
  /** From the wake's start (as the router saw it) to the first byte of the app's answer; null when no request waited. */
  first_byte_ms: z.number().nullable().optional(),
  queued_ms: z.number().optional(),
  seed_outcome: z.string().nullable().optional(),
  outcome: z.enum(['ok', 'deadline', 'cancelled', 'failed']).optional(),
  stages: z.record(z.string(), z.number()),
});
export const SleepWire = z.object({
  id: z.string(),
  app: z.string(),
  at: z.string(),
  trigger: z.enum(['idle', 'manual', 'redeploy', 'shutdown', 'node-leaving']),
  node: z.string().nullable(),
  drain_ms: z.number(),
  cut_requests: z.number(),
  exit_code: z.number().nullable(),
  exit_signal: z.string().nullable(),
  shutdown_ms: z.number().nullable(),
  baked: z.boolean(),
  seed_id: z.string().nullable(),
  total_ms: z.number(),
  stages: z.record(z.string(), z.number()),
  error: z.string().nullable(),
  /** The volume backup this sleep made (null: none). */
  backup: z.object({
    id: z.string(), key: z.string(), node: z.string(), sha256: z.string(), bytes: z.number(), apparent_bytes: z.number(),
    pack_ms: z.number(), upload_ms: z.number().nullable(), state: z.enum(['uploading', 'stored', 'failed', 'purged']), error: z.string().optional(),
  }).nullable().optional(),
});
export const DeployResultWire = z.object({ app: z.string(), deploy: DeployWire, purged_seed: z.string().nullable(), build_ms: z.number() });

/** Deploy an OCI image: a registry reference or a local archive on the control plane's host. */
export const ImageDeployBody = z.strictObject({
  image: z.string().min(1).max(2000),
  /** Replaces the image's Cmd (the Entrypoint stays). */
  command: z.array(z.string().min(1).max(65536).regex(/^[^\0]*$/, 'must not contain NUL')).min(1).max(4096).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  registry_auth: z.strictObject({ username: z.string().min(1).max(256), password: z.string().max(4096) }).optional(),
});
export type ImageDeployBody = z.infer<typeof ImageDeployBody>;

export const OkResponse = z.object({ ok: z.literal(true) });
/** POST /v1/dashboard/login: a one-time dashboard sign-in path (5 minutes, single use). */
export const DashboardLoginResponse = z.object({ login_path: z.string().startsWith('/ui/login?code='), expires_at: z.string() });
export const AppResponse = z.object({ app: AppWire });
export const AppsResponse = z.object({ apps: z.array(AppWire) });
export const EnvListResponse = z.object({ vars: z.array(z.object({ key: z.string(), updated_at: z.string() })) });
export const SleepResponse = z.object({ baked: z.boolean(), seed: SeedWire.nullable(), sleep: SleepWire.nullable().optional() });
export const SleepsResponse = z.object({ sleeps: z.array(SleepWire) });
export const WakeResponse = z.object({ wake: WakeWire });
export const WakesResponse = z.object({ wakes: z.array(WakeWire) });
export const SeedsResponse = z.object({ seeds: z.array(SeedWire) });
/** One line of a `?progress=1` deploy response. */
export const ProgressLine = z.union([
  z.object({ progress: z.string() }),
  z.object({ result: DeployResultWire }),
  z.object({ error: ErrorBody.shape.error }),
]);

export type AppWire = z.infer<typeof AppWire>;
export type DeployWire = z.infer<typeof DeployWire>;
export type SeedWire = z.infer<typeof SeedWire>;
export type WakeWire = z.infer<typeof WakeWire>;
export type SleepWire = z.infer<typeof SleepWire>;
export type DeployResultWire = z.infer<typeof DeployResultWire>;
export type EnvKeyWire = z.infer<typeof EnvListResponse>['vars'][number];
export type ErrorWire = z.infer<typeof ErrorBody>['error'];

// ---- row -> wire ------------------------------------------------------------------

export function toAppWire(a: AppView): AppWire {
  return {
    name: a.name,
    state: a.state,
    version: a.version,
    deploy_id: a.deployId,
    seed_id: a.seedId,
    node: a.node,
    vm_id: a.vmId,
    host_port: a.hostPort,
    idle_timeout_s: a.idleTimeoutS,
    error: a.error,
    created_at: a.createdAt,
    updated_at: a.updatedAt,
    last_wake_at: a.lastWakeAt,
    url: a.url,
  };
}

export function toDeployWire(d: DeployRow): DeployWire {
  return { id: d.id, app: d.app, image_path: d.imagePath, image_bytes: d.imageBytes, created_at: d.createdAt };
}

export function toSeedWire(s: SeedRow): SeedWire {
  return {
    id: s.id,
    app: s.app,
    deploy_id: s.deployId,
    node: s.node,
    bytes_apparent: s.bytesApparent,
    bytes_allocated: s.bytesAllocated,
    bytes_compressed: s.bytesCompressed,
    replicated: s.replicated,
    manifest_sha256: s.manifestSha256,
    created_at: s.createdAt,
    last_used_at: s.lastUsedAt,
  };
}

export function toSleepWire(s: SleepRow): SleepWire {
  return {
    id: s.id, app: s.app, at: s.at, trigger: s.trigger, node: s.node, drain_ms: s.drainMs, cut_requests: s.cutRequests,
    exit_code: s.exitCode, exit_signal: s.exitSignal, shutdown_ms: s.shutdownMs, baked: s.baked, seed_id: s.seedId,
    total_ms: s.totalMs, stages: s.stages, error: s.error,
    backup: s.backup ? {
      id: s.backup.id, key: s.backup.key, node: s.backup.node, sha256: s.backup.sha256, bytes: s.backup.bytes, apparent_bytes: s.backup.apparentBytes,
      pack_ms: s.backup.packMs, upload_ms: s.backup.uploadMs, state: s.backup.state, ...(s.backup.error ? { error: s.backup.error } : {}),
    } : null,
  };
}

export function toWakeWire(w: WakeRow): WakeWire {
  return {
    id: w.id,
    app: w.app,
    at: w.at,
    wall_ms: w.wallMs,
    boot_mode: w.bootMode,
    boot_ms: w.bootMs,
    gate_ms: w.gateMs,
    app_start_ms: w.appStartMs,
    pid: w.pid,
    fs_errors: w.fsErrors,
    fallback_reason: w.fallbackReason,
    node: w.node,
    seed_source: w.seedSource,
    placement: w.placement ?? null,
    first_byte_ms: w.firstByteMs ?? null,
    queued_ms: w.queuedMs ?? 0,
    seed_outcome: w.seedOutcome ?? null,
    outcome: w.outcome ?? 'ok',
    stages: w.stages,
  };
}

export function toDeployResultWire(r: DeployResult): DeployResultWire {
  return { app: r.app, deploy: toDeployWire(r.deploy), purged_seed: r.purgedSeed, build_ms: r.buildMs };
}
