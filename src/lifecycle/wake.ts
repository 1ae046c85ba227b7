// Wake: thaw the seed when there is one; on ANY failure of the thaw, record
// why and cold-boot instead. Cold boots use the seed's own disk copy when its
// files check out against the manifest (it is a consistent filesystem, so data
// written before the bake survives), and the deploy's original image when the
// seed is missing, corrupt or mismatched, or the guest kernel reported
// filesystem errors. The control plane then drops a seed that was not used, so
// the next idle bakes a fresh one. Every wake leaves a record.
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
}

export interface WakeOutcome {
  run: RunningVm;
  record: WakeRow;
}

/** Seed problems that make its disk unusable too (cold-boot the original image). */
const SEED_BROKEN = new Set(['SEED_MISSING', 'SEED_CORRUPT', 'SEED_MISMATCH']);

export async function wake(ctx: NodeContext, p: WakeParams): Promise<WakeOutcome> {
  const wall = new Stopwatch();
  let fallbackReason: string | null = p.seedUnavailable ?? null;
  let seedCheck: string | null = null;
  let fsErrors = 0;
  let coldDisk = p.image;
  if (p.seedDir) {
    const sw = new Stopwatch();
    try {
      const { manifest, check } = await checkSeed(p.seedDir, { kernelSha256: ctx.assets.kernelSha256, initrdSha256: ctx.assets.initrdSha256, driver: ctx.hv.name, accel: await ctx.hv.accel() });
      seedCheck = check;
      sw.lap('seed_check_ms');
      if (manifest.deploy_id !== p.deployId) throw new ThawError('SEED_MISMATCH', `seed is of deploy ${manifest.deploy_id}, app runs ${p.deployId}`);
      coldDisk = path.join(p.seedDir, 'disk.img');
      const { run, gate } = await thaw(ctx, { app: p.app, deployId: p.deployId, seedDir: p.seedDir, manifest, env: p.env, run: p.run, volume: p.volume, unsafeDiskOverride: p.unsafeDiskOverride }, sw);
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
      ctx.log.warn({ app: p.app, err: e.message, code: e.code }, 'thaw failed; falling back to cold boot');
    }
  }
  const sw = new Stopwatch();
  try {
    const run = await coldBoot(ctx, { app: p.app, deployId: p.deployId, baseDisk: coldDisk, env: p.env, run: p.run, volume: p.volume }, sw);
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
        stages: { ...s, cold_from_seed_disk: coldDisk === p.image ? 0 : 1, ...(seedCheck ? { seed_check_full: seedCheck === 'full' ? 1 : 0 } : {}) },
      }),
    };
  } catch (err) {
    const e = asThawError(err, 'WAKE_FAILED');
    throw new ThawError('WAKE_FAILED', `wake of ${p.app} failed: ${e.message}`, {
      cause: e,
      details: { cause_code: e.code, fallback_reason: fallbackReason, wall_ms: wall.total() },
    });
  }
}

function record(p: WakeParams, r: Omit<WakeRow, 'id' | 'app' | 'at' | 'node' | 'seedSource'>): WakeRow {
  return { id: randomUUID(), app: p.app, at: new Date().toISOString(), node: p.node ?? null, seedSource: p.seedDir ? p.seedSource : 'none', ...r };
}
