// Deadlines on the thaw path with a fake hypervisor (src/lifecycle/fake-guest.ts):
// the guest agent is scripted, its "VMM" a real child process whose CPU time
// the progress probe reads from /proc. Windows are the production ones (5 s
// for set_clock and reseed): a slow guest must outlast them.
import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { ThawError } from '../errors.ts';
import type { GuestAssets } from '../guest/assets.ts';
import type { Manifest } from '../seed/manifest.ts';
import type { RunConfig } from '../wire/run.ts';
import { Stopwatch, type NodeContext } from './context.ts';
import { processCpuMs, wakeDeadline } from './deadline.ts';
import { agentPubkey, FakeHypervisor, type GuestScript } from './fake-guest.ts';
import { thaw } from './thaw.ts';
import { seedVerdict } from './wake.ts';

const RUN: RunConfig = { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, env: {}, port: 8080 } as unknown as RunConfig;

async function setup(script: Omit<GuestScript, 'pubkey'>) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-deadline-'));
  const seedDir = path.join(dir, 'seed');
  await rm(seedDir, { recursive: true, force: true });
  await import('node:fs/promises').then((fs) => fs.mkdir(seedDir, { recursive: true }));
  await writeFile(path.join(seedDir, 'disk.img'), '');
  await truncate(path.join(seedDir, 'disk.img'), 1 << 20);
  const pubkey = agentPubkey();
  const hv = new FakeHypervisor({ pubkey, ...script });
  const ctx: NodeContext = {
    hv,
    assets: { kernel: '/k', initrd: '/i', kernelSha256: 'k', initrdSha256: 'i' } as unknown as GuestAssets,
    dataDir: dir,
    log: pino({ level: 'silent' }),
    memMiB: 64,
    vcpus: 1,
    guestPort: 8080,
    appStartTimeoutMs: 10_000,
    bootTimeoutMs: 10_000,
  };
  const manifest = {
    seed_id: 'seed1',
    machine: { mem_mib: 64, vcpus: 1, cmdline: 'x', guest_port: 8080 },
    canary: { path: '/var/lib/thaw/canary', sha256: 'a'.repeat(64) },
    agent_pubkey: pubkey,
  } as unknown as Manifest;
  const params = { app: 'slow', deployId: 'd1', seedDir, manifest, env: { A: '1' }, run: RUN };
  return { hv, ctx, params, cleanup: async () => (hv.cleanup(), rm(dir, { recursive: true, force: true })) };
}

test('processCpuMs reads a live process and null for a gone one', () => {
  const ms = processCpuMs(process.pid);
  assert.ok(ms !== null && ms > 0);
  assert.equal(processCpuMs(0), null);
  assert.equal(processCpuMs(2 ** 22 + 12345), null);
});

test('a guest that takes longer than the 5 s window to answer set_clock, but runs, is not abandoned', { timeout: 60_000 }, async (t) => {
  const s = await setup({ cpu: 'busy', delayMs: { set_clock: 7000 } });
  t.after(s.cleanup);
  const sw = new Stopwatch();
  const out = await thaw(s.ctx, s.params, sw);
  try {
    assert.equal(out.run.appPid, 4242);
    assert.ok(sw.total() >= 7000, `answered after ${sw.total()} ms`);
    assert.ok((sw.stages.progress_renewals ?? 0) >= 1, 'the 5 s window was renewed while the guest ran');
    assert.deepEqual(s.hv.answered.slice(0, 2), ['ping', 'set_clock']);
  } finally {
    out.run.agent.close();
    await s.ctx.hv.destroy(out.run.vm);
  }
});

test('a dead guest (no answer, no CPU) is detected within about one window, and its VM deleted', { timeout: 60_000 }, async (t) => {
  const s = await setup({ cpu: 'idle', silent: true });
  t.after(s.cleanup);
  const t0 = performance.now();
  const err = await thaw(s.ctx, s.params).then(() => null, (e: unknown) => e as ThawError);
  const ms = performance.now() - t0;
  assert.ok(err instanceof ThawError);
  assert.equal(err.code, 'AGENT_TIMEOUT', err.message);
  assert.match(err.message, /no progress/);
  // The shortest window on the path is 5 s (set_clock, reseed); detection takes one window, not the 10 s hello window.
  assert.ok(ms < 9000, `detected after ${Math.round(ms)} ms`);
  assert.equal(s.hv.destroyed, 1);
  assert.equal(seedVerdict(err), 'dropped:dead-guest');
});

test('the overall wake deadline ends a slow thaw: WAKE_DEADLINE, VM deleted, seed kept', { timeout: 60_000 }, async (t) => {
  const s = await setup({ cpu: 'busy', delayMs: { set_clock: 20_000 } });
  t.after(s.cleanup);
  const dl = wakeDeadline(1500, 'slow');
  t.after(dl.clear);
  const err = await thaw(s.ctx, { ...s.params, signal: dl.signal }).then(() => null, (e: unknown) => e as ThawError);
  assert.ok(err instanceof ThawError);
  assert.equal(err.code, 'WAKE_DEADLINE', err.message);
  assert.equal(s.hv.destroyed, 1);
  assert.equal(seedVerdict(err), 'kept:deadline');
});

test('seedVerdict: dropped only when proven bad', () => {
  const v = (code: ConstructorParameters<typeof ThawError>[0], details?: Record<string, unknown>, fs = 0) => seedVerdict(new ThawError(code, 'x', details ? { details } : {}), fs);
  assert.equal(v('SEED_CORRUPT'), 'dropped:hash-mismatch');
  assert.equal(v('SEED_MISMATCH'), 'dropped:mismatch');
  assert.equal(v('GATE_FAILED'), 'dropped:gate-failed');
  assert.equal(v('AGENT_ERROR', undefined, 2), 'dropped:fs-errors');
  assert.equal(v('QMP_ERROR', { restore: true }), 'dropped:restore-error');
  assert.equal(v('WAKE_DEADLINE'), 'kept:deadline');
  assert.equal(v('WAKE_CANCELLED'), 'kept:cancelled');
  assert.equal(v('SHUTTING_DOWN'), 'kept:shutdown');
  assert.equal(v('VM_GONE'), 'kept:vm-gone');
  assert.equal(v('APP_CRASHED'), 'kept:app-crashed');
});
