// The router as an HTTP/1.1 proxy (RFC 9110/9112): upgrade offers, request-target
// forms, hop-by-hop headers, keep-alive and the timeouts with their statuses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ThawError } from '../errors.ts';
import { RawClient, call, deferred, setup, sleepMs, until, upstream } from './testing.ts';

const H2C = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';

test('an h2c upgrade offer is ignored: answered over HTTP/1.1, the connection stays usable', async (t) => {
  const { dir, port } = await setup(t);
  dir.add('a', await upstream(t, 'a'), true);
  const c = await RawClient.open(t, port);
  c.write(`GET /x?y=1 HTTP/1.1\r\nHost: a.localhost\r\n${H2C}\r\n`);
  const r = await c.response();
  assert.equal(r.status, 200);
  const seen = JSON.parse(r.body);
  assert.equal(seen.url, '/x?y=1');
  assert.equal(seen.headers.upgrade, undefined);
  assert.equal(seen.headers['http2-settings'], undefined);
  assert.equal(r.headers.upgrade, undefined);
  // Same connection, next request.
  c.write('GET /again HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  const r2 = await c.response();
  assert.equal(r2.status, 200);
  assert.equal(JSON.parse(r2.body).url, '/again');
});

test('an h2c offer with a body (and any non-WebSocket upgrade) is served as a plain request; an asleep app wakes once', async (t) => {
  const { dir, port } = await setup(t);
  dir.add('b', await upstream(t, 'b'), false);
  const c = await RawClient.open(t, port);
  c.write(`POST /echo HTTP/1.1\r\nHost: b.localhost\r\n${H2C}Content-Length: 11\r\n\r\nhello`);
  await sleepMs(50);
  c.write(' world');
  const r = await c.response();
  assert.equal(r.status, 200);
  assert.equal(r.body, 'hello world');
  assert.equal(r.headers['x-thaw-boot'], 'snapshot');
  c.write('GET / HTTP/1.1\r\nHost: b.localhost\r\nConnection: upgrade\r\nUpgrade: TLS/1.0\r\n\r\n');
  assert.equal((await c.response()).status, 200);
  assert.equal(dir.wakeCalls, 1);
});

test('absolute-form targets route by their authority and reach the app in origin form', async (t) => {
  const { dir, port } = await setup(t);
  dir.add('a', await upstream(t, 'a'), true);
  dir.add('b', await upstream(t, 'b'), true);
  const c = await RawClient.open(t, port);
  for (const [target, url] of [
    [`http://a.localhost:${port}/api/items?q=1`, '/api/items?q=1'],
    ['http://A.LOCALHOST', '/'],
    ['http://a.localhost?x=1', '/?x=1'],
  ] as const) {
    // RFC 9112 3.2.2: the target's authority wins over a Host header that disagrees.
    c.write(`GET ${target} HTTP/1.1\r\nHost: b.localhost\r\n\r\n`);
    const r = await c.response();
    assert.equal(r.status, 200, target);
    const seen = JSON.parse(r.body);
    assert.equal(seen.app, 'a', target);
    assert.equal(seen.url, url, target);
    assert.equal(seen.headers.host.toLowerCase().startsWith('a.localhost'), true, target);
  }
  c.write('GET http://user:pw@a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  const bad = await c.response();
  assert.equal(bad.status, 400);
  assert.equal(JSON.parse(bad.body).error.code, 'INVALID_REQUEST');
});

test('OPTIONS * is answered by the router (no wake); * with another method is 400; CONNECT is 405', async (t) => {
  const { dir, port } = await setup(t);
  dir.add('a', await upstream(t, 'a'), false);
  const c = await RawClient.open(t, port);
  c.write('OPTIONS * HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  const r = await c.response();
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-length'], '0');
  assert.match(r.headers.allow ?? '', /GET.*OPTIONS/);
  c.write('GET * HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  const g = await c.response();
  assert.equal(g.status, 400);
  assert.equal(JSON.parse(g.body).error.code, 'INVALID_REQUEST');
  c.write('GET nopath HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  assert.equal((await c.response()).status, 400);
  assert.equal(dir.wakeCalls, 0);
  const k = await RawClient.open(t, port);
  k.write('CONNECT a.localhost:443 HTTP/1.1\r\nHost: a.localhost:443\r\n\r\n');
  const cr = await k.response();
  assert.equal(cr.status, 405);
  assert.ok(cr.headers.allow);
  assert.equal(JSON.parse(cr.body).error.code, 'METHOD_NOT_ALLOWED');
});

test('hop-by-hop headers (Connection-listed, TE, Trailer, Keep-Alive, Proxy-*) do not cross the router', async (t) => {
  const { dir, port } = await setup(t);
  const srv = http.createServer((req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      connection: 'x-hop, keep-alive',
      'x-hop': '1',
      'keep-alive': 'timeout=1',
      'proxy-authenticate': 'Basic',
      'x-end': 'kept',
    });
    res.end(JSON.stringify(req.headers));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => (srv.closeAllConnections(), srv.close(r))));
  dir.add('h', { host: '127.0.0.1', port: (srv.address() as AddressInfo).port }, true);
  const c = await RawClient.open(t, port);
  c.write(
    'GET / HTTP/1.1\r\nHost: h.localhost\r\nConnection: X-Foo, keep-alive\r\nX-Foo: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n' +
      'Trailer: x-t\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nX-End: yes\r\n\r\n',
  );
  const r = await c.response();
  const seen = JSON.parse(r.body);
  for (const h of ['x-foo', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection']) assert.equal(seen[h], undefined, h);
  assert.equal(seen['x-end'], 'yes');
  for (const h of ['x-hop', 'proxy-authenticate']) assert.equal(r.headers[h], undefined, h);
  assert.equal(r.headers['x-end'], 'kept');
  assert.notEqual(r.headers['keep-alive'], 'timeout=1', "the app's Keep-Alive is not the router's");
});

test('client keep-alive outlasts a 60 s load balancer by default; idle connections survive the headers timeout', async (t) => {
  const { router } = await setup(t);
  assert.ok(router.server.keepAliveTimeout > 60_000, `keepAliveTimeout ${router.server.keepAliveTimeout}`);
  assert.equal(router.server.requestTimeout, 0, 'long uploads are not cut by default');
  const { dir, port } = await setup(t, { timeouts: { keepAliveMs: 1500, headersMs: 400 } });
  dir.add('a', await upstream(t, 'a'), true);
  const c = await RawClient.open(t, port);
  c.write('GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  const r = await c.response();
  assert.match(r.headers['keep-alive'] ?? '', /timeout=1/);
  await sleepMs(900); // idle past the headers timeout, within keep-alive
  c.write('GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n');
  assert.equal((await c.response()).status, 200);
  assert.equal(await c.closedWithin(3000), true, 'closed after the keep-alive time');
});

test('a client too slow with its headers or its body gets 408, never 400', async (t) => {
  const { dir, port } = await setup(t, { timeouts: { headersMs: 300, requestMs: 700 } });
  dir.add('a', await upstream(t, 'a'), true);
  const c = await RawClient.open(t, port);
  c.write('GET / HTTP/1.1\r\nHost: a.loc');
  const r = await c.response(4000);
  assert.equal(r.status, 408);
  assert.equal(JSON.parse(r.body).error.code, 'REQUEST_TIMEOUT');
  const b = await RawClient.open(t, port);
  b.write('POST /sink HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 10\r\n\r\nhalf');
  const rb = await b.response(4000);
  assert.equal(rb.status, 408);
  assert.equal(JSON.parse(rb.body).error.code, 'REQUEST_TIMEOUT');
});

test('an app too slow with its headers gets 504 UPSTREAM_TIMEOUT; a stalled body is cut', async (t) => {
  const { dir, port } = await setup(t, { timeouts: { upstreamHeadersMs: 300, upstreamBodyMs: 300 } });
  const stall = http.createServer((req, res) => {
    if (req.url === '/stall-body') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first');
      return; // never ends
    }
    setTimeout(() => res.end('late'), 1500);
  });
  await new Promise<void>((r) => stall.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => (stall.closeAllConnections(), stall.close(r))));
  dir.add('s', { host: '127.0.0.1', port: (stall.address() as AddressInfo).port }, true);
  const r = await call(port, 's.localhost');
  assert.equal(r.status, 504);
  assert.equal(r.json().error.code, 'UPSTREAM_TIMEOUT');
  const cut = await call(port, 's.localhost', '/stall-body').then(
    () => 'ended',
    (e: Error) => e.message,
  );
  assert.notEqual(cut, 'ended', 'a stalled body must not look complete');
});

test('per-app wake timeout: 503 WAKE_TIMEOUT with Retry-After before the router default', async (t) => {
  const { dir, port } = await setup(t, { wakeTimeoutMs: 60_000 });
  dir.add('big', await upstream(t, 'big'), false);
  dir.apps.get('big')!.wakeTimeoutS = 0.2;
  const gate = deferred();
  dir.wakeGate = gate.promise;
  const t0 = Date.now();
  const r = await call(port, 'big.localhost');
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(r.status, 503);
  assert.ok(Number(r.headers['retry-after']) >= 1);
  assert.equal(r.json().error.code, 'WAKE_TIMEOUT');
  gate.resolve();
});

test('a wake that fails with a retryable code (WAKE_TIMEOUT, NODE_BUSY, NO_NODE) is 503 with Retry-After, not 502', async (t) => {
  const { dir, router, port } = await setup(t);
  dir.add('q', await upstream(t, 'q'), false);
  for (const e of [new ThawError('WAKE_TIMEOUT', 'still queued'), Object.assign(new Error('node busy'), { code: 'NODE_BUSY' }), new ThawError('NO_NODE', 'none')]) {
    dir.wakeError = e;
    const r = await call(port, 'q.localhost');
    assert.equal(r.status, 503, String(e));
    assert.ok(Number(r.headers['retry-after']) >= 1);
    await until(() => router.stats().apps.q?.state === 'asleep', 'wake settled');
  }
  dir.wakeError = new ThawError('WAKE_FAILED', 'broken');
  assert.equal((await call(port, 'q.localhost')).status, 502);
});
