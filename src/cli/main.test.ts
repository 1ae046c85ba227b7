import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import type { ThawApi } from '../api/client.ts';
import { FakeService, TEST_TOKEN, appView, startServer } from '../api/testing.ts';
import { toAppWire } from '../api/schemas.ts';
import { run } from './main.ts';
import { readInstance, writeInstance } from './instance.ts';

const ROUTER = 'http://localhost:8080';

/** Runs the CLI in-process with a fake API; `api` overrides the methods a test needs. */
async function cli(args: string[], api: Partial<ThawApi> = {}, extra: { importModule?: (url: string) => Promise<unknown> } = {}) {
  let stdout = '';
  let stderr = '';
  const fake = { close: async () => {}, ...api } as ThawApi;
  const code = await run(['node', 'thaw', ...args], {
    stdout: (s) => void (stdout += s),
    stderr: (s) => void (stderr += s),
    connect: async (dataDir) => ({ api: fake, instance: { dataDir, apiUrl: 'http://127.0.0.1:1', routerUrl: ROUTER, pid: process.pid, token: 't' } }),
    ...extra,
  });
  return { code, stdout, stderr };
}

async function tmpDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('apps --json prints the raw JSON; apps prints a table', async () => {
  const apps = [toAppWire(appView('web')), toAppWire(appView('api', { state: 'running' }))];
  const j = await cli(['apps', '--json'], { listApps: async () => apps });
  assert.equal(j.code, 0, j.stderr);
  assert.deepEqual(JSON.parse(j.stdout), apps);
  const h = await cli(['apps'], { listApps: async () => apps });
  assert.equal(h.code, 0);
  assert.match(h.stdout, /NAME\s*│?\s*STATE/);
  assert.match(h.stdout, /api.*running.*http:\/\/api\.localhost:8080\//);
});

test('errors: stderr text and exit code by kind', async () => {
  const user = await cli(['rm', 'ghost'], { deleteApp: async () => Promise.reject(new ThawError('APP_NOT_FOUND', 'no app ghost')) });
  assert.equal(user.code, 1);
  assert.equal(user.stderr, 'error APP_NOT_FOUND: no app ghost\nhint: List apps with `thaw apps`.\n');
  assert.equal(user.stdout, '');
  const sys = await cli(['wake', 'web'], { wake: async () => Promise.reject(new ThawError('WAKE_FAILED', 'both failed')) });
  assert.equal(sys.code, 2);
  assert.match(sys.stderr, /^error WAKE_FAILED: both failed\nhint: /);
  const bug = await cli(['seeds'], { seeds: async () => Promise.reject(new TypeError('oops')) });
  assert.equal(bug.code, 2);
  assert.match(bug.stderr, /^error INTERNAL: oops/);
  const badName = await cli(['sleep', 'Bad_Name'], {});
  assert.equal(badName.code, 1);
  assert.match(badName.stderr, /^error INVALID_APP_NAME/);
});

test('env set splits K=V on the first "=" only', async () => {
  let got: { name: string; vars: Record<string, string> } | undefined;
  const r = await cli(['env', 'set', 'web', 'A=1', 'URL=postgres://h/db?x=y==', 'EMPTY='], { setEnv: async (name, vars) => void (got = { name, vars }) });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(got, { name: 'web', vars: { A: '1', URL: 'postgres://h/db?x=y==', EMPTY: '' } });
  const bad = await cli(['env', 'set', 'web', 'NOEQUALS'], { setEnv: async () => assert.fail('must not be called') });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^error INVALID_REQUEST: expected KEY=VALUE/);
  const unset = await cli(['env', 'unset', 'web', 'A', 'B', '--json'], { unsetEnv: async (_n, keys) => assert.deepEqual(keys, ['A', 'B']) });
  assert.deepEqual(JSON.parse(unset.stdout), { ok: true, app: 'web', keys: ['A', 'B'] });
});

test('usage errors exit 64', async () => {
  assert.equal((await cli(['wakes'])).code, 64);
  assert.equal((await cli(['wakes', 'web', '--limit', 'many'])).code, 64);
  assert.equal((await cli(['frobnicate'])).code, 64);
  assert.equal((await cli(['deploy', '.'])).code, 64); // --name is required
  const help = await cli(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: thaw/);
});

