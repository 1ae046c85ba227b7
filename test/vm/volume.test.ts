// Volumes on one node, with real QEMU VMs and the demo app, whose data folder
// (/app/data, written with fsync) is the volume:
// - a marker written to the volume before the first bake, and read back by the
//   app, is in none of the seed's files, and a thaw mounts the volume again;
// - what a thawed VM writes survives its sleep (the bug volumes fix);
// - QEMU SIGKILLed right after an fsync'd write: the next wake replays the
//   journal on the host (e2fsck -p) and the data is there;
// - a full volume: the app's write fails with ENOSPC and it keeps serving;
//   the sleep, a bake and the next thaw work, and a grown volume takes writes.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { WakeOutcome } from '../../src/lifecycle/wake.ts';
import { LocalNode } from '../../src/node/local.ts';
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

  test('a full volume: the app gets ENOSPC and keeps serving; sleep, bake and the next thaw work; a resize lets it write again', async () => {
    const exec = async (o: WakeOutcome, sh: string) => o.run.agent.request({ op: 'exec', argv: ['/bin/sh', '-c', sh], timeout_ms: 120_000 }, 150_000);
    const t = await wakeNode(seedId);
    const kept = `before-fill-${marker}`;
    await post(t, kept);
    // Fill it to the last block, as the app's own writes would.
    const fill = await exec(t, 'dd if=/dev/zero of=/app/data/fill bs=1M; sync; df -k /app/data | tail -1');
    assert.match(fill.stderr + fill.stdout, /No space left on device/);
    const avail = Number(fill.stdout.trim().split(/\s+/).at(-3));
    assert.ok(avail < 64, `the volume is full (${avail} KiB left)`);
    const full = await getJson(port(t), { method: 'POST', body: `after-fill-${marker}` });
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
    assert.equal((await getJson(port(again), { method: 'POST', body: 'still-full' })).status, 507);
    assert.equal((await node.sleep(APP, { haveSeed: true }))!.error, null);

    // `thaw volume resize` records the size; the next wake grows the full filesystem (resize2fs) before the attach.
    const grownWake = await node.wake({ app: APP, deployId: 'd1', image: f.image, seedId, env: { WHO: 'vol' }, run: f.run, volume: { ...VOLUME, sizeBytes: 96 * MiB } });
    assert.equal(grownWake.record.stages.volume_grown, 1);
    assert.equal(await read(grownWake), kept);
    const after = `after-resize-${marker}`;
    await post(grownWake, after);
    assert.equal(await read(grownWake), after);
    const size = await exec(grownWake, 'stat -c %s /app/data/fill');
    assert.ok(Number(size.stdout) > 40 * MiB, `the fill is still there (${size.stdout.trim()} bytes)`);
    assert.equal((await node.sleep(APP, { haveSeed: true }))!.error, null);
  });
});
