// Scheduler and node membership, with remote nodes known only from their
// heartbeats (no VMs: placement is pure bookkeeping).
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import pino from 'pino';
import type { NodeRow, Store } from '../store/types.ts';
import type { NodeStatus } from '../wire/node.ts';
import { ThawError } from '../errors.ts';
import { Cluster } from './cluster.ts';

function cluster(downAfterMs = 1000) {
  const rows: NodeRow[] = [];
  const store = { upsertNode: async (n: NodeRow) => void rows.push(n) } as unknown as Store;
  const c = new Cluster({ store, token: 'x'.repeat(20), log: pino({ level: 'silent' }), downAfterMs, probeOnJoin: false });
  return { c, rows };
}

const hb = (name: string, over: Partial<NodeStatus> = {}): NodeStatus => ({
  name, url: `http://127.0.0.1:1${name.length}00/${name}`, capacity: 2, running: [], seeds: [], events: [], ...over,
});

test('a wake prefers a live node that holds the seed, then the least loaded, then by name', async (t) => {
  const { c, rows } = cluster();
  t.after(() => c.close());
  await c.heartbeat(hb('b'));
  await c.heartbeat(hb('a', { running: [{ app: 'x', vmId: 'v1' }] }));
  await c.heartbeat(hb('c', { seeds: ['s1'], running: [{ app: 'y', vmId: 'v2' }] }));
  assert.equal(rows.length, 3);
  const held = c.pick('s1')!;
  assert.equal(held.member.name, 'c');
  assert.match(held.reason, /c holds seed s1/);
  const none = c.pick(null)!;
  assert.equal(none.member.name, 'b', 'b runs nothing; a runs one VM');
  const pulled = c.pick('s2')!;
  assert.equal(pulled.member.name, 'b');
  assert.match(pulled.reason, /b pulls it/);
  assert.equal(c.pick('s1', new Set(['c']))!.member.name, 'b', 'excluded nodes are skipped');
});

test('full nodes are skipped; no node with room gives null', async (t) => {
  const { c } = cluster();
  t.after(() => c.close());
  await c.heartbeat(hb('a', { capacity: 1, seeds: ['s1'], running: [{ app: 'x', vmId: 'v' }] }));
  await c.heartbeat(hb('b', { capacity: 1 }));
  assert.equal(c.pick('s1')!.member.name, 'b');
  assert.equal(c.pick('s1', new Set(['b'])), null);
});

test('a silent node is marked down once, calls onDown, and rejoins with its next heartbeat', async (t) => {
  const { c } = cluster(1000);
  t.after(() => c.close());
  const down: string[] = [];
  c.onDown = async (n) => void down.push(n);
  await c.heartbeat(hb('a', { seeds: ['s1'] }));
  await c.heartbeat(hb('b'));
  c.get('a')!.lastSeen = Date.now() - 5000;
  assert.deepEqual(await c.sweep(), ['a']);
  assert.deepEqual(await c.sweep(), [], 'marked down only once');
  assert.deepEqual(down, ['a']);
  assert.equal(c.get('a')!.state, 'down');
  assert.equal(c.pick('s1')!.member.name, 'b', 'a down node holds nothing for the scheduler');
  assert.deepEqual(c.holders('s1'), []);
  await c.heartbeat(hb('a', { seeds: ['s1'] }));
  assert.equal(c.get('a')!.state, 'up');
  assert.equal(c.pick('s1')!.member.name, 'a');
});

test('a second live node with the same name is refused; after the first one times out it may take the name', async (t) => {
  const { c } = cluster(1000);
  t.after(() => c.close());
  await c.heartbeat(hb('a'));
  await assert.rejects(c.heartbeat(hb('a', { url: 'http://127.0.0.1:9/other' })), (e: Error & { code?: string }) => e.code === 'INVALID_REQUEST' && /in use/.test(e.message));
  assert.equal(c.get('a')!.url, hb('a').url);
  c.get('a')!.lastSeen = Date.now() - 5000;
  await c.heartbeat(hb('a', { url: 'http://127.0.0.1:9/other' }));
  assert.equal(c.get('a')!.url, 'http://127.0.0.1:9/other');
});

