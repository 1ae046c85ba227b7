// Wake: thaw the seed when there is one; on a failure of the thaw, record why
// and cold-boot instead. Cold boots use the seed's own disk copy when its
// files check out against the manifest (it is a consistent filesystem, so data
// written before the bake survives), and the deploy's original image when the
// seed is missing, corrupt or mismatched, or the guest kernel reported
// filesystem errors. A seed is dropped only when it is proven bad (seedVerdict);
// the record's seedOutcome says which case it was. The overall wake deadline
// (p.signal) ends the wake without a cold boot: the VM is deleted, the seed
// kept. Every wake leaves a record, a failed one in the error's details.
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { asThawError, ThawError } from '../errors.ts';
import type { WakeRow } from '../store/types.ts';
import type { RunConfig } from '../wire/run.ts';
import { coldBoot } from './boot.ts';
import { Stopwatch, type NodeContext, type RunningVm } from './context.ts';
import { thaw } from './thaw.ts';
import type { VolumeParams } from './volume.ts';
import { checkSeed } from './verify.ts';

export interface WakeParams {
  app: string;
  deployId: string;
  /** The deploy's disk image (read-only raw). */
  image: string;
  /** Local seed folder, if this node has one for the app. */
  seedDir: string | null;
  seedSource: 'local' | 'pulled' | 'none';
  /** Why there is no seed although one was expected (e.g. pull failed). */
  seedUnavailable?: string;
  env: Record<string, string>;
  /** How the program starts in the guest. */
  run: RunConfig;
  /** The app's volume (null: none). */
  volume?: VolumeParams | null;
  node?: string | null;
  /** TEST ONLY, see ThawParams.unsafeDiskOverride. */
  unsafeDiskOverride?: string;
  /** The overall wake deadline (its reason is a WAKE_DEADLINE ThawError). */
  signal?: AbortSignal;
}

export interface WakeOutcome {
  run: RunningVm;
  record: WakeRow;
}

/** Seed problems that make its disk unusable too (cold-boot the original image). */
const SEED_BROKEN = new Set(['SEED_MISSING', 'SEED_CORRUPT', 'SEED_MISMATCH']);

/** Failures that end a wake at once: no cold boot (it would be slower still, or nobody wants it). */
const WAKE_ENDED: Record<string, NonNullable<WakeRow['outcome']>> = { WAKE_DEADLINE: 'deadline', WAKE_CANCELLED: 'cancelled', SHUTTING_DOWN: 'cancelled' };

/**
 * What a failed thaw proves about its seed. Dropped only when proven bad: its
 * files do not match (hash, missing file, another kernel or agent), the gate
 * failed or the guest kernel logged filesystem errors, the VMM could not load
 * it (restore error), or the restored guest made no progress at all (dead, not
 * slow: see deadline.ts). Everything else (load, the overall deadline, a
 * cancelled wake, a node shutdown, an app that crashed) keeps it.
 */
export function seedVerdict(e: ThawError, fsErrors = 0): `kept:${string}` | `dropped:${string}` {
  if (fsErrors > 0) return 'dropped:fs-errors';
  if (e.details?.restore === true) return 'dropped:restore-error';
  switch (e.code) {
    case 'SEED_CORRUPT':
      return 'dropped:hash-mismatch';
    case 'SEED_MISSING':
      return 'dropped:missing';
    case 'SEED_MISMATCH':
    case 'AGENT_PROTOCOL':
      return 'dropped:mismatch';
    case 'GATE_FAILED':
      return 'dropped:gate-failed';
    case 'AGENT_TIMEOUT':
      return 'dropped:dead-guest';
    case 'WAKE_DEADLINE':
      return 'kept:deadline';
    case 'WAKE_CANCELLED':
      return 'kept:cancelled';
    case 'SHUTTING_DOWN':
      return 'kept:shutdown';
    default:
      return `kept:${e.code.toLowerCase().replace(/_/g, '-')}`;
  }
}

/** The verdict on a seed a node could not get (`seed-unavailable: CODE: …`): only a corrupt object is proven bad. */
function unavailableVerdict(why: string): `kept:${string}` | `dropped:${string}` {
  return /\bSEED_CORRUPT\b/.test(why) ? 'dropped:hash-mismatch' : 'kept:unavailable';
}

