// Cold boot with real QEMU VMs.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { coldBoot } from '../../src/lifecycle/boot.ts';
import { destroyVm } from '../../src/lifecycle/destroy.ts';
import { appImage, fixture, getJson, qemuProcesses, runOf, type Fixture } from './fixture.ts';

describe('cold boot', { concurrency: false }, () => {
  let f: Fixture;
  before(async () => {
    f = await fixture();
  });
  after(async () => {
    assert.deepEqual(qemuProcesses(f.dataDir), []);
    await f.cleanup();
  });

  test('the demo app answers HTTP 200 with the env given at boot; destroy leaves nothing behind', async () => {
    const run = await coldBoot(f.ctx, { app: 'hello', deployId: 'd1', baseDisk: f.image, env: { WHO: 'boot-value' }, run: f.run });
    const r = await getJson(run.vm.appAddress.port);
    assert.equal(r.status, 200);
    assert.equal(r.body.who, 'boot-value');
    assert.equal(r.body.pid, run.appPid);
    assert.equal(qemuProcesses(run.vm.id).length, 1);
    await destroyVm(f.ctx, run);
    assert.deepEqual(qemuProcesses(run.vm.id), []);
    assert.deepEqual(await readdir(path.join(f.dataDir, 'vms')), [], 'no socket, overlay or log left');
    await assert.rejects(fetch(`http://127.0.0.1:${run.vm.appAddress.port}/`), 'the forwarded port is closed');
  });

  test('an app that crashes at start is reported by the agent, with its log', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-crashapp-'));
    try {
      await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'crash', scripts: { start: 'node crash.js' } }));
      await writeFile(path.join(dir, 'crash.js'), "console.error('boom: missing DATABASE_URL'); process.exit(3);\n");
      const image = await appImage(f.assets, dir);
      await assert.rejects(coldBoot(f.ctx, { app: 'crash', deployId: 'd1', baseDisk: image, env: {}, run: await runOf(dir) }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'APP_CRASHED');
        assert.match(err.message, /boom: missing DATABASE_URL/);
        return true;
      });
      assert.deepEqual(qemuProcesses(f.dataDir), [], 'the failed boot was cleaned up');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a QEMU that dies during boot is a clear error, not a hang', async () => {
    const t0 = Date.now();
    const booting = coldBoot(f.ctx, { app: 'dies', deployId: 'd1', baseDisk: f.image, env: {}, run: f.run });
    // Kill QEMU once it is up (its pid file exists), well before the guest is ready.
    for (let i = 0; i < 400 && qemuProcesses(f.dataDir).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const line = qemuProcesses(f.dataDir)[0];
    assert.ok(line, 'QEMU started');
    await new Promise((r) => setTimeout(r, 1500)); // the host now waits for the guest agent
    process.kill(Number(line.split(' ')[0]), 'SIGKILL');
    await assert.rejects(booting, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'VM_GONE');
      return true;
    });
    assert.ok(Date.now() - t0 < f.ctx.bootTimeoutMs, 'failed fast, not by the boot timeout');
    assert.deepEqual(await readdir(path.join(f.dataDir, 'vms')), []);
  });

  test('a QEMU that cannot start (bad kernel) fails with VM_START_FAILED', async () => {
    const bad = { ...f.ctx, assets: { ...f.assets, kernel: path.join(f.dataDir, 'no-such-kernel') } };
    await assert.rejects(coldBoot(bad, { app: 'nokernel', deployId: 'd1', baseDisk: f.image, env: {}, run: f.run }), { code: 'VM_START_FAILED' });
    assert.deepEqual(await readdir(path.join(f.dataDir, 'vms')), []);
  });
});