test('events in a heartbeat reach onEvent; a node that moved gets a new client', async (t) => {
  const { c } = cluster();
  t.after(() => c.close());
  const seen: string[] = [];
  c.onEvent = (n, e) => void seen.push(`${n}:${e.type}`);
  await c.heartbeat(hb('a', { events: [{ type: 'seed_evicted', seedId: 's9' }, { type: 'app_exit', app: 'x', vmId: 'v', code: 1, signal: null }] }));
  assert.deepEqual(seen, ['a:seed_evicted', 'a:app_exit']);
  const api = c.get('a')!.api;
  c.get('a')!.lastSeen = 0; // the old address went silent: the node moved
  await c.heartbeat(hb('a', { url: 'http://127.0.0.1:1/elsewhere' }));
  assert.notEqual(c.get('a')!.api, api);
  assert.equal(c.list().find((n) => n.name === 'a')!.url, 'http://127.0.0.1:1/elsewhere');
});

test('join: a node the control plane cannot reach at its URL, or another node answering there, is refused with NODE_ADVERTISE_UNREACHABLE', async (t) => {
  const c = new Cluster({ store: { upsertNode: async () => {} } as unknown as Store, token: 'x'.repeat(20), log: pino({ level: 'silent' }), downAfterMs: 1000 });
  t.after(() => c.close());
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const deadPort = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  const refused = (e: unknown) => e instanceof ThawError && e.code === 'NODE_ADVERTISE_UNREACHABLE';
  await assert.rejects(c.heartbeat(hb('a', { url: `http://127.0.0.1:${deadPort}` })), (e: unknown) => refused(e) && /cannot reach it there/.test((e as Error).message));
  const impostor = http.createServer((_req, res) => res.end(JSON.stringify({ ok: true, name: 'zz' })));
  await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => impostor.close(r)));
  const url = `http://127.0.0.1:${(impostor.address() as AddressInfo).port}`;
  await assert.rejects(c.heartbeat(hb('a', { url })), (e: unknown) => refused(e) && /node zz answers there/.test((e as Error).message));
  assert.deepEqual(c.list(), []);
});

test('the scheduler counts queued wakes: a busy holder sends a replicated seed\'s wake to a free node; otherwise it queues there', async (t) => {
  const { c } = cluster();
  t.after(() => c.close());
  const wakes = (n: number, apps: string[] = []) => ({ wakes: { limit: n, running: 0, queued: 0, queuedApps: apps } });
  await c.heartbeat(hb('a', { capacity: 8, seeds: ['s1'], ...wakes(2, ['q1']) }));
  await c.heartbeat(hb('b', { capacity: 8, ...wakes(2) }));
  const a = c.get('a')!;
  assert.equal(a.wakeSlots(), 2);
  assert.equal(a.queued('q1'), true, 'queued apps come with the heartbeat');
  assert.equal(c.pick('s1', new Set(), { canPull: true })!.member.name, 'a', 'a free holder wins');
  a.wakesInFlight = 3; // two running, one queued
  assert.equal(a.busy(), true);
  assert.equal(a.load(), 3, 'wakes in flight count as load');
  const moved = c.pick('s1', new Set(), { canPull: true })!;
  assert.equal(moved.member.name, 'b');
  assert.match(moved.reason, /busy.*b has a free wake slot and pulls it/);
  const queued = c.pick('s1', new Set(), { canPull: false })!;
  assert.equal(queued.member.name, 'a', 'an unreplicated seed: wait in the holder\'s queue');
  assert.match(queued.reason, /busy, the wake queues there/);
  c.get('b')!.wakesInFlight = 2;
  assert.equal(c.pick('s1', new Set(), { canPull: true })!.member.name, 'a', 'every node busy: the holder');
  assert.equal(c.pick(null)!.member.name, 'b', 'no seed: the node with fewer wakes queued and less load');
  assert.equal(c.pick('s1', new Set(), { canPull: true, pinned: 'b' })!.member.name, 'b', 'a pinned app waits in its node\'s queue');
});