export async function wake(ctx: NodeContext, p: WakeParams): Promise<WakeOutcome> {
  const wall = new Stopwatch();
  let fallbackReason: string | null = p.seedUnavailable ?? null;
  let seedOutcome: string = p.seedUnavailable ? unavailableVerdict(p.seedUnavailable) : 'none';
  let seedCheck: string | null = null;
  let fsErrors = 0;
  let coldDisk = p.image;
  const sig = p.signal ? { signal: p.signal } : {};
  if (p.seedDir) {
    const sw = new Stopwatch();
    try {
      const { manifest, check } = await checkSeed(p.seedDir, { kernelSha256: ctx.assets.kernelSha256, initrdSha256: ctx.assets.initrdSha256, driver: ctx.hv.name, accel: await ctx.hv.accel() });
      seedCheck = check;
      sw.lap('seed_check_ms');
      if (manifest.deploy_id !== p.deployId) throw new ThawError('SEED_MISMATCH', `seed is of deploy ${manifest.deploy_id}, app runs ${p.deployId}`);
      coldDisk = path.join(p.seedDir, 'disk.img');
      const { run, gate } = await thaw(ctx, { app: p.app, deployId: p.deployId, seedDir: p.seedDir, manifest, env: p.env, run: p.run, volume: p.volume, unsafeDiskOverride: p.unsafeDiskOverride, ...sig }, sw);
      const s = sw.stages;
      return {
        run,
        record: record(p, {
          wallMs: wall.total(),
          bootMode: 'snapshot',
          bootMs: (s.restore_ms ?? 0) + (s.agent_ms ?? 0),
          gateMs: gate.ms,
          appStartMs: s.app_start_ms ?? 0,
          pid: run.appPid,
          fsErrors: gate.fs_errors.length,
          fallbackReason: null,
          seedOutcome: 'used',
          stages: { ...s, seed_check_full: check === 'full' ? 1 : 0 },
        }),
      };
    } catch (err) {
      const e = asThawError(err);
      const gate = (e.details?.gate ?? null) as { fs_errors?: string[] } | null;
      fsErrors = gate?.fs_errors?.length ?? 0;
      // A broken seed, or a disk the kernel reported errors on: boot the deploy's image.
      if (SEED_BROKEN.has(e.code) || fsErrors > 0) coldDisk = p.image;
      fallbackReason = `${e.code}: ${e.message}`.slice(0, 1000);
      seedOutcome = seedVerdict(e, fsErrors);
      const ended = WAKE_ENDED[e.code];
      if (ended) throw endedError(p, e, wall, ended, seedOutcome, 'snapshot', sw.stages);
      ctx.log.warn({ app: p.app, err: e.message, code: e.code, seedOutcome }, 'thaw failed; falling back to cold boot');
    }
  }
  const sw = new Stopwatch();
  try {
    const run = await coldBoot(ctx, { app: p.app, deployId: p.deployId, baseDisk: coldDisk, env: p.env, run: p.run, volume: p.volume, ...sig }, sw);
    const s = sw.stages;
    return {
      run,
      record: record(p, {
        wallMs: wall.total(),
        bootMode: 'cold',
        bootMs: (s.vmm_start_ms ?? 0) + (s.boot_ms ?? 0),
        gateMs: null,
        appStartMs: s.app_start_ms ?? 0,
        pid: run.appPid,
        fsErrors,
        fallbackReason,
        seedOutcome,
        stages: { ...s, cold_from_seed_disk: coldDisk === p.image ? 0 : 1, ...(seedCheck ? { seed_check_full: seedCheck === 'full' ? 1 : 0 } : {}) },
      }),
    };
  } catch (err) {
    const e = asThawError(err, 'WAKE_FAILED');
    const ended = WAKE_ENDED[e.code];
    if (ended) throw endedError(p, e, wall, ended, seedOutcome === 'none' ? 'none' : seedOutcome, 'cold', sw.stages, fallbackReason);
    const rec = record(p, { ...failedFields(wall, 'cold', fallbackReason ?? `${e.code}: ${e.message}`.slice(0, 1000), seedOutcome, sw.stages), outcome: 'failed' });
    throw new ThawError('WAKE_FAILED', `wake of ${p.app} failed: ${e.message}`, {
      cause: e,
      details: { cause_code: e.code, fallback_reason: fallbackReason, wall_ms: wall.total(), record: rec },
    });
  }
}

function failedFields(wall: Stopwatch, bootMode: WakeRow['bootMode'], fallbackReason: string | null, seedOutcome: string, stages: Record<string, number>) {
  return { wallMs: wall.total(), bootMode, bootMs: 0, gateMs: null, appStartMs: 0, pid: null, fsErrors: 0, fallbackReason, seedOutcome, stages };
}

/** The wake ended without a VM (deadline, cancelled, shutdown): the error keeps its code and carries the wake's record. */
function endedError(p: WakeParams, e: ThawError, wall: Stopwatch, outcome: NonNullable<WakeRow['outcome']>, seedOutcome: string, mode: WakeRow['bootMode'], stages: Record<string, number>, fallbackReason: string | null = null): ThawError {
  const rec = record(p, { ...failedFields(wall, mode, fallbackReason ?? `${e.code}: ${e.message}`.slice(0, 1000), seedOutcome, stages), outcome });
  return new ThawError(e.code, e.message, { cause: e, details: { ...e.details, record: rec } });
}

function record(p: WakeParams, r: Omit<WakeRow, 'id' | 'app' | 'at' | 'node' | 'seedSource' | 'queuedMs'>): WakeRow {
  return { id: randomUUID(), app: p.app, at: new Date().toISOString(), node: p.node ?? null, seedSource: p.seedDir ? p.seedSource : 'none', queuedMs: 0, outcome: 'ok', ...r };
}
