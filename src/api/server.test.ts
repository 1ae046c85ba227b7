import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { request } from 'undici';
import { FakeService, TEST_TOKEN, appView, startServer } from './testing.ts';

const auth = { authorization: `Bearer ${TEST_TOKEN}` };

async function setup(t: TestContext, opts: { maxTarballBytes?: number } = {}) {
  const service = new FakeService();
  const { app, url } = await startServer(service, opts);
  t.after(() => app.close());
  const call = async (method: string, path: string, o: { headers?: Record<string, string>; body?: string | Buffer; json?: unknown } = {}) => {
    const headers: Record<string, string> = { ...auth, ...o.headers };
    let body = o.body;
    if (o.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.json);
    }
    const res = await request(url + path, { method: method as 'GET', headers, body });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text, json: /^application\/json/.test(String(res.headers['content-type'])) ? JSON.parse(text) : null };
  };
  return { service, url, call };
}

function assertError(r: { status: number; json: any }, status: number, code: string) {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.equal(r.json.error.code, code);
  assert.equal(typeof r.json.error.message, 'string');
  assert.equal(typeof r.json.error.hint, 'string');
  assert.ok(['user', 'system'].includes(r.json.error.kind));
}

test('auth: token required except on /healthz and /metrics', async (t) => {
  const { call } = await setup(t);
  assertError(await call('GET', '/v1/apps', { headers: { authorization: '' } }), 401, 'UNAUTHORIZED');
  assertError(await call('GET', '/v1/apps', { headers: { authorization: 'Bearer wrong-token-0123456789abcdef' } }), 401, 'UNAUTHORIZED');
  assertError(await call('GET', '/v1/apps', { headers: { authorization: TEST_TOKEN } }), 401, 'UNAUTHORIZED');
  const h = await call('GET', '/healthz', { headers: { authorization: '' } });
  assert.deepEqual([h.status, h.json], [200, { ok: true }]);
  const m = await call('GET', '/metrics', { headers: { authorization: '' } });
  assert.equal(m.status, 200);
  assert.match(String(m.headers['content-type']), /^text\/plain/);
  assert.equal(m.text, 'thaw_up 1\n');
  assert.equal((await call('GET', '/v1/apps')).status, 200);
});

test('apps: create, get, list and delete in snake_case', async (t) => {
  const { call, service } = await setup(t);
  const c = await call('POST', '/v1/apps', { json: { name: 'hello', idle_timeout_s: 60 } });
  assert.equal(c.status, 201);
  assert.equal(c.json.app.idle_timeout_s, 60);
  assert.equal(c.json.app.deploy_id, null);
  assert.equal('idleTimeoutS' in c.json.app, false);
  assertError(await call('POST', '/v1/apps', { json: { name: 'hello' } }), 409, 'APP_EXISTS');
  assert.equal((await call('GET', '/v1/apps/hello')).json.app.name, 'hello');
  assert.deepEqual((await call('GET', '/v1/apps')).json.apps.map((a: { name: string }) => a.name), ['hello']);
  assert.deepEqual((await call('DELETE', '/v1/apps/hello')).json, { ok: true });
  assertError(await call('GET', '/v1/apps/hello'), 404, 'APP_NOT_FOUND');
  assert.equal(service.apps.size, 0);
});

