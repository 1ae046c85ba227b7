// `thaw up` killed with SIGKILL and started again: apps, env, seeds and wake
// history survive, no QEMU outlives it, the next request is served.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { HELLO, qemuProcesses, ROOT } from './fixture.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const children: ChildProcess[] = [];
let data = '';

async function up(): Promise<{ child: ChildProcess; api: ApiClient; routerPort: number }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'thaw.js'), 'up', '--data', data, '--port', '0', '--api-port', '0', '--idle-timeout', '300'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, THAW_LOG_LEVEL: 'warn' },
  });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) assert.fail(`thaw up exited: ${err}`);
    try {
      const inst = JSON.parse(await readFile(path.join(data, 'instance.json'), 'utf8')) as { api_url: string; router_url: string; pid: number };
      if (inst.pid === child.pid) {
        const api = new ApiClient({ url: inst.api_url, token: (await readFile(path.join(data, 'token'), 'utf8')).trim() });
        return { child, api, routerPort: Number(new URL(inst.router_url).port) };
      }
    } catch {
      /* not yet */
    }
    await sleep(100);
  }
  throw new Error(`thaw up did not start: ${err}`);
}

const get = async (port: number) => {
  const r = await request(`http://127.0.0.1:${port}/`, { headers: { host: 'hello.localhost' } });
  return { status: r.statusCode, boot: r.headers['x-thaw-boot'], json: (await r.body.json()) as { who: string; marker: string | null } };
};

after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await sleep(200);
  for (const line of qemuProcesses(data)) process.kill(Number(line.split(' ')[0]), 'SIGKILL');
  await rm(data, { recursive: true, force: true });
});

test('SIGKILL and restart: apps, env, seeds survive and the next request is served', async () => {
  data = await mkdtemp(path.join(os.tmpdir(), 'thaw-restart-'));
  const a = await up();
  await a.api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'before-crash' } });
  assert.equal((await get(a.routerPort)).status, 200);
  await request(`http://127.0.0.1:${a.routerPort}/`, { method: 'POST', body: 'kept', headers: { host: 'hello.localhost' } }).then((r) => r.body.dump());
  await a.api.sleep('hello'); // bake a seed
  const thawed = await get(a.routerPort); // and run again from it
  assert.equal(thawed.boot, 'snapshot');
  const seeds = await a.api.seeds();
  assert.equal(seeds.length, 1);
  assert.equal(qemuProcesses(data).length, 1);

  a.child.kill('SIGKILL');
  await new Promise((r) => a.child.once('exit', r));
  await a.api.close();
  // QEMU runs under `setpriv --pdeathsig KILL`: it dies with the process that started it.
  for (let i = 0; i < 50 && qemuProcesses(data).length > 0; i++) await sleep(100);
  assert.deepEqual(qemuProcesses(data), [], 'no VM outlives a SIGKILLed thaw up');

  const b = await up();
  assert.deepEqual(qemuProcesses(data), [], 'the restarted instance runs no VM before a request');
  const apps = await b.api.listApps();
  assert.deepEqual(apps.map((x) => [x.name, x.state]), [['hello', 'asleep']]);
  assert.deepEqual((await b.api.listEnv('hello')).map((e) => e.key), ['WHO']);
  assert.deepEqual((await b.api.seeds()).map((s) => s.id), seeds.map((s) => s.id));
  assert.ok(existsSync(path.join(data, 'node', 'seeds', seeds[0]!.id, 'manifest.json')));
  const after = await get(b.routerPort);
  assert.equal(after.status, 200);
  assert.equal(after.boot, 'snapshot');
  assert.equal(after.json.who, 'before-crash');
  assert.equal(after.json.marker, 'kept');
  assert.ok((await b.api.wakes('hello')).length >= 3, 'wake history survived');

  b.child.kill('SIGTERM');
  await new Promise((r) => b.child.once('exit', r));
  await b.api.close();
  assert.deepEqual(qemuProcesses(data), [], 'graceful shutdown leaves no VM');
  assert.ok(!existsSync(path.join(data, 'instance.json')));
});
