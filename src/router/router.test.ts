import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { WebSocket } from 'ws';
import { ThawError } from '../errors.ts';
import { createRouter } from './router.ts';
import { FakeDir, call, deferred, setup, sleepMs, until, upstream } from './testing.ts';

// ---- tests -------------------------------------------------------------------

test('routes by Host (case-insensitive, port stripped), adds x-forwarded-*, health answers any host', async (t) => {
  const { dir, port } = await setup(t);
  const a = await upstream(t, 'a');
  const b = await upstream(t, 'b');
  dir.add('a', a, true);
  dir.add('b', b, true);
  const ra = await call(port, `a.localhost:${port}`);
  assert.equal(ra.status, 200);
  assert.equal(ra.json().app, 'a');
  const h = ra.json().headers;
  assert.equal(h['x-forwarded-host'], `a.localhost:${port}`);
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.equal(ra.headers['x-secret'], undefined, 'headers named in Connection are hop-by-hop');
  assert.equal(ra.headers['x-thaw-boot'], undefined);
  assert.equal((await call(port, 'B.LocalHost')).json().app, 'b');
  const health = await call(port, 'whatever.example', '/__thaw/health');
  assert.equal(health.status, 200);
  assert.deepEqual(health.json(), { ok: true });
  assert.equal(dir.wakeCalls, 0);
});

