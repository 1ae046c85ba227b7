// A burst of wakes on one node with real QEMU VMs: six apps, each asleep with
// its own seed, woken at the same moment. Admission lets K (one per core) run
// at once and queues the rest; the progress deadlines wait for slow guests
// instead of abandoning them. Every wake must be a thaw, no seed may be lost,
// and the queue must show in the records. To keep the suite's VM time small,
// the six apps share one seed (one cold boot and one bake): every thaw still
// maps the memory image privately over its own copy-on-write disk overlay,
// exactly as apps with seeds of their own do.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { processCpuMs } from '../../src/hypervisor/cpu.ts';
import { defaultWakeSlots } from '../../src/node/admission.ts';
import { NodeAgent, sharedImages } from '../../src/node/agent.ts';
import { LocalNode } from '../../src/node/local.ts';
import type { NodeWakeRequest, NodeWakeResponse } from '../../src/wire/node.ts';
import { fixture, getJson, qemuProcesses, type Fixture } from './fixture.ts';

const N = 6;
const APPS = Array.from({ length: N }, (_, i) => `burst${i}`);

describe('a burst of wakes on one node', { concurrency: false }, () => {
  let f: Fixture;
  let agent: NodeAgent;
  let seed: { id: string; manifestSha256: string } | null = null;
  const K = defaultWakeSlots();
  const req = (app: string, withSeed: boolean): NodeWakeRequest => ({
    app,
    deployId: 'd1',
    image: f.image,
    run: f.run,
    env: { WHO: app },
    seed: withSeed && seed ? { id: seed.id, app, replicated: false, manifestSha256: seed.manifestSha256 } : null,
  });

  before(async () => {
    f = await fixture();
    // The overall deadline is generous here: this test is about contention not turning thaws
    // into cold boots, on a host other work may load far beyond its cores.
    agent = new NodeAgent({ node: new LocalNode(f.ctx, 'burst'), s3: null, capBytes: 1 << 40, capacity: N, images: sharedImages, log: f.ctx.log, wakeDeadlineMs: 900_000 });
    await agent.wake(req(APPS[0]!, false));
    const r = await agent.sleep({ app: APPS[0]!, haveSeed: false });
    assert.ok(r.baked, `bake: ${r.error}`);
    seed = { id: r.baked.seedId, manifestSha256: r.baked.manifestSha256 };
  });

  after(async () => {
    await agent?.close();
    assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the tests');
    await f.cleanup();
  });

  test(`${N} apps woken at once: all thaw from their seeds, ${N} - K wait in the queue, no seed is lost`, async () => {
    const t0 = performance.now();
    const settled = await Promise.allSettled(APPS.map((app) => agent.wake(req(app, true))));
    const bad = settled.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
    const out = settled.map((r) => (r as PromiseFulfilledResult<NodeWakeResponse>).value);
    const totalMs = Math.round(performance.now() - t0);
    const rows = out.map((o) => o.record);
    console.log(`burst of ${N}, K=${K}: total ${totalMs} ms; wall ${rows.map((r) => Math.round(r.wallMs)).join(', ')} ms; queued ${rows.map((r) => r.queuedMs).join(', ')} ms; renewals ${rows.map((r) => r.stages.progress_renewals ?? 0).join(', ')}`);
    for (const r of rows) {
      assert.equal(r.bootMode, 'snapshot', `${r.app} fell back: ${r.fallbackReason}`);
      assert.equal(r.seedOutcome, 'used');
      assert.equal(r.fallbackReason, null);
    }
    // The queue is visible: K wakes were admitted at once, the rest waited for a slot.
    const waited = rows.filter((r) => (r.queuedMs ?? 0) > 0);
    assert.equal(waited.length, N - K, `queued_ms: ${rows.map((r) => r.queuedMs).join(', ')}`);
    assert.ok(agent.hasSeed(seed!.id), 'the seed is still on the node');
    // Every app answers with its own env from its own VM.
    for (const o of out) {
      const r = await getJson(o.address.port);
      assert.equal(r.status, 200);
      assert.equal(r.body.who, o.record.app);
    }
    // What an idle thawed guest costs (the progress deadlines count less than 5% of a core as no progress).
    const pids = APPS.map((a) => agent.node.running.get(a)!.vm.pid);
    const c0 = pids.map((p) => processCpuMs(p) ?? 0);
    await new Promise((r) => setTimeout(r, 3000));
    const idle = pids.map((p, i) => Math.round((((processCpuMs(p) ?? 0) - c0[i]!) / 3000) * 1000) / 10);
    console.log(`idle thawed guests: ${idle.join(', ')} % of a core`);
    const m = await agent.renderMetrics();
    assert.match(m, new RegExp(`thaw_node_wake_slots ${K}`));
    assert.match(m, /thaw_node_wakes_queued 0/);
  });
});