test('deploy packs the folder, shows progress and prints the URL', async (t) => {
  const dir = await tmpDir(t);
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'x', scripts: { start: 'node server.js' } }));
  await writeFile(path.join(dir, 'server.js'), 'require("http").createServer((q, s) => s.end("hi")).listen(process.env.PORT)');
  let seen: { name: string; size: number; opts: unknown } | undefined;
  const r = await cli(['deploy', dir, '--name', 'web', '--env', 'A=b=c', '--env', 'B=2', '--idle-timeout', '60'], {
    deploy: async (name, tarball, opts) => {
      let size = 0;
      for await (const c of tarball as AsyncIterable<Buffer>) size += c.length; // the upload streams
      seen = { name, size, opts: { env: opts?.env, idleTimeoutS: opts?.idleTimeoutS } };
      opts?.onProgress?.('building image');
      return { app: name, deploy: { id: 'd1', app: name, image_path: '/i', image_bytes: 1024, created_at: 'now' }, purged_seed: null, build_ms: 1500 };
    },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(seen?.name, 'web');
  assert.ok(seen!.size > 100);
  assert.deepEqual(seen?.opts, { env: { A: 'b=c', B: '2' }, idleTimeoutS: 60 });
  assert.match(r.stderr, /building image/);
  assert.match(r.stdout, /^http:\/\/web\.localhost:8080\/$/m);
  const missing = await cli(['deploy', path.join(dir, 'nope'), '--name', 'web'], { deploy: async () => assert.fail('must not upload') });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error APP_DIR_MISSING/);
});

