// Replication decisions of the control plane against a real S3-protocol server
// (s3rver) and a real SQLite store, with fake nodes: uploads and retries, TTL
// reaping everywhere, orphaned objects, stray node seeds, evictions.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import pino from 'pino';
import { SeedStore } from '../seed/s3.ts';
import { openStore } from '../store/index.ts';
import type { SeedRow } from '../store/types.ts';
import { S3RVER_CREDENTIALS, startS3Server, type S3TestServer } from '../../test/helpers/s3server.ts';
import { Cluster } from './cluster.ts';
import { Replication } from './replication.ts';
import { FakeNode } from './testing.ts';

const log = pino({ level: 'silent' });
let s3: S3TestServer;

before(async () => {
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  s3 = await startS3Server({ buckets: ['seeds'] });
});
after(() => s3.stop());

async function setup(t: TestContext, nodes: FakeNode[], ttlMs = 1e12) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-repl-unit-'));
  const store = await openStore({ sqlitePath: path.join(dir, 'thaw.db'), envKey: randomBytes(32) });
  const cluster = new Cluster({ store, token: 'x'.repeat(20), log, downAfterMs: 60_000 });
  for (const n of nodes) cluster.addLocal(n);
  const gone: string[] = [];
  const repl = new Replication({ s3: { endpoint: s3.endpoint, bucket: 'seeds' }, ttlMs, store, cluster, log, onSeedGone: async (s) => void gone.push(s.id), tickMs: 3_600_000 });
  await repl.start();
  const objects = new SeedStore({ endpoint: s3.endpoint, bucket: 'seeds', forcePathStyle: true });
  t.after(async () => {
    repl.stop();
    objects.destroy();
    for (const o of await new SeedStore({ endpoint: s3.endpoint, bucket: 'seeds', forcePathStyle: true }).list()) await objects.remove(o.key).catch(() => {});
    await cluster.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  await store.createApp({ name: 'x', idleTimeoutS: 300 });
  return { store, cluster, repl, gone, objects };
}

function seed(id: string, over: Partial<SeedRow> = {}): SeedRow {
  const now = new Date().toISOString();
  return { id, app: 'x', deployId: 'd1', node: 'a', bytesApparent: 300, bytesAllocated: 100, bytesCompressed: null, replicated: false, manifestSha256: 'ab'.repeat(32), createdAt: now, lastUsedAt: now, ...over };
}

const put = (objects: SeedStore, key: string) => objects.client.send(new PutObjectCommand({ Bucket: 'seeds', Key: key, Body: 'x' }));
const keys = async (objects: SeedStore) => (await objects.list()).map((o) => o.key).sort();
const until = async (ok: () => Promise<boolean>) => {
  for (let i = 0; i < 100 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 20));
};

test('a new seed is uploaded by its holder and marked replicated; a failed upload is retried', async (t) => {
  const a = new FakeNode('a');
  const { store, repl } = await setup(t, [a]);
  a.seeds.add('s1');
  a.uploadFails = true;
  await store.putSeed(seed('s1'));
  repl.added(seed('s1'));
  await until(async () => a.calls.includes('upload s1'));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal((await store.getSeed('x'))?.replicated, false, 'not replicated while storage fails');
  a.uploadFails = false;
  await repl.tickOnce();
  const row = await store.getSeed('x');
  assert.equal(row?.replicated, true);
  assert.equal(row?.bytesCompressed, 10);
  assert.equal(a.calls.filter((c) => c === 'upload s1').length, 2);
});

test('TTL: a seed not used for the TTL is deleted from object storage and every node', async (t) => {
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  const { store, repl, gone, objects } = await setup(t, [a, b], 60_000);
  a.seeds.add('old');
  b.seeds.add('old');
  a.seeds.add('fresh');
  await store.putSeed(seed('old', { replicated: true, lastUsedAt: new Date(Date.now() - 120_000).toISOString() }));
  await store.putSeed(seed('fresh', { replicated: true }));
  await put(objects, 'seeds/x/old.tar.zst');
  await put(objects, 'seeds/x/fresh.tar.zst');
  await repl.tickOnce();
  assert.deepEqual(gone, ['old']);
  assert.deepEqual([...a.seeds], ['fresh']);
  assert.deepEqual([...b.seeds], []);
  assert.deepEqual(await keys(objects), ['seeds/x/fresh.tar.zst']);
});

test('objects whose seed is no longer recorded are deleted; recorded ones stay', async (t) => {
  const { store, repl, objects } = await setup(t, [new FakeNode('a')]);
  await store.putSeed(seed('kept', { replicated: true }));
  await put(objects, 'seeds/x/kept.tar.zst');
  await put(objects, 'seeds/x/orphan.tar.zst');
  await repl.tickOnce();
  assert.deepEqual(await keys(objects), ['seeds/x/kept.tar.zst']);
});

test('a seed a node holds but the store forgot is deleted after a grace period', async (t) => {
  const a = new FakeNode('a');
  const { store, repl } = await setup(t, [a]);
  a.seeds.add('stray');
  a.seeds.add('known');
  await store.putSeed(seed('known'));
  const t0 = Date.now();
  assert.deepEqual(await repl.removeStrays(t0), [], 'a bake may be publishing it right now');
  assert.deepEqual(await repl.removeStrays(t0 + 30_000), []);
  assert.deepEqual(await repl.removeStrays(t0 + 61_000), ['a/stray']);
  assert.deepEqual([...a.seeds], ['known']);
});

test('an evicted seed without a durable copy or another holder is gone; otherwise it stays', async (t) => {
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  const { store, repl, gone } = await setup(t, [a, b]);
  await store.putSeed(seed('only-a'));
  await store.putSeed(seed('on-b-too'));
  await store.putSeed(seed('in-s3', { replicated: true }));
  b.seeds.add('on-b-too');
  for (const id of ['only-a', 'on-b-too', 'in-s3']) await repl.evicted('a', id);
  assert.deepEqual(gone, ['only-a']);
});
