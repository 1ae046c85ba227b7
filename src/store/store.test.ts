// One suite, run against SQLite always and against Postgres when THAW_TEST_PG is set
// (start one with `eval "$(scripts/pg-start.sh)"`, stop it with scripts/pg-stop.sh).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import pg from 'pg';
import { isThawError } from '../errors.ts';
import { MIGRATIONS, openStore, type OpenStoreOptions, type SeedRow, type Store, type WakeRow } from './index.ts';

interface Env {
  /** Two Store instances = two connections on the same database. */
  a: Store;
  b: Store;
  open(envKey: Buffer): Promise<Store>;
  raw(sql: string): Promise<Record<string, unknown>[]>;
}

const code = (c: string) => (err: unknown) => isThawError(err) && err.code === c;

function seed(id: string, app: string, createdAt: string, extra: Partial<SeedRow> = {}): SeedRow {
  return {
    id, app, deployId: 'd1', node: 'n1', bytesApparent: 4 << 30, bytesAllocated: 123456789, bytesCompressed: null,
    replicated: false, manifestSha256: 'ab'.repeat(32), createdAt, lastUsedAt: createdAt, ...extra,
  };
}

function wake(id: string, app: string, at: string, stages: Record<string, number>): WakeRow {
  return {
    id, app, at, wallMs: 210, bootMode: 'snapshot', bootMs: 150, gateMs: 12, appStartMs: 0, pid: 4242, fsErrors: 0,
    fallbackReason: null, node: 'n1', seedSource: 'local', placement: 'n1 holds seed s1', firstByteMs: null, queuedMs: 0, seedOutcome: 'used', outcome: 'ok', stages,
  };
}

