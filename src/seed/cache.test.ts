import { mkdir, mkdtemp, open, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { isThawError } from '../errors.ts';
import { SeedCache, type EvictReason } from './cache.ts';

const MiB = 1024 * 1024;
let root: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'thaw-cache-test-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A seed folder with `mib` MiB of real data inside a larger sparse mem.ram, and a manifest. */
async function makeSeed(id: string, mib: number, manifest = true): Promise<void> {
  const dir = path.join(root, id);
  await mkdir(dir, { recursive: true });
  const fh = await open(path.join(dir, 'mem.ram'), 'w');
  await fh.truncate(256 * MiB);
  await fh.write(Buffer.alloc(mib * MiB, 7), 0, mib * MiB, 8 * MiB);
  await fh.close();
  if (manifest) await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(fakeManifest(id)));
}

function fakeManifest(id: string): unknown {
  const f = { bytes: 1, allocated: 1, sha256: '0'.repeat(64) };
  return {
    version: 2, app: 'demo', deploy_id: 'd', seed_id: id, created_at: 'now', driver: 'qemu', accel: 'tcg',
    machine: { mem_mib: 256, vcpus: 1, cmdline: '', guest_port: 8080 }, kernel_sha256: 'k', initrd_sha256: 'i',
    files: { 'mem.ram': f, 'state.bin': f, 'disk.img': f }, canary: { path: '/c', sha256: '0'.repeat(64) }, agent_pubkey: 'test-key', agent_protocol: 2,
    bake: { pause_ms: 1, total_ms: 1 },
  };
}

function newCache(opts: { capBytes?: number; ttlMs?: number; busy?: Set<string> } = {}) {
  const events: [string, EvictReason][] = [];
  const busy = opts.busy ?? new Set<string>();
  const cache = new SeedCache({
    root, capBytes: opts.capBytes ?? 100 * MiB, ttlMs: opts.ttlMs ?? 60_000,
    inUse: (id) => busy.has(id), onEvict: (id, reason) => events.push([id, reason]),
  });
  return { cache, events, busy };
}

const exists = (id: string) => stat(path.join(root, id)).then(() => true, () => false);

test('sizes count allocated bytes, not apparent size', async () => {
  const { cache } = newCache();
  await makeSeed('a', 4);
  await cache.add('a');
  const bytes = cache.totalBytes();
  assert.ok(bytes >= 4 * MiB && bytes < 5 * MiB, `allocated ${bytes}`);
  assert.deepEqual(cache.list().map((s) => s.seedId), ['a']);
});

test('LRU eviction under the cap never evicts an in-use seed', async () => {
  const { cache, events, busy } = newCache({ capBytes: 10 * MiB });
  let now = 1_000;
  for (const id of ['a', 'b', 'c']) {
    await makeSeed(id, 3);
    assert.deepEqual(await cache.add(id, now++), []);
  }
  busy.add('a'); // least recently used, but running
  cache.touch('b', now++); // b is now most recent: c is the idle LRU seed
  await makeSeed('d', 3);
  assert.deepEqual(await cache.add('d', now++), ['c']);
  assert.deepEqual(events, [['c', 'lru']]);
  assert.equal(await exists('c'), false);
  assert.equal(await exists('a'), true);
  assert.deepEqual(cache.list().map((s) => s.seedId), ['d', 'b', 'a']);
  assert.ok(cache.totalBytes() <= 10 * MiB);

  // Everything idle is busy: stay over the cap rather than delete a running seed.
  busy.add('b');
  await makeSeed('e', 3);
  assert.deepEqual(await cache.add('e', now++), ['d']);
  await makeSeed('f', 6);
  assert.deepEqual(await cache.add('f', now++), ['e']);
  assert.deepEqual(cache.list().map((s) => s.seedId).sort(), ['a', 'b', 'f']);
  assert.ok(cache.totalBytes() > 10 * MiB);
});

test('TTL reaping deletes seeds unused for ttlMs, except in-use ones', async () => {
  const { cache, events, busy } = newCache({ ttlMs: 1_000 });
  for (const id of ['old', 'busy', 'fresh']) await makeSeed(id, 1);
  await cache.add('old', 10_000);
  await cache.add('busy', 10_000);
  await cache.add('fresh', 10_500);
  busy.add('busy');
  assert.deepEqual(await cache.reapExpired(10_999), []);
  assert.deepEqual(await cache.reapExpired(11_200), ['old']);
  assert.deepEqual(events, [['old', 'ttl']]);
  assert.equal(await exists('old'), false);
  assert.deepEqual(cache.list().map((s) => s.seedId).sort(), ['busy', 'fresh']);
  cache.touch('fresh', 11_400);
  assert.deepEqual(await cache.reapExpired(12_000), []);
});

test('remove purges a seed', async () => {
  const { cache, events } = newCache();
  await makeSeed('a', 1);
  await cache.add('a');
  await cache.remove('a');
  assert.equal(await exists('a'), false);
  assert.equal(cache.has('a'), false);
  assert.deepEqual(events, [['a', 'purge']]);
  assert.equal(cache.totalBytes(), 0);
});

test('scan() rebuilds state from disk and removes partial and manifest-less folders', async () => {
  await makeSeed('old', 2);
  await makeSeed('new', 2);
  await makeSeed('new.partial-abc123', 2);
  await makeSeed('nomanifest', 1, false);
  await writeFile(path.join(root, 'stray-file'), 'x');
  const { cache } = newCache();
  cache.touch('old'); // untracked: no-op
  await utimes(path.join(root, 'old'), 1_000, 1_000);
  await utimes(path.join(root, 'new'), 2_000, 2_000);
  const res = await cache.scan();
  assert.equal(res.seeds, 2);
  assert.deepEqual(res.removed.sort(), ['new.partial-abc123', 'nomanifest']);
  assert.deepEqual((await readdir(root)).sort(), ['new', 'old', 'stray-file']);
  assert.deepEqual(cache.list().map((s) => s.seedId), ['new', 'old']);
  assert.ok(cache.totalBytes() >= 4 * MiB);
});

test('seed ids must be plain folder names; add needs the folder', async () => {
  const { cache } = newCache();
  await assert.rejects(cache.add('../x'), (err) => isThawError(err, 'INVALID_REQUEST'));
  await assert.rejects(cache.add('x.partial-1'), (err) => isThawError(err, 'INVALID_REQUEST'));
  await assert.rejects(cache.add('ghost'), (err) => isThawError(err, 'SEED_MISSING'));
});
