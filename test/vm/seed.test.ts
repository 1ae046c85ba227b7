// Bake and thaw with real QEMU VMs: memory and disk as a matched pair.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { COMPILE_CACHE_DIR } from '../../src/guest/compile-cache.ts';
import { bake, seedsDir } from '../../src/lifecycle/bake.ts';
import type { RunningVm } from '../../src/lifecycle/context.ts';
import { sleepVm } from '../../src/lifecycle/sleep.ts';
import { checkSeed } from '../../src/lifecycle/verify.ts';
import { wake, type WakeOutcome } from '../../src/lifecycle/wake.ts';
import { countOccurrences, fixture, getJson, qemuProcesses, type Fixture } from './fixture.ts';

const SECRET = `s3cret-${randomBytes(8).toString('hex')}`;
const ROTATED = `rotated-${randomBytes(4).toString('hex')}`;

/** The files in the VM's Node compile cache folder (one folder per Node/V8 tag), as `TAG/ENTRY` lines. */
async function cacheEntries(run: RunningVm): Promise<string[]> {
  const r = await run.agent.request({ op: 'exec', argv: ['sh', '-c', `cd ${COMPILE_CACHE_DIR} 2>/dev/null && ls -1 */`], timeout_ms: 10_000 }, 15_000);
  return r.stdout.split('\n').filter((l) => l && !l.endsWith(':')).sort();
}