async function suite(t: TestContext, env: Env): Promise<void> {
  const { a, b } = env;

  await t.test('migrate twice is idempotent', async () => {
    await a.migrate();
    await b.migrate();
    const rows = await env.raw('SELECT version FROM schema_migrations ORDER BY version');
    assert.deepEqual(rows.map((r) => Number(r.version)), MIGRATIONS.map((m) => m.version));
  });

  await t.test('create, get, list, delete; APP_EXISTS', async () => {
    const app = await a.createApp({ name: 'alpha', idleTimeoutS: 300 });
    assert.equal(app.state, 'created');
    assert.equal(app.version, 1);
    assert.equal(app.idleTimeoutS, 300);
    assert.equal(app.deployId, null);
    assert.deepEqual(await b.getApp('alpha'), app);
    await assert.rejects(b.createApp({ name: 'alpha', idleTimeoutS: 10 }), code('APP_EXISTS'));
    await assert.rejects(a.createApp({ name: 'Bad Name', idleTimeoutS: 10 }), code('INVALID_APP_NAME'));
    await a.createApp({ name: 'beta', idleTimeoutS: 60 });
    assert.deepEqual((await a.listApps()).map((x) => x.name), ['alpha', 'beta']);

    const d = await a.addDeploy({ id: 'd-alpha', app: 'alpha', imagePath: '/img/alpha.ext4', imageBytes: 5_000_000_000 });
    assert.equal(d.imageBytes, 5_000_000_000);
    assert.deepEqual(await b.listDeploys('alpha'), [d]);
    await assert.rejects(a.addDeploy({ id: 'd-x', app: 'nope', imagePath: '/x', imageBytes: 1 }), code('APP_NOT_FOUND'));
    await a.setEnv('alpha', { K: 'v' });
    await a.putSeed(seed('s-alpha', 'alpha', '2024-01-01T00:00:00.000Z'));
    await a.addWake(wake('w-alpha', 'alpha', '2024-01-01T00:00:00.000Z', {}));

    await a.deleteApp('alpha');
    await assert.rejects(b.getApp('alpha'), code('APP_NOT_FOUND'));
    assert.equal(await b.findApp('alpha'), null);
    assert.deepEqual(await b.listDeploys('alpha'), []);
    assert.deepEqual(await b.listWakes('alpha'), []);
    assert.equal((await b.listSeeds()).some((s) => s.app === 'alpha'), false);
    assert.deepEqual(await env.raw("SELECT key FROM env WHERE app = 'alpha'"), []);
    await assert.rejects(a.deleteApp('alpha'), code('APP_NOT_FOUND'));
    assert.deepEqual((await a.listApps()).map((x) => x.name), ['beta']);
  });

  await t.test('transition is a compare-and-set: one of two concurrent callers wins', async () => {
    for (let i = 0; i < 5; i++) {
      const name = `race-${i}`;
      await a.createApp({ name, idleTimeoutS: 60 });
      const built = await a.transition(name, 'created', 'building', { deployId: 'd1' });
      assert.equal(built.version, 2);
      assert.equal(built.deployId, 'd1');
      const results = await Promise.allSettled([
        a.transition(name, 'building', 'asleep'),
        b.transition(name, ['building'], 'failed', { error: 'boom' }),
      ]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.equal(won.length, 1);
      assert.equal(lost.length, 1);
      const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<Store['transition']>>>).value;
      assert.equal(winner.version, 3);
      assert.ok(code('APP_BUSY')(lost[0]!.reason), String(lost[0]!.reason));
      assert.deepEqual(lost[0]!.reason.details.expected, ['building']);
      assert.equal(lost[0]!.reason.details.actual, winner.state);
      assert.deepEqual(await b.getApp(name), winner);
    }
    await assert.rejects(a.transition('ghost', 'created', 'building'), code('APP_NOT_FOUND'));
  });

  await t.test('illegal transition rejected; patches and updateApp', async () => {
    await a.createApp({ name: 'gamma', idleTimeoutS: 60 });
    await assert.rejects(a.transition('gamma', 'created', 'running'), code('INTERNAL'));
    await assert.rejects(a.transition('gamma', ['created', 'asleep'], 'running'), code('INTERNAL'));
    await assert.rejects(a.transition('gamma', [], 'building'), code('INTERNAL'));
    const same = await a.getApp('gamma');
    assert.equal(same.state, 'created');
    assert.equal(same.version, 1);
    await a.transition('gamma', 'created', 'building');
    await a.transition('gamma', 'building', 'asleep');
    const waking = await b.transition('gamma', ['asleep', 'failed'], 'waking', { node: 'n1' });
    assert.equal(waking.node, 'n1');
    assert.notEqual(waking.lastWakeAt, null);
    const running = await a.transition('gamma', 'waking', 'running', { vmId: 'vm-1', hostPort: 40001 });
    assert.deepEqual([running.vmId, running.hostPort, running.node], ['vm-1', 40001, 'n1']);
    const upd = await b.updateApp('gamma', { idleTimeoutS: 5, vmId: null });
    assert.deepEqual([upd.state, upd.idleTimeoutS, upd.vmId, upd.version], ['running', 5, null, running.version + 1]);
    await assert.rejects(a.updateApp('ghost', { node: 'x' }), code('APP_NOT_FOUND'));
    await assert.rejects(a.updateApp('gamma', { idleTimeoutS: -1 }), code('INVALID_REQUEST'));
  });

  await t.test('env is encrypted at rest; getEnv round-trips; listEnvKeys has no values', async () => {
    await a.createApp({ name: 'delta', idleTimeoutS: 60 });
    const secret = 'hunter2-plaintext-secret';
    await a.setEnv('delta', { DATABASE_PASSWORD: secret, MODE: 'production-mode' });
    const raw = await env.raw("SELECT key, value_enc FROM env WHERE app = 'delta'");
    assert.equal(raw.length, 2);
    for (const r of raw) {
      const v = String(r.value_enc);
      assert.ok(!v.includes(secret) && !v.includes('production-mode'), 'plaintext stored');
      assert.ok(!Buffer.from(v, 'base64').toString('latin1').includes(secret), 'plaintext stored');
    }
    assert.deepEqual(await b.getEnv('delta'), { DATABASE_PASSWORD: secret, MODE: 'production-mode' });
    const keys = await b.listEnvKeys('delta');
    assert.deepEqual(keys.map((k) => Object.keys(k).sort()), [['key', 'updatedAt'], ['key', 'updatedAt']]);
    assert.deepEqual(keys.map((k) => k.key), ['DATABASE_PASSWORD', 'MODE']);
    assert.ok(!JSON.stringify(keys).includes(secret));
    await a.setEnv('delta', { MODE: 'dev' });
    await a.unsetEnv('delta', ['DATABASE_PASSWORD']);
    assert.deepEqual(await a.getEnv('delta'), { MODE: 'dev' });
    await assert.rejects(a.setEnv('delta', { 'BAD-KEY': 'x' }), code('INVALID_ENV_KEY'));
    await assert.rejects(a.setEnv('delta', { BIG: 'x'.repeat(40_000) }), code('ENV_VALUE_TOO_LARGE'));
    await assert.rejects(a.setEnv('ghost', { A: 'b' }), code('APP_NOT_FOUND'));
    const wrongKey = await env.open(randomBytes(32));
    try {
      await assert.rejects(wrongKey.getEnv('delta'), code('STORE_ERROR'));
    } finally {
      await wrongKey.close();
    }
  });

  await t.test('wakes are listed newest first; stages JSON round-trips', async () => {
    await a.createApp({ name: 'eps', idleTimeoutS: 60 });
    const w2 = wake('w2', 'eps', '2024-05-01T10:00:02.000Z', { restore: 120.5, gate: 3 });
    const w1 = { ...wake('w1', 'eps', '2024-05-01T10:00:01.000Z', {}), bootMode: 'cold' as const, gateMs: null, pid: null, fallbackReason: 'SEED_MISSING', seedSource: 'none' as const, placement: null };
    const w3 = { ...wake('w3', 'eps', '2024-05-01T10:00:03.000Z', { pull: 900, restore: 80 }), seedSource: 'pulled' as const };
    // A wake that ran past its deadline after waiting for a slot: queue time, outcome and seed case round-trip.
    const w4 = { ...wake('w4', 'eps', '2024-05-01T10:00:04.000Z', {}), queuedMs: 5321, seedOutcome: 'kept:deadline', outcome: 'deadline' as const, pid: null };
    await a.addWake(w2);
    await b.addWake(w1);
    await a.addWake(w3);
    await b.addWake(w4);
    assert.deepEqual(await b.listWakes('eps'), [w4, w3, w2, w1]);
    assert.deepEqual(await b.listWakes('eps', 2), [w4, w3]);
    await assert.rejects(a.addWake(wake('w9', 'ghost', '2024-01-01T00:00:00.000Z', {})), code('APP_NOT_FOUND'));
  });

  await t.test('the first byte of a wake is recorded once', async () => {
    await a.createApp({ name: 'fb', idleTimeoutS: 60 });
    await a.addWake(wake('wfb', 'fb', '2024-05-01T10:00:00.000Z', {}));
    const got = await b.setWakeFirstByte('wfb', 812.6);
    assert.equal(got?.firstByteMs, 813);
    assert.equal(await a.setWakeFirstByte('wfb', 99), null, 'a second report is ignored');
    assert.equal((await b.listWakes('fb'))[0]?.firstByteMs, 813);
    assert.equal(await a.setWakeFirstByte('no-such-wake', 5), null);
  });

  await t.test('seed columns updated on their own: replicated and last use do not overwrite each other', async () => {
    await a.createApp({ name: 'cols', idleTimeoutS: 60 });
    await a.putSeed(seed('sc', 'cols', '2024-05-01T10:00:00.000Z'));
    await Promise.all([a.markSeedReplicated('sc', 4242), b.touchSeed('sc', '2024-06-01T00:00:00.000Z')]);
    const got = (await b.listSeeds()).find((s) => s.id === 'sc')!;
    assert.equal(got.replicated, true);
    assert.equal(got.bytesCompressed, 4242);
    assert.equal(got.lastUsedAt, '2024-06-01T00:00:00.000Z');
  });

  await t.test('many app locks held at once do not starve their own queries', { timeout: 30_000 }, async () => {
    const names = Array.from({ length: 24 }, (_, i) => `many-${i}`);
    const got = await Promise.all(names.map((n) => a.withAppLock(n, async () => {
      await new Promise((r) => setTimeout(r, 30));
      return (await a.listApps()).length >= 0;
    })));
    assert.equal(got.filter(Boolean).length, names.length);
  });

  await t.test('fractional milliseconds (as the lifecycle measures them) are stored rounded', async () => {
    await a.createApp({ name: 'frac', idleTimeoutS: 60 });
    const w = { ...wake('wf', 'frac', '2024-05-01T10:00:00.000Z', { restore: 64.3 }), wallMs: 12510.4, bootMs: 958.6, gateMs: 171.5, appStartMs: 1999.2 };
    await a.addWake(w);
    const [got] = await b.listWakes('frac');
    assert.deepEqual(got, { ...w, wallMs: 12510, bootMs: 959, gateMs: 172, appStartMs: 1999 });
  });

  await t.test('seeds upsert, current seed, delete; nodes upsert', async () => {
    await a.createApp({ name: 'zeta', idleTimeoutS: 60 });
    assert.equal(await a.getSeed('zeta'), null);
    const s1 = seed('s1', 'zeta', '2024-05-01T10:00:00.000Z');
    await a.putSeed(s1);
    assert.deepEqual(await b.getSeed('zeta'), s1);
    const s1b = { ...s1, replicated: true, bytesCompressed: 5_000_000_000, lastUsedAt: '2024-05-02T00:00:00.000Z' };
    await b.putSeed(s1b);
    assert.deepEqual(await a.getSeed('zeta'), s1b);
    assert.deepEqual((await a.listSeeds()).filter((s) => s.app === 'zeta'), [s1b]);
    const s2 = seed('s2', 'zeta', '2024-05-03T10:00:00.000Z', { node: null });
    await a.putSeed(s2);
    assert.deepEqual(await a.getSeed('zeta'), s2, 'newest seed is current');
    await a.updateApp('zeta', { seedId: 's1' });
    assert.deepEqual(await a.getSeed('zeta'), s1b, 'apps.seed_id wins');
    await a.deleteSeed('s1');
    assert.deepEqual(await a.getSeed('zeta'), s2);
    await a.deleteSeed('s2');
    assert.equal(await a.getSeed('zeta'), null);

    await a.upsertNode({ name: 'n1', url: 'http://127.0.0.1:1', capacity: 4, running: 1, seeds: ['s1'], heartbeatAt: '2024-05-01T00:00:00.000Z' });
    await b.upsertNode({ name: 'n1', url: 'http://127.0.0.1:2', capacity: 8, running: 2, seeds: ['s1', 's2'], heartbeatAt: '2024-05-01T00:00:05.000Z' });
    assert.deepEqual(await a.listNodes(), [{ name: 'n1', url: 'http://127.0.0.1:2', capacity: 8, running: 2, seeds: ['s1', 's2'], heartbeatAt: '2024-05-01T00:00:05.000Z' }]);
  });

  await t.test('withAppLock serializes callers across two Store instances', async () => {
    const events: string[] = [];
    let firstIn!: () => void;
    const entered = new Promise<void>((r) => (firstIn = r));
    const p1 = a.withAppLock('lockapp', async () => {
      events.push('a-start');
      firstIn();
      await sleep(150);
      events.push('a-end');
      return 'a';
    });
    await entered;
    const p2 = b.withAppLock('lockapp', async () => {
      events.push('b-start');
      events.push('b-end');
      return 'b';
    });
    const p3 = a.withAppLock('lockapp', async () => {
      events.push('a2');
    });
    assert.deepEqual(await Promise.all([p1, p2]), ['a', 'b']);
    await p3;
    assert.deepEqual(events.slice(0, 2), ['a-start', 'a-end']);
    assert.deepEqual(events.slice(2).sort(), ['a2', 'b-end', 'b-start']);
    assert.ok(events.indexOf('b-end') === events.indexOf('b-start') + 1);

    // A throwing holder releases the lock and its error passes through unchanged.
    await assert.rejects(b.withAppLock('lockapp', async () => { throw new RangeError('mine'); }), RangeError);
    assert.equal(await a.withAppLock('lockapp', async () => 'again'), 'again');
  });
  await t.test('volumes: one per app, one lease holder across two connections', async () => {
    await a.createApp({ name: 'vol', idleTimeoutS: 60 });
    await assert.rejects(a.addVolume({ app: 'novol', path: '/data', sizeBytes: 1 << 30 }), code('APP_NOT_FOUND'));
    const v = await a.addVolume({ app: 'vol', path: '/data', sizeBytes: 1 << 30 });
    assert.deepEqual([v.path, v.sizeBytes, v.node, v.holder], ['/data', 1 << 30, null, null]);
    await assert.rejects(b.addVolume({ app: 'vol', path: '/other', sizeBytes: 1 << 30 }), code('VOLUME_CONFLICT'));
    assert.equal((await b.updateVolume('vol', { node: 'n1', sizeBytes: 2 << 30 })).sizeBytes, 2 << 30);
    await assert.rejects(b.updateVolume('nope', { node: 'n1' }), code('VOLUME_NOT_FOUND'));
    // A VM of the app may exist (waking): of two racing holders, exactly one wins.
    await a.transition('vol', 'created', 'building');
    await a.transition('vol', 'building', 'failed');
    await a.transition('vol', 'failed', 'waking');
    const race = await Promise.allSettled([a.leaseVolume('vol', 'move-1'), b.leaseVolume('vol', 'move-2')]);
    assert.equal(race.filter((r) => r.status === 'fulfilled').length, 1);
    const loser = race.find((r): r is PromiseRejectedResult => r.status === 'rejected')!;
    assert.ok(code('VOLUME_BUSY')(loser.reason));
    await assert.rejects(a.leaseVolume('vol', 'wake-3'), code('VOLUME_BUSY'), 'a wake never takes a volume a move holds');
    const holder = (await a.getVolume('vol'))!.holder!;
    await a.releaseVolume('vol', 'wake-other'); // not the holder: no effect
    assert.equal((await b.getVolume('vol'))!.holder, holder);
    await b.releaseVolume('vol', holder);
    assert.equal((await a.getVolume('vol'))!.holder, null);
    // The one wake that moved the app to waking takes over a wake's lease left by a dead control plane.
    await a.leaseVolume('vol', 'wake-old');
    assert.equal((await b.leaseVolume('vol', 'wake-new')).holder, 'wake-new');
    await b.releaseVolume('vol', 'wake-new');
    // A holder left by a crash is taken over once the app is asleep (no VM of it exists).
    await a.leaseVolume('vol', 'crashed');
    await a.transition('vol', 'waking', 'asleep');
    assert.equal((await b.leaseVolume('vol', 'next')).holder, 'next');
    assert.deepEqual((await b.listVolumes()).map((x) => x.app), ['vol']);
    await a.deleteApp('vol');
    assert.equal(await b.getVolume('vol'), null);
  });
}

