// Volumes on one node, with real QEMU VMs and the demo app, whose data folder
// (/app/data, written with fsync) is the volume:
// - a marker written to the volume before the first bake, and read back by the
//   app, is in none of the seed's files, and a thaw mounts the volume again;
// - what a thawed VM writes survives its sleep (the bug volumes fix);
// - QEMU SIGKILLed right after an fsync'd write: the next wake replays the
//   journal on the host (e2fsck -p) and the data is there;
// - two control planes on one store wake the app at once: one wins, the
//   guest mounts the volume once per round (its ext4 mount count says so);
// - a full volume: the app's write fails with ENOSPC and it keeps serving;
//   the sleep, a bake and the next thaw work, and a grown volume takes writes
//   (after a cold boot: the seed's guest knew the old size).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdir, open, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { Cluster } from '../../src/control/cluster.ts';
import { Replication } from '../../src/control/replication.ts';
import { Service } from '../../src/control/service.ts';
import type { WakeOutcome } from '../../src/lifecycle/wake.ts';
import { NodeAgent, sharedImages } from '../../src/node/agent.ts';
import { LocalNode } from '../../src/node/local.ts';
import { createNodeServer } from '../../src/node/server.ts';
import { openStore } from '../../src/store/index.ts';
import { volumeFile } from '../../src/volume/file.ts';
import { MiB } from '../../src/volume/spec.ts';
import { countOccurrences, fixture, getJson, qemuProcesses, type Fixture } from './fixture.ts';

const APP = 'voltest';

/** What surrounds the first occurrence (to tell which buffer kept it). */
async function around(file: string, needle: string): Promise<string> {
  const buf = await readFile(file);
  const i = buf.indexOf(needle);
  return i < 0 ? '' : JSON.stringify(buf.subarray(Math.max(0, i - 300), i + 300).toString('latin1').replace(/\0+/g, '.'));
}
const VOLUME = { path: '/app/data', sizeBytes: 64 * MiB };

