// The lifecycle test of src/lifecycle/scenario.ts (cold boot, bake, thaw, gate
// fallback) through the Hypervisor interface on real QEMU. The same scenario
// runs on the fake Firecracker in src/hypervisor/firecracker-fake/lifecycle.test.ts.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { lifecycleScenario } from '../../src/lifecycle/scenario.ts';
import { fixture, qemuProcesses, type Fixture } from './fixture.ts';

let f: Fixture;
before(async () => {
  f = await fixture();
});
after(async () => {
  assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the test');
  await f.cleanup();
});

test('QEMU: cold boot → bake → thaw → gate fallback through the Hypervisor interface', { timeout: 600_000 }, async () => {
  assert.equal(f.ctx.hv.name, 'qemu');
  const r = await lifecycleScenario(f.ctx, f.image, f.run);
  assert.ok(r.thawedAgent.pid > 0);
});