test('bad input gets its stable code', async (t) => {
  const { call, service } = await setup(t);
  service.apps.set('app', appView('app'));
  assertError(await call('POST', '/v1/apps', { json: { name: 'Bad_Name' } }), 400, 'INVALID_APP_NAME');
  assertError(await call('GET', '/v1/apps/-x'), 400, 'INVALID_APP_NAME');
  assertError(await call('PUT', '/v1/apps/app/env', { json: { vars: { '1A': 'x' } } }), 400, 'INVALID_ENV_KEY');
  assertError(await call('PUT', '/v1/apps/app/env', { json: { vars: { ['K'.repeat(129)]: 'x' } } }), 400, 'INVALID_ENV_KEY');
  assertError(await call('DELETE', '/v1/apps/app/env', { json: { keys: ['A-B'] } }), 400, 'INVALID_ENV_KEY');
  const big = await call('PUT', '/v1/apps/app/env', { json: { vars: { OK: 'x'.repeat(32 * 1024 + 1) } } });
  assertError(big, 400, 'ENV_VALUE_TOO_LARGE');
  assert.deepEqual(big.json.error.details.path, ['vars', 'OK']);
  assert.equal((await call('PUT', '/v1/apps/app/env', { json: { vars: { OK: 'x'.repeat(32 * 1024) } } })).status, 200);

  const bad = await call('POST', '/v1/apps', { body: '{"name": "x",', headers: { 'content-type': 'application/json' } });
  assertError(bad, 400, 'INVALID_REQUEST');
  const mismatch = await call('POST', '/v1/apps', { json: { name: 'ok', idle_timeout_s: 'soon' } });
  assertError(mismatch, 400, 'INVALID_REQUEST');
  assert.deepEqual(mismatch.json.error.details.issues[0].path, ['idle_timeout_s']);
  assertError(await call('POST', '/v1/apps', { json: { name: 'ok', extra: 1 } }), 400, 'INVALID_REQUEST');
  assertError(await call('GET', '/v1/apps/app/wakes?limit=abc'), 400, 'INVALID_REQUEST');
  assertError(await call('GET', '/v1/nope'), 404, 'NOT_FOUND');
  assertError(await call('PATCH', '/v1/apps/app'), 404, 'NOT_FOUND');
});

test('unknown errors become INTERNAL without a stack trace', async (t) => {
  const { call, service } = await setup(t);
  service.seeds = async () => {
    throw new Error('boom');
  };
  const r = await call('GET', '/v1/seeds');
  assertError(r, 500, 'INTERNAL');
  assert.doesNotMatch(r.text, /\bat .*\.ts:\d+/);
  assert.equal(r.json.error.stack, undefined);
});

test('env list returns keys and times, never values', async (t) => {
  const { call, service } = await setup(t);
  service.apps.set('app', appView('app'));
  assert.equal((await call('PUT', '/v1/apps/app/env', { json: { vars: { SECRET: 's3cr3t-value', B: 'x=y' } } })).status, 200);
  const r = await call('GET', '/v1/apps/app/env');
  assert.deepEqual(r.json, { vars: [{ key: 'SECRET', updated_at: '2024-01-01T00:00:00.000Z' }, { key: 'B', updated_at: '2024-01-01T00:00:00.000Z' }] });
  assert.doesNotMatch(r.text, /s3cr3t/);
  assert.equal((await call('DELETE', '/v1/apps/app/env', { json: { keys: ['B'] } })).status, 200);
  assert.deepEqual([...service.env.get('app')!.keys()], ['SECRET']);
});

test('deploy streams the raw body through to the service', async (t) => {
  const { call, service } = await setup(t);
  const tarball = randomBytes(300 * 1024);
  const env = Buffer.from(JSON.stringify({ A: '1', B: 'x=y' })).toString('base64');
  const r = await call('POST', '/v1/apps/web/deploys', {
    body: tarball,
    headers: { 'content-type': 'application/gzip', 'x-thaw-env': env, 'x-thaw-idle-timeout': '42' },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.deploy.image_bytes, tarball.length);
  assert.equal(r.json.purged_seed, null);
  assert.ok(service.received?.equals(tarball));
  assert.deepEqual(service.calls.at(-1), { method: 'deploy', args: ['web', { env: { A: '1', B: 'x=y' }, idleTimeoutS: 42 }] });

  const badEnv = Buffer.from(JSON.stringify({ 'BAD-KEY': '1' })).toString('base64');
  assertError(await call('POST', '/v1/apps/web/deploys', { body: tarball, headers: { 'content-type': 'application/gzip', 'x-thaw-env': badEnv } }), 400, 'INVALID_ENV_KEY');
  assertError(await call('POST', '/v1/apps/web/deploys', { body: tarball, headers: { 'content-type': 'application/gzip', 'x-thaw-env': '%%%' } }), 400, 'INVALID_REQUEST');
  assertError(await call('POST', '/v1/apps/web/deploys', { json: { not: 'a tarball' } }), 400, 'INVALID_REQUEST');
});

test('deploy ?progress=1 streams NDJSON progress then the result or error', async (t) => {
  const { call, service } = await setup(t);
  service.progressLines = ['building image', 'installing deps'];
  const r = await call('POST', '/v1/apps/web/deploys?progress=1', { body: Buffer.from('tar'), headers: { 'content-type': 'application/x-tar' } });
  assert.equal(r.status, 200);
  assert.match(String(r.headers['content-type']), /^application\/x-ndjson/);
  const lines = r.text.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.slice(0, 2), [{ progress: 'building image' }, { progress: 'installing deps' }]);
  assert.equal(lines[2].result.app, 'web');
  assert.equal(lines.length, 3);

  const { ThawError } = await import('../errors.ts');
  service.deployError = new ThawError('APP_NO_START_SCRIPT', 'no start script');
  const e = await call('POST', '/v1/apps/web/deploys?progress=1', { body: Buffer.from('tar'), headers: { 'content-type': 'application/octet-stream' } });
  const last = JSON.parse(e.text.trim().split('\n').at(-1)!);
  assert.equal(last.error.code, 'APP_NO_START_SCRIPT');
});

