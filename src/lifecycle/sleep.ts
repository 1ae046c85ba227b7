// Sleep, on the node. Whatever triggered it (idle, `thaw sleep`, a redeploy,
// shutdown, a node leaving), the control plane has already stopped routing to
// the VM and drained its requests (src/control/runs.ts). Then, in this order:
//   1. stop_app: SIGTERM to the app, SIGKILL after the grace period; its exit is recorded;
//   2. keep_logs: the app's log, last words included, is copied off the guest's tmpfs;
//   3. (a volume is unmounted here)
//   4. bake a seed (the first idle after a deploy), else delete the VM.
// The VM is gone afterwards whatever failed. Writes a thawed VM made to its
// overlay disk are dropped with it: the disk beyond the seed is ephemeral.
// The app's volume is what keeps its writes: before either path the app is
// stopped and the volume unmounted (its cache dropped), so a bake's pause
// never holds a page of it.
import { asThawError } from '../errors.ts';
import { bake, type BakeResult } from './bake.ts';
import type { NodeContext, RunningVm } from './context.ts';
import { destroyVm } from './destroy.ts';
import { unmountVolume } from './volume.ts';

/** How long an app may take to exit after SIGTERM before it is killed, unless the caller says. */
export const DEFAULT_STOP_GRACE_MS = 10_000;

export interface SleepOptions {
  /** The app has a seed already (or must not get one): delete the VM; false: bake one. */
  haveSeed: boolean;
  /** SIGTERM -> SIGKILL grace, ms (default DEFAULT_STOP_GRACE_MS). */
  graceMs?: number;
  /** Copies the app's log off the VM (the bake scrubs it, the delete drops it). */
  keepLogs?: (run: RunningVm) => Promise<void>;
}

export interface SleepOutcome {
  /** How the app ended: its exit code or the signal that ended it; null when no app ran (it had exited already). */
  exit: { code: number | null; signal: string | null } | null;
  /** SIGTERM until the app was gone (SIGKILL included). */
  shutdownMs: number;
  baked: BakeResult | null;
  /** The first step that failed, as `CODE: message` (the VM is gone anyway). */
  error: string | null;
  /** Milliseconds per step, by step name. */
  stages: Record<string, number>;
  /** The volume could not be unmounted: the VM is deleted, never baked (its journal replays at the next attach). */
  volumeStuck?: boolean;
}

interface SleepRun {
  ctx: NodeContext;
  run: RunningVm;
  opts: SleepOptions;
  out: SleepOutcome;
}

type Step = (s: SleepRun) => Promise<void>;

async function stopApp({ run, opts, out }: SleepRun): Promise<void> {
  const t0 = performance.now();
  const graceMs = opts.graceMs ?? DEFAULT_STOP_GRACE_MS;
  const r = await run.agent.request({ op: 'stop_app', timeout_ms: Math.max(1, graceMs) }, graceMs + 10_000);
  out.shutdownMs = Math.round(performance.now() - t0);
  out.exit = r.pid === null ? null : { code: r.code, signal: r.signal };
}

/** After the app is gone and before any pause: sync, unmount and drop the volume's cache, so no seed holds a page of it. */
async function unmountVolumeStep({ run, out }: SleepRun): Promise<void> {
  if (!run.volume) return;
  try {
    await unmountVolume(run);
  } catch (err) {
    out.volumeStuck = true;
    throw err;
  }
}

async function keepLogs({ run, opts }: SleepRun): Promise<void> {
  await opts.keepLogs?.(run);
}

async function bakeOrDelete({ ctx, run, opts, out }: SleepRun): Promise<void> {
  if (opts.haveSeed || out.volumeStuck) return destroyVm(ctx, run);
  // bake() always deletes the VM; on failure the app sleeps without a seed and cold-boots next time.
  out.baked = await bake(ctx, run);
}

/** The steps of a sleep, in order. Each runs even when an earlier one failed; the last one removes the VM. */
const STEPS: ReadonlyArray<readonly [name: string, step: Step]> = [
  ['stop_app', stopApp],
  ['unmount_volume', unmountVolumeStep],
  ['keep_logs', keepLogs],
  ['bake_or_delete', bakeOrDelete],
];

export async function sleepVm(ctx: NodeContext, run: RunningVm, opts: SleepOptions): Promise<SleepOutcome> {
  const s: SleepRun = { ctx, run, opts, out: { exit: null, shutdownMs: 0, baked: null, error: null, stages: {} } };
  for (const [name, step] of STEPS) {
    const t0 = performance.now();
    try {
      await step(s);
    } catch (err) {
      const e = asThawError(err, name === 'bake_or_delete' ? 'BAKE_FAILED' : 'AGENT_ERROR');
      ctx.log.error({ app: run.app, step: name, err: e.message }, 'sleep step failed');
      s.out.error ??= `${e.code}: ${e.message}`;
    }
    s.out.stages[name] = Math.round(performance.now() - t0);
  }
  await destroyVm(ctx, run); // idempotent: a failed step must not leave the VM behind
  return s.out;
}
