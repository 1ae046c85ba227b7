// The lifecycle test (test/helpers/lifecycle.ts: cold boot, bake, thaw, gate
// fallback) through the Firecracker driver, against the fake Firecracker. The
// same scenario runs on real QEMU in test/vm/drivers.test.ts. On the code
// before issue 18 it fails: the disk was a qcow2 overlay (HYPERVISOR_UNSUPPORTED),
// the snapshot pointed at the deleted folder of the baked VM, and the thaw
// opened the vsock channel before resume.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { FirecrackerDriver } from '../firecracker.ts';
import type { NodeContext } from '../../lifecycle/context.ts';
import { lifecycleScenario } from '../../../test/helpers/lifecycle.ts';
import { fakeFirecracker } from './spawn.ts';

test('cold boot → bake → thaw → gate fallback, through the Firecracker driver on the fake', { timeout: 240_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-fc-lifecycle-'));
  try {
    const file = async (name: string, bytes: Buffer | string) => {
      await writeFile(path.join(dir, name), bytes);
      return path.join(dir, name);
    };
    const kvm = await file('kvm', '');
    const image = await file('image.raw', Buffer.alloc(64 * 1024));
    const fake = fakeFirecracker({ FAKE_BOOT_MS: '200' });
    const fc = await file('firecracker', '#!/bin/false\n');
    const hv = new FirecrackerDriver({ binary: fc, spawn: fake.spawn, kvmDevice: kvm, agentConnectTimeoutMs: 15_000, startTimeoutMs: 30_000 });
    const ctx: NodeContext = {
      hv,
      assets: { dir, kernel: await file('vmlinux', 'k'), initrd: await file('initrd', 'i'), rootfs: dir, agent: '', kernelSha256: 'k', initrdSha256: 'i', key: 'fake' },
      dataDir: path.join(dir, 'data'),
      log: pino({ level: 'silent' }),
      memMiB: 128,
      vcpus: 1,
      guestPort: 8080,
      appStartTimeoutMs: 5_000,
      bootTimeoutMs: 10_000,
    };
    const r = await lifecycleScenario(ctx, image, { argv: ['/app/server'], cwd: '/', uid: 1000, gid: 1000, env: {}, port: 8080 });
    assert.ok(r.thawedAgent.pid > 0);
    assert.equal(fake.spawned.length, 4, 'cold, thaw, failed thaw, cold');
    assert.ok(fake.spawned.every((s) => s.cwd?.startsWith(path.join(dir, 'data', 'vms'))), 'each Firecracker runs in its VM folder');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
