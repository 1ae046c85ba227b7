// The lifecycle test of test/helpers/lifecycle.ts (cold boot, bake, thaw, gate
// fallback) through the Hypervisor interface on real QEMU, with the scratch
// root (one static server, no Node) to keep VM time low. The same scenario
// runs on the fake Firecracker in src/hypervisor/firecracker-fake/lifecycle.test.ts.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { lifecycleScenario } from '../helpers/lifecycle.ts';
import { SCRATCH_RUN, scratchImage } from '../helpers/scratch.ts';
import { fixture, qemuProcesses, type Fixture } from './fixture.ts';

let f: Fixture;
let tmp: string;
before(async () => {
  f = await fixture();
  // Shared 2-core CI hosts run several VM tests' worth of load: give TCG boots room (times are not asserted).
  f.ctx.bootTimeoutMs = 240_000;
  tmp = await mkdtemp(path.join(os.tmpdir(), 'thaw-drivers-'));
});
after(async () => {
  assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the test');
  await f.cleanup();
  await rm(tmp, { recursive: true, force: true });
});

test('QEMU: cold boot → bake → thaw → gate fallback through the Hypervisor interface', { timeout: 600_000 }, async () => {
  assert.equal(f.ctx.hv.name, 'qemu');
  const r = await lifecycleScenario(f.ctx, await scratchImage(tmp), SCRATCH_RUN);
  assert.ok(r.thawedAgent.pid > 0);
});