describe('bake and thaw', { concurrency: false }, () => {
  let f: Fixture;
  let seedDir: string;
  let pidBefore: number;
  const marker = `marker-${randomBytes(6).toString('hex')}`;

  const wakeWith = (over: Partial<Parameters<typeof wake>[1]> = {}): Promise<WakeOutcome> =>
    wake(f.ctx, { app: 'hello', deployId: 'd1', image: f.image, seedDir, seedSource: 'local', env: { WHO: ROTATED }, run: f.run, ...over });

  before(async () => {
    f = await fixture();
    const cold = await wake(f.ctx, { app: 'hello', deployId: 'd1', image: f.image, seedDir: null, seedSource: 'none', env: { WHO: SECRET }, run: f.run });
    assert.equal(cold.record.bootMode, 'cold');
    const port = cold.run.vm.appAddress.port;
    const r = await getJson(port);
    assert.equal(r.body.who, SECRET);
    pidBefore = r.body.pid;
    const w = await getJson(port, { method: 'POST', body: marker });
    assert.equal(w.status, 201);
    const slept = await sleepVm(f.ctx, cold.run, { haveSeed: false });
    assert.equal(slept.error, null);
    assert.ok(slept.baked);
    seedDir = slept.baked.seedDir;
  });

  after(async () => {
    assert.deepEqual(qemuProcesses(f.dataDir), [], 'no QEMU process may outlive the tests');
    await f.cleanup();
  });

  test('a bake leaves a complete, read-only seed and deletes the VM', async () => {
    for (const name of ['mem.ram', 'state.bin', 'disk.img', 'manifest.json']) {
      const st = await stat(path.join(seedDir, name));
      assert.equal(st.mode & 0o222, 0, `${name} must be read-only`);
    }
    assert.deepEqual(qemuProcesses(f.dataDir), []);
    assert.deepEqual(await readdir(path.join(f.dataDir, 'vms')), []);
  });

  test('the old secret is in no seed file (memory image, disk, state)', async () => {
    for (const name of ['mem.ram', 'disk.img', 'state.bin']) {
      assert.equal(await countOccurrences(path.join(seedDir, name), SECRET), 0, `secret found in ${name}`);
    }
  });

  test('thaw serves the marker written before the bake, a new pid, the rotated env, zero fs errors; its app used the compile cache', async () => {
    // NODE_DEBUG_NATIVE=COMPILE_CACHE: Node logs each module's cache lookup to stderr (the agent's log ring).
    const out = await wakeWith({ env: { WHO: ROTATED, NODE_DEBUG_NATIVE: 'COMPILE_CACHE' } });
    try {
      assert.equal(out.record.bootMode, 'snapshot', `fallback: ${out.record.fallbackReason}`);
      assert.equal(out.record.fallbackReason, null);
      assert.equal(out.record.fsErrors, 0);
      const r = await getJson(out.run.vm.appAddress.port);
      assert.equal(r.status, 200);
      assert.equal(r.body.marker, marker);
      assert.equal(r.body.who, ROTATED);
      assert.notEqual(r.body.pid, pidBefore);
      assert.equal(r.body.pid, out.record.pid);
      // The new process found the seed's compile cache and V8 accepted the entry of the app's module.
      const logs = (await out.run.agent.request({ op: 'logs', max_bytes: 65536 }, 10_000)).text;
      assert.match(logs, /V8 code cache for ESM file:\/\/\/app\/server\.js was accepted/, `no cache hit in the app's log:\n${logs.slice(-2000)}`);
      assert.doesNotMatch(logs, /server\.js (was rejected|was not initialized)/);
      // The demo exits on the bake's SIGTERM, so Node wrote the entry before scrub's sync: it is on the seed's disk.
      assert.ok((await cacheEntries(out.run)).length > 0, `no entry in ${COMPILE_CACHE_DIR} on the thawed disk`);
    } finally {
      await sleepVm(f.ctx, out.run, { haveSeed: true });
    }
  });

  test('an app that opts out (NODE_DISABLE_COMPILE_CACHE=1) compiles from source and still answers', async () => {
    const out = await wakeWith({ env: { WHO: ROTATED, NODE_DEBUG_NATIVE: 'COMPILE_CACHE', NODE_DISABLE_COMPILE_CACHE: '1' } });
    try {
      assert.equal(out.record.bootMode, 'snapshot', `fallback: ${out.record.fallbackReason}`);
      assert.equal((await getJson(out.run.vm.appAddress.port)).status, 200);
      const logs = (await out.run.agent.request({ op: 'logs', max_bytes: 65536 }, 10_000)).text;
      assert.doesNotMatch(logs, /was accepted/);
    } finally {
      await sleepVm(f.ctx, out.run, { haveSeed: true });
    }
  });

  test('the incident: memory restored over a different disk is caught by the gate and falls back to cold', async () => {
    // The app's original image lacks every write made before the bake, canary included.
    const out = await wakeWith({ unsafeDiskOverride: f.image });
    try {
      assert.equal(out.record.bootMode, 'cold');
      assert.match(out.record.fallbackReason ?? '', /^GATE_FAILED: .*canary/);
      // What answers now is the cold-booted machine: on the seed's own disk (its
      // files check out), or on the deploy image if the kernel reported fs errors.
      const r = await getJson(out.run.vm.appAddress.port);
      assert.equal(out.record.stages.cold_from_seed_disk, out.record.fsErrors > 0 ? 0 : 1);
      assert.equal(r.body.marker, out.record.fsErrors > 0 ? null : marker);
      assert.equal(r.body.who, ROTATED);
    } finally {
      await sleepVm(f.ctx, out.run, { haveSeed: true });
    }
  });

  test('a seed whose memory file changed by one byte is refused', async () => {
    const mem = path.join(seedDir, 'mem.ram');
    await flipByte(mem, 4096 * 10);
    try {
      await assert.rejects(checkSeed(seedDir, { kernelSha256: f.assets.kernelSha256, initrdSha256: f.assets.initrdSha256, driver: 'qemu', accel: await f.ctx.hv.accel() }), { code: 'SEED_CORRUPT' });
    } finally {
      await flipByte(mem, 4096 * 10);
    }
  });

  test('a seed whose disk changed by one byte is refused and the wake cold-boots the original image', async () => {
    const disk = path.join(seedDir, 'disk.img');
    await flipByte(disk, 1024 * 1024 * 3 + 17);
    const out = await wakeWith();
    try {
      assert.equal(out.record.bootMode, 'cold');
      assert.match(out.record.fallbackReason ?? '', /^SEED_CORRUPT/);
      assert.equal(out.record.stages.cold_from_seed_disk, 0);
      const r = await getJson(out.run.vm.appAddress.port);
      assert.equal(r.status, 200);
      assert.equal(r.body.marker, null, 'the original image has no marker');
    } finally {
      await sleepVm(f.ctx, out.run, { haveSeed: true });
    }
  });

  test('SIGKILL of QEMU in the middle of a bake leaves no usable seed; the next wake still works', async () => {
    const cold = await wake(f.ctx, { app: 'other', deployId: 'd2', image: f.image, seedDir: null, seedSource: 'none', env: {}, run: f.run });
    const before = new Set(await readdir(seedsDir(f.ctx)));
    const killer = killWhenBakeStarts(f, cold.run);
    await assert.rejects(bake(f.ctx, cold.run), { code: 'BAKE_FAILED' });
    assert.ok(await killer, 'QEMU was killed during the bake');
    const leftovers = (await readdir(seedsDir(f.ctx))).filter((d) => !before.has(d));
    assert.deepEqual(leftovers, [], 'a failed bake leaves nothing in the seed folder');
    assert.deepEqual(qemuProcesses(cold.run.vm.id), []);
    const again = await wake(f.ctx, { app: 'other', deployId: 'd2', image: f.image, seedDir: null, seedSource: 'none', env: {}, run: f.run });
    try {
      assert.equal((await getJson(again.run.vm.appAddress.port)).status, 200);
    } finally {
      await sleepVm(f.ctx, again.run, { haveSeed: true });
    }
  });
});

async function flipByte(file: string, offset: number): Promise<void> {
  await chmod(file, 0o644);
  const fh = await open(file, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0xff;
  await fh.write(b, 0, 1, offset);
  await fh.close();
  await chmod(file, 0o444);
}

/** Kill -9 the VM's QEMU as soon as the bake's temporary seed folder appears. */
async function killWhenBakeStarts(f: Fixture, run: RunningVm): Promise<boolean> {
  const dir = seedsDir(f.ctx);
  for (let i = 0; i < 6000; i++) {
    const entries = existsSync(dir) ? await readdir(dir) : [];
    if (entries.some((e) => e.startsWith('.bake-'))) {
      process.kill(run.vm.pid, 'SIGKILL');
      return true;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return false;
}
