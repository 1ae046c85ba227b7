// Seed replication through a real S3-protocol server (s3rver): a wake on a
// node without the seed pulls it, verifies it and thaws; a redeploy purges the
// object; with object storage down the wake cold-boots with a clear reason and
// a bake keeps its seed locally until the upload resumes; a corrupt object is
// refused by the manifest check and discarded.
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import { startThaw, type Running } from '../../src/control/up.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { SeedStore } from '../../src/seed/s3.ts';
import { S3RVER_CREDENTIALS, startS3Server, type S3TestServer } from '../helpers/s3server.ts';
import { HELLO, qemuProcesses } from './fixture.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('seed replication', { concurrency: false }, () => {
  let data: string;
  let s3: S3TestServer;
  let thaw: Running;
  let api: ApiClient;
  let routerPort: number;
  let objects: SeedStore;

  const get = async () => {
    const r = await request(`http://127.0.0.1:${routerPort}/`, { headers: { host: 'hello.localhost' } });
    return { status: r.statusCode, boot: r.headers['x-thaw-boot'], json: (await r.body.json()) as { marker: string | null } };
  };
  const replicated = async (id: string) => {
    for (let i = 0; i < 600; i++) {
      if ((await api.seeds()).find((s) => s.id === id)?.replicated) return;
      await sleep(100);
    }
    assert.fail(`seed ${id} was never marked replicated`);
  };
  const onlyObject = async (id: string) => {
    let keys: string[] = [];
    for (let i = 0; i < 100; i++) {
      keys = (await objects.list()).map((o) => o.key);
      if (keys.length === 1 && keys[0] === `seeds/hello/${id}.tar.zst`) return;
      await sleep(200);
    }
    assert.deepEqual(keys, [`seeds/hello/${id}.tar.zst`]);
  };
  const dropLocalSeed = (id: string) => rm(path.join(data, 'node', 'seeds', id), { recursive: true, force: true });

  before(async () => {
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    s3 = await startS3Server();
    data = await mkdtemp(path.join(os.tmpdir(), 'thaw-repl-'));
    thaw = await startThaw({ data, port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300, s3Endpoint: s3.endpoint, s3Bucket: 'seeds', maintenanceMs: 1000 }, pino({ level: 'silent' }));
    routerPort = Number(new URL(thaw.routerUrl).port);
    api = new ApiClient({ url: thaw.apiUrl, token: (await readFile(path.join(data, 'token'), 'utf8')).trim() });
    objects = new SeedStore({ endpoint: s3.endpoint, bucket: 'seeds', forcePathStyle: true });
  });

  after(async () => {
    await thaw.stop();
    await api.close();
    objects.destroy();
    await s3.stop();
    assert.deepEqual(qemuProcesses(data), []);
    await rm(data, { recursive: true, force: true });
  });

  test('a bake is uploaded; a node without the seed pulls, verifies and thaws it', async () => {
    await api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'x' } });
    assert.equal((await get()).boot, 'cold');
    await request(`http://127.0.0.1:${routerPort}/`, { method: 'POST', body: 'baked-on-a', headers: { host: 'hello.localhost' } }).then((r) => r.body.dump());
    const slept = await api.sleep('hello');
    const id = slept.seed!.id;
    await replicated(id);
    const listed = await objects.list();
    assert.equal(listed.length, 1);
    assert.ok(listed[0]!.bytes > 0);

    await dropLocalSeed(id); // this node no longer has it, like a fresh node
    const r = await get();
    const [w] = await api.wakes('hello', 1);
    assert.equal(r.boot, 'snapshot', `fallback: ${w?.fallback_reason}`);
    assert.equal(r.json.marker, 'baked-on-a');
    assert.equal(w!.seed_source, 'pulled');
    assert.equal(w!.boot_mode, 'snapshot');
    await api.sleep('hello');
  });

  test('a redeploy purges the old seed from object storage', async () => {
    assert.equal((await objects.list()).length, 1);
    await api.deploy('hello', await packAppDir(HELLO));
    assert.deepEqual(await objects.list(), []);
    assert.deepEqual(await api.seeds(), []);
  });

  test('object storage down: the wake cold-boots with fallback_reason seed-unavailable', async () => {
    assert.equal((await get()).boot, 'cold');
    const slept = await api.sleep('hello');
    const id = slept.seed!.id;
    await replicated(id);
    await s3.pause();
    await dropLocalSeed(id);
    const r = await get();
    assert.equal(r.status, 200);
    assert.equal(r.boot, 'cold');
    const [w] = await api.wakes('hello', 1);
    assert.match(w!.fallback_reason ?? '', /^seed-unavailable: S3_ERROR/);
    assert.equal(w!.seed_source, 'none');
  });

  test('object storage down at the bake: the seed stays local, and its upload resumes when storage returns', async () => {
    const slept = await api.sleep('hello'); // storage is still down
    const id = slept.seed!.id;
    await sleep(2500); // a few retry ticks
    assert.equal((await api.seeds()).find((s) => s.id === id)?.replicated, false);
    s3 = await startS3Server({ port: Number(new URL(s3.endpoint).port), directory: s3.directory });
    await replicated(id);
    // The seed dropped while storage was down is deleted as an orphan.
    await onlyObject(id);
  });

  test('a corrupt object is refused by the manifest check: cold fallback, and the object is discarded', async () => {
    const [seed] = await api.seeds();
    const file = (await walk(s3.directory)).find((f) => f.includes(seed!.id) && f.endsWith('._S3rver_object'));
    assert.ok(file, 'the object file in the S3 server');
    const size = (await stat(file)).size;
    const fh = await open(file, 'r+');
    await fh.write(Buffer.alloc(64 * 1024, 0x5a), 0, 64 * 1024, Math.floor(size / 2));
    await fh.close();
    await dropLocalSeed(seed!.id);
    const r = await get();
    const [w] = await api.wakes('hello', 1);
    assert.equal(r.status, 200);
    assert.equal(r.boot, 'cold');
    assert.match(w!.fallback_reason ?? '', /^seed-unavailable: SEED_CORRUPT/);
    assert.deepEqual(await readdir(path.join(data, 'node', 'seeds')), [], 'nothing half-unpacked is left');
    const next = await api.sleep('hello'); // the VM is gone: the refused seed is purged, a new one baked
    assert.notEqual(next.seed!.id, seed!.id);
    await replicated(next.seed!.id);
    await onlyObject(next.seed!.id);
  });
});

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}
