import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { startS3Server, type S3TestServer } from '../../test/helpers/s3server.ts';
import { isThawError } from '../errors.ts';
import { fileEntry, sha256File } from './files.ts';
import { Manifest, SEED_FILES } from './manifest.ts';
import { SEED_MEMBERS } from './pack.ts';
import { SeedStore, seedKey } from './s3.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** Sparse memory with ~12 MiB of incompressible data (so the upload is multipart), small state, sparse ext4 disk. */
async function makeSeed(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const mem = await open(path.join(dir, 'mem.ram'), 'w');
  await mem.truncate(64 * MiB);
  for (const at of [0, 20, 40, 60]) await mem.write(randomBytes(3 * MiB), 0, 3 * MiB, at * MiB);
  await mem.close();
  await writeFile(path.join(dir, 'state.bin'), randomBytes(32 * 1024));
  await run('truncate', ['-s', '64M', path.join(dir, 'disk.img')]);
  await run('mkfs.ext4', ['-q', '-F', path.join(dir, 'disk.img')]);
  const [m, s, d] = await Promise.all(SEED_FILES.map((f) => fileEntry(path.join(dir, f))));
  const manifest = Manifest.parse({
    version: 2, app: 'demo', deploy_id: 'd1', seed_id: 'seed-s3', created_at: new Date().toISOString(),
    driver: 'qemu', accel: 'tcg', machine: { mem_mib: 64, vcpus: 1, cmdline: 'console=ttyS0', guest_port: 8080 },
    kernel_sha256: 'k', initrd_sha256: 'i', files: { 'mem.ram': m, 'state.bin': s, 'disk.img': d },
    canary: { path: '/var/thaw/canary', sha256: '0'.repeat(64) }, agent_pubkey: 'test-key', agent_protocol: 2, bake: { pause_ms: 1, total_ms: 2 },
  });
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
}

const savedEnv = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
let root: string;
let seedDir: string;
let server: S3TestServer;
let store: SeedStore;
const key = seedKey('demo', 'seed-s3');

before(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  root = await mkdtemp(path.join(os.tmpdir(), 'thaw-s3-test-'));
  seedDir = path.join(root, 'seed-s3');
  await makeSeed(seedDir);
  server = await startS3Server();
  store = new SeedStore({ endpoint: server.endpoint, bucket: 'thaw-seeds', connectionTimeoutMs: 500, retryDelayMs: 20 });
  await store.ensureBucket();
  await store.ensureBucket(); // idempotent
});

after(async () => {
  store?.destroy();
  await server?.stop();
  await rm(root, { recursive: true, force: true });
  for (const [name, v] of [['AWS_ACCESS_KEY_ID', savedEnv.id], ['AWS_SECRET_ACCESS_KEY', savedEnv.secret]] as const) {
    if (v === undefined) delete process.env[name];
    else process.env[name] = v;
  }
});

async function objectBytes(k: string): Promise<{ body: Buffer; metadata: Record<string, string> | undefined }> {
  const res = await store.client.send(new GetObjectCommand({ Bucket: store.bucket, Key: k }));
  return { body: Buffer.from(await res.Body!.transformToByteArray()), metadata: res.Metadata };
}

test('seedKey follows the key scheme and refuses unsafe names', () => {
  assert.equal(key, 'seeds/demo/seed-s3.tar.zst');
  assert.equal(seedKey('a', 'b', 'x/'), 'x/a/b.tar.zst');
  assert.throws(() => seedKey('../etc', 's'), (err) => isThawError(err, 'INVALID_REQUEST'));
  assert.throws(() => seedKey('a', 'b/c'), (err) => isThawError(err, 'INVALID_REQUEST'));
});

test('upload then pull into another folder is byte-identical', async () => {
  const up = await store.upload(seedDir);
  assert.equal(up.key, key);
  assert.ok(up.bytesCompressed > 8 * MiB, 'multipart upload expected');
  const head = await store.head(key);
  assert.equal(head?.bytes, up.bytesCompressed);
  assert.equal(head?.manifestSha256, await sha256File(path.join(seedDir, 'manifest.json')));
  assert.deepEqual((await store.list()).map((o) => o.key), [key]);

  const dest = path.join(root, 'node2', 'seed-s3');
  const pulled = await store.pull(key, dest);
  assert.equal(pulled.manifest.seed_id, 'seed-s3');
  assert.equal(pulled.bytesCompressed, up.bytesCompressed);
  for (const name of SEED_MEMBERS) {
    assert.equal(await sha256File(path.join(dest, name)), await sha256File(path.join(seedDir, name)), name);
  }
  assert.ok((await stat(path.join(dest, 'mem.ram'))).blocks * 512 < 32 * MiB, 'pulled mem.ram stays sparse');
});

test('a corrupted or truncated object is refused with SEED_CORRUPT', async () => {
  const { body, metadata } = await objectBytes(key);
  const flipped = Buffer.from(body);
  flipped[flipped.length >> 1] = flipped[flipped.length >> 1]! ^ 0xff;
  for (const [name, bytes] of [['flipped', flipped], ['truncated', body.subarray(0, body.length - 1000)]] as const) {
    const bad = `seeds/demo/${name}.tar.zst`;
    await store.client.send(new PutObjectCommand({ Bucket: store.bucket, Key: bad, Body: bytes, Metadata: metadata }));
    const dest = path.join(root, 'node3', name);
    await assert.rejects(store.pull(bad, dest), (err) => isThawError(err, 'SEED_CORRUPT'));
    await assert.rejects(stat(dest), { code: 'ENOENT' });
    await store.remove(bad);
  }
  assert.deepEqual(await readdir(path.join(root, 'node3')), []);
});

test('a missing key is SEED_MISSING', async () => {
  await assert.rejects(store.pull('seeds/demo/nope.tar.zst', path.join(root, 'node4', 'nope')), (err) => isThawError(err, 'SEED_MISSING'));
  assert.equal(await store.head('seeds/demo/nope.tar.zst'), null);
});

test('remove deletes the object', async () => {
  await store.remove(key);
  assert.equal(await store.head(key), null);
  assert.deepEqual(await store.list(), []);
  await store.remove(key); // already gone: no error
});

test('object storage down is S3_ERROR', async () => {
  await server.stop();
  await assert.rejects(store.pull(key, path.join(root, 'node5', 'x')), (err) => isThawError(err, 'S3_ERROR'));
  await assert.rejects(store.upload(seedDir), (err) => isThawError(err, 'S3_ERROR'));
  await assert.rejects(store.list(), (err) => isThawError(err, 'S3_ERROR'));
});
