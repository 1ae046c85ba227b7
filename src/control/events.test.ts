// The dashboard's event feed: ordering, resuming after Last-Event-ID (in the
// feed and over a real SSE connection), and no env value in any event while a
// real control plane (SQLite store, fake nodes) deploys, wakes and sleeps.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import { createApiServer } from '../api/server.ts';
import { openStore, type AppRow } from '../store/index.ts';
import { Cluster } from './cluster.ts';
import { EventFeed, observeStore, type FeedEvent } from './events.ts';
import { toAppWire, toSeedWire, toWakeWire } from '../api/schemas.ts';
import { Replication } from './replication.ts';
import { Service } from './service.ts';
import { FakeNode } from './testing.ts';

const TOKEN = 'events-test-token-0123456789';

test('events are numbered in publish order and every subscriber sees that order', () => {
  const feed = new EventFeed();
  const a: FeedEvent[] = [];
  const b: FeedEvent[] = [];
  feed.subscribe((e) => a.push(e));
  feed.subscribe((e) => b.push(e));
  for (let i = 0; i < 50; i++) feed.publish(i % 2 ? 'app' : 'wake', { i });
  assert.deepEqual(a.map((e) => e.data.i), [...Array(50).keys()]);
  assert.deepEqual(b, a);
  const seqs = a.map((e) => Number(e.id.split('.')[1]));
  assert.deepEqual(seqs, [...Array(50).keys()].map((i) => i + 1));
  assert.ok(a.every((e) => e.id.startsWith(`${feed.epoch}.`)));
  assert.equal(feed.lastId, a[49]!.id);
});

test('Last-Event-ID resumes exactly after the event; unknown, foreign or evicted ids get one reset', () => {
  const feed = new EventFeed(10);
  const sent = Array.from({ length: 25 }, (_, i) => feed.publish('app', { i }));
  // Within the ring: exactly the events after the id, in order.
  assert.deepEqual(feed.since(sent[19]!.id).map((e) => e.data.i), [20, 21, 22, 23, 24]);
  assert.deepEqual(feed.since(sent[24]!.id), []);
  // Replay then live, through subscribe(): no gap, no duplicate.
  const got: number[] = [];
  const off = feed.subscribe((e) => got.push(e.data.i as number), sent[21]!.id);
  feed.publish('app', { i: 25 });
  off();
  feed.publish('app', { i: 26 });
  assert.deepEqual(got, [22, 23, 24, 25]);
  for (const id of [sent[3]!.id, 'deadbeef.3', `${feed.epoch}.999`, 'garbage']) {
    const r = feed.since(id);
    assert.equal(r.length, 1, id);
    assert.equal(r[0]!.type, 'reset', id);
  }
});

/** GET an SSE stream, collect `count` events, then disconnect. */
function readSse(url: string, headers: Record<string, string>, count: number): Promise<{ id: string; type: string; data: any }[]> {
  return new Promise((resolve, reject) => {
    const out: { id: string; type: string; data: any }[] = [];
    const req = http.get(url, { headers }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
      assert.match(String(res.headers['content-type']), /^text\/event-stream/);
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        let i;
        while ((i = buf.indexOf('\n\n')) !== -1) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const f: Record<string, string> = {};
          for (const line of block.split('\n')) {
            const m = /^(\w+): ?(.*)$/.exec(line);
            if (m) f[m[1]!] = m[2]!;
          }
          if (f.event) out.push({ id: f.id ?? '', type: f.event, data: JSON.parse(f.data ?? 'null') });
          if (out.length === count) {
            req.destroy();
            resolve(out);
          }
        }
      });
    });
    req.on('error', (e) => (out.length === count ? undefined : reject(e)));
  });
}

