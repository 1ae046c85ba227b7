// OCI images end to end: a real registry (docker-registry on loopback), images
// built here with umoci, deployed through a real `thaw up`, served, baked and
// thawed in real VMs. (a) scratch: one static binary; (b) busybox with a shell
// entrypoint and a non-root user; (c) two layers, a whiteout and an opaque
// folder; (d) (a) as a docker-archive.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, chown, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ApiClient } from '../../src/api/client.ts';
import { buildImage, copyImage, makeTar, startRegistry, type Registry } from '../helpers/oci.ts';
import { startTestThaw, type RouterRequest, type TestThaw } from '../helpers/thaw-up.ts';
import { qemuProcesses, ROOT } from './fixture.ts';

describe('OCI images', { concurrency: false }, () => {
  let work: string;
  let t: TestThaw | undefined;
  let api: ApiClient;
  let reg: Registry;
  let archive: string;

  const get = (app: string, init: RouterRequest = {}) => t!.get(app, init);
  const waitAsleep = (name: string) => t!.waitState(name, 'asleep', 120_000);
  /** The cycle every image must pass: cold answer, marker, bake, thaw with rotated env and the marker. */
  const lifecycle = async (name: string, image: string, expect: { uid?: number } = {}) => {
    await api.deploy(name, { image }, { env: { WHO: 'first' }, idleTimeoutS: 2 });
    const cold = await get(name);
    assert.equal(cold.status, 200, cold.text);
    assert.equal(cold.boot, 'cold');
    assert.equal(cold.json().who, 'first');
    if (expect.uid !== undefined) assert.equal(cold.json().uid, expect.uid);
    assert.equal((await get(name, { method: 'POST', body: `marker-${name}` })).status, 201);
    await waitAsleep(name);
    await api.setEnv(name, { WHO: 'rotated' });
    const thawed = await get(name);
    assert.equal(thawed.status, 200, thawed.text);
    assert.equal(thawed.boot, 'snapshot', JSON.stringify((await api.wakes(name, 1))[0]?.fallback_reason));
    assert.equal(thawed.json().who, 'rotated');
    assert.equal(thawed.json().marker, `marker-${name}`);
    assert.notEqual(thawed.json().pid, cold.json().pid);
    return thawed;
  };

  before(async () => {
    work = await mkdtemp(path.join(os.tmpdir(), 'thaw-oci-vm-'));
    reg = await startRegistry(path.join(work, 'registry'));
    const server = path.join(work, 'server');
    execFileSync('gcc', ['-static', '-O2', '-o', server, path.join(ROOT, 'test/vm/apps/static-http.c')]);
    const layout = path.join(work, 'layout');
    // (a) scratch: nothing but the static server.
    const a = path.join(work, 'a');
    await mkdir(a);
    await copyFile(server, path.join(a, 'server'));
    await buildImage(layout, 'scratch', { roots: [a], cmd: ['/server'], ports: ['8080/tcp'] });
    // (b) busybox, a shell-script entrypoint, user "app" (uid 1000) from the image's /etc/passwd.
    const b = path.join(work, 'b');
    await mkdir(path.join(b, 'bin'), { recursive: true });
    await mkdir(path.join(b, 'etc'));
    await mkdir(path.join(b, 'data'));
    await chown(path.join(b, 'data'), 1000, 1000);
    await copyFile('/bin/busybox', path.join(b, 'bin/busybox'));
    await symlink('busybox', path.join(b, 'bin/sh'));
    await copyFile(server, path.join(b, 'bin/server'));
    await writeFile(path.join(b, 'entry.sh'), '#!/bin/sh\n[ "$(/bin/busybox id -u)" = 1000 ] || { echo "expected uid 1000" >&2; exit 3; }\nexec /bin/server\n', { mode: 0o755 });
    await writeFile(path.join(b, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/data:/bin/sh\n');
    await writeFile(path.join(b, 'etc/group'), 'root:x:0:\napp:x:1000:\n');
    await buildImage(layout, 'busybox', { roots: [b], entrypoint: ['/entry.sh'], user: 'app', env: ['MARKER=/data/marker'], ports: ['8080/tcp'] });
    // (c) layer 1 has /gone.txt and /dir/old.txt; layer 2 (by hand) deletes the file and makes /dir opaque.
    const c = path.join(work, 'c');
    await mkdir(path.join(c, 'dir'), { recursive: true });
    await copyFile(server, path.join(c, 'server'));
    await writeFile(path.join(c, 'gone.txt'), 'layer 1');
    await writeFile(path.join(c, 'dir/old.txt'), 'layer 1');
    const layer2 = path.join(work, 'layer2.tar');
    await makeTar(layer2, [{ name: '.wh.gone.txt' }, { name: 'dir/', type: 'directory' }, { name: 'dir/.wh..wh..opq' }, { name: 'dir/new.txt', body: 'layer 2' }]);
    await buildImage(layout, 'layers', { roots: [c], rawLayers: [layer2], cmd: ['/server'] });
    for (const t of ['scratch', 'busybox', 'layers']) await copyImage(`oci:${layout}:${t}`, `docker://${reg.host}/thaw/${t}:1`);
    // (d) the scratch image as `docker save` would write it.
    archive = path.join(work, 'scratch-docker.tar');
    await copyImage(`oci:${layout}:scratch`, `docker-archive:${archive}:thaw/scratch:1`);
    await chmod(archive, 0o644);

    const data = path.join(work, 'data');
    t = await startTestThaw({ data });
    api = t.api;
  });

  after(async () => {
    await t?.stop();
    await reg?.stop();
    assert.deepEqual(qemuProcesses(work), [], 'no QEMU left');
    await rm(work, { recursive: true, force: true });
  });

  test('(a) a scratch image holding one static binary, from the registry', async () => {
    await lifecycle('scratch', `${reg.host}/thaw/scratch:1`);
  });

  test('(b) busybox with a shell-script entrypoint runs as the image user', async () => {
    await lifecycle('busybox', `${reg.host}/thaw/busybox:1`, { uid: 1000 });
  });

  test('(c) whiteouts: the deleted file is gone, the opaque folder holds only layer 2', async () => {
    await lifecycle('layers', `${reg.host}/thaw/layers:1`);
    assert.ok(!(await get('layers', { path: '/ls/' })).json<string[]>().includes('gone.txt'));
    assert.deepEqual((await get('layers', { path: '/ls/dir' })).json(), ['new.txt']);
  });

  test('(d) the same image as a docker-archive', async () => {
    await lifecycle('archive', `docker-archive:${archive}`);
  });

  test('bad images get their code and the running deploy is kept', async () => {
    await assert.rejects(api.deploy('scratch', { image: `${reg.host}/thaw/nope:1` }), { code: 'IMAGE_NOT_FOUND' });
    await assert.rejects(api.deploy('scratch', { image: 'oci-archive:/nonexistent.tar' }), (e: Error & { code?: string }) => /IMAGE_/.test(e.code ?? ''));
    await assert.rejects(api.deploy('scratch', { image: 'UPPER/Case' }), { code: 'IMAGE_REF_INVALID' });
    const still = await get('scratch');
    assert.equal(still.status, 200);
    assert.equal(still.json().marker, 'marker-scratch');
  });
});