/** Raw upload: declared or chunked; resolves with the response as soon as it arrives (the body may still be unsent). */
function rawUpload(url: string, headers: Record<string, string | number>, chunk: Buffer, maxChunks: number): Promise<{ status: number; body: any; sent: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/v1/apps/web/deploys`, { method: 'POST', headers: { ...auth, 'content-type': 'application/gzip', ...headers } });
    let sent = 0;
    let done = false;
    req.on('response', (res) => {
      done = true;
      let text = '';
      res.setEncoding('utf8').on('data', (d) => (text += d));
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(text), sent });
      });
    });
    req.on('error', (err) => (done ? undefined : reject(err)));
    const pump = () => {
      while (!done && sent < maxChunks) {
        sent++;
        if (!req.write(chunk)) return void req.once('drain', pump);
      }
    };
    pump();
  });
}

test('oversized tarball: 413 TARBALL_TOO_LARGE without reading it all', async (t) => {
  const { url, service } = await setup(t, { maxTarballBytes: 64 * 1024 });
  // Declared too large: refused before the service sees a byte.
  const declared = await rawUpload(url, { 'content-length': 1024 ** 3 }, Buffer.alloc(1024), 1);
  assert.equal(declared.status, 413);
  assert.equal(declared.body.error.code, 'TARBALL_TOO_LARGE');
  assert.equal(service.calls.filter((c) => c.method === 'deploy').length, 0);
  // Chunked and (practically) endless: only a refusal that stops reading can answer.
  const chunked = await rawUpload(url, { 'transfer-encoding': 'chunked' }, Buffer.alloc(64 * 1024, 1), 1_000_000);
  assert.equal(chunked.status, 413);
  assert.equal(chunked.body.error.code, 'TARBALL_TOO_LARGE');
  assert.ok(chunked.sent < 1_000_000);
  assert.equal(service.received, null);
});

test('logs: plain text; follow stops when the client disconnects', async (t) => {
  const { call, url, service } = await setup(t);
  service.apps.set('app', appView('app'));
  const r = await call('GET', '/v1/apps/app/logs');
  assert.equal(r.text, 'line 1\nline 2\n');
  assert.match(String(r.headers['content-type']), /^text\/plain/);
  assertError(await call('GET', '/v1/apps/ghost/logs'), 404, 'APP_NOT_FOUND');

  const ac = new AbortController();
  const res = await request(`${url}/v1/apps/app/logs?follow=1`, { headers: auth, signal: ac.signal });
  res.body.setEncoding('utf8');
  let seen = '';
  for await (const chunk of res.body) {
    seen += chunk;
    if (seen.includes('following')) break; // breaking destroys the body: the client disconnects
  }
  ac.abort();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise((_, rej) => (timer = setTimeout(() => rej(new Error('log iterator never ended')), 3000)));
  await Promise.race([service.logsEnded, timeout]).finally(() => clearTimeout(timer));
  assert.equal(seen, 'line 1\nline 2\nfollowing\n');
});