/** A real control plane over SQLite, observed by a feed, served by the API with the dashboard. */
async function controlPlane(t: TestContext) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-i13-events-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'index.html'), '<!doctype html><title>t</title>');
  const log = pino({ level: 'silent' });
  const feed = new EventFeed();
  let svc: Service | null = null;
  const app = (a: AppRow) => toAppWire(svc!.view(a));
  const store = observeStore(await openStore({ sqlitePath: path.join(dir, 'thaw.db'), envKey: randomBytes(32) }), feed, { app, wake: toWakeWire, seed: toSeedWire });
  t.after(() => store.close());
  const cluster = new Cluster({ store, token: TOKEN, log, downAfterMs: 60_000 });
  const node = new FakeNode('local');
  cluster.addLocal(node);
  t.after(() => cluster.close());
  const replication = new Replication({ s3: null, ttlMs: 1e12, store, cluster, log, onSeedGone: async () => {} });
  const service = new Service({
    store, cluster, baseRootfs: '/nonexistent', dataDir: dir, log, domain: 'localhost', routerPort: 8080,
    idleTimeoutS: 300, diskMiB: 64, maxAppBytes: 1 << 20, maxTarballBytes: 1 << 20, replication,
  });
  svc = service;
  const api = await createApiServer({ service, token: TOKEN, logger: false, ui: { feed, webDir: dir } });
  await api.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => api.close());
  const url = `http://127.0.0.1:${(api.server.address() as { port: number }).port}`;
  // Sign in like a browser: a code from the bearer API, redeemed for the cookie.
  const code = (await (await fetch(`${url}/v1/dashboard/login`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { login_path: string };
  const login = await fetch(`${url}${code.login_path}`, { redirect: 'manual' });
  const cookie = String(login.headers.get('set-cookie')).split(';')[0]!;
  return { store, service, feed, node, url, cookie };
}

test('over SSE: a reconnect with Last-Event-ID gets exactly the missed events, in order', async (t) => {
  const { store, feed, url, cookie } = await controlPlane(t);
  await store.createApp({ name: 'one', idleTimeoutS: 60 });
  const since = feed.lastId;
  // Changes while the browser is away.
  await store.createApp({ name: 'two', idleTimeoutS: 60 });
  await store.transition('two', 'created', 'building');
  await store.transition('two', 'building', 'failed', { error: 'x' });
  const missed = await readSse(`${url}/ui/api/events`, { cookie, 'last-event-id': since }, 3);
  assert.deepEqual(missed.map((e) => `${e.type} ${e.data.name} ${e.data.state}`), ['app two created', 'app two building', 'app two failed']);
  const seq = missed.map((e) => Number(e.id.split('.')[1]));
  assert.deepEqual(seq, [seq[0], seq[0]! + 1, seq[0]! + 2]);
  // Resuming from the middle of that run.
  const rest = await readSse(`${url}/ui/api/events`, { cookie, 'last-event-id': missed[0]!.id }, 2);
  assert.deepEqual(rest.map((e) => e.id), [missed[1]!.id, missed[2]!.id]);
  // Without the session cookie the stream is refused.
  const r = await fetch(`${url}/ui/api/events`);
  assert.equal(r.status, 401);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'SESSION_REQUIRED');
});

test('no env value appears in any event while an app is configured, woken, slept and woken again', async (t) => {
  const { store, service, feed, node } = await controlPlane(t);
  const secret = `s3cr3t-${randomBytes(8).toString('hex')}`;
  const events: FeedEvent[] = [];
  feed.subscribe((e) => events.push(e));
  await service.createApp('envy');
  await store.addDeploy({ id: 'd-envy', app: 'envy', imagePath: '/nonexistent.img', imageBytes: 1, runConfig: { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} } });
  await store.transition('envy', 'created', 'building');
  await store.transition('envy', 'building', 'asleep', { deployId: 'd-envy' });
  await service.setEnv('envy', { DATABASE_URL: secret, API_KEY: secret });
  const w = await service.wake('envy');
  assert.equal(node.lastWake?.env.DATABASE_URL, secret, 'the node did get the value');
  await service.firstByte('envy', w.id, 420);
  await service.sleep('envy');
  await service.wake('envy');
  await service.setEnv('envy', { DATABASE_URL: `${secret}-rotated` });
  await service.sleep('envy');
  const types = new Set(events.map((e) => e.type));
  for (const ty of ['app', 'wake', 'seed'] as const) assert.ok(types.has(ty), `saw ${ty} events`);
  assert.ok(events.some((e) => e.type === 'wake' && e.data.first_byte_ms === 420), 'the first byte is published');
  const text = JSON.stringify(events);
  assert.equal(text.includes(secret), false, 'no env value in the feed');
  assert.equal(text.includes('DATABASE_URL'), false, 'env names are not in the feed either (the page reads them per app)');
});

test('an app event carries exactly what GET /v1/apps/NAME answers (one serializer, no drift)', async (t) => {
  const { store, feed, url } = await controlPlane(t);
  const seen: FeedEvent[] = [];
  const off = feed.subscribe((e) => seen.push(e));
  t.after(off);
  await store.createApp({ name: 'same', idleTimeoutS: 60 });
  const r = await fetch(`${url}/v1/apps/same`, { headers: { authorization: `Bearer ${TOKEN}` } });
  const { app } = (await r.json()) as { app: Record<string, unknown> };
  const ev = seen.filter((e) => e.type === 'app').at(-1);
  assert.ok(ev, 'an app event was published');
  assert.deepEqual(Object.keys(ev.data).sort(), Object.keys(app).sort());
  assert.deepEqual(ev.data, app);
});