test('deploy --image sends the image, the command after --, the port and credentials; bad combinations get a code', async () => {
  let seen: unknown;
  const r = await cli(['deploy', '--image', 'localhost:5000/web:1', '--name', 'web', '--port', '9000', '--registry-auth', 'u:p:w', '--', '/bin/sh', '-c', 'exec server --x'], {
    deploy: async (name, source) => {
      seen = source;
      return { app: name, deploy: { id: 'd1', app: name, image_path: '/i', image_bytes: 1024, created_at: 'now' }, purged_seed: null, build_ms: 10 };
    },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(seen, { image: 'localhost:5000/web:1', command: ['/bin/sh', '-c', 'exec server --x'], port: 9000, registry_auth: { username: 'u', password: 'p:w' } });
  const both = await cli(['deploy', '.', '--name', 'web', '--port', '1'], { deploy: async () => assert.fail('must not deploy') });
  assert.equal(both.code, 1);
  assert.match(both.stderr, /^error INVALID_REQUEST/);
  const badAuth = await cli(['deploy', '--image', 'x', '--name', 'web', '--registry-auth', 'nocolon'], { deploy: async () => assert.fail('must not deploy') });
  assert.match(badAuth.stderr, /^error INVALID_REQUEST/);
  const folderAndImage = await cli(['deploy', './app', '--image', 'x', '--name', 'web'], { deploy: async () => assert.fail('must not deploy') });
  assert.match(folderAndImage.stderr, /^error INVALID_REQUEST: with --image, pass no folder/);
});

test('up loads runUp with the parsed flags', async (t) => {
  const dir = await tmpDir(t);
  let got: { url: string; opts: unknown } | undefined;
  const importModule = async (url: string) => ({ runUp: async (opts: unknown) => void (got = { url, opts }) });
  const r = await cli(['--data', dir, 'up', '--port', '9000', '--database', 'postgres://x@127.0.0.1/db', '--request-timeout', '600', '--stop-grace', '3'], {}, { importModule });
  assert.equal(r.code, 0, r.stderr);
  assert.match(got!.url, /\/src\/control\/up\.ts$/);
  assert.deepEqual(got!.opts, {
    data: dir, port: 9000, apiPort: 7070, host: '127.0.0.1', domain: 'localhost', idleTimeout: 300, database: 'postgres://x@127.0.0.1/db', localNode: true, nodeDownAfterMs: 5000,
    routerTimeouts: { keepAliveMs: 75_000, headersMs: 60_000, requestMs: 600_000, upstreamHeadersMs: 300_000, upstreamBodyMs: 0 },
    wakeTimeoutMs: 60_000, drainMs: 30_000, stopGraceMs: 3000, driver: 'qemu', maxUploadMiB: 4096, maxDiskMiB: 8192,
  });
  const fc = await cli(['--data', dir, 'up', '--driver', 'firecracker'], {}, { importModule });
  assert.equal(fc.code, 0, fc.stderr);
  assert.equal((got!.opts as { driver: string }).driver, 'firecracker');
  const bad = await cli(['--data', dir, 'up', '--driver', 'xen'], {}, { importModule });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--driver.*xen|xen.*--driver|Allowed choices/i);
  await cli(['--data', dir, 'up', '--host', '0.0.0.0', '--api-host', '10.0.0.1', '--tls', '--node-ca', '/ca.crt'], {}, { importModule });
  assert.deepEqual(got!.opts, { data: dir, port: 8080, apiPort: 7070, host: '0.0.0.0', apiHost: '10.0.0.1', tls: true, nodeCa: '/ca.crt', domain: 'localhost', idleTimeout: 300, localNode: true, nodeDownAfterMs: 5000, routerTimeouts: { keepAliveMs: 75_000, headersMs: 60_000, requestMs: 0, upstreamHeadersMs: 300_000, upstreamBodyMs: 0 }, wakeTimeoutMs: 60_000, drainMs: 30_000, stopGraceMs: 10_000, driver: 'qemu', maxUploadMiB: 4096, maxDiskMiB: 8192 });
  const none = await cli(['up'], {}, { importModule: async () => ({}) });
  assert.equal(none.code, 2);
});

test('instance files: NOT_RUNNING when missing or stale, exit 3', async (t) => {
  const dir = await tmpDir(t);
  let stderr = '';
  const code = await run(['node', 'thaw', '--data', dir, 'apps'], { stderr: (s) => void (stderr += s), stdout: () => {} });
  assert.equal(code, 3);
  assert.match(stderr, /^error NOT_RUNNING: .*\nhint: Start Thaw with `thaw up`/);

  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  await writeInstance(dir, { api_url: 'http://127.0.0.1:7070', router_url: ROUTER, pid: dead }, TEST_TOKEN);
  assert.equal((await stat(path.join(dir, 'token'))).mode & 0o777, 0o600);
  await assert.rejects(readInstance(dir), (e: unknown) => e instanceof ThawError && e.code === 'NOT_RUNNING' && /stale/.test(e.message));
});

test('end to end: the real client against a real API server', async (t) => {
  const dir = await tmpDir(t);
  const service = new FakeService();
  service.apps.set('web', appView('web'));
  const { app, url } = await startServer(service);
  t.after(() => app.close());
  await writeInstance(dir, { api_url: url, router_url: ROUTER, pid: process.pid }, TEST_TOKEN);
  let stdout = '';
  const code = await run(['node', 'thaw', '--json', '--data', dir, 'apps'], { stdout: (s) => void (stdout += s), stderr: () => {} });
  assert.equal(code, 0);
  assert.deepEqual(JSON.parse(stdout).map((a: { name: string }) => a.name), ['web']);
  let err = '';
  const c2 = await run(['node', 'thaw', '--data', dir, 'env', 'list', 'ghost'], { stdout: () => {}, stderr: (s) => void (err += s) });
  assert.equal(c2, 1);
  assert.match(err, /^error APP_NOT_FOUND/);
});

test('volumes end to end: deploy --volume, volumes, volume resize|rm, rm --delete-volume; bad volumes get VOLUME_INVALID before any upload', async (t) => {
  const dir = await tmpDir(t);
  const appDir = await tmpDir(t);
  await writeFile(path.join(appDir, 'package.json'), JSON.stringify({ name: 'x', scripts: { start: 'node server.js' } }));
  const service = new FakeService();
  service.apps.set('web', appView('web'));
  service.volumes = [{ app: 'web', path: '/data', sizeBytes: 2 ** 30, node: 'local', holder: null, leasedAt: null, createdAt: 'now', updatedAt: 'now' }];
  const { app, url } = await startServer(service);
  t.after(() => app.close());
  await writeInstance(dir, { api_url: url, router_url: ROUTER, pid: process.pid }, TEST_TOKEN);
  const thaw = async (...args: string[]) => {
    let out = '';
    let err = '';
    const code = await run(['node', 'thaw', '--data', dir, ...args], { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
    return { code, out, err };
  };
  assert.equal((await thaw('deploy', appDir, '--name', 'web', '--volume', '/data:2GiB')).code, 0);
  assert.deepEqual(service.calls.find((c) => c.method === 'deploy')?.args[1], { env: undefined, idleTimeoutS: undefined, volume: { path: '/data', sizeBytes: 2 ** 31 } });
  for (const bad of ['data', '/', '/proc/x', '/var', '/data:1MiB', '/data:2TiB', '/data:lots']) {
    const r = await thaw('deploy', appDir, '--name', 'web', '--volume', bad);
    assert.equal(r.code, 1, bad);
    assert.match(r.err, /^error VOLUME_INVALID/, bad);
  }
  assert.equal(service.calls.filter((c) => c.method === 'deploy').length, 1, 'nothing uploaded for a bad volume');
  const list = await thaw('volumes');
  assert.match(list.out, /web.*\/data.*1GiB.*local/);
  assert.equal((await thaw('volume', 'resize', 'web', '4GiB')).code, 0);
  assert.deepEqual(service.calls.find((c) => c.method === 'resizeVolume')?.args, ['web', 4 * 2 ** 30]);
  const shrink = await thaw('volume', 'resize', 'web', '0');
  assert.match(shrink.err, /^error VOLUME_INVALID/);
  const restored = await thaw('volume', 'restore', 'web', '--node', 'b', '--backup', 's-42');
  assert.equal(restored.code, 0, restored.out);
  assert.match(restored.out, /onto b from backup s-42 .*idle sleep at 2026-01-01/);
  assert.deepEqual(service.calls.find((c) => c.method === 'restoreVolume')?.args, ['web', 'b', 's-42']);
  assert.notEqual((await thaw('volume', 'restore', 'web')).code, 0, '--node is required');
  const moved = await thaw('volume', 'move', 'web', '--to', 'b');
  assert.equal(moved.code, 0, moved.out);
  assert.match(moved.out, /from a to b \(direct/);
  assert.equal((await thaw('volume', 'rm', 'web')).code, 0);
  assert.equal((await thaw('rm', 'web', '--delete-volume')).code, 0);
  assert.deepEqual(service.calls.find((c) => c.method === 'deleteApp')?.args, ['web', { deleteVolume: true }]);
});
