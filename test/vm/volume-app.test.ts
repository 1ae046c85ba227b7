// The case, through the whole stack (API, control plane, router,
// node, real VMs): json-server from npm, unchanged, with its database file on
// the app's volume. One POST before the first sleep (the bake), then one POST
// after each of 5 thaws, each followed by a sleep: every note is there at the
// end, and after a redeploy (without --volume) too.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../../src/api/client.ts';
import { startThaw, type Running } from '../../src/control/up.ts';
import { isThawError } from '../../src/errors.ts';
import { packAppDir } from '../../src/image/tarball.ts';
import type { NodeAgent } from '../../src/node/agent.ts';
import { installedApp } from '../helpers/npmapp.ts';
import { qemuProcesses, ROOT } from './fixture.ts';

const NOTES = path.join(ROOT, 'test', 'vm', 'apps', 'notes');

describe('json-server on a volume: notes survive sleeps, thaws and a redeploy', { concurrency: false }, () => {
  let data: string;
  let ctl: Running;
  let api: ApiClient;
  let routerPort: number;
  let app: string;

  const call = async (method: 'GET' | 'POST', body?: unknown) => {
    const r = await request(`http://127.0.0.1:${routerPort}/notes`, {
      method,
      headers: { host: 'notes.localhost', 'content-type': 'application/json' },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return { status: r.statusCode, json: (await r.body.json()) as unknown };
  };
  /** json-server answers 201 before its (async) write of db.json: give it the moment an idle app has. */
  const idle = () => new Promise((r) => setTimeout(r, 5000));
  const texts = async () => ((await call('GET')).json as { text: string }[]).map((n) => n.text);

  before(async () => {
    process.env.THAW_QEMU_START_TIMEOUT_MS ??= '60000';
    app = await installedApp(NOTES);
    data = await mkdtemp(path.join(os.tmpdir(), 'thaw-i12-notes-'));
    ctl = await startThaw({ data, port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300 }, pino({ level: process.env.THAW_TEST_LOG ?? 'silent' }));
    routerPort = Number(new URL(ctl.routerUrl).port);
    // json-server loads ~120 packages: on a loaded 2-core TCG host its first start can take minutes.
    const { ctx } = (ctl.cluster.get('local')!.agent as NodeAgent).node;
    ctx.appStartTimeoutMs = 300_000;
    ctx.bootTimeoutMs = 300_000;
    api = new ApiClient({ url: ctl.apiUrl, token: ctl.token });
  });

  after(async () => {
    await ctl?.stop();
    await api?.close();
    assert.deepEqual(qemuProcesses(data), [], 'no QEMU process may outlive the test');
    await rm(data, { recursive: true, force: true });
  });

  test('one POST before the first sleep, one after each of 5 thaws, all there; a redeploy keeps them', async () => {
    await api.deploy('notes', await packAppDir(app), { volume: '/data:256MiB' });
    // Woken through the API (no router deadline: a loaded 2-core host can take minutes to cold-boot).
    assert.equal((await api.wake('notes')).boot_mode, 'cold');
    const first = await call('POST', { text: 'note-0' });
    assert.equal(first.status, 201, JSON.stringify(first.json));
    await idle();
    const [vol] = await api.listVolumes();
    assert.deepEqual([vol!.app, vol!.path, vol!.size_bytes, vol!.node], ['notes', '/data', 256 << 20, 'local']);
    assert.match(vol!.holder ?? '', /^wake-/, 'the running VM holds the lease');
    assert.equal((await api.sleep('notes')).baked, true);
    assert.equal((await api.getApp('notes')).error, null);
    assert.equal((await api.listVolumes())[0]!.holder, null);

    for (let i = 1; i <= 5; i++) {
      const w = await api.wake('notes');
      assert.equal(w.boot_mode, 'snapshot', `wake ${i}: ${w.fallback_reason}`);
      const r = await call('POST', { text: `note-${i}` });
      assert.equal(r.status, 201, JSON.stringify(r.json));
      await idle();
      await api.sleep('notes');
      assert.equal((await api.getApp('notes')).error, null, `sleep ${i}`);
    }
    const expected = ['note-0', 'note-1', 'note-2', 'note-3', 'note-4', 'note-5'];
    assert.deepEqual(await texts(), expected);
    const w = (await api.wakes('notes', 1))[0]!;
    assert.equal(w.boot_mode, 'snapshot');
    assert.equal(w.stages.volume_fsck_exit, 0, 'every sleep unmounted it cleanly');

    // A redeploy, without --volume: the same volume at the same path.
    await api.deploy('notes', await packAppDir(app));
    assert.equal((await api.wake('notes')).boot_mode, 'cold');
    assert.deepEqual(await texts(), expected);
    await api.sleep('notes');

    // Deleting the app needs --delete-volume; then the file is gone.
    await assert.rejects(api.deleteApp('notes'), (e) => isThawError(e, 'VOLUME_IN_USE'));
    const file = path.join(data, 'node', 'volumes', 'notes.ext4');
    assert.ok(existsSync(file));
    await api.deleteApp('notes', { deleteVolume: true });
    assert.ok(!existsSync(file), 'the volume file is deleted with the app');
    assert.deepEqual(await api.listVolumes(), []);
  });
});
