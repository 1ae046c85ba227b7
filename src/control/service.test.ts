// The control plane's scheduling and node handling, with fake nodes (no VMs:
// this tests WHERE and THAT, not HOW; thaws are proven in test/vm/). The store
// is real: SQLite always, Postgres too when THAW_TEST_PG is set.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { ThawError } from '../errors.ts';
import { RemoteNode } from '../node/client.ts';
import { createNodeServer } from '../node/server.ts';
import { openStore, type OpenStoreOptions } from '../store/index.ts';
import type { Store } from '../store/types.ts';
import type { NodeStatus } from '../wire/node.ts';
import { Cluster } from './cluster.ts';
import { FakeNode } from './testing.ts';
import { Replication } from './replication.ts';
import { Service } from './service.ts';

const log = pino({ level: 'silent' });
const TOKEN = 'service-test-token-0123456789';
const envKey = randomBytes(32);

async function sqliteOpts(t: TestContext): Promise<OpenStoreOptions> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-svc-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return { sqlitePath: path.join(dir, 'thaw.db'), envKey };
}

async function pgOpts(t: TestContext): Promise<OpenStoreOptions | null> {
  const url = process.env.THAW_TEST_PG;
  if (!url) return null;
  const schema = `thaw_svc_${process.pid}_${randomBytes(4).toString('hex')}`;
  t.after(async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await c.end();
  });
  return { url, pgSchema: schema, envKey };
}

/** A control plane over `store` with the given in-process nodes. */
function controlPlane(t: TestContext, store: Store, nodes: FakeNode[], extra: { reportGraceMs?: number; drainMs?: number; stopGraceMs?: number } = {}) {
  const cluster = new Cluster({ store, token: TOKEN, log, downAfterMs: 60_000 });
  for (const n of nodes) cluster.addLocal(n);
  const replication = new Replication({ s3: null, ttlMs: 1e12, store, cluster, log, onSeedGone: async () => {} });
  const service = new Service({
    store, cluster, baseRootfs: '/nonexistent', dataDir: os.tmpdir(), log, domain: 'localhost', routerPort: 8080,
    idleTimeoutS: 300, diskMiB: 64, maxAppBytes: 1 << 20, maxTarballBytes: 1 << 20, replication, ...extra,
  });
  t.after(() => cluster.close());
  return { service, cluster };
}

/** An app with a deploy, asleep (no image is built: fake nodes never read it). */
async function deployed(store: Store, name: string): Promise<void> {
  await store.createApp({ name, idleTimeoutS: 300 });
  await store.addDeploy({ id: `d-${name}`, app: name, imagePath: '/nonexistent.img', imageBytes: 1, runConfig: { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} } });
  await store.transition(name, 'created', 'building');
  await store.transition(name, 'building', 'asleep', { deployId: `d-${name}` });
}

test('a wake goes to the node that holds the seed, even when it is busier', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  const { service } = controlPlane(t, store, [a, b]);
  await deployed(store, 'x');
  await deployed(store, 'y');
  const w1 = await service.wake('x');
  assert.equal(w1.node, 'a');
  assert.match(w1.placement ?? '', /no seed; a is the least loaded/);
  const slept = await service.sleep('x');
  assert.equal(slept.seed?.node, 'a');
  assert.equal((await service.wake('y')).node, 'a', 'equal load: by name');
  assert.equal(a.runningCount(), 1);
  assert.equal(b.runningCount(), 0);
  const w2 = await service.wake('x');
  assert.equal(w2.node, 'a');
  assert.equal(w2.bootMode, 'snapshot');
  assert.equal(w2.seedSource, 'local');
  assert.match(w2.placement ?? '', /a holds seed/);
  assert.equal((await store.listWakes('x', 1))[0]!.placement, w2.placement, 'the placement is stored with the wake');
});

test('a node that breaks off a wake is skipped and the next node answers', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  a.unreachable = true;
  const { service } = controlPlane(t, store, [a, b]);
  await deployed(store, 'x');
  const w = await service.wake('x');
  assert.equal(w.node, 'b');
  assert.match(w.placement ?? '', /after a broke off/);
  assert.deepEqual(a.calls, ['wake x']);
  b.unreachable = true;
  await service.sleep('x');
  await assert.rejects(service.wake('x'), (e: ThawError) => e.code === 'NO_NODE' && /tried b, a/.test(e.message), 'b holds the seed now, so it goes first');
  assert.equal((await store.getApp('x')).state, 'failed');
});

