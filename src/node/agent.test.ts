// NodeAgent bookkeeping around a VM's seed: a seed that backs a running VM (a
// thaw, or a cold boot on the seed's disk copy) is deleted only once that VM is
// gone. The VM layer (LocalNode.wake/stop) is stubbed: no QEMU here; the real
// lifecycle is tested in test/vm/.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import type { NodeContext, RunningVm } from '../lifecycle/context.ts';
import { NodeAgent, sharedImages } from './agent.ts';
import { LocalNode } from './local.ts';

test('deleting a seed that backs a running VM waits until the VM is stopped', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-agent-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const node = new LocalNode({ dataDir: dir } as NodeContext, 'n');
  node.wake = async (req, extra) => {
    const run = { app: req.app, vm: { id: 'vm1', appAddress: { host: '127.0.0.1', port: 1 } }, seedId: null } as unknown as RunningVm;
    node.running.set(req.app, run);
    const record = { id: 'w', app: req.app, at: '', wallMs: 1, bootMode: 'cold' as const, bootMs: 1, gateMs: null, appStartMs: 1, pid: 1, fsErrors: 0, fallbackReason: extra?.seedUnavailable ?? null, node: 'n', seedSource: 'none' as const, stages: {} };
    return { run, record };
  };
  node.stop = async (app) => void node.running.delete(app);
  const agent = new NodeAgent({ node, s3: null, capBytes: 1 << 30, capacity: 2, images: sharedImages, log: pino({ level: 'silent' }) });
  const seedDir = path.join(dir, 'seeds', 's1');
  await mkdir(seedDir, { recursive: true });
  await writeFile(path.join(seedDir, 'manifest.json'), '{}');
  // The VM was woken with seed s1 (here: it fell back to a cold boot, which may use s1's disk copy).
  await agent.wake({ app: 'x', deployId: 'd1', image: '/img', seed: { id: 's1', app: 'x', replicated: false, manifestSha256: 'ab'.repeat(32) }, env: {}, run: { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} } });
  await agent.deleteSeed('s1');
  assert.ok(existsSync(seedDir), 'kept while the VM may read it');
  await agent.stop('x');
  assert.ok(!existsSync(seedDir), 'deleted once the VM is gone');
  await agent.deleteSeed('s2'); // not in use: at once, and no error for a missing seed
});

test('a shutdown aborts a wake in progress with SHUTTING_DOWN and waits for it to unwind; later wakes are refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-agent-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const node = new LocalNode({ dataDir: dir } as NodeContext, 'n');
  let started!: () => void;
  const inWake = new Promise<void>((r) => (started = r));
  let unwound = false;
  // A cold boot that would take forever: it ends only when its signal aborts (as the lifecycle's steps do), then undoes itself.
  node.wake = (req) =>
    new Promise((_, reject) => {
      started();
      req.signal!.addEventListener('abort', () => setTimeout(() => ((unwound = true), reject(req.signal!.reason)), 50), { once: true });
    });
  const agent = new NodeAgent({ node, s3: null, capBytes: 1 << 30, capacity: 2, images: sharedImages, log: pino({ level: 'silent' }) });
  const run = { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} };
  const wake = agent.wake({ app: 'x', deployId: 'd1', image: '/img', seed: null, env: {}, run });
  const failed = wake.then(() => null, (e: { code?: string }) => e.code);
  await inWake;
  await agent.abortWakes();
  assert.ok(unwound, 'abortWakes resolved only after the wake unwound');
  assert.equal(await failed, 'SHUTTING_DOWN');
  await assert.rejects(agent.wake({ app: 'y', deployId: 'd1', image: '/img', seed: null, env: {}, run }), { code: 'SHUTTING_DOWN' });
});
