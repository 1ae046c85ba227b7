// The static guest agent in real VMs: PID 1 in a root that holds nothing but
// one static app binary; a failed gate leaves no app process and the app's env
// is never opened; the guest clock is right after a thaw.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AgentClient } from '../../src/guest/channel.ts';
import { vmSpec } from '../../src/lifecycle/boot.ts';
import { realtimeUs } from '../../src/lifecycle/clock.ts';
import { createOverlay, freePort, vmId } from '../../src/lifecycle/context.ts';
import { sleepVm } from '../../src/lifecycle/sleep.ts';
import { wake, type WakeOutcome } from '../../src/lifecycle/wake.ts';
import { readManifest } from '../../src/seed/files.ts';
import { sealEnv } from '../../src/wire/seal.ts';
import { SCRATCH_RUN, scratchImage } from '../helpers/scratch.ts';
import { fixture, getJson, qemuProcesses, type Fixture } from './fixture.ts';

describe('static agent in a scratch root', { concurrency: false }, () => {
  let f: Fixture;
  let tmp: string;
  let image: string;
  let seedDir: string;
  let pidBefore: number;
  const marker = `m-${randomBytes(4).toString('hex')}`;
  const wakeScratch = (seed: string | null, who: string): Promise<WakeOutcome> =>
    wake(f.ctx, { app: 'scratch', deployId: 's1', image, seedDir: seed, seedSource: seed ? 'local' : 'none', env: { WHO: who }, run: SCRATCH_RUN });

  before(async () => {
    f = await fixture();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'thaw-scratch-'));
    image = await scratchImage(tmp);
  });
  after(async () => {
    assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the tests');
    await f.cleanup();
    await rm(tmp, { recursive: true, force: true });
  });

  test('the agent is PID 1 and starts the only binary of the root; nothing else runs', async () => {
    const cold = await wakeScratch(null, 'first');
    assert.equal(cold.record.bootMode, 'cold');
    const r = await getJson(cold.run.vm.appAddress.port);
    assert.equal(r.status, 200);
    assert.equal(r.body.who, 'first');
    assert.equal(r.body.marker, null);
    pidBefore = r.body.pid;
    const { processes } = await cold.run.agent.request({ op: 'ps' }, 5000);
    const agentPid = cold.run.agent.lastHello!.agent_pid;
    assert.deepEqual(processes.map((p) => p.pid).sort((a, b) => a - b), [1, agentPid, r.body.pid].sort((a, b) => a - b), JSON.stringify(processes));
    assert.equal(processes.find((p) => p.pid === 1)?.comm, 'init');
    assert.equal((await getJson(cold.run.vm.appAddress.port, { method: 'POST', body: marker })).status, 201);
    const slept = await sleepVm(f.ctx, cold.run, { haveSeed: false });
    assert.equal(slept.error, null);
    seedDir = slept.baked!.seedDir;
    assert.equal((await readManifest(seedDir)).agent_protocol, 2);
  });

  test('a thaw of the scratch root: snapshot, rotated env, the marker, a new pid, a clock within 10 ms of the host', async () => {
    const out = await wakeScratch(seedDir, 'rotated');
    try {
      assert.equal(out.record.bootMode, 'snapshot', `fallback: ${out.record.fallbackReason}`);
      const t0 = realtimeUs();
      const r = await getJson(out.run.vm.appAddress.port);
      const t1 = realtimeUs();
      assert.equal(r.body.who, 'rotated');
      assert.equal(r.body.marker, marker);
      assert.notEqual(r.body.pid, pidBefore);
      // How far the guest's timestamp falls outside the host's [send, receive] interval.
      const outside = Math.max(0, t0 - r.body.now_us, r.body.now_us - t1);
      assert.ok(outside <= 10_000, `guest clock is ${outside} µs outside [send, receive] (${t0}..${t1}, guest ${r.body.now_us})`);
    } finally {
      await sleepVm(f.ctx, out.run, { haveSeed: true });
    }
  });
});

describe('a failed gate', { concurrency: false }, () => {
  let f: Fixture;
  let seedDir: string;
  before(async () => {
    f = await fixture();
    const cold = await wake(f.ctx, { app: 'hello', deployId: 'd1', image: f.image, seedDir: null, seedSource: 'none', env: { WHO: 'x' }, run: f.run });
    seedDir = (await sleepVm(f.ctx, cold.run, { haveSeed: false })).baked!.seedDir;
  });
  after(async () => {
    assert.deepEqual(qemuProcesses(f.dataDir), []);
    await f.cleanup();
  });

  test('leaves no app process in the guest and refuses start_app before opening the env', async () => {
    const manifest = await readManifest(seedDir);
    const mem = path.join(seedDir, 'mem.ram');
    const spec = { ...vmSpec(f.ctx, vmId('gate'), await freePort(), mem), memMiB: manifest.machine.mem_mib, vcpus: manifest.machine.vcpus, cmdline: manifest.machine.cmdline };
    await mkdir(spec.dir, { recursive: true });
    // The memory image over the deploy's original disk: the pair is broken.
    await createOverlay(f.image, spec.disk);
    const vm = await f.ctx.hv.restore(spec, { state: path.join(seedDir, 'state.bin'), mem });
    const agent = new AgentClient(await f.ctx.hv.openAgentChannel(vm), vm.exited);
    try {
      await f.ctx.hv.resume(vm);
      const hello = await agent.ready(10_000, { ping: true });
      const gate = await agent.request({ op: 'gate', canary_sha256: manifest.canary.sha256 }, 20_000);
      assert.equal(gate.ok, false);
      assert.equal(gate.canary_ok, false);
      const sealed = sealEnv({ WHO: 'must-never-arrive' }, hello.pubkey);
      await assert.rejects(
        agent.request({ op: 'start_app', argv: f.run.argv, cwd: f.run.cwd, uid: 0, gid: 0, env: sealed, port: 8080, listen_timeout_ms: 5000 }, 10_000),
        { code: 'GATE_FAILED' },
      );
      const { processes } = await agent.request({ op: 'ps' }, 5000);
      const others = processes.filter((p) => p.pid !== 1 && p.pid !== hello.agent_pid);
      assert.deepEqual(others, [], 'no process but init and the agent');
      assert.equal((await agent.request({ op: 'ping' }, 5000)).app_pid, null);
    } finally {
      agent.close();
      await f.ctx.hv.destroy(vm);
    }
  });
});
