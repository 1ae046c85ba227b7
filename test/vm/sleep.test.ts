// Graceful sleeps, end to end: a real `thaw up` (in-process, free ports), the
// router, real QEMU VMs. A slow streaming response survives `thaw sleep` on the
// first sleep (which bakes) and on a later one (a thawed VM); the app sees
// SIGTERM on both, and the sleep records carry the exit code of its handler.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request } from 'undici';
import type { ApiClient } from '../../src/api/client.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { startTestThaw, type TestThaw } from '../helpers/thaw-up.ts';
import { qemuProcesses } from './fixture.ts';

/** Its SIGTERM handler logs and exits with a code of its own: 43, or 44 when a response was still open (drain failed). */
const EXIT_CODE = 43;
const CHUNKS = 16;
const SERVER = `
import http from 'node:http';
let open = 0;
const server = http.createServer((req, res) => {
  if (req.url !== '/stream') return void res.end('ok');
  res.writeHead(200, { 'content-type': 'text/plain' });
  open++;
  let i = 0;
  const timer = setInterval(() => {
    res.write('chunk ' + i + '\\n');
    if (++i === ${CHUNKS}) { clearInterval(timer); open--; res.end(); }
  }, 400);
});
process.on('SIGTERM', () => {
  console.log('graceful: got SIGTERM with ' + open + ' responses open');
  process.exit(open === 0 ? ${EXIT_CODE} : 44);
});
server.listen(Number(process.env.PORT ?? 8080), '0.0.0.0');
`;

describe('graceful sleep', { concurrency: false }, () => {
  let up: TestThaw;
  let data: string;
  let appDir: string;
  let api: ApiClient;
  let routerPort: number;

  /** GET /stream; resolves once the first chunk arrived, with the whole body to come. */
  const stream = async () => {
    const res = await request(`http://127.0.0.1:${routerPort}/stream`, { headers: { host: 'graceful.localhost' }, headersTimeout: 900_000, bodyTimeout: 60_000 });
    assert.equal(res.statusCode, 200, `GET /stream: ${res.statusCode}`);
    const chunks: string[] = [];
    let first!: () => void;
    const started = new Promise<void>((r) => (first = r));
    res.body.setEncoding('utf8');
    res.body.on('data', (c: string) => (chunks.push(c), first()));
    const done = new Promise<{ status: number; boot: string | undefined; body: string }>((resolve, reject) => {
      res.body.on('end', () => resolve({ status: res.statusCode, boot: res.headers['x-thaw-boot'] as string | undefined, body: chunks.join('') }));
      res.body.on('error', reject);
    });
    await started;
    return { done, chunks };
  };

  before(async () => {
    appDir = await mkdtemp(path.join(os.tmpdir(), 'thaw-i14-app-'));
    await writeFile(path.join(appDir, 'package.json'), JSON.stringify({ name: 'graceful', version: '1.0.0', type: 'module', scripts: { start: 'node server.js' } }));
    await writeFile(path.join(appDir, 'server.js'), SERVER);
    up = await startTestThaw({ prefix: 'thaw-i14-sleep-', up: { idleTimeout: 3600, drainMs: 60_000, stopGraceMs: 10_000 } });
    ({ data, api, routerPort } = up);
    // A cold boot under TCG on a busy host can take minutes: the per-app hold time covers it.
    await api.deploy('graceful', await packAppDir(appDir), { wakeTimeoutS: 900 });
  });

  after(async () => {
    await up.stop();
    await rm(appDir, { recursive: true, force: true });
  });

  for (const [nth, boot, baked] of [['first sleep (bakes)', 'cold', true], ['a later sleep (thawed VM)', 'snapshot', false]] as const) {
    test(`${nth}: a streaming response survives thaw sleep; the app gets SIGTERM and its exit code is recorded`, async (t) => {
      const { done, chunks } = await stream();
      const atCall = chunks.join('').split('\n').filter(Boolean).length;
      const slept = await api.sleep('graceful');
      const r = await done;
      t.diagnostic(`chunks when thaw sleep was called: ${atCall}/${CHUNKS}; sleep record ${JSON.stringify(slept.sleep)}`);
      assert.ok(atCall < CHUNKS, 'the sleep was asked for while the response was streaming');
      assert.equal(r.status, 200);
      assert.equal(r.boot, boot);
      assert.equal(r.body.split('\n').filter(Boolean).length, CHUNKS, 'every chunk arrived');
      const rec = slept.sleep!;
      assert.equal(rec.trigger, 'manual');
      assert.equal(rec.cut_requests, 0);
      assert.ok(rec.drain_ms > 0, `the sleep waited for the stream (drain ${rec.drain_ms} ms)`);
      assert.equal(rec.exit_code, EXIT_CODE, "the exit code of the app's SIGTERM handler, which saw no open response");
      assert.equal(rec.exit_signal, null, 'not killed');
      assert.equal(rec.baked, baked);
      assert.equal((await api.getApp('graceful')).state, 'asleep');
      assert.deepEqual(qemuProcesses(data), [], 'asleep means no VM');
      assert.deepEqual((await api.sleeps('graceful', 1))[0], rec, 'the record is stored');
      assert.match(await readAll(await api.logs('graceful')), /graceful: got SIGTERM with 0 responses open/, "the app's last words are kept");
    });
  }
});

async function readAll(it: AsyncIterable<string>): Promise<string> {
  let s = '';
  for await (const c of it) s += c;
  return s;
}
