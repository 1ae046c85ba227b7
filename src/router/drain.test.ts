// Sleeps seen from the router (RequestGate): whatever triggers a sleep, requests in
// flight finish (up to the drain time) and new ones are held for the next wake.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { call, setup, sleepMs, until } from './testing.ts';

/** An upstream whose /stream sends a chunk every 100 ms for `chunks` chunks. */
async function streamer(t: import('node:test').TestContext, chunks: number) {
  let hits = 0;
  const srv = http.createServer((req, res) => {
    hits++;
    if (req.url !== '/stream') return void res.end('plain');
    res.writeHead(200, { 'content-type': 'text/plain' });
    let i = 0;
    const timer = setInterval(() => {
      res.write(`chunk ${i}\n`);
      if (++i === chunks) {
        clearInterval(timer);
        res.end();
      }
    }, 100);
    res.on('close', () => clearInterval(timer));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => (srv.closeAllConnections(), srv.close(r))));
  return { host: '127.0.0.1', port: (srv.address() as AddressInfo).port, hits: () => hits };
}

test('quiesce: a streaming response in flight completes; a request arriving meanwhile is held and served by the next wake', async (t) => {
  const { dir, router, port } = await setup(t);
  const up = await streamer(t, 8);
  dir.add('s', up, true);
  const streaming = call(port, 's.localhost', '/stream');
  await until(() => router.inflight('s') === 1, 'stream in flight');
  const quiet = router.quiesce('s', 10_000);
  const late = call(port, 's.localhost', '/');
  await until(() => router.stats().held === 1, 'the late request held');
  assert.equal(up.hits(), 1, 'nothing new reaches the VM being put to sleep');
  const d = await quiet;
  assert.equal(d.cut, 0);
  assert.ok(d.drainMs >= 200, `drained in ${d.drainMs} ms`);
  const s = await streaming;
  assert.equal(s.status, 200);
  assert.equal(s.body.toString().split('\n').filter(Boolean).length, 8, 'the whole stream arrived');
  assert.equal(router.stats().apps.s?.state, 'sleeping');
  await sleepMs(50);
  assert.equal(dir.wakeCalls, 0, 'no wake before the sleep is over');
  dir.apps.get('s')!.address = null; // the control plane deleted the VM
  router.release('s');
  const l = await late;
  assert.equal(l.status, 200);
  assert.equal(l.headers['x-thaw-boot'], 'snapshot');
  assert.equal(dir.wakeCalls, 1);
});

test('quiesce: the drain time bounds the wait; what is still in flight is reported as cut', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('s', await streamer(t, 50), true);
  const streaming = call(port, 's.localhost', '/stream').catch(() => null);
  await until(() => router.inflight('s') === 1, 'stream in flight');
  const t0 = Date.now();
  const d = await router.quiesce('s', 150);
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(d.cut, 1);
  router.release('s');
  await streaming;
});

test('quiesce of an idle app returns at once; the idle path and an explicit quiesce share one sleep', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('i', await streamer(t, 1), true, 0.2);
  assert.equal((await call(port, 'i.localhost')).status, 200);
  const d = await router.quiesce('i', 5000);
  assert.deepEqual({ cut: d.cut, fast: d.drainMs < 100 }, { cut: 0, fast: true });
  await sleepMs(400);
  assert.equal(dir.sleepCalls, 0, 'the idle timer does not start a second sleep');
  router.release('i');
  router.release('i'); // idempotent
  assert.equal(router.stats().sleeps, 1);
});

test('a sleep that starts as a wake finishes: held requests are not sent to the VM going away; the next wake serves them', async (t) => {
  const { dir, router, port } = await setup(t);
  const up = await streamer(t, 1);
  dir.add('r', up, false);
  let quiet: Promise<unknown> | null = null;
  const wake = dir.wake.bind(dir);
  dir.wake = async (name) => {
    const r = await wake(name);
    if (dir.wakeCalls === 1) quiet = router.quiesce(name, 1000); // `thaw sleep` got the lock right after the wake
    return r;
  };
  const pending = call(port, 'r.localhost');
  await until(() => quiet !== null, 'the sleep to start');
  await quiet;
  await sleepMs(50);
  assert.equal(up.hits(), 0, 'nothing sent to the VM being put to sleep');
  assert.equal(router.stats().held, 1);
  router.release('r');
  const r = await pending;
  assert.equal(r.status, 200);
  assert.equal(dir.wakeCalls, 2);
});
