// Node apps deployed as their users install them, end to end on a real
// `thaw up` with QEMU VMs: an app folder without node_modules whose native
// module (better-sqlite3) Thaw builds from source in the build sandbox, with
// the pinned Node 22 headers (engines.node "22.x"), started by an
// `npm run serve` start script; it answers cold and again after a thaw.
// A pages-router Next.js source folder (test/vm/apps/nextjs: package.json and
// lockfile only, no node_modules, no .next) is installed, `next build`-ed and
// pruned by Thaw, and answers cold and after a thaw. Then a deploy whose build
// fails leaves the running deploy serving.
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ApiClient } from '../../src/api/client.ts';
import { NODE_RUNTIMES } from '../../src/guest/node-runtime.ts';
import { packAppStream } from '../../src/image/pack.ts';
import { startTestThaw, type TestThaw } from '../helpers/thaw-up.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const SERVER = `const http = require('http');
const Database = require('better-sqlite3');
const db = new Database('/app/app.db');
db.exec('create table if not exists hits (n integer)');
http.createServer((req, res) => {
  db.prepare('insert into hits values (1)').run();
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({
    node: process.version,
    sqlite: db.prepare('select sqlite_version() as v').get().v,
    hits: db.prepare('select count(*) as c from hits').get().c,
    event: process.env.npm_lifecycle_event,
    pkg: process.env.npm_package_name,
    npmRunning: require('fs').readdirSync('/proc').filter((d) => /^\\d+$/.test(d)).some((d) => {
      try { return require('fs').readFileSync('/proc/' + d + '/cmdline', 'latin1').includes('npm-cli'); } catch { return false; }
    }),
  }));
}).listen(process.env.PORT, '0.0.0.0');
`;

describe('Node apps as users install them', { concurrency: false }, () => {
  let up: TestThaw;
  let src: string;
  let api: ApiClient;

  const get = async (host: string, urlPath = '/') => {
    const r = await up.get(host, { path: urlPath });
    return { ...r, wakeMs: Number(r.headers.get('x-thaw-wake-ms')) };
  };
  const waitState = (name: string, state: 'asleep' | 'running', ms = 180_000) => up.waitState(name, state, ms);

  before(async () => {
    src = await mkdtemp(path.join(os.tmpdir(), 'thaw-i15-src-'));
    up = await startTestThaw({ prefix: 'thaw-i15-apps-' });
    api = up.api;
  });

  after(async () => {
    await up.stop();
    await rm(src, { recursive: true, force: true });
  });

  test('better-sqlite3 built from source on Node 22, `npm run serve` start script: cold, then thaw', async () => {
    const dir = path.join(src, 'sqlite');
    await mkdir(dir);
    await writeFile(path.join(dir, 'server.js'), SERVER);
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({
      name: 'sqlite-app',
      version: '1.0.0',
      engines: { node: '22.x' },
      scripts: { start: 'npm run serve', serve: 'node server.js' },
      dependencies: { 'better-sqlite3': '12.9.0' },
    }));
    const lines: string[] = [];
    const t0 = Date.now();
    await api.deploy('sqlite', await packAppStream(dir), { idleTimeoutS: 3, onProgress: (l) => lines.push(l) });
    const deployMs = Date.now() - t0;
    const log = lines.join('\n');
    assert.match(log, /building with npm on Node 22\./, log.slice(-2000));
    assert.match(log, /gyp|prebuild-install/, 'the native module was built (no prebuilt binary is reachable)');

    const cold = await get('sqlite.localhost');
    assert.equal(cold.status, 200, cold.text);
    assert.equal(cold.boot, 'cold');
    const c = cold.json();
    assert.equal(c.node, `v${NODE_RUNTIMES[22].version}`, 'engines.node 22.x runs on Node 22');
    assert.match(String(c.sqlite), /^3\./);
    assert.equal(c.event, 'serve', "npm's environment, from the followed `npm run serve`");
    assert.equal(c.pkg, 'sqlite-app');
    assert.equal(c.npmRunning, false, 'the app runs as its own process: no npm process in the guest');
    await waitState('sqlite', 'asleep');
    const warm = await get('sqlite.localhost');
    assert.equal(warm.status, 200, warm.text);
    assert.equal(warm.boot, 'snapshot');
    assert.match(String(warm.json().sqlite), /^3\./, 'the native module loads again in the new process after the thaw');
    console.log(`# better-sqlite3 app: deploy ${deployMs} ms`);
  });

  test('a Next.js source folder (no node_modules, no .next) is installed, built by `next build` and pruned; cold, then thaw', async () => {
    const dir = path.join(src, 'next');
    await cp(path.join(import.meta.dirname, 'apps', 'nextjs'), dir, { recursive: true });
    const lines: string[] = [];
    const t0 = Date.now();
    await api.deploy('next', await packAppStream(dir), { idleTimeoutS: 3, onProgress: (l) => lines.push(l) });
    const deployMs = Date.now() - t0;
    const log = lines.join('\n');
    assert.match(log, /building with npm \(package-lock\.json\) on Node 26\./, log.slice(-3000));
    assert.match(log, /Next\.js 16\.4\.6/, 'next build ran');
    assert.match(log, /○ \/about/, 'the static page was pre-rendered at build time');
    const steps = Object.fromEntries([...log.matchAll(/\((install \(fetch\)|build|prune devDependencies): (\d+) ms\)/g)].map((m) => [m[1], Number(m[2])]));

    // Next.js's cold start under TCG can outlast the router's wake wait on a busy host: the wake goes on, ask again.
    let cold = await get('next.localhost');
    for (let i = 0; i < 3 && cold.status === 503 && /still waking/.test(cold.text); i++) cold = await get('next.localhost');
    if (cold.status !== 200) {
      const out: string[] = [];
      for await (const l of await api.logs('next')) out.push(l);
      assert.fail(`${cold.status} ${cold.text.slice(0, 500)}\n${out.join('\n').slice(-4000)}\n${JSON.stringify(await api.wakes('next'))}`);
    }
    assert.equal(cold.boot, 'cold');
    assert.match(cold.text, /thaw-next-ok/);
    assert.match(cold.text, new RegExp(`v${NODE_RUNTIMES[26].version.replace(/\./g, '\\.')}`), 'no engines.node: the newest line');
    const about = await get('next.localhost', '/about');
    assert.match(about.text, /built-by-next-build/);
    const info = (await get('next.localhost', '/api/info')).json();
    assert.deepEqual([info.env, info.event], ['production', 'start'], "next start's production mode, with npm's environment");
    await waitState('next', 'asleep');
    const warm = await get('next.localhost');
    assert.equal(warm.status, 200, warm.text.slice(0, 2000));
    assert.equal(warm.boot, 'snapshot');
    assert.match(warm.text, /thaw-next-ok/);
    console.log(`# next.js app: deploy ${deployMs} ms (${JSON.stringify(steps)}), cold wake ${cold.wakeMs} ms, thaw ${warm.wakeMs} ms`);
  });

  test('a deploy whose build fails reports the log tail and leaves the running deploy serving', async () => {
    const before = await api.getApp('sqlite');
    const up = await get('sqlite.localhost');
    assert.equal(up.status, 200);
    const dir = path.join(src, 'broken');
    await mkdir(dir);
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'broken', scripts: { start: 'node x.js', build: 'echo broken-build-marker >&2; exit 3' } }));
    // Traffic all along the failing deploy: every answer comes from the running VM.
    let deploying = true;
    const during: { status: number; boot: unknown }[] = [];
    const traffic = (async () => {
      while (deploying) {
        const r = await get('sqlite.localhost');
        during.push({ status: r.status, boot: r.boot });
        await sleep(500);
      }
    })();
    await assert.rejects(api.deploy('sqlite', await packAppStream(dir)), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'BUILD_FAILED', e.message);
      assert.match(e.message, /broken-build-marker/);
      return true;
    }).finally(() => (deploying = false));
    await traffic;
    assert.ok(during.length > 0);
    assert.deepEqual(during.filter((r) => r.status !== 200 || r.boot !== undefined), [], 'served by the running VM throughout, no wake');
    const after = await api.getApp('sqlite');
    assert.equal(after.state, 'running', 'the running VM was not stopped');
    assert.equal(after.deploy_id, before.deploy_id);
  });
});
