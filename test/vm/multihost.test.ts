// Nodes on separate hosts: each `thaw node` runs in its own network namespace
// with its own address on a shared test bridge (test/helpers/hosts.ts), as
// machines on one LAN. The control plane, router, S3-protocol server and the
// client stay in the root namespace and are reached over the bridge only; the
// control API and the node APIs speak TLS (a cluster CA made by `thaw up
// --tls`, nodes pinning its fingerprint, the control plane pinning each
// node's). One cold boot on host a, one bake, a thaw on a; then a's link is
// cut: a is marked down, the app thaws on b from the seed b pulls, and a
// rejoins when its link is back. Nodes with a wrong fingerprint or an address
// the control plane cannot reach are refused at join with a clear code.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import { startThaw, type Running } from '../../src/control/up.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import { createHostNet, type HostNet } from '../helpers/hosts.ts';
import { spawnNode, type NodeProc } from '../helpers/nodeproc.ts';
import { S3RVER_CREDENTIALS, startS3Server, type S3TestServer } from '../helpers/s3server.ts';
import { HELLO, qemuProcesses } from './fixture.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DOWN_MS = 5000;
const pgUrl = process.env.THAW_TEST_PG;
const pgSchema = `thaw_multihost_${process.pid}`;

describe('nodes on separate hosts (network namespaces on a bridge), over TLS', { concurrency: false }, () => {
  let net: HostNet;
  let s3: S3TestServer;
  let ctl: Running;
  let ctlDir: string;
  let api: ApiClient;
  const dirs = new Map<string, string>();
  const procs = new Map<string, NodeProc>();

  const node = async (name: string, host: string, extra: string[] = [], expectExit = false): Promise<NodeProc> => {
    let dir = dirs.get(name);
    if (!dir) {
      dir = await mkdtemp(path.join(os.tmpdir(), `thaw-mh-${name}-`));
      dirs.set(name, dir);
    }
    const n = spawnNode({
      name, dir, control: ctl.apiUrl, tokenFile: path.join(ctlDir, 'token'), nodeTimeoutMs: DOWN_MS, wrap: net.exec(host), expectExit,
      s3: { endpoint: s3.endpoint, bucket: 'seeds', ...S3RVER_CREDENTIALS },
      extraArgs: ['--control-fingerprint', ctl.apiFingerprint!, ...extra],
    });
    procs.set(name, n);
    return n;
  };
  const nodeInfo = async (name: string) => (await api.nodes()).find((n) => n.name === name);
  const until = async (what: string, ok: () => Promise<boolean> | boolean, ms = 60_000) => {
    for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(100)) if (await ok()) return;
    assert.fail(`timed out waiting for ${what}`);
  };
  const state = (name: string, want: 'up' | 'down', ms?: number) => until(`node ${name} ${want}`, async () => (await nodeInfo(name))?.state === want, ms);
  /** Through the router; a request held past the router's wake timeout (a loaded machine) is retried, the wake goes on. */
  const get = async (method = 'GET', body?: string) => {
    for (;;) {
      const r = await request(`${ctl.routerUrl}/`, { method, headers: { host: 'hello.localhost' }, ...(body ? { body } : {}) });
      const json = (await r.body.json()) as { marker: string | null; error?: { code: string } };
      if (r.statusCode === 503 && json.error?.code === 'WAKE_TIMEOUT') continue;
      return { status: r.statusCode, json };
    }
  };
  /** A 200 from the router, or a failure that names the error and the last wake record. */
  const ok = async (r: { status: number; json: unknown }) => {
    if (r.status !== 200) assert.fail(`router answered ${r.status}: ${JSON.stringify(r.json)}; last wake: ${JSON.stringify((await api.wakes('hello', 1))[0] ?? null)}`);
  };
  const lastWake = async () => (await api.wakes('hello', 1))[0]!;

  before(async () => {
    net = createHostNet(['a', 'b', 'c']);
    process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
    s3 = await startS3Server({ address: net.gateway });
    ctlDir = await mkdtemp(path.join(os.tmpdir(), 'thaw-mh-ctl-'));
    ctl = await startThaw(
      {
        data: ctlDir, port: 0, apiPort: 0, host: net.gateway, tls: true, domain: 'localhost', idleTimeout: 300,
        s3Endpoint: s3.endpoint, s3Bucket: 'seeds', localNode: false, nodeDownAfterMs: DOWN_MS, maintenanceMs: 2000,
        ...(pgUrl ? { database: pgUrl, databaseSchema: pgSchema } : {}),
      },
      pino({ level: process.env.THAW_TEST_LOG ?? 'silent' }),
    );
    api = new ApiClient({ url: ctl.apiUrl, token: ctl.token, trust: { fingerprint: ctl.apiFingerprint! } });
    const host = (n: string) => net.hosts.get(n)!.ip;
    await Promise.all([node('a', 'a', ['--host', host('a')]), node('b', 'b', ['--host', host('b')])]);
    await Promise.all([state('a', 'up'), state('b', 'up')]);
  });

  after(async () => {
    await Promise.all([...procs.values()].map((n) => n.stop()));
    await ctl?.stop();
    await api?.close();
    await s3?.stop();
    net?.close();
    if (pgUrl) {
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`);
      await c.end();
    }
    for (const d of [...dirs.values(), ctlDir]) {
      assert.deepEqual(qemuProcesses(d), [], `QEMU left running for ${d}`);
      await rm(d, { recursive: true, force: true });
    }
  });

  test('every hop crosses the bridge over TLS: control API, node APIs and S3 on bridge addresses', async () => {
    const bridge = new RegExp(`^https://${net.gateway.replace(/\.1$/, '').replace(/\./g, '\\.')}\\.\\d+:\\d+$`);
    assert.match(ctl.apiUrl, bridge);
    assert.match(s3.endpoint, new RegExp(`^http://${net.gateway.replace(/\./g, '\\.')}:`));
    const nodes = await api.nodes();
    assert.deepEqual(nodes.map((n) => [n.name, n.state]), [['a', 'up'], ['b', 'up']]);
    assert.deepEqual(nodes.map((n) => new URL(n.url).hostname), [net.hosts.get('a')!.ip, net.hosts.get('b')!.ip]);
    for (const n of nodes) assert.match(n.url, bridge);
    assert.match(ctl.joinCommand, /^thaw node --control https:\/\/\S+ --token \S+ --control-fingerprint sha256:[0-9A-F:]{95} /);
  });

  test('refused at join with a clear code: a wrong pinned fingerprint, and an address the control plane cannot reach', async () => {
    const wrong = `sha256:${'AB:'.repeat(31)}AB`;
    // y binds every address without --advertise: it advertises its own loopback, which is not the control plane's.
    const [x, y] = await Promise.all([
      node('x', 'c', ['--host', net.hosts.get('c')!.ip, '--control-fingerprint', wrong], true),
      node('y', 'c', ['--host', '0.0.0.0'], true),
    ]);
    await Promise.all([x.exited, y.exited]);
    assert.notEqual(x.proc.exitCode, 0);
    assert.match(x.stderr(), /TLS_FINGERPRINT_MISMATCH/);
    assert.match(x.stderr(), /does not match the pinned fingerprint/);
    assert.notEqual(y.proc.exitCode, 0);
    assert.match(y.stderr(), /NODE_ADVERTISE_UNREACHABLE/);
    assert.match(y.stderr(), /advertises https:\/\/127\.0\.0\.1:\d+, but the control plane cannot reach it/);
    assert.equal(await nodeInfo('x'), undefined);
    assert.equal(await nodeInfo('y'), undefined);
  });

  test('cold wake and bake on host a, thaw on a; a cut off: marked down, the app thaws on b from the pulled seed; a rejoins', async () => {
    await api.deploy('hello', await packAppDir(HELLO), { env: { WHO: 'multihost' } });
    await ok(await get());
    assert.equal((await lastWake()).boot_mode, 'cold');
    assert.equal((await lastWake()).node, 'a');
    await get('POST', 'baked-on-a');
    const slept = await api.sleep('hello');
    assert.ok(slept.baked);
    const id = slept.seed!.id;
    await until('seed replicated', async () => !!(await api.seeds()).find((s) => s.id === id)?.replicated, 120_000);
    const onA = await get();
    await ok(onA);
    assert.equal((await lastWake()).boot_mode, 'snapshot', `fallback: ${(await lastWake()).fallback_reason}`);
    assert.equal(onA.json.marker, 'baked-on-a');
    assert.equal((await lastWake()).node, 'a');

    net.cut('a');
    await state('a', 'down', 20_000);
    // The node is listed down at once; its apps are moved to asleep under their locks right after.
    await until('the app on a asleep', async () => (await api.getApp('hello')).state === 'asleep', 20_000);
    await until("a's VM fenced", () => qemuProcesses(dirs.get('a')!).length === 0, 10_000);
    const onB = await get();
    const w = await lastWake();
    await ok(onB);
    assert.equal(w.boot_mode, 'snapshot', `fallback: ${w.fallback_reason}`);
    assert.equal(onB.json.marker, 'baked-on-a');
    assert.equal(w.node, 'b');
    assert.equal(w.seed_source, 'pulled');
    assert.ok((w.stages.seed_pull ?? 0) > 0);
    console.error(`multihost: cross-host thaw on b ${w.wall_ms} ms, seed pull ${w.stages.seed_pull} ms`);

    net.heal('a');
    await state('a', 'up', 30_000);
    assert.equal((await get()).json.marker, 'baked-on-a', 'still served from b');
    assert.equal((await lastWake()).node, 'b');
  });
});