describe('a volume across bake, thaws and a crash', { concurrency: false }, () => {
  let f: Fixture;
  let node: LocalNode;
  let seedId: string;
  const marker = `volmark-${randomBytes(8).toString('hex')}`;

  const wakeNode = (seed: string | null): Promise<WakeOutcome> => node.wake({ app: APP, deployId: 'd1', image: f.image, seedId: seed, env: { WHO: 'vol' }, run: f.run, volume: VOLUME });
  const port = (o: WakeOutcome) => o.run.vm.appAddress.port;
  const post = async (o: WakeOutcome, body: string) => assert.equal((await getJson(port(o), { method: 'POST', body })).status, 201);
  const read = async (o: WakeOutcome) => (await getJson(port(o))).body.marker as string | null;

  before(async () => {
    f = await fixture();
    f.ctx.bootTimeoutMs = 240_000; // a shared 2-core host can be very slow to cold-boot
    node = new LocalNode(f.ctx, 'vol-node');
  });

  after(async () => {
    await node.shutdown();
    assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the tests');
    await f.cleanup();
  });

  test('cold boot makes the volume and mounts it before the app starts; the bake holds none of it', async () => {
    const cold = await wakeNode(null);
    assert.equal(cold.record.bootMode, 'cold');
    assert.equal(cold.record.stages.volume_created, 1);
    assert.ok(cold.record.stages.volume_mount_ms! >= 0);
    assert.equal(await read(cold), null, 'a fresh volume is empty');
    // Written in the guest from octal escapes, so the marker itself never crosses the agent
    // channel or the network inbound (their receive buffers are not the volume's to drop).
    const octal = [...marker].map((c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`).join('');
    const w = await cold.run.agent.request({ op: 'exec', argv: ['/bin/sh', '-c', `printf '${octal}' > /app/data/marker.txt && sync`], timeout_ms: 10_000 }, 15_000);
    assert.equal(w.code, 0, w.stderr);
    assert.equal(await read(cold), marker, 'the app reads it back');
    const mounts = await cold.run.agent.request({ op: 'exec', argv: ['cat', '/proc/mounts'], timeout_ms: 10_000 }, 15_000);
    assert.match(mounts.stdout, /^\/dev\/vdb \/app\/data ext4 /m);

    const slept = (await node.sleep(APP, { haveSeed: false }))!;
    assert.equal(slept.error, null);
    assert.ok(slept.baked);
    assert.ok(slept.stages.unmount_volume! >= 0);
    seedId = slept.baked.seedId;
    // The marker reached the volume file (so the count below can fail)...
    assert.ok((await countOccurrences(volumeFile(f.dataDir, APP), marker)) >= 1, 'marker is on the volume');
    // ...and is in no file of the seed: memory image, disk copy, device state.
    for (const name of ['mem.ram', 'disk.img', 'state.bin']) {
      const file = path.join(slept.baked.seedDir, name);
      assert.equal(await countOccurrences(file, marker), 0, `volume data found in the seed's ${name}: ${await around(file, marker)}`);
    }
    assert.deepEqual(await readdir(path.join(f.dataDir, 'vms')), []);
  });

  test('a thaw attaches the current volume: writes made after a thaw survive the next sleep', async () => {
    let expected = marker;
    for (let i = 1; i <= 1; i++) {
      const t = await wakeNode(seedId);
      assert.equal(t.record.bootMode, 'snapshot', t.record.fallbackReason ?? '');
      assert.equal(t.record.stages.volume_fsck_exit, 0, 'clean after an unmount');
      assert.equal(await read(t), expected);
      expected = `after-thaw-${i}-${marker}`;
      await post(t, expected);
      const s = (await node.sleep(APP, { haveSeed: true }))!;
      assert.equal(s.error, null);
    }
    const last = await wakeNode(seedId);
    assert.equal(await read(last), expected);
    await node.sleep(APP, { haveSeed: true });
  });

  test('QEMU killed right after an fsync\'d write: the next wake replays the journal and the data is there', async () => {
    const t = await wakeNode(seedId);
    assert.equal(t.record.bootMode, 'snapshot');
    const crash = `fsynced-${marker}`;
    await post(t, crash); // the demo app fsyncs before it answers 201
    process.kill(t.run.vm.pid, 'SIGKILL');
    await t.run.vm.exited;
    // The volume was never unmounted: its journal needs recovery.
    const dump = execFileSync('dumpe2fs', ['-h', volumeFile(f.dataDir, APP)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.match(dump, /Filesystem features:.*needs_recovery/);
    await node.stop(APP);
    const w = await wakeNode(seedId);
    assert.equal(w.record.bootMode, 'snapshot', w.record.fallbackReason ?? '');
    assert.ok(w.record.stages.volume_fsck_exit! <= 1, String(w.record.stages.volume_fsck_exit));
    assert.equal(await read(w), crash);
    await node.sleep(APP, { haveSeed: true });
  });

  test('two control planes on one store wake the volume app at once: one VM mounts it, the other wake is APP_BUSY', async () => {
    // The cheapest real arrangement: two control planes (Service + Cluster + their own store
    // connection to one SQLite file), one real node. The first reaches it in-process, the second
    // over HTTP (heartbeat + node server), as a control plane on another host would.
    const log = pino({ level: 'silent' });
    const token = `vol-cp-${randomBytes(8).toString('hex')}`;
    // The test Postgres when scripts/test.sh started one (THAW_TEST_PG), else a SQLite file.
    const pgUrl = process.env.THAW_TEST_PG;
    const pgSchema = `thaw_volcp_${process.pid}`;
    const dbOpts = { sqlitePath: path.join(f.dataDir, 'cp', 'thaw.db'), envKey: randomBytes(32), ...(pgUrl ? { url: pgUrl, pgSchema } : {}) };
    await mkdir(path.dirname(dbOpts.sqlitePath), { recursive: true });
    const stores = [await openStore(dbOpts), await openStore(dbOpts)];
    const agent = new NodeAgent({ node, s3: null, capBytes: 2 ** 40, capacity: 4, images: sharedImages, log });
    const server = await createNodeServer(agent, token);
    await server.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(server.server.address() as { port: number }).port}`;
    const planes = stores.map((store) => {
      const cluster = new Cluster({ store, token, log, downAfterMs: 600_000 });
      const replication = new Replication({ s3: null, ttlMs: 1e12, store, cluster, log, onSeedGone: async () => {} });
      const service = new Service({ store, cluster, baseRootfs: '/nonexistent', dataDir: path.join(f.dataDir, 'cp'), log, domain: 'localhost', routerPort: 0, idleTimeoutS: 300, diskMiB: 64, maxAppBytes: 1 << 20, maxTarballBytes: 1 << 20, replication });
      return { cluster, service };
    });
    try {
      planes[0]!.cluster.addLocal(agent);
      await planes[1]!.service.heartbeat({ name: node.name, url, capacity: 4, running: [], seeds: [seedId], events: [] });
      // The app as a deploy would leave it: asleep with its seed, its volume at home on the node.
      const store = stores[0]!;
      const t = new Date().toISOString();
      await store.createApp({ name: APP, idleTimeoutS: 300 });
      await store.addDeploy({ id: 'd1', app: APP, imagePath: f.image, imageBytes: 1, runConfig: f.run });
      const manifest = await readFile(path.join(node.seedDir(seedId), 'manifest.json'));
      await store.putSeed({ id: seedId, app: APP, deployId: 'd1', node: node.name, bytesApparent: 1, bytesAllocated: 1, bytesCompressed: null, replicated: false, manifestSha256: createHash('sha256').update(manifest).digest('hex'), createdAt: t, lastUsedAt: t });
      await store.transition(APP, 'created', 'building');
      await store.transition(APP, 'building', 'asleep', { deployId: 'd1', seedId });
      // Its recorded size is the file's: no resize (whose e2fsck -f would reset the mount count).
      const file = volumeFile(f.dataDir, APP);
      await store.addVolume({ app: APP, path: VOLUME.path, sizeBytes: (await stat(file)).size });
      await store.updateVolume(APP, { node: node.name });

      for (let round = 0; round < 2; round++) {
        const before = await ext4MountCount(file);
        // Both at once; the second plane starts first every other round.
        const order = round % 2 ? [1, 0] : [0, 1];
        const woke = await Promise.allSettled(order.map((i) => planes[i]!.service.wake(APP)));
        const won = woke.map((r, k) => (r.status === 'fulfilled' ? order[k]! : -1)).filter((i) => i >= 0);
        assert.equal(won.length, 1, `round ${round}: exactly one wake wins (${woke.map((r) => (r.status === 'rejected' ? String((r.reason as Error).message) : 'ok')).join('; ')})`);
        const lost = woke.find((r): r is PromiseRejectedResult => r.status === 'rejected')!;
        assert.equal((lost.reason as { code?: string }).code, 'APP_BUSY', String(lost.reason));
        assert.equal(node.running.size, 1, 'one VM');
        const rec = (await store.listWakes(APP, 1))[0]!;
        assert.equal(rec.stages.volume_fsck_exit, 0, 'clean: no e2fsck ran (it would reset the mount count)');
        const run = node.running.get(APP)!;
        const mounts = await run.agent.request({ op: 'exec', argv: ['cat', '/proc/mounts'], timeout_ms: 10_000 }, 15_000);
        assert.equal(mounts.stdout.split('\n').filter((l) => l.startsWith('/dev/vdb ')).length, 1, 'mounted once in the guest');
        assert.match((await store.getVolume(APP))!.holder ?? '', /^wake-/, 'the winning wake holds the lease');
        assert.ok((await planes[won[0]!]!.service.sleep(APP)) !== null);
        assert.equal((await store.getVolume(APP))!.holder, null, 'released at sleep');
        // The guest kernel counts every mount in the volume's superblock: one per round, never two.
        assert.equal((await ext4MountCount(file)) - before, 1, `round ${round}: the volume was mounted once`);
      }
      assert.equal((await store.getApp(APP)).state, 'asleep');
    } finally {
      for (const p of planes) p.cluster.close();
      await server.close();
      for (const s of stores) await s.close();
      if (pgUrl) {
        const c = new pg.Client({ connectionString: pgUrl });
        await c.connect();
        await c.query(`DROP SCHEMA IF EXISTS ${pgSchema} CASCADE`);
        await c.end();
      }
    }
  });

  test('a full volume: the app gets ENOSPC and keeps serving; sleep, bake and the next thaw work; a resize lets it write again', async () => {
    const t = await wakeNode(seedId);
    try {
      await fillAndResize(t);
    } finally {
      if (node.running.has(APP)) await node.stop(APP); // a failed step leaves no VM to the next test
    }
  });

  async function fillAndResize(t: WakeOutcome): Promise<void> {
    const exec = async (o: WakeOutcome, sh: string) => o.run.agent.request({ op: 'exec', argv: ['/bin/sh', '-c', sh], timeout_ms: 120_000 }, 150_000);
    const kept = `before-fill-${marker}`;
    await post(t, kept);
    // Fill it to the last block, as the app's own writes would. Delayed allocation reserves for
    // the worst case, so after the sync a few blocks come free again: fill those too.
    // (A 64 MiB ext4 has 1 KiB blocks.)
    const fill = await exec(t, 'dd if=/dev/zero of=/app/data/fill bs=1M; for i in 1 2 3 4; do sync; dd if=/dev/zero of=/app/data/fill$i bs=1k 2>/dev/null; done; sync; df -k /app/data | tail -1');
    assert.match(fill.stderr + fill.stdout, /No space left on device/);
    const avail = Number(fill.stdout.trim().split(/\s+/).at(-3));
    assert.ok(avail <= 2, `the volume is full (${fill.stdout.trim()})`);
    const big = 'x'.repeat(16 * 1024); // more than the block or two df may still count free
    const full = await getJson(port(t), { method: 'POST', body: `after-fill-${big}` });
    assert.equal(full.status, 507, 'the write failed');
    assert.equal(full.body.error, 'ENOSPC', 'the app saw ENOSPC');
    assert.equal(await read(t), kept, 'it keeps serving, with what it wrote before the fill');
    // The sleep unmounts the full volume and bakes a new seed.
    const s = (await node.sleep(APP, { haveSeed: false }))!;
    assert.equal(s.error, null);
    assert.ok(!s.volumeStuck);
    assert.ok(s.baked, 'a bake works beside a full volume');
    seedId = s.baked.seedId;
    // A full read-only check of the file on the host finds nothing to fix.
    const file = volumeFile(f.dataDir, APP);
    execFileSync('e2fsck', ['-fn', file], { stdio: 'ignore' });

    const again = await wakeNode(seedId);
    assert.equal(again.record.bootMode, 'snapshot', again.record.fallbackReason ?? '');
    assert.equal(again.record.stages.volume_fsck_exit, 0);
    assert.equal(await read(again), kept);
    assert.equal((await getJson(port(again), { method: 'POST', body: `still-full-${big}` })).status, 507);
    assert.equal((await node.sleep(APP, { haveSeed: true }))!.error, null);

    // `thaw volume resize` records the size; the next wake grows the full filesystem (resize2fs) before the attach.
    // The seed's guest knows the device's old size: the seed is dropped and the app cold-boots.
    const grownWake = await node.wake({ app: APP, deployId: 'd1', image: f.image, seedId, env: { WHO: 'vol' }, run: f.run, volume: { ...VOLUME, sizeBytes: 96 * MiB } });
    assert.equal(grownWake.record.bootMode, 'cold');
    assert.match(grownWake.record.fallbackReason ?? '', /^SEED_MISMATCH: the volume grew/);
    assert.equal(grownWake.record.seedOutcome, 'dropped:mismatch');
    assert.equal((await stat(volumeFile(f.dataDir, APP))).size, 96 * MiB);
    assert.equal(await read(grownWake), kept);
    const after = `after-resize-${marker}`;
    await post(grownWake, after);
    assert.equal(await read(grownWake), after);
    const size = await exec(grownWake, 'stat -c %s /app/data/fill');
    assert.ok(Number(size.stdout) > 40 * MiB, `the fill is still there (${size.stdout.trim()} bytes)`);
    assert.equal((await node.sleep(APP, { haveSeed: true }))!.error, null);
  }
});

/** s_mnt_count of an ext4 image: the guest kernel adds one at every mount (read on the host). */
async function ext4MountCount(file: string): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const sb = Buffer.alloc(1024);
    await fh.read(sb, 0, 1024, 1024);
    assert.equal(sb.readUInt16LE(0x38), 0xef53, 'an ext4 superblock');
    return sb.readUInt16LE(0x34);
  } finally {
    await fh.close();
  }
}
