// The web dashboard in a real browser against a real `thaw up` (a child
// process, free ports) with the demo app in real VMs: sign in through the URL
// `thaw dashboard` prints, see the app asleep, click Wake and watch the state
// change live, see the new wake row with its stages, click Sleep and watch it
// go back to sleep; repeat the app page at 375 px. Any console error, page
// error, failed request or HTTP error response fails the test. The browsers
// are Debian's (scripts/test.sh installs them): chromium, driven by
// playwright-core over CDP, and firefox-esr, driven over WebDriver BiDi
// (playwright-core's `_bidiFirefox`, experimental; Playwright's own patched
// Firefox cannot be downloaded here). The same flow runs in both.
// Screenshots go to $THAW_TEST_ARTIFACTS (default: TMPDIR/thaw-test-artifacts).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pw, { chromium, type Browser, type Page } from 'playwright-core';
import { request } from 'undici';
import { run } from '../../src/cli/main.ts';
import { readInstance } from '../../src/cli/instance.ts';
import { ensureWeb } from '../../src/api/web-assets.ts';
import { HELLO, ROOT, qemuProcesses } from './fixture.ts';

const CHROMIUM = process.env.THAW_CHROMIUM ?? '/usr/bin/chromium';
const FIREFOX = process.env.THAW_FIREFOX ?? '/usr/bin/firefox-esr';
const ARTIFACTS = process.env.THAW_TEST_ARTIFACTS ?? path.join(os.tmpdir(), 'thaw-test-artifacts');
const SECRET = 'dashboard-secret-value-7f3a';

let data: string;
let up: ChildProcess;
let upLog = '';
const browsers: Browser[] = [];
let apiUrl: string;
let routerUrl: string;

/** The CLI, in-process: its exit code and what it printed. */
async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await run(['node', 'thaw', '--data', data, ...args], { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
  return { code, out, err };
}

async function loginUrl(): Promise<string> {
  const r = await cli('dashboard', '--json');
  assert.equal(r.code, 0, r.err);
  const { url } = JSON.parse(r.out) as { url: string };
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/ui\/login\?code=[A-Za-z0-9_-]{20,}$/);
  return url;
}

/** Record every console error, page error, failed request and HTTP error of `page`. */
function watch(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // The page closes its log stream when it leaves an app page, and the browser
    // aborts open streams when the page closes: those are not failures.
    const stream = r.url().endsWith('/logs') || r.url().includes('/ui/api/events');
    if (!(stream && r.failure()?.errorText === 'net::ERR_ABORTED')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  return problems;
}

const stateOf = (page: Page) => page.locator('.app-head [data-testid=state]');

before(async () => {
  for (const b of [CHROMIUM, FIREFOX]) assert.ok(existsSync(b), `${b} is missing: scripts/test.sh installs Debian's chromium and firefox-esr`);
  await ensureWeb();
  await mkdir(ARTIFACTS, { recursive: true });
  data = await mkdtemp(path.join(os.tmpdir(), 'thaw-i13-dash-'));
  up = spawn(process.execPath, [path.join(ROOT, 'bin', 'thaw.js'), '--data', data, 'up', '--port', '0', '--api-port', '0', '--idle-timeout', '600'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, THAW_LOG_LEVEL: 'info' },
  });
  up.stdout!.on('data', (d: Buffer) => (upLog = (upLog + d.toString()).slice(-8000)));
  up.stderr!.on('data', (d: Buffer) => (upLog = (upLog + d.toString()).slice(-8000)));
  const t0 = Date.now();
  while (!upLog.includes('"thaw is up"')) {
    if (up.exitCode !== null || Date.now() - t0 > 180_000) assert.fail(`thaw up did not start:\n${upLog}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const inst = await readInstance(data);
  apiUrl = inst.apiUrl;
  routerUrl = inst.routerUrl.replace('localhost', '127.0.0.1');
});

after(async () => {
  for (const b of browsers) await b.close();
  if (up && up.exitCode === null) {
    const exited = new Promise((r) => up.once('exit', r));
    up.kill('SIGTERM');
    await exited;
  }
  assert.deepEqual(qemuProcesses(data), [], 'no QEMU left');
  await rm(data, { recursive: true, force: true });
});

/** `_bidiFirefox`: Playwright's WebDriver BiDi client, which drives a stock Firefox (not exported in the types). */
const bidiFirefox = (pw as unknown as { _bidiFirefox: typeof chromium })._bidiFirefox;

async function launch(which: 'chromium' | 'firefox'): Promise<Browser> {
  const b = which === 'chromium'
    ? await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    : await bidiFirefox.launch({ executablePath: FIREFOX, timeout: 180_000 });
  browsers.push(b);
  return b;
}

/** Sign in, see the app asleep, wake it and sleep it by the buttons, at 1200 and 375 px: the flow for one browser. */
async function flow(browser: Browser, label: string): Promise<void> {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  try {
    await steps(page, label);
  } catch (err) {
    // What the page and the control plane showed when it failed.
    await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${label}-failed.png`), fullPage: true }).catch(() => {});
    const shown = await page.locator('main').innerText().catch((e: Error) => e.message);
    const wakes = await cli('wakes', 'hello');
    throw new Error(`${label}: ${(err as Error).message}\n--- page ---\n${shown.slice(0, 1500)}\n--- thaw wakes ---\n${wakes.out}${wakes.err}\n--- thaw up ---\n${upLog.slice(-3000)}`);
  } finally {
    await context.close();
  }
}

