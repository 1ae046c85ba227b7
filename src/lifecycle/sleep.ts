// Sleep: an idle app goes to true zero. The first idle after a deploy bakes a
// seed (then the VM is deleted); later idles just delete the VM, since the
// seed already holds the post-boot state. Writes a thawed VM made to its
// overlay disk are dropped with it: the disk beyond the seed is ephemeral.
// The app's volume is what keeps its writes: before either path the app is
// stopped and the volume unmounted (its cache dropped), so a bake's pause
// never holds a page of it.
import { asThawError } from '../errors.ts';
import { bake, type BakeResult } from './bake.ts';
import type { NodeContext, RunningVm } from './context.ts';
import { destroyVm } from './destroy.ts';
import { stopAppAndUnmountVolume } from './volume.ts';

export async function sleepVm(ctx: NodeContext, run: RunningVm, opts: { haveSeed: boolean }): Promise<{ baked: BakeResult | null; error: string | null; unmountMs?: number }> {
  let unmountMs: number | null;
  try {
    unmountMs = await stopAppAndUnmountVolume(run);
  } catch (err) {
    // Never bake a VM whose volume may still be mounted; the next attach replays its journal.
    const e = asThawError(err);
    ctx.log.error({ app: run.app, err: e.message }, 'unmounting the volume failed; deleting the VM without a bake');
    await destroyVm(ctx, run);
    return { baked: null, error: `unmounting the volume failed: ${e.code}: ${e.message}` };
  }
  const extra = unmountMs === null ? {} : { unmountMs };
  if (opts.haveSeed) {
    await destroyVm(ctx, run);
    return { baked: null, error: null, ...extra };
  }
  try {
    return { baked: await bake(ctx, run), error: null, ...extra };
  } catch (err) {
    // bake() always deletes the VM; the app sleeps without a seed and cold-boots next time.
    const e = asThawError(err, 'BAKE_FAILED');
    ctx.log.error({ app: run.app, err: e.message }, 'bake failed');
    return { baked: null, error: `${e.code}: ${e.message}` };
  }
}
