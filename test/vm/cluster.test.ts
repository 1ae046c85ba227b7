// Several node agents as their own processes (`thaw node`), a control plane
// without a local node (`--no-local-node`), a real S3-protocol server and real
// QEMU VMs. A seed baked on node A is thawed on node B; nodes are SIGKILLed
// while idle, mid-pull and mid-thaw, and every request is still answered
// (from another node), no half seed is ever used, and no VM outlives its node.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import { startThaw, type Running } from '../../src/control/up.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { NetPool } from '../../src/network/pool.ts';
import { spawnNode, type NodeProc } from '../helpers/nodeproc.ts';
import { S3RVER_CREDENTIALS, startS3Server, type S3TestServer } from '../helpers/s3server.ts';
import { HELLO, qemuProcesses } from './fixture.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DOWN_MS = 5000;
const pgUrl = process.env.THAW_TEST_PG;
const pgSchema = `thaw_cluster_${process.pid}`;

describe('nodes as processes: cross-node thaw and nodes killed mid-flight', { concurrency: false }, () => {
  let s3: S3TestServer;
  let ctl: Running;
  let ctlDir: string;
  let api: ApiClient;
  let routerPort: number;
  const dirs = new Map<string, string>();
  const procs = new Map<string, NodeProc>();

  const startNode = async (name: string): Promise<NodeProc> => {
    let dir = dirs.get(name);
    if (!dir) {
      dir = await mkdtemp(path.join(os.tmpdir(), `thaw-node-${name}-`));
      dirs.set(name, dir);
    }
    const n = spawnNode({
      name, dir, control: ctl.apiUrl, tokenFile: path.join(ctlDir, 'token'), nodeTimeoutMs: DOWN_MS,
      s3: { endpoint: s3.endpoint, bucket: 'seeds', ...S3RVER_CREDENTIALS },
    });
    procs.set(name, n);
    return n;
  };

  const nodeState = async (name: string) => (await api.nodes()).find((n) => n.name === name)?.state;
  const until = async (what: string, ok: () => Promise<boolean> | boolean, ms = 60_000) => {
    const t0 = Date.now();
    while (Date.now() - t0 < ms) {
      if (await ok()) return;
      await sleep(100);
    }
    assert.fail(`timed out waiting for ${what}`);
  };
  const up = (name: string) => until(`node ${name} up`, async () => (await nodeState(name)) === 'up');
  const down = (name: string) => until(`node ${name} down`, async () => (await nodeState(name)) === 'down');
  const kill = (name: string) => procs.get(name)!.kill();
  const get = async () => {
    const r = await request(`http://127.0.0.1:${routerPort}/`, { headers: { host: 'hello.localhost' } });
    return { status: r.statusCode, boot: r.headers['x-thaw-boot'], json: (await r.body.json()) as { marker: string | null; pid: number } };
  };
  const lastWake = async () => (await api.wakes('hello', 1))[0]!;
  /** The request was answered from a thaw on `node` that serves the marker written before the bake. */
  const thawedBy = async (answer: ReturnType<typeof get>, node: string, seedSource: string, placement: RegExp) => {
    const r = await answer;
    const w = await lastWake();
    assert.equal(r.status, 200);
    assert.equal(r.boot, 'snapshot', `fallback: ${w.fallback_reason}`);
    assert.equal(r.json.marker, 'baked-on-a');
    assert.equal(w.node, node);
    assert.equal(w.seed_source, seedSource);
    assert.match(w.placement ?? '', placement);
  };
  const seedDirs = async (name: string) => readdir(path.join(dirs.get(name)!, 'node', 'seeds')).catch(() => [] as string[]);

  before(async () => {
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    s3 = await startS3Server();
    ctlDir = await mkdtemp(path.join(os.tmpdir(), 'thaw-ctl-'));
    ctl = await startThaw(
      {
        data: ctlDir, port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300, s3Endpoint: s3.endpoint, s3Bucket: 'seeds', localNode: false, nodeDownAfterMs: DOWN_MS, maintenanceMs: 2000,
        // The shared state in Postgres when .ci/run started one (THAW_TEST_PG), else SQLite.
        ...(pgUrl ? { database: pgUrl, databaseSchema: pgSchema } : {}),
      },
      pino({ level: process.env.THAW_TEST_LOG ?? 'silent' }),
    );
    routerPort = Number(new URL(ctl.routerUrl).port);
    api = new ApiClient({ url: ctl.apiUrl, token: ctl.token });
    await Promise.all(['a', 'b', 'c'].map((n) => startNode(n)));
    await Promise.all(['a', 'b', 'c'].map((n) => up(n)));
  });

  after(async () => {
    await Promise.all([...procs.values()].map((n) => n.stop()));
    await ctl?.stop();
    await api?.close();
    await s3?.stop();
    if (pgUrl) {
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`);
      await c.end();
    }
    // A SIGKILLed node that is not restarted leaves its ready namespaces: remove them as its next start would.
    for (const d of dirs.values()) await new NetPool({ dataDir: path.join(d, 'node'), log: pino({ level: 'silent' }), size: 0 }).recover();
    for (const d of [...dirs.values(), ctlDir]) {
      assert.deepEqual(qemuProcesses(d), [], `QEMU left running for ${d}`);
      await rm(d, { recursive: true, force: true });
    }
  });

  test('no local node: the control plane lists three remote nodes', async () => {
    if (pgUrl) {
      // Heartbeats are recorded in the shared Postgres state.
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      const rows = (await c.query(`SELECT name FROM ${pgSchema}.nodes ORDER BY name`)).rows as { name: string }[];
      await c.end();
      assert.deepEqual(rows.map((r) => r.name), ['a', 'b', 'c']);
    }
    const nodes = await api.nodes();
    assert.deepEqual(nodes.map((n) => [n.name, n.state, n.local]), [['a', 'up', false], ['b', 'up', false], ['c', 'up', false]]);
  });

  test('a node with the wrong token exits at once with a clear error', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-node-x-'));
    dirs.set('x', dir);
    await writeFile(path.join(dir, 'wrong-token'), 'not-the-cluster-token-0123\n');
    const x = spawnNode({ name: 'x', dir, control: ctl.apiUrl, tokenFile: path.join(dir, 'wrong-token'), expectExit: true });
    await x.exited;
    assert.notEqual(x.proc.exitCode, 0);
    assert.match(x.stderr(), /UNAUTHORIZED.*refused this node's token/s);
    assert.equal(await nodeState('x'), undefined);
  });

  test('baked on node a; with a killed, node b pulls, verifies and thaws it and serves the marker written on a', async () => {
    await api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'cluster' } });
    const first = await get();
    assert.equal(first.boot, 'cold');
    assert.equal((await lastWake()).node, 'a');
    await request(`http://127.0.0.1:${routerPort}/`, { method: 'POST', body: 'baked-on-a', headers: { host: 'hello.localhost' } }).then((r) => r.body.dump());
    const slept = await api.sleep('hello');
    assert.ok(slept.baked);
    const id = slept.seed!.id;
    assert.equal(slept.seed!.node, 'a');
    await until('seed replicated', async () => !!(await api.seeds()).find((s) => s.id === id)?.replicated);

    await kill('a');
    await down('a');
    const r = await get();
    const w = await lastWake();
    assert.equal(r.status, 200);
    assert.equal(r.boot, 'snapshot', `fallback: ${w.fallback_reason}`);
    assert.equal(r.json.marker, 'baked-on-a');
    assert.equal(w.node, 'b');
    assert.equal(w.seed_source, 'pulled');
    assert.equal(w.fs_errors, 0);
    assert.match(w.placement ?? '', /b pulls it/);
    assert.ok((w.stages.seed_pull ?? 0) > 0, 'the pull is part of the wake record');
    await api.sleep('hello');
  });

  test('node a killed mid-pull: the wake is answered by node c, and a keeps no half seed', async () => {
    await kill('b'); // holds the seed now; take it out so a wake must pull
    await down('b');
    await rm(path.join(dirs.get('a')!, 'node', 'seeds'), { recursive: true, force: true }); // a forgets its copy
    const a = await startNode('a');
    await up('a');
    const pulling = a.waitLog('seed pull started');
    const answer = get();
    await pulling;
    await kill('a');
    await thawedBy(answer, 'c', 'pulled', /after a broke off/);
    assert.deepEqual(qemuProcesses(dirs.get('a')!), []);
    await startNode('a');
    await up('a');
    assert.deepEqual(await seedDirs('a'), [], 'the restarted node removed the partial pull');
    await api.sleep('hello');
  });

  test('node b killed mid-thaw: the request is answered by node c, and b leaves no VM behind', async () => {
    const b = await startNode('b'); // still holds the seed it pulled earlier
    await up('b');
    const seedId = (await api.seeds())[0]!.id;
    assert.deepEqual(await seedDirs('b'), [seedId]);
    const answer = get();
    await until('a VM on node b', () => qemuProcesses(b.dir).length > 0, 60_000);
    await kill('b');
    await thawedBy(answer, 'c', 'local', /c holds seed .* \(after b broke off\)/);
    await until('b\'s QEMU gone with it', () => qemuProcesses(b.dir).length === 0, 10_000);
  });

  test('node c shut down with SIGTERM: its VM is deleted and the control plane knows at once', async () => {
    assert.equal((await api.getApp('hello')).state, 'running');
    await procs.get('c')!.stop();
    assert.equal(await nodeState('c'), 'down', 'no waiting for the node timeout');
    assert.equal((await api.getApp('hello')).state, 'asleep');
    assert.deepEqual(qemuProcesses(dirs.get('c')!), []);
  });

  test('a node cut off from the control plane stops its VM before the control plane gives the app away', async () => {
    // Node d reaches the control plane through a proxy the test can cut; the control plane still reaches d.
    const proxy = await cuttableProxy(Number(new URL(ctl.apiUrl).port));
    try {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-node-d-'));
      dirs.set('d', dir);
      const d = spawnNode({
        name: 'd', dir, control: `http://127.0.0.1:${proxy.port}`, tokenFile: path.join(ctlDir, 'token'), nodeTimeoutMs: DOWN_MS,
        s3: { endpoint: s3.endpoint, bucket: 'seeds', ...S3RVER_CREDENTIALS },
      });
      procs.set('d', d);
      await up('d');
      await procs.get('a')!.stop(); // leaves: d is the only node with room
      const r = await get();
      assert.equal(r.status, 200);
      assert.equal((await lastWake()).node, 'd');
      assert.equal(qemuProcesses(dir).length, 1);
      proxy.cut();
      let vmGoneWhile: string | undefined;
      await until('d stops its VM', async () => {
        if (qemuProcesses(dir).length > 0) return false;
        vmGoneWhile = await nodeState('d');
        return true;
      }, 20_000);
      assert.equal(vmGoneWhile, 'up', 'the VM was gone before the control plane marked d down');
      await down('d');
      assert.equal((await api.getApp('hello')).state, 'asleep');
      proxy.heal();
      await up('d');
    } finally {
      // d reaches the control plane only through the proxy: it leaves before the proxy goes.
      await procs.get('d')?.stop();
      proxy.close();
    }
  });

  test('a volume: backed up at sleep; its home SIGKILLed is VOLUME_UNAVAILABLE; restore onto another node serves the last sleep; move back while asleep', async () => {
    const vol = async (method: 'GET' | 'POST' = 'GET', body?: string) => {
      const r = await request(`http://127.0.0.1:${routerPort}/`, { method, headers: { host: 'volapp.localhost' }, ...(body ? { body } : {}) });
      const text = await r.body.text();
      return { status: r.statusCode, text, json: JSON.parse(text) as { marker: string | null } };
    };
    // The tests before stopped or killed a, b and c: this one needs two nodes up.
    for (const n of ['a', 'b']) {
      if ((await nodeState(n)) === 'up') continue;
      await startNode(n);
      await up(n);
    }
    await api.deploy('volapp', await packAppDir(HELLO), { env: { WHO: 'vol' }, volume: '/app/data:64MiB', wakeTimeoutS: 600 }); // a cold boot on a loaded 2-core host can take minutes
    const first = await vol('POST', 'kept-by-backup');
    assert.equal(first.status, 201, first.text);
    const home = (await api.wakes('volapp', 1))[0]!.node!;
    const slept = await api.sleep('volapp');
    assert.ok(slept.seed);
    const rec = (await api.sleeps('volapp', 1))[0]!;
    assert.ok(rec.stages.backup_volume !== undefined, `the sleep's last step packs the volume: ${JSON.stringify(rec.stages)}`);
    assert.equal(rec.backup?.node, home);
    await until('backup stored', async () => (await api.sleeps('volapp', 1))[0]!.backup?.state === 'stored');
    await until('seed replicated', async () => !!(await api.seeds()).find((x) => x.id === slept.seed!.id)?.replicated);
    const stored = (await api.sleeps('volapp', 1))[0]!.backup!;
    assert.ok(stored.bytes < 2 * 1024 * 1024, `a 64 MiB volume holding one file packs small (${stored.bytes} bytes)`);

    await kill(home);
    await down(home);
    await assert.rejects(api.wake('volapp'), (e: Error & { code?: string }) => e.code === 'VOLUME_UNAVAILABLE');
    const other = (await api.nodes()).find((n) => n.state === 'up' && n.name !== home)!.name;
    const restored = await api.restoreVolume('volapp', other);
    assert.equal(restored.sleep.id, rec.id, 'the data of the last sleep');
    assert.equal(restored.previous_node, home);
    const back = await vol();
    assert.equal(back.status, 200);
    assert.equal(back.json.marker, 'kept-by-backup');
    assert.equal((await api.wakes('volapp', 1))[0]!.node, other);
    assert.equal((await vol('POST', 'written-on-other')).status, 201);
    await api.sleep('volapp');

    await startNode(home);
    await up(home);
    const moved = await api.moveVolume('volapp', home);
    assert.equal(moved.via, 'object-storage');
    assert.equal((await vol()).json.marker, 'written-on-other');
    assert.equal((await api.wakes('volapp', 1))[0]!.node, home);
    await api.sleep('volapp');
    await api.deleteApp('volapp', { deleteVolume: true });
    for (const n of [home, other]) {
      const left = (await readdir(path.join(dirs.get(n)!, 'node', 'volumes')).catch(() => [] as string[])).filter((f) => f.startsWith('volapp'));
      assert.deepEqual(left, [], `no volume file or packed backup left on ${n}`);
    }
  });
});

/** A TCP proxy to 127.0.0.1:target whose connections can be cut (and refused) and healed. */
async function cuttableProxy(target: number): Promise<{ port: number; cut(): void; heal(): void; close(): void }> {
  const sockets = new Set<net.Socket>();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) return client.destroy();
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    heal() {
      open = true;
    },
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