for (const backend of ['sqlite', 'postgres'] as const) {
  test(`${backend}: two control planes on one database never run an app twice or publish two bakes`, async (t) => {
    const opts = backend === 'sqlite' ? await sqliteOpts(t) : await pgOpts(t);
    if (!opts) return t.skip('THAW_TEST_PG not set');
    const s1 = await openStore(opts);
    const s2 = await openStore(opts);
    t.after(async () => {
      await s1.close();
      await s2.close();
    });
    const n1 = new FakeNode('n1');
    const n2 = new FakeNode('n2');
    n1.wakeDelayMs = n2.wakeDelayMs = 200;
    const cp1 = controlPlane(t, s1, [n1]);
    const cp2 = controlPlane(t, s2, [n2]);
    await deployed(s1, 'x');
    await s1.addVolume({ app: 'x', path: '/data', sizeBytes: 1 << 30 });
    const woke = await Promise.allSettled([cp1.service.wake('x'), cp2.service.wake('x')]);
    assert.equal(woke.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one wake wins');
    const lost = woke.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.equal((lost.reason as ThawError).code, 'APP_BUSY');
    assert.equal(n1.calls.length + n2.calls.length, 1, 'one node was asked to wake');
    assert.match((await s2.getVolume('x'))!.holder ?? '', /^wake-/, 'the loser did not clear the winner\'s lease');
    const slept = await Promise.all([cp1.service.sleep('x'), cp2.service.sleep('x')]);
    assert.equal(slept.filter((r) => r.baked).length, 1, 'one bake is published');
    assert.equal((await s1.listSeeds()).length, 1);
    assert.equal((await s1.getApp('x')).state, 'asleep');
    assert.equal((await s1.getVolume('x'))!.holder, null, 'released at sleep');
  });
}

test('a node that cannot reach the control plane for the image (CONTROL_UNREACHABLE) is skipped like one that broke off', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  a.failNext = new ThawError('CONTROL_UNREACHABLE', 'node could not fetch the image of x: connect ECONNREFUSED');
  const { service } = controlPlane(t, store, [a, b]);
  await deployed(store, 'x');
  const w = await service.wake('x');
  assert.equal(w.node, 'b');
  assert.match(w.placement ?? '', /after a broke off/);
  await service.sleep('x');
});

test('remote node: heartbeats join it, a silent node is marked down, its apps wake elsewhere and it is told to stop stale VMs', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const local = new FakeNode('local');
  const far = new FakeNode('far');
  const server = await createNodeServer(far, TOKEN);
  await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  const url = `http://127.0.0.1:${(server.server.address() as { port: number }).port}`;
  const { service, cluster } = controlPlane(t, store, [local]);
  local.capacity = 0; // only the remote node has room
  const beat = (over: Partial<NodeStatus> = {}) =>
    service.heartbeat({ name: 'far', url, capacity: 4, running: [...far.running].map(([app, vmId]) => ({ app, vmId })), seeds: [...far.seeds], events: [], ...over });
  assert.deepEqual(await beat(), { stop: [] });
  await deployed(store, 'x');
  const w = await service.wake('x');
  assert.equal(w.node, 'far', 'woken over HTTP');
  assert.equal(far.lastWake?.app, 'x');
  assert.deepEqual(await beat(), { stop: [] }, 'its own VM is not stopped');

  cluster.get('far')!.lastSeen = 0;
  assert.deepEqual(await cluster.sweep(), ['far']);
  assert.equal((await store.getApp('x')).state, 'asleep', 'apps on a down node count as asleep');
  assert.equal(service.lookup('x')?.address, null);
  const vmId = far.running.get('x')!;
  assert.deepEqual((await beat()).stop, [{ app: 'x', vmId }], 'back from the dead, it must stop the VM placed before');

  // A leaving node first asks for its apps to sleep gracefully (drain, SIGTERM, a record), then says it is gone.
  local.capacity = 0;
  cluster.get('far')!.lastSeen = Date.now();
  await beat({ running: [] });
  assert.equal((await service.wake('x')).node, 'far');
  const quiesced: string[] = [];
  service.gate = { quiesce: async (name) => (quiesced.push(name), { drainMs: 5, cut: 0 }), release: () => {} };
  await beat({ draining: true });
  assert.deepEqual(quiesced, ['x'], 'the router drained the app first');
  assert.equal((await store.getApp('x')).state, 'asleep');
  assert.equal((await service.sleeps('x', 1))[0]?.trigger, 'node-leaving');
  const again = await service.wake('x').then((w) => w.node, (e: Error) => e.message);
  assert.doesNotMatch(String(again), /^far$/, 'nothing new goes to a draining node');
  await service.heartbeat({ name: 'far', url, capacity: 4, running: [], seeds: [], events: [], leaving: true });
  assert.equal(cluster.get('far')!.state, 'down', 'a leaving node is down at once');
  local.capacity = 4;
  assert.equal((await service.wake('x')).node, 'local');

  // The node's API checks the token.
  const intruder = new RemoteNode('far', url, 'wrong-token-0123456789');
  t.after(() => intruder.close());
  await assert.rejects(intruder.logs('x'), (e: ThawError) => e.code === 'UNAUTHORIZED');
});