async function steps(page: Page, label: string): Promise<void> {
  const context = page.context();
  const url = await loginUrl();
  const problems = watch(page);
  await page.goto(url);
  assert.equal(new URL(page.url()).pathname, '/ui/', label);
  assert.equal(new URL(page.url()).search, '', `${label}: the code is gone from the address bar`);
  const [cookie] = await context.cookies();
  assert.equal(cookie?.name, 'thaw_session');
  assert.equal(cookie?.httpOnly, true);
  assert.equal(cookie?.sameSite, 'Strict');

  // Apps: asleep, live link up.
  const row = page.locator('tr[data-app=hello]');
  await row.locator('[data-testid=state]', { hasText: 'asleep' }).waitFor();
  await page.getByRole('status').filter({ hasText: 'live' }).waitFor();
  await row.getByRole('link', { name: 'hello' }).click();

  // App detail: asleep, its wakes (the cold one, the thaw with the router's first byte), env names only.
  await stateOf(page).filter({ hasText: 'asleep' }).waitFor();
  const wakes = page.locator('[data-testid=wake]');
  await wakes.first().waitFor();
  const before = await wakes.count();
  assert.equal(await wakes.filter({ hasText: 'cold' }).count(), 1);
  const byRequest = wakes.filter({ hasText: /first byte \d/ });
  assert.ok((await byRequest.count()) >= 1, 'the router recorded the first byte');
  assert.match(await byRequest.first().innerText(), /snapshot/);
  assert.equal(await byRequest.first().locator('[data-stage=first_response]').count(), 1, 'the first response is a stage');
  assert.equal(await page.locator('[data-testid=env] li').innerText(), 'SECRET_TOKEN');
  assert.equal((await page.content()).includes(SECRET), false, 'no env value in the page');

  // Wake by the button (keyboard): the state changes while the request is still running (pushed over SSE).
  await page.getByRole('button', { name: 'Wake' }).focus();
  await page.keyboard.press('Enter');
  await stateOf(page).filter({ hasText: 'waking' }).waitFor({ timeout: 60_000 });
  await stateOf(page).filter({ hasText: /running|failed/ }).waitFor({ timeout: 600_000 });
  assert.match(await stateOf(page).innerText(), /running/, 'the wake worked');
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid=wake]').length === n, before + 1, { timeout: 30_000 });
  const newest = wakes.first();
  assert.match(await newest.innerText(), /snapshot/);
  for (const stage of ['restore_ms', 'gate_ms', 'app_start_ms']) assert.equal(await newest.locator(`[data-stage=${stage}]`).count(), 1, `${stage} shown`);
  await page.locator('[data-testid=log]', { hasText: 'listening' }).waitFor({ timeout: 60_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${label}-app.png`), fullPage: true });

  // 375 px: nothing wider than the screen, the actions still reachable.
  await page.setViewportSize({ width: 375, height: 812 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `${label}: page is ${overflow} px wider than 375 px`);
  assert.ok(await page.getByRole('button', { name: 'Sleep' }).isVisible());
  await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${label}-app-375.png`), fullPage: true });

  // Sleep by the button: back to asleep, live.
  await page.getByRole('button', { name: 'Sleep' }).click();
  await stateOf(page).filter({ hasText: 'asleep' }).waitFor({ timeout: 300_000 });
  await page.getByRole('link', { name: 'Apps', exact: true }).click();
  await row.locator('[data-testid=state]', { hasText: 'asleep' }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${label}-apps-375.png`), fullPage: true });
  // Seeds and nodes: the demo app's seed, held by the in-process node.
  await page.getByRole('link', { name: 'Seeds', exact: true }).click();
  const seed = page.locator('tbody tr', { hasText: 'hello' });
  await seed.waitFor();
  assert.match(await seed.innerText(), /MiB[\s\S]*✗ no[\s\S]*local/);
  await page.getByRole('link', { name: 'Nodes', exact: true }).click();
  const node = page.locator('tbody tr', { hasText: 'local' });
  await node.waitFor();
  assert.match(await node.innerText(), /▲ up/);
  await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${label}-nodes-375.png`), fullPage: true });
  await page.close();
  assert.deepEqual(problems, [], `${label}: no console error, failed request or HTTP error`);

  // The code this browser used is spent.
  const again = await request(url);
  assert.equal(again.statusCode, 401);
  await again.body.text();
}