const envKey = randomBytes(32);

/** Opens two stores at once (their migrations race); closes any that opened if one fails. */
async function openTwo(opts: OpenStoreOptions): Promise<[Store, Store]> {
  const r = await Promise.allSettled([openStore(opts), openStore(opts)]);
  const ok = r.flatMap((x) => (x.status === 'fulfilled' ? [x.value] : []));
  const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (bad) {
    await Promise.all(ok.map((s) => s.close()));
    throw bad.reason;
  }
  return [ok[0]!, ok[1]!];
}

test('sqlite', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thaw-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'state.db');
  const opts: OpenStoreOptions = { sqlitePath: path, envKey };
  const [a, b] = await openTwo(opts);
  const rawDb = new Database(path, { readonly: true });
  t.after(async () => {
    rawDb.close();
    await a.close();
    await b.close();
  });
  await suite(t, {
    a, b,
    open: (k) => openStore({ ...opts, envKey: k }),
    raw: async (sql) => rawDb.prepare(sql).all() as Record<string, unknown>[],
  });
  await t.test('a lock left by a dead process is taken over', async () => {
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const w = new Database(path);
    try {
      w.prepare('INSERT INTO locks (name, owner, pid, acquired_at) VALUES (?, ?, ?, ?)').run('app:orphan', 'x', dead, new Date().toISOString());
      w.prepare('INSERT INTO locks (name, owner, pid, acquired_at) VALUES (?, ?, ?, ?)').run('app:held', 'y', process.pid, new Date().toISOString());
    } finally {
      w.close();
    }
    assert.equal(await a.withAppLock('orphan', async () => 'mine'), 'mine');
    const short = await openStore({ ...opts, lockWaitMs: 50 });
    try {
      await assert.rejects(short.withAppLock('held', async () => 'no'), code('APP_BUSY'));
    } finally {
      await short.close();
    }
  });
});

test('postgres', async (t) => {
  const url = process.env.THAW_TEST_PG;
  if (!url) return t.skip('THAW_TEST_PG not set');
  const schema = `thaw_t_${process.pid}_${randomBytes(4).toString('hex')}`;
  const rawDb = new pg.Client({ connectionString: url, options: `-c search_path=${schema}` });
  await rawDb.connect();
  t.after(async () => {
    await rawDb.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await rawDb.end();
  });
  const opts: OpenStoreOptions = { url, pgSchema: schema, envKey };
  const [a, b] = await openTwo(opts);
  t.after(async () => {
    await a.close();
    await b.close();
  });
  await suite(t, {
    a, b,
    open: (k) => openStore({ ...opts, envKey: k }),
    raw: async (sql) => (await rawDb.query(sql)).rows,
  });
});
