// One lifecycle, run through the Hypervisor interface of whichever
// driver `ctx.hv` is: cold boot → bake (sleep) → thaw → a thaw whose memory
// meets another disk, caught by the gate and answered by a cold fallback. The
// VM tests run it on real QEMU (test/vm/drivers.test.ts), the unit tests on
// the fake Firecracker (src/hypervisor/firecracker-fake/lifecycle.test.ts).
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { NodeContext } from '../../src/lifecycle/context.ts';
import { sleepVm } from '../../src/lifecycle/sleep.ts';
import { wake, type WakeParams } from '../../src/lifecycle/wake.ts';
import type { RunConfig } from '../../src/wire/run.ts';

export interface ScenarioResult {
  coldMs: number;
  bakeMs: number;
  thawMs: number;
  fallbackMs: number;
  /** Agent pid and key that the bake froze, as the thawed VM's agent reported them. */
  thawedAgent: { pid: number; pubkey: string };
}

export async function lifecycleScenario(ctx: NodeContext, image: string, run: RunConfig): Promise<ScenarioResult> {
  const base: WakeParams = { app: 'lc', deployId: 'd1', image, seedDir: null, seedSource: 'none', env: { WHO: 'lifecycle' }, run };
  const cold = await wake(ctx, base);
  assert.equal(cold.record.bootMode, 'cold');
  assert.equal(cold.run.vm.spec.diskFormat, ctx.hv.diskFormat);

  const b0 = performance.now();
  const slept = await sleepVm(ctx, cold.run, { haveSeed: false });
  const bakeMs = performance.now() - b0;
  assert.equal(slept.error, null);
  assert.ok(slept.baked);
  const seedDir = slept.baked.seedDir;
  assert.equal(slept.baked.manifest.driver, ctx.hv.name);
  assert.deepEqual(await readdir(path.join(ctx.dataDir, 'vms')), [], 'the baked VM and its folder are gone');

  const thawed = await wake(ctx, { ...base, seedDir, seedSource: 'local' });
  assert.equal(thawed.record.bootMode, 'snapshot', `fallback: ${thawed.record.fallbackReason}`);
  const agent = thawed.run.agent.lastHello;
  assert.ok(agent);
  assert.equal(agent.pubkey, slept.baked.manifest.agent_pubkey, 'the thawed agent is the one the bake froze');
  await sleepVm(ctx, thawed.run, { haveSeed: true });

  // Memory over a disk that is not its pair (the deploy image): the gate fails, the wake cold-boots.
  const fb = await wake(ctx, { ...base, seedDir, seedSource: 'local', unsafeDiskOverride: image });
  assert.equal(fb.record.bootMode, 'cold');
  assert.match(fb.record.fallbackReason ?? '', /^GATE_FAILED/);
  await sleepVm(ctx, fb.run, { haveSeed: true });
  assert.deepEqual(await readdir(path.join(ctx.dataDir, 'vms')), [], 'no VM folder is left');
  return {
    coldMs: cold.record.wallMs,
    bakeMs: Math.round(bakeMs),
    thawMs: thawed.record.wallMs,
    fallbackMs: fb.record.wallMs,
    thawedAgent: { pid: agent.agent_pid, pubkey: agent.pubkey },
  };
}
