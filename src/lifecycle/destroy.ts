// Destroy: close the agent channel, kill the VMM, remove the VM's runtime
// folder (overlay disk, sockets, console log), then its network namespace.
// Idempotent, never throws.
import type { NodeContext, RunningVm } from './context.ts';

export async function destroyVm(ctx: NodeContext, run: RunningVm): Promise<void> {
  try {
    run.agent.close();
  } catch {
    /* already closed */
  }
  await ctx.hv.destroy(run.vm);
  if (run.vm.spec.tap) await ctx.net?.releaseNetns(run.vm.spec.tap.netns);
}
