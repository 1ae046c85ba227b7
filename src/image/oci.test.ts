// Real parts: Debian's docker-registry on 127.0.0.1, images built with umoci
// from folders, pushed and converted with skopeo, pulled with pullImage.
// Tools: bash scripts/oci-tools.sh (skipped with a note when missing).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { isThawError, type ErrorCode } from '../errors.ts';
import { DEFAULT_PATH } from './oci-config.ts';
import { scanLayer } from './oci-scan.ts';
import { pullImage, type PullOpts, type PullProgress } from './oci.ts';
import { addIndex, buildImage, copyImage, haveOciTools, makeTar, manifestDigest, startRegistry, type Registry, type TarEntry } from '../../test/helpers/oci.ts';

// bcrypt (cost 4) of "s3cret", for the registry's htpasswd.
const HTPASSWD = 'thaw:$2b$04$El7IlzQXemYKpY6r.b60Cu/c7A28bN.hH5YsB9hayjYVKLLEuv/d2';
const skip = haveOciTools() ? false : 'skopeo, umoci or docker-registry missing: run bash scripts/oci-tools.sh';

describe('OCI images: pull, scan, unpack, config', { skip }, () => {
  let dir: string;
  let layout: string;
  let reg: Registry;
  let authReg: Registry;
  let cacheDir: string;
  const pull = (ref: string, opts: Partial<PullOpts> = {}) => pullImage(ref, { cacheDir, authFile: null, ...opts });
  const rejectsWith = async (p: Promise<unknown>, code: ErrorCode, re?: RegExp): Promise<Error> => {
    let caught: unknown;
    await assert.rejects(p, (e: unknown) => ((caught = e), true));
    assert.ok(isThawError(caught, code), `expected ${code}, got ${String((caught as Error)?.stack ?? caught)}`);
    if (re) assert.match(caught.message, re);
    return caught;
  };
  const push = (tag: string, name = tag) => copyImage(`oci:${layout}:${tag}`, `docker://${reg.host}/test/${name}:v1`);
  const tree = async (d: string, rel = ''): Promise<string[]> => {
    const out: string[] = [];
    for (const e of await readdir(path.join(d, rel), { withFileTypes: true })) {
      const r = path.posix.join(rel, e.name);
      out.push(e.isDirectory() ? `${r}/` : r);
      if (e.isDirectory()) out.push(...(await tree(d, r)));
    }
    return out.sort();
  };
  const folder = async (name: string, files: Record<string, string>): Promise<string> => {
    const root = path.join(dir, 'src', name);
    for (const [p, body] of Object.entries(files)) {
      await mkdir(path.dirname(path.join(root, p)), { recursive: true });
      await writeFile(path.join(root, p), body);
    }
    return root;
  };
  const rawLayer = async (name: string, entries: TarEntry[]): Promise<string> => {
    const f = path.join(dir, `${name}.tar`);
    await makeTar(f, entries);
    return f;
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-oci-'));
    layout = path.join(dir, 'layout');
    cacheDir = path.join(dir, 'cache');
    reg = await startRegistry(path.join(dir, 'reg'));
    authReg = await startRegistry(path.join(dir, 'reg-auth'), { storage: reg.storage, htpasswd: HTPASSWD });
    const etc = {
      'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n',
      'etc/group': 'root:x:0:\nstaff:x:50:app\napp:x:1001:\n',
    };
    const base = await folder('base', { ...etc, 'srv/marker': 'hello', 'bin/run': '#!/bin/sh\n' });
    await chmod(path.join(base, 'bin/run'), 0o755);
    const cfgSpec = {
      entrypoint: ['/bin/run', '--flag'],
      cmd: ['serve', 'x'],
      user: 'app:staff',
      workdir: '/srv',
      env: ['FOO=bar', 'PATH=/custom:/bin'],
      ports: ['53/udp', '8080/tcp'],
    };
    await buildImage(layout, 'cfg', { roots: [base], ...cfgSpec });
    // (c) layer 1 from a folder; layer 2 by hand: a per-file whiteout, an opaque folder, a hard link.
    const l1 = await folder('wh', { 'keep.txt': 'keep', 'gone.txt': 'gone', 'dir/old1': 'old', 'dir/sub/old2': 'old' });
    const l2 = await rawLayer('wh-layer2', [
      { name: '.wh.gone.txt' },
      { name: 'dir/', type: 'directory' },
      { name: 'dir/.wh..wh..opq' },
      { name: 'dir/new.txt', body: 'layer 2' },
      { name: 'dir/hard.txt', type: 'link', linkname: 'dir/new.txt' },
    ]);
    await buildImage(layout, 'wh', { roots: [l1], rawLayers: [l2], cmd: ['/bin/true'] });
    await buildImage(layout, 'nocmd', { roots: [await folder('nocmd', { f: 'x' })] });
    await buildImage(layout, 'arm', { roots: [await folder('arm', { f: 'arm' })], cmd: ['/x'], architecture: 'arm64' });
    await addIndex(layout, 'armlist', ['arm'], { os: 'linux', architecture: 'arm64' });
    await buildImage(layout, 'big', { roots: [await folder('big', { zeros: '\0'.repeat(1 << 20) })], cmd: ['/x'] });
    await buildImage(layout, 'tamper', { roots: [await folder('tamper', { rand: randomBytes(3000).toString('base64') })], cmd: ['/x'] });
    const evil: [string, TarEntry[]][] = [
      ['dotdot', [{ name: '../evil', body: 'x' }]],
      ['abs', [{ name: '/abs-evil', body: 'x' }]],
      ['symesc', [{ name: 'esc', type: 'symlink', linkname: '../../../../tmp' }, { name: 'esc/evil.txt', body: 'x' }]],
      ['hardesc', [{ name: 'h', type: 'link', linkname: '../../etc/shadow' }]],
    ];
    for (const [tag, entries] of evil) {
      await buildImage(layout, tag, { roots: [base], rawLayers: [await rawLayer(tag, entries)], cmd: ['/x'] });
    }
    for (const tag of ['cfg', 'wh', 'nocmd', 'arm', 'big', 'tamper', ...evil.map(([t]) => t)]) await push(tag);
    await copyImage(`oci:${layout}:armlist`, `docker://${reg.host}/test/armlist:v1`, ['--all']);
    // zstd layers, converted into a layout of their own (skopeo reuses a blob the destination
    // already has, gzip or not) from content of their own (a push would reuse the registry's).
    const zlayout = path.join(dir, 'zlayout');
    await buildImage(layout, 'cfgz', { roots: [await folder('zsrc', { ...etc, 'srv/marker': 'zstd' })], ...cfgSpec });
    await copyImage(`oci:${layout}:cfgz`, `oci:${zlayout}:cfgz`, ['--dest-compress-format', 'zstd']);
    await copyImage(`oci:${zlayout}:cfgz`, `docker://${reg.host}/test/cfgz:v1`);
  });

  after(async () => {
    await authReg?.stop();
    await reg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('honours the config: entrypoint, cmd, override, workdir, user by name, env, port; then reuses the cache', async () => {
    const events: PullProgress[] = [];
    const ref = `${reg.host}/test/cfg:v1`;
    const img = await pull(ref, { onProgress: (p) => events.push(p) });
    assert.equal(img.digest, await manifestDigest(`docker://${ref}`));
    assert.equal(img.name, ref);
    assert.equal(img.cached, false);
    assert.deepEqual(img.run, {
      argv: ['/bin/run', '--flag', 'serve', 'x'],
      cwd: '/srv',
      uid: 1000,
      gid: 50,
      port: 8080,
      env: { PATH: '/custom:/bin', HOME: '/home/app', FOO: 'bar' },
    });
    assert.equal(img.port, 8080);
    assert.equal(await readFile(path.join(img.rootfs, 'srv/marker'), 'utf8'), 'hello');
    assert.equal((await stat(path.join(img.rootfs, 'bin/run'))).mode & 0o777, 0o755);
    assert.ok(img.bytes >= 5 && img.layerBytes >= img.bytes, `${img.bytes} ${img.layerBytes}`);
    for (const phase of ['resolve', 'copy', 'scan', 'unpack', 'done']) assert.ok(events.some((e) => e.phase === phase), phase);
    assert.ok(events.some((e) => e.phase === 'copy' && /^Copying blob/.test(e.message)));

    // Second pull of the same digest: nothing copied, nothing unpacked; the override replaces Cmd only.
    const metaFile = path.join(path.dirname(img.rootfs), 'thaw-image.json');
    const before = await stat(metaFile);
    const layouts = await readdir(path.join(cacheDir, 'layouts'));
    const again: PullProgress[] = [];
    const img2 = await pull(ref, { command: ['other', '--x'], onProgress: (p) => again.push(p) });
    assert.equal(img2.cached, true);
    assert.equal(img2.rootfs, img.rootfs);
    assert.equal(img2.digest, img.digest);
    assert.deepEqual(img2.run.argv, ['/bin/run', '--flag', 'other', '--x']);
    assert.deepEqual(again.map((e) => e.phase), ['resolve', 'done']);
    const afterStat = await stat(metaFile);
    assert.deepEqual([afterStat.ino, afterStat.mtimeMs], [before.ino, before.mtimeMs]);
    assert.deepEqual(await readdir(path.join(cacheDir, 'layouts')), layouts);
    assert.deepEqual(await readdir(path.join(cacheDir, 'tmp')), []);

    // By digest, and zstd layers (umoci 0.4.7 reads only gzip: skopeo converts them).
    const byDigest = await pull(`${reg.host}/test/cfg@${img.digest}`);
    assert.equal(byDigest.cached, true);
    assert.match(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/test/cfgz:v1`], { encoding: 'utf8' }), /tar\+zstd/);
    const z = await pull(`${reg.host}/test/cfgz:v1`);
    assert.equal(z.cached, false);
    assert.notEqual(z.digest, img.digest);
    assert.deepEqual(z.run, img.run);
    assert.equal(await readFile(path.join(z.rootfs, 'srv/marker'), 'utf8'), 'zstd');
  });

  it('(c) whiteouts: a deleted file is gone, an opaque folder holds only the upper layer', async () => {
    const img = await pull(`${reg.host}/test/wh:v1`);
    assert.deepEqual(await tree(img.rootfs), ['dir/', 'dir/hard.txt', 'dir/new.txt', 'keep.txt']);
    assert.equal(await readFile(path.join(img.rootfs, 'dir/new.txt'), 'utf8'), 'layer 2');
    const [a, b] = await Promise.all(['dir/new.txt', 'dir/hard.txt'].map((p) => stat(path.join(img.rootfs, p))));
    assert.equal(a!.ino, b!.ino);
    assert.deepEqual(img.run, { argv: ['/bin/true'], cwd: '/', uid: 0, gid: 0, port: 8080, env: { PATH: DEFAULT_PATH, HOME: '/' } });
  });

  it('(d) the same image from docker-archive, oci-archive and an OCI layout folder', async () => {
    const dockerArchive = path.join(dir, 'wh-docker.tar');
    const ociArchive = path.join(dir, 'wh-oci.tar');
    await copyImage(`oci:${layout}:wh`, `docker-archive:${dockerArchive}`);
    await copyImage(`oci:${layout}:wh`, `oci-archive:${ociArchive}`);
    for (const ref of [`docker-archive:${dockerArchive}`, `oci-archive:${ociArchive}`, `oci:${layout}:wh`]) {
      const img = await pull(ref);
      assert.deepEqual(await tree(img.rootfs), ['dir/', 'dir/hard.txt', 'dir/new.txt', 'keep.txt'], ref);
      assert.deepEqual(img.run.argv, ['/bin/true'], ref);
      assert.equal((await pull(ref)).cached, true, ref);
    }
    const cfg = await pull(`oci:${layout}:cfg`, { command: ['sh'] });
    assert.deepEqual([cfg.run.argv, cfg.run.uid, cfg.port], [['/bin/run', '--flag', 'sh'], 1000, 8080]);
  });

  it('unknown image or tag, unreachable registry', async () => {
    await rejectsWith(pull(`${reg.host}/test/cfg:nope`), 'IMAGE_NOT_FOUND', /cfg:nope/);
    await rejectsWith(pull(`${reg.host}/test/nothere:v1`), 'IMAGE_NOT_FOUND');
    await rejectsWith(pull(`${reg.host}/test/cfg@sha256:${'0'.repeat(64)}`), 'IMAGE_NOT_FOUND');
    await rejectsWith(pull(`oci:${layout}:nope`), 'IMAGE_NOT_FOUND');
    await rejectsWith(pull(`docker-archive:${dir}/missing.tar`), 'IMAGE_NOT_FOUND');
    const dead = await startRegistry(path.join(dir, 'dead'));
    await dead.stop(); // a port where nothing listens any more
    await rejectsWith(pull(`${dead.host}/test/cfg:v1`), 'REGISTRY_UNREACHABLE', /unreachable/);
    await rejectsWith(pull('alpine:'), 'IMAGE_REF_INVALID');
  });

  it('credentials: refused without or with wrong ones, accepted from a flag or an auth file', async () => {
    const ref = `${authReg.host}/test/cfg:v1`;
    await rejectsWith(pull(ref), 'REGISTRY_AUTH_FAILED');
    await rejectsWith(pull(ref, { auth: { username: 'thaw', password: 'wrong' } }), 'REGISTRY_AUTH_FAILED');
    assert.deepEqual(await readdir(path.join(cacheDir, 'tmp')), []); // the temp auth file is gone
    const img = await pull(ref, { auth: { username: 'thaw', password: 's3cret' } });
    assert.equal(img.run.uid, 1000);
    const authFile = path.join(dir, 'docker-config.json');
    await writeFile(authFile, JSON.stringify({ auths: { [authReg.host]: { auth: Buffer.from('thaw:s3cret').toString('base64') } } }));
    assert.equal((await pull(ref, { authFile })).cached, true);
  });

  it('platform, digest, size and command errors', async () => {
    await rejectsWith(pull(`${reg.host}/test/armlist:v1`), 'IMAGE_PLATFORM_UNSUPPORTED', /linux\/arm64/);
    await rejectsWith(pull(`${reg.host}/test/arm:v1`), 'IMAGE_PLATFORM_UNSUPPORTED', /arm64/);
    // A layer blob changed in the registry's storage.
    const m = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/test/tamper:v1`], { encoding: 'utf8' })) as { layers: { digest: string }[] };
    const hex = m.layers[0]!.digest.slice(7);
    const blob = path.join(reg.storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    const bytes = await readFile(blob);
    const mid = bytes.length >> 1;
    bytes[mid] = bytes[mid]! ^ 0xff;
    await writeFile(blob, bytes);
    await rejectsWith(pull(`${reg.host}/test/tamper:v1`), 'IMAGE_DIGEST_MISMATCH', /did not match/i);
    // Size: the compressed layers already over the limit, then only the uncompressed ones.
    await rejectsWith(pull(`${reg.host}/test/big:v1`, { maxBytes: 100 }), 'APP_TOO_LARGE');
    await rejectsWith(pull(`${reg.host}/test/big:v1`, { maxBytes: 500_000 }), 'APP_TOO_LARGE', /layers hold more/);
    assert.ok((await pull(`${reg.host}/test/big:v1`, { maxBytes: 2 << 20 })).layerBytes >= 1 << 20);
    await rejectsWith(pull(`${reg.host}/test/big:v1`, { maxBytes: 500_000 }), 'APP_TOO_LARGE'); // cached, same answer
    // No Entrypoint/Cmd: refused, unless a command is given.
    await rejectsWith(pull(`${reg.host}/test/nocmd:v1`), 'IMAGE_NO_COMMAND');
    assert.deepEqual((await pull(`${reg.host}/test/nocmd:v1`, { command: ['/f'] })).run.argv, ['/f']);
  });

  it("layers that escape the root are refused by Thaw's scan before unpacking", async () => {
    const cases: [string, string][] = [
      ['dotdot', '../evil'],
      ['abs', '/abs-evil'],
      ['symesc', 'esc'],
      ['hardesc', 'h'],
    ];
    const [rootsBefore, layoutsBefore] = await Promise.all(['roots', 'layouts'].map((d) => readdir(path.join(cacheDir, d))));
    for (const [tag, entry] of cases) {
      const err = await rejectsWith(pull(`${reg.host}/test/${tag}:v1`), 'IMAGE_UNSAFE_LAYER');
      assert.equal((err as { details?: { entry?: string } }).details?.entry, entry, tag);
    }
    assert.deepEqual(await readdir(path.join(cacheDir, 'roots')), rootsBefore); // nothing unpacked
    assert.deepEqual(await readdir(path.join(cacheDir, 'layouts')), layoutsBefore); // and the refused layers not kept
    assert.equal(existsSync(path.join(cacheDir, 'evil')) || existsSync('/abs-evil') || existsSync('/tmp/evil.txt'), false);
  });

  it('two pulls of one digest at once both succeed with one root', async () => {
    const cache2 = path.join(dir, 'cache2');
    const [a, b] = await Promise.all([1, 2].map(() => pullImage(`${reg.host}/test/wh:v1`, { cacheDir: cache2, authFile: null })));
    assert.equal(a!.rootfs, b!.rootfs);
    assert.deepEqual(await tree(a!.rootfs), ['dir/', 'dir/hard.txt', 'dir/new.txt', 'keep.txt']);
    assert.deepEqual([await readdir(path.join(cache2, 'roots')), await readdir(path.join(cache2, 'tmp'))], [[a!.digest.slice(7)], []]);
  });

  it('archives that are not images get IMAGE_INVALID', async () => {
    const plain = path.join(dir, 'plain.tar');
    execFileSync('tar', ['cf', plain, '-C', path.join(dir, 'src'), 'base']);
    const junk = path.join(dir, 'junk.tar');
    await writeFile(junk, 'not a tar at all');
    for (const ref of [`docker-archive:${plain}`, `oci-archive:${plain}`, `docker-archive:${junk}`, `oci-archive:${junk}`, `oci:${path.join(dir, 'src')}`]) {
      await rejectsWith(pull(ref), 'IMAGE_INVALID', undefined);
    }
    assert.deepEqual(await readdir(path.join(cacheDir, 'tmp')), []); // skopeo's leftovers went with the pull's folder
  });

  it('scanLayer reads gzip, zstd and plain tars', async () => {
    const t = path.join(dir, 'scan.tar');
    await makeTar(t, [{ name: 'a/', type: 'directory' }, { name: 'a/b', body: 'xyz' }, { name: 'l', type: 'symlink', linkname: '/a/b' }]);
    await writeFile(`${t}.gz`, gzipSync(await readFile(t)));
    execFileSync('zstd', ['-q', '-f', t, '-o', `${t}.zst`]);
    for (const f of [t, `${t}.gz`, `${t}.zst`]) assert.deepEqual(await scanLayer(f), { entries: 3, bytes: 3 }, f);
    await makeTar(t, [{ name: 'ok', body: '1' }, { name: 'x/../../y', body: '2' }]);
    execFileSync('zstd', ['-q', '-f', t, '-o', `${t}.zst`]);
    await rejectsWith(scanLayer(`${t}.zst`, { layer: 'L' }), 'IMAGE_UNSAFE_LAYER', /layer L: entry "x\/..\/..\/y"/);
    // Ends right after the last file's data (as umoci 0.4.7's insert writes): accepted; cut inside the data: refused.
    await makeTar(t, [{ name: 'a', body: 'x'.repeat(700) }, { name: 'b', body: 'yz' }]);
    const full = await readFile(t);
    await writeFile(t, full.subarray(0, 512 + 1024 + 512 + 2));
    assert.deepEqual(await scanLayer(t), { entries: 2, bytes: 702 });
    await writeFile(t, full.subarray(0, 512 + 600));
    await rejectsWith(scanLayer(t), 'IMAGE_INVALID', /Unexpected end of data/);
    await writeFile(`${t}.gz`, gzipSync(Buffer.from('garbage that is no tar header, garbage that is no tar header'.repeat(20))));
    await rejectsWith(scanLayer(`${t}.gz`), 'IMAGE_INVALID');
  });
});