test('the dashboard in Chromium and Firefox: sign in, wake and sleep live, wakes as waterfalls, at 375 px too', { timeout: 30 * 60_000 }, async () => {
  // The demo app: deployed, woken (cold boot) and slept (bake) through the CLI, then woken
  // by a request (a thaw whose first byte the router records) and slept again.
  const ok = async (...args: string[]) => {
    const r = await cli(...args);
    assert.equal(r.code, 0, `thaw ${args.join(' ')}: ${r.err}`);
  };
  await ok('deploy', HELLO, '--name', 'hello', '--env', `SECRET_TOKEN=${SECRET}`);
  await ok('wake', 'hello');
  await ok('sleep', 'hello');
  for (let attempt = 1; ; attempt++) {
    // A loaded host may thaw slower than the router holds a request (60 s): then try again.
    const r = await request(`${routerUrl}/`, { headers: { host: 'hello.localhost' } });
    const body = await r.body.text();
    if (r.statusCode === 200) break;
    assert.ok(r.statusCode === 503 && body.includes('WAKE_TIMEOUT') && attempt < 3, `request wake: HTTP ${r.statusCode} ${body}`);
    while (JSON.parse((await cli('apps', '--json')).out)[0].state === 'waking') await new Promise((res) => setTimeout(res, 1000));
    await ok('sleep', 'hello');
  }
  await ok('sleep', 'hello');

  await flow(await launch('chromium'), 'chromium');
  await flow(await launch('firefox'), 'firefox');

  // A data call without the cookie is 401; the bearer API still works.
  const anon = await request(`${apiUrl}/ui/api/overview`);
  assert.equal(anon.statusCode, 401);
  assert.equal(((await anon.body.json()) as { error: { code: string } }).error.code, 'SESSION_REQUIRED');
  const apps = await cli('apps', '--json');
  assert.equal(apps.code, 0, apps.err);
  assert.equal((JSON.parse(apps.out) as { state: string }[])[0]?.state, 'asleep');
});
