// Admission control of wakes: the FIFO queue on its own, then through a
// NodeAgent whose LocalNode is a stand-in (no VMs: a wake is a timed promise).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { ThawError } from '../errors.ts';
import type { WakeOutcome } from '../lifecycle/wake.ts';
import type { WakeRow } from '../store/types.ts';
import type { NodeWakeRequest } from '../wire/node.ts';
import { Admission, defaultWakeSlots } from './admission.ts';
import { NodeAgent, sharedImages } from './agent.ts';
import type { LocalNode, NodeWakeRequest as LocalWakeRequest } from './local.ts';

test('admission: FIFO, never more than the limit, a slot admitted at once waits 0 ms', async () => {
  const a = new Admission(2);
  const order: string[] = [];
  const t1 = await a.acquire('a');
  const t2 = await a.acquire('b');
  assert.equal(t1.queuedMs, 0);
  assert.deepEqual(a.stats(), { limit: 2, running: 2, queued: 0 });
  const p3 = a.acquire('c').then((t) => (order.push('c'), t));
  const p4 = a.acquire('d').then((t) => (order.push('d'), t));
  assert.equal(a.state('c'), 'queued');
  assert.deepEqual(a.queuedKeys(), ['c', 'd']);
  await new Promise((r) => setTimeout(r, 30));
  t1.release();
  t1.release(); // idempotent: one slot only
  const t3 = await p3;
  assert.deepEqual(a.stats(), { limit: 2, running: 2, queued: 1 });
  assert.ok(t3.queuedMs >= 20, `queued ${t3.queuedMs} ms`);
  t2.release();
  await p4;
  assert.deepEqual(order, ['c', 'd']);
  assert.equal(a.state('a'), null);
  assert.equal(a.state('c'), 'running');
});

test('admission: a cancelled queued wake leaves the queue (WAKE_CANCELLED); close drops the rest (SHUTTING_DOWN)', async () => {
  const a = new Admission(1);
  const t1 = await a.acquire('a');
  const ac = new AbortController();
  const p2 = a.acquire('b', ac.signal);
  const p3 = a.acquire('c');
  ac.abort();
  await assert.rejects(p2, (e: ThawError) => e.code === 'WAKE_CANCELLED' && typeof e.details?.queued_ms === 'number');
  assert.deepEqual(a.queuedKeys(), ['c']);
  a.close();
  await assert.rejects(p3, (e: ThawError) => e.code === 'SHUTTING_DOWN');
  await assert.rejects(a.acquire('d'), (e: ThawError) => e.code === 'SHUTTING_DOWN');
  t1.release();
  assert.throws(() => new Admission(0), (e: ThawError) => e.code === 'INVALID_REQUEST');
  assert.ok(defaultWakeSlots(2) === 2 && defaultWakeSlots(0) === 1);
});

/** A NodeAgent over a LocalNode stand-in whose wakes take `ms` and count how many run at once. */
async function agentWith(k: number, ms: number) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-admission-'));
  let now = 0;
  let peak = 0;
  const running = new Map();
  const node = {
    name: 'n1',
    ctx: { dataDir: dir },
    running,
    onAppExit: () => {},
    hasSeed: () => true,
    async wake(req: LocalWakeRequest): Promise<WakeOutcome> {
      now++;
      peak = Math.max(peak, now);
      await new Promise((r) => setTimeout(r, ms));
      now--;
      const run = { app: req.app, vm: { id: `vm-${req.app}`, appAddress: { host: '127.0.0.1', port: 1 } } };
      running.set(req.app, run);
      const record: WakeRow = {
        id: req.app, app: req.app, at: '', wallMs: ms, bootMode: 'snapshot', bootMs: 1, gateMs: 1, appStartMs: 1, pid: 1, fsErrors: 0,
        fallbackReason: null, node: 'n1', seedSource: 'local', seedOutcome: 'used', outcome: 'ok', stages: {},
      };
      return { run, record } as unknown as WakeOutcome;
    },
  } as unknown as LocalNode;
  const agent = new NodeAgent({ node, s3: null, capBytes: 1 << 30, capacity: 100, images: sharedImages, log: pino({ level: 'silent' }), maxConcurrentWakes: k });
  const req = (app: string): NodeWakeRequest => ({
    app, deployId: 'd1', image: '/img', run: { argv: ['/x'], cwd: '/', uid: 0, gid: 0, env: {}, port: 8080 } as unknown as NodeWakeRequest['run'],
    seed: { id: `seed-${app}`, app, replicated: false, manifestSha256: 'a'.repeat(64) }, env: {},
  });
  return { agent, req, peak: () => peak, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

test('a burst of N wakes runs at most K at once; the other N-K records show queued_ms > 0 and it is in /metrics', async (t) => {
  const K = 2;
  const N = 5;
  const s = await agentWith(K, 150);
  t.after(s.cleanup);
  const out = await Promise.all(Array.from({ length: N }, (_, i) => s.agent.wake(s.req(`app${i}`))));
  assert.equal(s.peak(), K);
  const queued = out.map((o) => o.record.queuedMs ?? 0);
  assert.equal(queued.filter((q) => q === 0).length, K, `queued: ${queued}`);
  assert.equal(queued.filter((q) => q > 0).length, N - K, `queued: ${queued}`);
  for (const o of out) assert.ok(o.record.wallMs >= (o.record.queuedMs ?? 0), 'the wall clock includes the queue');
  const metrics = await s.agent.renderMetrics();
  assert.match(metrics, /thaw_node_wake_slots 2/);
  assert.match(metrics, /thaw_node_wakes_queued 0/);
  assert.match(metrics, /thaw_node_wake_queue_seconds_count 5/);
});

test('a single wake is never slowed: admitted at once, queued_ms 0', async (t) => {
  const s = await agentWith(1, 10);
  t.after(s.cleanup);
  const o = await s.agent.wake(s.req('solo'));
  assert.equal(o.record.queuedMs, 0);
});

test('a cancelled queued wake is dropped before it starts and keeps its seed (the record says so)', async (t) => {
  const s = await agentWith(1, 300);
  t.after(s.cleanup);
  const first = s.agent.wake(s.req('first'));
  const ac = new AbortController();
  const second = s.agent.wake(s.req('second'), { signal: ac.signal });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(s.agent.wakeState('second'), 'queued');
  ac.abort();
  const err = await second.then(() => null, (e: unknown) => e as ThawError);
  assert.ok(err instanceof ThawError);
  assert.equal(err.code, 'WAKE_CANCELLED');
  const rec = err.details?.record as WakeRow;
  assert.equal(rec.outcome, 'cancelled');
  assert.equal(rec.seedOutcome, 'kept:cancelled');
  assert.ok((rec.queuedMs ?? 0) > 0);
  await first;
  // Cancelling a wake that has started does nothing: it completes.
  const third = s.agent.wake(s.req('third'));
  await new Promise((r) => setTimeout(r, 20));
  s.agent.cancelQueuedWake('third');
  assert.equal((await third).record.outcome, 'ok');
});
