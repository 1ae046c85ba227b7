// The per-VM disk for each driver's format (flaw 5 of issue 18: overlays were
// always qcow2, which Firecracker cannot open).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { FirecrackerDriver } from '../hypervisor/firecracker.ts';
import { QemuDriver } from '../hypervisor/qemu.ts';
import { vmSpec } from './boot.ts';
import { createOverlay, type NodeContext } from './context.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'thaw-overlay-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A read-only 64 MiB raw base with 1 MiB of data at 8 MiB, the rest a hole. */
function base(): string {
  const f = path.join(dir, 'base.img');
  writeFileSync(f, '');
  execFileSync('truncate', ['-s', '64M', f]);
  execFileSync('dd', [`if=/dev/urandom`, `of=${f}`, 'bs=1M', 'count=1', 'seek=8', 'conv=notrunc'], { stdio: 'ignore' });
  chmodSync(f, 0o444);
  return f;
}

test('raw: a byte-identical, writable copy that leaves the base alone and keeps its holes', async () => {
  const b = base();
  const o = path.join(dir, 'disk.raw');
  await createOverlay(b, o, 'raw');
  assert.ok(readFileSync(o).equals(readFileSync(b)));
  assert.equal(statSync(o).mode & 0o200, 0o200, 'the VMM can write it');
  assert.ok(statSync(o).blocks * 512 < 8 << 20, `sparse: ${statSync(o).blocks * 512} bytes allocated for 1 MiB of data`);
  const before = readFileSync(b);
  const fh = await open(o, 'r+');
  await fh.write(Buffer.from('written by the guest'), 0, undefined, 8 << 20);
  await fh.close();
  assert.ok(readFileSync(b).equals(before), 'the base is unchanged');
  assert.ok(!readFileSync(o).equals(before));
});

test('qcow2: an overlay backed by the base', async () => {
  const o = path.join(dir, 'disk.qcow2');
  await createOverlay(path.join(dir, 'base.img'), o);
  const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', o], { encoding: 'utf8' })) as { format: string; 'backing-filename': string };
  assert.equal(info.format, 'qcow2');
  assert.equal(info['backing-filename'], path.join(dir, 'base.img'));
});

test('each driver gets its own disk format and file name in the VM folder', () => {
  const ctx = (hv: NodeContext['hv']) => ({ hv, dataDir: dir, assets: { kernel: 'k', initrd: 'i' }, memMiB: 256, vcpus: 1, guestPort: 8080 }) as unknown as NodeContext;
  const fc = vmSpec(ctx(new FirecrackerDriver()), 'a', 1, null);
  assert.deepEqual([fc.disk, fc.diskFormat], [path.join(dir, 'vms', 'a', 'disk.raw'), 'raw']);
  const q = vmSpec(ctx(new QemuDriver()), 'b', 1, null);
  assert.deepEqual([q.disk, q.diskFormat], [path.join(dir, 'vms', 'b', 'disk.qcow2'), 'qcow2']);
});
