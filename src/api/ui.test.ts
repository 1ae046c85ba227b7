// Dashboard auth and routes (src/api/ui.ts, session.ts) over a fake control
// plane: one-time codes, the session cookie, 401 without it, CSRF on actions,
// the bearer token still guarding /v1, the page's headers.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { EventFeed } from '../control/events.ts';
import { createApiServer } from './server.ts';
import { CODE_TTL_MS, Sessions, readCookie } from './session.ts';
import { FakeService, TEST_TOKEN, appView } from './testing.ts';

const bearer = { authorization: `Bearer ${TEST_TOKEN}` };

async function start(t: TestContext) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-i13-ui-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'index.html'), '<!doctype html><title>dash</title>');
  const service = new FakeService();
  service.apps.set('hello', appView('hello', { deployId: 'd1', seedId: 's1' }));
  await service.setEnv('hello', { SECRET_TOKEN: 'value-that-must-not-leak' });
  const app = await createApiServer({ service, token: TEST_TOKEN, logger: false, ui: { feed: new EventFeed(), webDir: dir } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { service, url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}` };
}

async function loginPath(url: string): Promise<string> {
  const r = await fetch(`${url}/v1/dashboard/login`, { method: 'POST', headers: bearer });
  assert.equal(r.status, 200);
  const body = (await r.json()) as { login_path: string; expires_at: string };
  const ttl = new Date(body.expires_at).getTime() - Date.now();
  assert.ok(ttl > CODE_TTL_MS - 10_000 && ttl <= CODE_TTL_MS, `code lives 5 minutes (${ttl} ms)`);
  return body.login_path;
}

test('sign-in: a one-time code becomes an HttpOnly SameSite=Strict cookie; the code works once', async (t) => {
  const { url } = await start(t);
  assert.equal((await fetch(`${url}/v1/dashboard/login`, { method: 'POST' })).status, 401, 'codes need the bearer token');
  const p = await loginPath(url);
  const r = await fetch(`${url}${p}`, { redirect: 'manual' });
  assert.equal(r.status, 303);
  assert.equal(r.headers.get('location'), '/ui/', 'redirected to a URL without the code');
  assert.equal(r.headers.get('referrer-policy'), 'no-referrer');
  const set = String(r.headers.get('set-cookie'));
  assert.match(set, /^thaw_session=[A-Za-z0-9_-]{20,};/);
  for (const attr of ['HttpOnly', 'SameSite=Strict', 'Path=/ui']) assert.ok(set.includes(attr), `${attr} in ${set}`);
  const again = await fetch(`${url}${p}`, { redirect: 'manual' });
  assert.equal(again.status, 401, 'a used code is refused');
  assert.equal(again.headers.get('set-cookie'), null);
  assert.match(await again.text(), /unknown, used or expired/);
  assert.equal((await fetch(`${url}/ui/login?code=made-up`, { redirect: 'manual' })).status, 401);
  assert.equal((await fetch(`${url}/ui/login`, { redirect: 'manual' })).status, 401);
});

test('every /ui/api call needs the session; actions also need its CSRF token; /v1 keeps the bearer token', async (t) => {
  const { url, service } = await start(t);
  for (const p of ['/ui/api/session', '/ui/api/overview', '/ui/api/apps/hello', '/ui/api/events', '/ui/api/apps/hello/logs']) {
    const r = await fetch(`${url}${p}`);
    assert.equal(r.status, 401, p);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'SESSION_REQUIRED', p);
    assert.equal((await fetch(`${url}${p}`, { headers: bearer })).status, 401, `${p}: the bearer token is not a session`);
    assert.equal((await fetch(`${url}${p}`, { headers: { cookie: 'thaw_session=forged-session-id-0123456789' } })).status, 401, `${p}: forged cookie`);
  }
  const login = await fetch(`${url}${await loginPath(url)}`, { redirect: 'manual' });
  const cookie = String(login.headers.get('set-cookie')).split(';')[0]!;
  const s = (await (await fetch(`${url}/ui/api/session`, { headers: { cookie } })).json()) as { csrf: string };
  assert.ok(s.csrf.length >= 20);
  const detail = await fetch(`${url}/ui/api/apps/hello`, { headers: { cookie } });
  assert.equal(detail.status, 200);
  const text = await detail.text();
  assert.ok(text.includes('SECRET_TOKEN'), 'env names are shown');
  assert.equal(text.includes('value-that-must-not-leak'), false, 'env values are not');
  // Actions: no token, a wrong token, then the right one.
  const wake = (h: Record<string, string>) => fetch(`${url}/ui/api/apps/hello/wake`, { method: 'POST', headers: { cookie, ...h } });
  assert.equal((await wake({})).status, 403);
  assert.equal((await wake({ 'x-csrf-token': 'nope' })).status, 403);
  const ok = await wake({ 'x-csrf-token': s.csrf });
  assert.equal(ok.status, 200);
  assert.equal(((await ok.json()) as { wake: { app: string } }).wake.app, 'hello');
  // The session does not open /v1; the bearer token still does.
  assert.equal((await fetch(`${url}/v1/apps`, { headers: { cookie } })).status, 401);
  assert.equal((await fetch(`${url}/v1/apps`, { headers: bearer })).status, 200);
  assert.equal(service.apps.size, 1);
});

test('the page: served with a CSP, /ui redirects to /ui/, asset names cannot leave the folder', async (t) => {
  const { url } = await start(t);
  const r = await fetch(`${url}/ui/`);
  assert.equal(r.status, 200);
  assert.match(String(r.headers.get('content-security-policy')), /default-src 'self'/);
  assert.match(await r.text(), /<title>dash<\/title>/);
  assert.equal((await fetch(`${url}/ui`, { redirect: 'manual' })).headers.get('location'), '/ui/');
  for (const p of ['/ui/assets/..%2f..%2fetc%2fpasswd', '/ui/assets/.hidden', '/ui/assets/missing.js']) assert.ok([400, 404].includes((await fetch(`${url}${p}`)).status), p);
});

test('codes expire after 5 minutes; sessions end; cookies are parsed strictly', () => {
  let now = 1_000_000;
  const s = new Sessions(() => now);
  const old = s.issueCode();
  const fresh = s.issueCode();
  now += CODE_TTL_MS + 1;
  assert.throws(() => s.redeem(old.code), { code: 'LOGIN_CODE_INVALID' });
  assert.throws(() => s.redeem(fresh.code), { code: 'LOGIN_CODE_INVALID' });
  const { id } = s.redeem(s.issueCode().code);
  assert.ok(s.fromCookie(`a=b; thaw_session=${id}`));
  s.end(`thaw_session=${id}`);
  assert.throws(() => s.fromCookie(`thaw_session=${id}`), { code: 'SESSION_REQUIRED' });
  assert.equal(readCookie('xthaw_session=1; thaw_session=2', 'thaw_session'), '2');
  assert.equal(readCookie(undefined, 'thaw_session'), null);
});
