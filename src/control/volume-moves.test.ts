// Volume backups at sleep, `volume restore` and `volume move` on the control
// plane, with fake nodes (their volume files are strings; test/vm/volume.test.ts
// moves real files between real nodes) and a real store and S3 server.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import pino from 'pino';
import { startS3Server, type S3TestServer } from '../../test/helpers/s3server.ts';
import { ThawError } from '../errors.ts';
import { openStore } from '../store/index.ts';
import type { Store } from '../store/types.ts';
import { Cluster } from './cluster.ts';
import { Replication } from './replication.ts';
import { Service } from './service.ts';
import { FakeNode } from './testing.ts';

const log = pino({ level: 'silent' });
const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
let s3: S3TestServer;

before(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  s3 = await startS3Server({ buckets: ['thaw'] });
});
after(async () => {
  await s3?.stop();
  for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

async function setup(t: TestContext, withS3: boolean): Promise<{ store: Store; service: Service; cluster: Cluster; a: FakeNode; b: FakeNode }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-volmove-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const store = await openStore({ sqlitePath: path.join(dir, 'thaw.db'), envKey: randomBytes(32) });
  t.after(() => store.close());
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  const objects = withS3 ? new Map<string, string>() : null;
  a.objects = objects;
  b.objects = objects;
  const cluster = new Cluster({ store, token: 'volume-moves-test-token-0123', log, downAfterMs: 60_000 });
  cluster.addLocal(a);
  cluster.addLocal(b);
  const replication = new Replication({ s3: withS3 ? { endpoint: s3.endpoint, bucket: 'thaw' } : null, ttlMs: 1e12, store, cluster, log, onSeedGone: async () => {} });
  t.after(() => replication.stop());
  const service = new Service({
    store, cluster, baseRootfs: '/nonexistent', dataDir: dir, log, domain: 'localhost', routerPort: 8080,
    idleTimeoutS: 300, diskMiB: 64, maxAppBytes: 1 << 20, maxTarballBytes: 1 << 20, replication,
  });
  t.after(() => cluster.close());
  await store.createApp({ name: 'v', idleTimeoutS: 300 });
  await store.addDeploy({ id: 'd-v', app: 'v', imagePath: '/nonexistent.img', imageBytes: 1, runConfig: { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} } });
  await store.transition('v', 'created', 'building');
  await store.transition('v', 'building', 'asleep', { deployId: 'd-v' });
  await service.volumeApi.control.declare('v', { path: '/data', sizeBytes: 1 << 30 });
  return { store, service, cluster, a, b };
}

/** Wake on its node, "write" `data` to the volume there, sleep; the sleep's record. */
async function writeAndSleep(service: Service, node: FakeNode, data: string) {
  const w = await service.wake('v');
  assert.equal(w.node, node.name);
  node.volumeData.set('v', data);
  const r = await service.sleep('v');
  await service.volumeApi.backups.settled();
  return r.record!;
}

test('every sleep backs the volume up (recorded in the sleep), the newest 3 are kept; restore brings the last one onto another node', async (t) => {
  const { store, service, cluster, a, b } = await setup(t, true);
  const first = await writeAndSleep(service, a, 'data-1');
  assert.ok(a.calls.indexOf('pack-volume v ' + first.id) > a.calls.indexOf('sleep v'), 'packed by the sleep');
  assert.equal(first.backup?.state, 'uploading', 'the record names the backup before its upload finished');
  assert.equal(first.backup?.key, `volumes/v/${first.id}.tar.zst`);
  const stored = (await store.listSleeps('v', 1))[0]!.backup!;
  assert.equal(stored.state, 'stored');
  assert.equal(typeof stored.uploadMs, 'number');
  const sleeps = [first];
  for (let i = 2; i <= 5; i++) sleeps.push(await writeAndSleep(service, a, `data-${i}`));
  const states = (await store.listSleeps('v', 10)).map((s) => s.backup?.state);
  assert.deepEqual(states, ['stored', 'stored', 'stored', 'purged', 'purged']);

  // The home node dies: the next wake names it; restore onto b serves the last sleep's data.
  cluster.get('a')!.state = 'down';
  await assert.rejects(service.wake('v'), (e: ThawError) => e.code === 'VOLUME_UNAVAILABLE');
  await assert.rejects(service.restoreVolume('v', 'nope'), (e: ThawError) => e.code === 'NOT_FOUND');
  await assert.rejects(service.restoreVolume('v', 'b', sleeps[0]!.id), (e: ThawError) => e.code === 'VOLUME_BACKUP_NOT_FOUND', 'purged');
  const r = await service.restoreVolume('v', 'b');
  assert.equal(r.sleep.id, sleeps[4]!.id, 'the data of the last sleep');
  assert.equal(r.previousNode, 'a');
  assert.equal(b.volumeData.get('v'), 'data-5');
  assert.equal((await store.getVolume('v'))!.node, 'b');
  assert.equal((await store.getVolume('v'))!.holder, null, 'the lease is given back');
  const w = await service.wake('v');
  assert.equal(w.node, 'b', 'the next wake goes to the new home');
  await assert.rejects(service.restoreVolume('v', 'a'), (e: ThawError) => e.code === 'VOLUME_CONFLICT', 'not while it runs');
  await assert.rejects(service.moveVolume('v', 'a'), (e: ThawError) => e.code === 'VOLUME_CONFLICT', 'not while it runs');
  await service.sleep('v');
  await service.volumeApi.backups.settled();

  // An older backup by id; then a move back to a (up again) through object storage.
  const older = await service.restoreVolume('v', 'b', sleeps[3]!.id);
  assert.equal(older.sleep.id, sleeps[3]!.id);
  assert.equal(b.volumeData.get('v'), 'data-4');
  cluster.get('a')!.state = 'up';
  const m = await service.moveVolume('v', 'a');
  assert.equal(m.via, 'object-storage');
  assert.equal(a.volumeData.get('v'), 'data-4');
  assert.ok(b.calls.includes('delete-volume v'), 'the old home drops its file');
  assert.equal((await store.getVolume('v'))!.node, 'a');
  assert.equal([...a.objects!.keys()].filter((k) => k.includes('move-')).length, 1, 'the fake node kept its copy; the control plane removes the real object');
});

test('without object storage: no backups (restore is VOLUME_BACKUP_UNAVAILABLE), a move copies node to node, checked by hash', async (t) => {
  const { store, service, a, b } = await setup(t, false);
  const rec = await writeAndSleep(service, a, 'only-copy');
  assert.equal(rec.backup, undefined, 'no backup without object storage');
  assert.ok(!a.calls.some((c) => c.startsWith('pack-volume')));
  await assert.rejects(service.restoreVolume('v', 'b'), (e: ThawError) => e.code === 'VOLUME_BACKUP_UNAVAILABLE');
  // A transfer under way (another control plane's move) holds the lease: no move, and no wake mounts the volume meanwhile.
  await store.leaseVolume('v', 'transfer-elsewhere');
  await assert.rejects(service.moveVolume('v', 'b'), (e: ThawError) => e.code === 'VOLUME_BUSY');
  await assert.rejects(service.wake('v'), (e: ThawError) => e.code === 'VOLUME_BUSY');
  await store.releaseVolume('v', 'transfer-elsewhere');
  const m = await service.moveVolume('v', 'b');
  assert.equal(m.via, 'direct');
  assert.equal(b.volumeData.get('v'), 'only-copy');
  assert.deepEqual([...a.packed.keys()], [], 'the packed copy on the source is dropped');
  assert.ok(a.calls.includes('delete-volume v'));
  assert.equal((await service.wake('v')).node, 'b');
});