test('the first byte after a wake is reported once per wake, measured from the wake start', async (t) => {
  const { dir, router, port } = await setup(t);
  const up = await upstream(t, 'fb');
  dir.add('fb', up, false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const pending = [call(port, 'fb.localhost'), call(port, 'fb.localhost', '/slow')];
  await until(() => router.stats().held === 2, '2 held requests');
  await sleepMs(150);
  gate.resolve();
  await Promise.all(pending);
  await call(port, 'fb.localhost'); // served by the awake app: no wake, no report
  assert.equal(dir.firstBytes.length, 1);
  assert.equal(dir.firstBytes[0]!.name, 'fb');
  assert.equal(dir.firstBytes[0]!.wakeId, 'w-1');
  assert.ok(dir.firstBytes[0]!.ms >= 150, `first byte ${dir.firstBytes[0]!.ms} ms includes the wake`);
});

test('unknown host or app -> 404 APP_NOT_FOUND', async (t) => {
  const { port } = await setup(t);
  for (const host of ['nope.localhost', 'example.com', 'a.b.localhost']) {
    const r = await call(port, host);
    assert.equal(r.status, 404);
    assert.equal(r.json().error.code, 'APP_NOT_FOUND');
    assert.ok(r.json().error.hint);
  }
});

test('50 concurrent requests to an asleep app cause one wake; held responses carry wake headers', async (t) => {
  const { dir, router, port } = await setup(t);
  const up = await upstream(t, 'sleepy');
  dir.add('sleepy', up, false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const pending = Array.from({ length: 50 }, () => call(port, 'sleepy.localhost'));
  await until(() => router.stats().held === 50, '50 held requests');
  assert.equal(router.inflight('sleepy'), 50);
  assert.equal(up.hits(), 0);
  gate.resolve();
  const all = await Promise.all(pending);
  assert.equal(dir.wakeCalls, 1);
  for (const r of all) {
    assert.equal(r.status, 200);
    assert.equal(r.json().app, 'sleepy');
    assert.equal(r.headers['x-thaw-boot'], 'snapshot');
    assert.equal(r.headers['x-thaw-wake-ms'], '123');
  }
  const after = await call(port, 'sleepy.localhost');
  assert.equal(after.status, 200);
  assert.equal(after.headers['x-thaw-boot'], undefined);
  assert.equal(dir.wakeCalls, 1);
  await until(() => router.inflight('sleepy') === 0, 'in-flight back to 0');
});

test('failed wake -> 502 with the error JSON to every held request', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('broken', await upstream(t, 'broken'), false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  dir.wakeError = new ThawError('WAKE_FAILED', 'no thaw, no boot', { details: { wake: { wakeId: 'w-9' } } });
  const pending = Array.from({ length: 5 }, () => call(port, 'broken.localhost'));
  await until(() => router.stats().held === 5, '5 held');
  gate.resolve();
  for (const r of await Promise.all(pending)) {
    assert.equal(r.status, 502);
    assert.equal(r.json().error.code, 'WAKE_FAILED');
    assert.equal(r.json().error.details.wake.wakeId, 'w-9');
  }
  assert.equal(dir.wakeCalls, 1);
  assert.equal(router.stats().wakeFailures, 1);
});

test('maxHeld -> 503 TOO_MANY_HELD with Retry-After', async (t) => {
  const { dir, router, port } = await setup(t, { maxHeld: 2 });
  dir.add('busy', await upstream(t, 'busy'), false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const first = [call(port, 'busy.localhost'), call(port, 'busy.localhost')];
  await until(() => router.stats().held === 2, '2 held');
  const third = await call(port, 'busy.localhost');
  assert.equal(third.status, 503);
  assert.ok(Number(third.headers['retry-after']) >= 1);
  assert.equal(third.json().error.code, 'TOO_MANY_HELD');
  gate.resolve();
  for (const r of await Promise.all(first)) assert.equal(r.status, 200);
  assert.equal(dir.wakeCalls, 1);
});

test('a client that gives up while held leaves no held or in-flight count behind', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('quitter', await upstream(t, 'quitter'), false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const req = http.request({ host: '127.0.0.1', port, headers: { host: 'quitter.localhost' }, agent: false });
  req.on('error', () => {});
  req.end();
  await until(() => router.stats().held === 1, 'held');
  req.destroy();
  await until(() => router.inflight('quitter') === 0 && router.stats().held === 0, 'counts back to 0');
  gate.resolve();
  assert.equal((await call(port, 'quitter.localhost')).status, 200);
  assert.equal(dir.wakeCalls, 1);
});

test('wake timeout -> 503 WAKE_TIMEOUT; the wake goes on and serves later requests', async (t) => {
  const { dir, port } = await setup(t, { wakeTimeoutMs: 100 });
  dir.add('slowboot', await upstream(t, 'slowboot'), false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const r = await call(port, 'slowboot.localhost');
  assert.equal(r.status, 503);
  assert.ok(Number(r.headers['retry-after']) >= 1);
  assert.equal(r.json().error.code, 'WAKE_TIMEOUT');
  gate.resolve();
  await until(() => dir.apps.get('slowboot')!.address !== null, 'wake to finish');
  const later = await call(port, 'slowboot.localhost');
  assert.equal(later.status, 200);
  assert.equal(dir.wakeCalls, 1);
});

test('idle app is put to sleep exactly once; the next request wakes it', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('idle', await upstream(t, 'idle'), true, 1);
  assert.equal((await call(port, 'idle.localhost')).status, 200);
  await until(() => dir.sleepCalls === 1, 'sleep()');
  await sleepMs(1300);
  assert.equal(dir.sleepCalls, 1);
  assert.equal(router.stats().apps.idle?.state, 'asleep');
  const r = await call(port, 'idle.localhost');
  assert.equal(r.status, 200);
  assert.equal(r.headers['x-thaw-boot'], 'snapshot');
  assert.equal(dir.wakeCalls, 1);
});

test('an app woken outside the router (adopt) idles to zero without any request', async (t) => {
  const { dir, router } = await setup(t);
  const up = await upstream(t, 'api');
  dir.add('api', up, true, 1);
  router.adopt('api', up, 1);
  await until(() => dir.sleepCalls === 1, 'sleep() of an app no request ever reached');
  assert.equal(router.stats().apps.api?.state, 'asleep');
});

test('a long request keeps the app awake past its idle timeout', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('long', await upstream(t, 'long'), true, 1);
  const pending = call(port, 'long.localhost', '/slow');
  await until(() => router.inflight('long') === 1, 'in-flight request');
  const r = await pending;
  assert.equal(r.body.toString(), 'slow done');
  assert.equal(dir.sleepCalls, 0, 'no sleep while a request was in flight');
  await until(() => dir.sleepCalls === 1, 'sleep() after the request');
});

test('a client aborting a proxied request ends its in-flight count', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('abort', await upstream(t, 'abort'), true);
  const req = http.request({ host: '127.0.0.1', port, path: '/slow', headers: { host: 'abort.localhost' }, agent: false });
  req.on('error', () => {});
  req.end();
  await until(() => router.inflight('abort') === 1, 'in-flight request');
  req.destroy();
  await until(() => router.inflight('abort') === 0, 'in-flight back to 0 before the app answers', 1000);
});

test('a request during sleep() waits for it, then wakes the app again', async (t) => {
  const { dir, router, port } = await setup(t);
  const up = await upstream(t, 'nap');
  dir.add('nap', up, true, 0.2);
  assert.equal((await call(port, 'nap.localhost')).status, 200);
  const gate = deferred();
  dir.sleepGate = gate.promise;
  await until(() => dir.sleepCalls === 1, 'sleep()');
  const pending = call(port, 'nap.localhost');
  await until(() => router.stats().held === 1, 'held during sleep');
  await sleepMs(50);
  assert.equal(dir.wakeCalls, 0, 'no wake while sleep() runs');
  assert.equal(up.hits(), 1, 'nothing proxied to the VM being deleted');
  gate.resolve();
  const r = await pending;
  assert.equal(r.status, 200);
  assert.equal(r.headers['x-thaw-boot'], 'snapshot');
  assert.equal(dir.wakeCalls, 1);
});

test('WebSocket through the router (waking the app) echoes and counts as in-flight while open', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('chat', await upstream(t, 'chat'), false);
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { host: 'chat.localhost' } });
  t.after(() => ws.terminate());
  await new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej)));
  const echoed = new Promise<string>((res) => ws.once('message', (m) => res(m.toString())));
  ws.send('hello thaw');
  assert.equal(await echoed, 'hello thaw');
  assert.equal(dir.wakeCalls, 1);
  assert.equal(router.inflight('chat'), 1);
  ws.close();
  await until(() => router.inflight('chat') === 0, 'ws close to end the in-flight count');
});