test('an app_exit event from its node fails the app; one from a stale VM is ignored', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const { service } = controlPlane(t, store, [a]);
  await deployed(store, 'x');
  await service.wake('x');
  const vmId = a.running.get('x')!;
  a.onEvent!({ type: 'app_exit', app: 'x', vmId: 'some-old-vm', code: 1, signal: null });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await store.getApp('x')).state, 'running');
  a.onEvent!({ type: 'app_exit', app: 'x', vmId, code: 1, signal: null });
  for (let i = 0; i < 50 && (await store.getApp('x')).state !== 'failed'; i++) await new Promise((r) => setTimeout(r, 20));
  const app = await store.getApp('x');
  assert.equal(app.state, 'failed');
  assert.match(app.error ?? '', /app exited \(code 1/);
  assert.ok(a.calls.includes('stop x'));
});

test('a VM its node stopped reporting (fenced, restarted) makes the app asleep; a fresh placement is left alone', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const far = new FakeNode('far');
  const server = await createNodeServer(far, TOKEN);
  await server.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  const url = `http://127.0.0.1:${(server.server.address() as { port: number }).port}`;
  const { service } = controlPlane(t, store, [], { reportGraceMs: 300 });
  const beat = (running: { app: string; vmId: string }[]) => service.heartbeat({ name: 'far', url, capacity: 4, running, seeds: [], events: [] });
  await beat([]);
  await deployed(store, 'x');
  await service.wake('x');
  await beat([]); // placed just now: the heartbeat may predate it
  assert.equal((await store.getApp('x')).state, 'running');
  await new Promise((r) => setTimeout(r, 400));
  await beat([]);
  for (let i = 0; i < 50 && (await store.getApp('x')).state !== 'asleep'; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal((await store.getApp('x')).state, 'asleep');
  assert.equal(service.lookup('x')?.address, null, 'no longer routed to the dead address');
});

test('every sleep drains through the router first, leaves a record, and bakes only on idle/manual sleeps', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const { service } = controlPlane(t, store, [a], { drainMs: 1234, stopGraceMs: 777 });
  const events: string[] = [];
  service.gate = {
    quiesce: async (name, drainMs) => (events.push(`quiesce ${name} ${drainMs} ${(await store.getApp(name)).state}`), { drainMs: 40, cut: 1 }),
    release: (name) => void events.push(`release ${name} ${a.calls.at(-1)}`),
  };
  await deployed(store, 'x');
  await service.wake('x');
  a.exitCode = 42;
  const manual = await service.sleep('x');
  assert.deepEqual(events, ['quiesce x 1234 running', 'release x sleep x'], 'drain before the node sleeps, release after');
  assert.deepEqual({ bake: a.lastSleep?.bake, grace: a.lastSleep?.graceMs }, { bake: true, grace: 777 });
  assert.equal(manual.record?.trigger, 'manual');
  assert.equal(manual.record?.exitCode, 42);
  assert.equal(manual.record?.drainMs, 40);
  assert.equal(manual.record?.cutRequests, 1);
  assert.equal(manual.record?.baked, true);
  assert.deepEqual(manual.record?.stages, { stop_app: 2 });
  await service.wake('x');
  await service.sleep('x', 'idle');
  await service.wake('x');
  await service.shutdown();
  const rows = await service.sleeps('x');
  assert.deepEqual(rows.map((r) => [r.trigger, r.baked, r.exitCode]), [['shutdown', false, 42], ['idle', false, 42], ['manual', true, 42]]);
  assert.equal(a.lastSleep?.bake, false, 'shutdown never bakes');
  assert.equal((await store.getApp('x')).state, 'asleep');
  assert.equal((await service.sleep('x')).record, null, 'an asleep app leaves no record');
});

