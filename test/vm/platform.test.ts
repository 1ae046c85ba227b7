// The platform on one host, end to end: a real `thaw up` (in-process, free
// ports), the control API over HTTP, the router, real QEMU VMs.
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ApiClient } from '../../src/api/client.ts';
import type { Running } from '../../src/control/up.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { startTestThaw, type RouterRequest, type TestThaw } from '../helpers/thaw-up.ts';
import { countOccurrences, HELLO, qemuProcesses } from './fixture.ts';

describe('thaw up', { concurrency: false }, () => {
  let t: TestThaw;
  let data: string;
  let thaw: Running;
  let api: ApiClient;
  const get = (host = 'hello.localhost', init: RouterRequest = {}) => t.get(host, init);
  const waitState = (name: string, state: 'asleep' | 'running') => t.waitState(name, state, 120_000);

  before(async () => {
    t = await startTestThaw({ prefix: 'thaw-up-' });
    ({ data, thaw, api } = t);
  });

  after(() => t.stop());

  test('deploy, serve, idle to zero (bake), thaw on the next request', async () => {
    const d = await api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'deploy-value' }, idleTimeoutS: 2 });
    assert.equal(d.app, 'hello');
    const first = await get();
    assert.equal(first.status, 200);
    assert.equal(first.headers.get('x-thaw-boot'), 'cold');
    assert.equal(first.json().who, 'deploy-value');
    await get('hello.localhost', { method: 'POST', body: 'kept-across-sleep' });
    await waitState('hello', 'asleep');
    assert.deepEqual(qemuProcesses(data), [], 'asleep means no VM');
    const seeds = await api.seeds();
    assert.equal(seeds.length, 1);
    const next = await get();
    assert.equal(next.status, 200);
    assert.equal(next.headers.get('x-thaw-boot'), 'snapshot');
    assert.ok(Number(next.headers.get('x-thaw-wake-ms')) > 0);
    assert.equal(next.json().marker, 'kept-across-sleep');
    await waitState('hello', 'asleep');
  });

  test('50 concurrent requests to an asleep app: exactly one wake, 50 answers of 200', async () => {
    const before = (await api.wakes('hello')).length;
    const results = await Promise.all(Array.from({ length: 50 }, () => get()));
    assert.deepEqual(results.map((r) => r.status), Array(50).fill(200));
    assert.equal((await api.wakes('hello')).length, before + 1);
    await waitState('hello', 'asleep');
  });

  test('env set while asleep applies at the next wake; the old value is in no seed file', async () => {
    await api.setEnv('hello', { WHO: 'rotated-value' });
    const r = await get();
    assert.equal(r.json().who, 'rotated-value');
    assert.equal(r.headers.get('x-thaw-boot'), 'snapshot');
    const keys = await api.listEnv('hello');
    assert.ok(!JSON.stringify(keys).includes('rotated-value'), 'env list never returns values');
    const [seed] = await api.seeds();
    const dir = path.join(data, 'node', 'seeds', seed!.id);
    for (const f of ['mem.ram', 'disk.img', 'state.bin']) assert.equal(await countOccurrences(path.join(dir, f), 'deploy-value'), 0, f);
    await waitState('hello', 'asleep');
  });

  test('bad input gets its code and loses nothing', async () => {
    await assert.rejects(api.createApp('Bad_Name'), { code: 'INVALID_APP_NAME' });
    await assert.rejects(api.wake('nope'), { code: 'APP_NOT_FOUND' });
    await assert.rejects(api.setEnv('hello', { 'BAD-KEY': 'x' }), { code: 'INVALID_ENV_KEY' });
    await assert.rejects(api.deploy('hello', Buffer.from('this is not a tarball')), { code: 'TARBALL_INVALID' });
    const noToken = await fetch(`${thaw.apiUrl}/v1/apps`);
    assert.equal(noToken.status, 401);
    assert.equal((await get('nope.localhost')).status, 404);
    // The failed deploy lost nothing: same seed, app still answers from it.
    assert.equal((await api.getApp('hello')).state, 'asleep');
    const r = await get();
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-thaw-boot'), 'snapshot');
    await waitState('hello', 'asleep');
  });

  test('redeploy deletes the old seed and the new code answers', async () => {
    const [old] = await api.seeds();
    assert.ok(old);
    const v2 = await mkdtemp(path.join(os.tmpdir(), 'thaw-v2-'));
    try {
      await cp(HELLO, v2, { recursive: true });
      const src = await readFile(path.join(v2, 'server.js'), 'utf8');
      await writeFile(path.join(v2, 'server.js'), src.replace('uptime_s: process.uptime()', "uptime_s: process.uptime(), version: 'v2'"));
      const d = await api.deploy('hello', await packAppDir(v2));
      assert.equal(d.purged_seed, old.id);
      assert.equal((await api.seeds()).length, 0);
      assert.ok(!existsSync(path.join(data, 'node', 'seeds', old.id)));
      const r = await get();
      assert.equal(r.headers.get('x-thaw-boot'), 'cold', `${r.status} ${r.text}`);
      assert.equal(r.json().version, 'v2');
    } finally {
      await rm(v2, { recursive: true, force: true });
    }
  });
});