test('5 MB POST streams to the app and back intact', async (t) => {
  const { dir, port } = await setup(t);
  dir.add('big', await upstream(t, 'big'), true);
  const data = randomBytes(5 * 1024 * 1024);
  const chunks = Array.from({ length: 80 }, (_, i) => data.subarray(i * 65536, (i + 1) * 65536));
  const r = await call(port, 'big.localhost', '/echo', { method: 'POST', body: Readable.from(chunks) });
  assert.equal(r.status, 200);
  assert.equal(r.body.length, data.length);
  assert.equal(createHash('sha256').update(r.body).digest('hex'), createHash('sha256').update(data).digest('hex'));
});

test('unreachable upstream -> 502 VM_GONE, the directory is not told', async (t) => {
  const { dir, port } = await setup(t);
  const dead = http.createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  const deadPort = (dead.address() as AddressInfo).port;
  await new Promise((r) => dead.close(r));
  dir.add('gone', { host: '127.0.0.1', port: deadPort }, true);
  const r = await call(port, 'gone.localhost');
  assert.equal(r.status, 502);
  assert.equal(r.json().error.code, 'VM_GONE');
  assert.equal(dir.wakeCalls + dir.sleepCalls, 0);
});

test('close() answers held requests 503 SHUTTING_DOWN', async (t) => {
  const dir = new FakeDir();
  dir.add('late', await upstream(t, 'late'), false);
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const router = createRouter({ dir });
  const port = await router.listen(0);
  const pending = call(port, 'late.localhost');
  await until(() => router.stats().held === 1, 'held');
  await router.close();
  const r = await pending;
  assert.equal(r.status, 503);
  assert.equal(r.json().error.code, 'SHUTTING_DOWN');
  assert.equal(router.stats().inflight, 0);
  gate.resolve();
});