test('a wake that ends without a VM leaves its record and keeps the seed; only a seed proven bad is dropped', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const { service } = controlPlane(t, store, [a]);
  await deployed(store, 'x');
  await service.wake('x');
  const seed = (await service.sleep('x')).seed!;
  // The node dropped the queued wake (nobody waited): its record says so, the app is asleep with its seed.
  const record = {
    id: 'wc', app: 'x', at: new Date().toISOString(), wallMs: 900, bootMode: 'snapshot', bootMs: 0, gateMs: null, appStartMs: 0, pid: null, fsErrors: 0,
    fallbackReason: 'WAKE_CANCELLED: dropped', node: 'a', seedSource: 'local', queuedMs: 900, seedOutcome: 'kept:cancelled', outcome: 'cancelled', stages: {},
  };
  a.failNext = new ThawError('WAKE_CANCELLED', 'dropped', { details: { record } });
  await assert.rejects(service.wake('x'), (e: ThawError) => e.code === 'WAKE_CANCELLED');
  let app = await store.getApp('x');
  assert.equal(app.state, 'asleep');
  assert.equal(app.seedId, seed.id);
  const [last] = await service.wakes('x', 1);
  assert.equal(last!.outcome, 'cancelled');
  assert.equal(last!.queuedMs, 900);
  // A cold boot whose thaw failed for a reason that proves nothing (say the app crashed) keeps the seed.
  a.seeds.delete(seed.id);
  a.coldSeedOutcome = 'kept:app-crashed';
  assert.equal((await service.wake('x')).bootMode, 'cold');
  assert.equal((await store.getApp('x')).seedId, seed.id);
  assert.ok(await store.getSeed('x'));
  a.seeds.add(seed.id);
  await service.sleep('x');
  // A seed proven bad (the gate failed) is dropped.
  a.coldSeedOutcome = 'dropped:gate-failed';
  a.seeds.delete(seed.id);
  await service.wake('x');
  app = await store.getApp('x');
  assert.equal(app.seedId, null);
});

test('volumes: the lease is held from wake to sleep, the home node is kept, a down home node is VOLUME_UNAVAILABLE', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const b = new FakeNode('b');
  const { service, cluster } = controlPlane(t, store, [a, b]);
  await deployed(store, 'v');
  await service.volumeApi.control.declare('v', { path: '/data', sizeBytes: 1 << 30 });
  // A redeploy keeps it with or without --volume; another path is refused.
  assert.equal((await service.volumeApi.control.declare('v', undefined))!.path, '/data');
  await assert.rejects(service.volumeApi.control.declare('v', { path: '/other', sizeBytes: 1 << 30 }), (e: ThawError) => e.code === 'VOLUME_CONFLICT');
  const w = await service.wake('v');
  assert.equal(w.node, 'a');
  assert.deepEqual(a.lastWake?.volume, { path: '/data', sizeBytes: 1 << 30 });
  const held = (await store.getVolume('v'))!;
  assert.equal(held.node, 'a', 'the node that made the file is its home');
  assert.match(held.holder ?? '', /^wake-/);
  await assert.rejects(service.removeVolume('v'), (e: ThawError) => e.code === 'VOLUME_CONFLICT', 'not while it runs');
  await service.sleep('v');
  assert.equal((await store.getVolume('v'))!.holder, null, 'released at sleep');
  // b is less loaded and could hold a seed: the volume's home wins.
  a.running.set('other', 'x1');
  a.running.set('other2', 'x2');
  assert.equal((await service.wake('v')).node, 'a');
  await service.sleep('v');
  a.unreachable = true; // breaks off the wake: no other node may take it
  await assert.rejects(service.wake('v'), (e: ThawError) => e.code === 'VOLUME_UNAVAILABLE' && /node a, which cannot wake it/.test(e.message));
  cluster.get('a')!.state = 'down'; // as missed heartbeats mark a remote node
  await assert.rejects(service.wake('v'), (e: ThawError) => e.code === 'VOLUME_UNAVAILABLE' && /node a, which is down/.test(e.message));
  assert.deepEqual(b.calls.filter((c) => c.startsWith('wake')), [], 'never woken away from its volume');
  assert.equal((await store.getVolume('v'))!.holder, null, 'a refused wake gives the lease back');
});

test('volumes: resize only grows; rm needs the app asleep; deleting the app needs deleteVolume', async (t) => {
  const store = await openStore(await sqliteOpts(t));
  t.after(() => store.close());
  const a = new FakeNode('a');
  const { service } = controlPlane(t, store, [a]);
  await deployed(store, 'v');
  await assert.rejects(service.resizeVolume('v', 2 * 2 ** 30), (e: ThawError) => e.code === 'VOLUME_NOT_FOUND');
  await service.volumeApi.control.declare('v', { path: '/data', sizeBytes: 1 << 30 });
  assert.equal((await service.resizeVolume('v', 2 * 2 ** 30)).sizeBytes, 2 * 2 ** 30);
  await assert.rejects(service.resizeVolume('v', 1 << 30), (e: ThawError) => e.code === 'VOLUME_INVALID');
  await service.wake('v');
  await service.sleep('v');
  await assert.rejects(service.deleteApp('v'), (e: ThawError) => e.code === 'VOLUME_IN_USE');
  await service.deleteApp('v', { deleteVolume: true });
  assert.ok(a.calls.includes('delete-volume v'), a.calls.join(', '));
  assert.equal(await store.getVolume('v'), null);
});
