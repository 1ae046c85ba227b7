// Sleep: an idle app goes to true zero. The first idle after a deploy bakes a
// seed (then the VM is deleted); later idles just delete the VM, since the
// seed already holds the post-boot state. Writes a thawed VM made to its
// overlay disk are dropped with it: the disk beyond the seed is ephemeral.
import { asThawError } from '../errors.ts';
import { bake, type BakeResult } from './bake.ts';
import type { NodeContext, RunningVm } from './context.ts';
import { destroyVm } from './destroy.ts';

export async function sleepVm(ctx: NodeContext, run: RunningVm, opts: { haveSeed: boolean }): Promise<{ baked: BakeResult | null; error: string | null }> {
  if (opts.haveSeed) {
    await destroyVm(ctx, run);
    return { baked: null, error: null };
  }
  try {
    return { baked: await bake(ctx, run), error: null };
  } catch (err) {
    // bake() always deletes the VM; the app sleeps without a seed and cold-boots next time.
    const e = asThawError(err, 'BAKE_FAILED');
    ctx.log.error({ app: run.app, err: e.message }, 'bake failed');
    return { baked: null, error: `${e.code}: ${e.message}` };
  }
}
