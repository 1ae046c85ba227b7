// LocalNode.recover(): what a killed predecessor left is cleaned up. QEMU
// normally dies with its node (setpriv --pdeathsig); where setpriv is missing
// or the VM was started by something else, the pid file is the way to find it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { NodeContext } from '../lifecycle/context.ts';
import { LocalNode } from './local.ts';

test('recover kills an orphaned VM process found by its pid file and removes half-made seeds', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-recover-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const vmDir = path.join(dir, 'vms', 'hello-abc123');
  await mkdir(vmDir, { recursive: true });
  // A stand-in for QEMU whose command line names its VM folder, as QEMU's does.
  const orphan = spawn('bash', ['-c', `exec -a "qemu-system-x86_64 -name ${vmDir}" sleep 600`], { stdio: 'ignore', detached: true });
  t.after(() => {
    if (orphan.exitCode === null && orphan.signalCode === null) orphan.kill('SIGKILL');
  });
  await new Promise((r) => setTimeout(r, 200));
  await writeFile(path.join(vmDir, 'vmm.pid'), `${orphan.pid}\n`);
  const seeds = path.join(dir, 'seeds');
  await mkdir(path.join(seeds, 'good'), { recursive: true });
  await writeFile(path.join(seeds, 'good', 'manifest.json'), '{}');
  await mkdir(path.join(seeds, '.bake-x'), { recursive: true });
  await mkdir(path.join(seeds, 'noman'), { recursive: true });
  const exited = new Promise((r) => orphan.once('exit', (_c, sig) => r(sig)));
  const node = new LocalNode({ dataDir: dir } as NodeContext, 'n');
  const r = await node.recover();
  assert.equal(r.killed, 1);
  assert.equal(await exited, 'SIGKILL');
  assert.deepEqual(await readdir(path.join(dir, 'vms')), []);
  assert.deepEqual(await readdir(seeds), ['good']);
});
