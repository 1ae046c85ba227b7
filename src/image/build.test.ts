import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isThawError } from '../errors.ts';
import { buildAppImage } from './build.ts';

const ENV = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };
const PKG = { name: 'demo', version: '1.0.0', scripts: { start: 'node server.js' } };

function debugfs(img: string, cmd: string): string {
  return execFileSync('debugfs', ['-R', cmd, img], { env: ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-build-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const base = path.join(d, 'base');
  await mkdir(path.join(base, 'bin'), { recursive: true });
  await mkdir(path.join(base, 'etc'));
  await writeFile(path.join(base, 'bin/busybox'), '#!fake busybox\n', { mode: 0o755 });
  await symlink('busybox', path.join(base, 'bin/sh'));
  const app = path.join(d, 'app');
  await mkdir(app);
  await writeFile(path.join(app, 'package.json'), JSON.stringify(PKG));
  const out = path.join(d, 'images', 'demo.ext4');
  return { d, base, app, out };
}

test('a good app folder builds an ext4 image with the base and the app at /app', async (t) => {
  const { base, app, out } = await setup(t);
  await writeFile(path.join(app, 'server.js'), 'console.log(1)\n');
  await chown(path.join(app, 'server.js'), 1000, 1000);
  await mkdir(path.join(app, 'node_modules/dep'), { recursive: true });
  await writeFile(path.join(app, 'node_modules/dep/index.js'), 'module.exports = 1\n');
  await symlink('node_modules/dep/index.js', path.join(app, 'dep.js'));
  const lines: string[] = [];
  const res = await buildAppImage({ appDir: app, baseRootfs: base, out, diskMiB: 1024, build: false, maxAppBytes: 1 << 20, log: (l) => lines.push(l) });

  assert.equal(res.out, out);
  // sized from the content plus headroom, not the limit
  assert.equal(res.bytesApparent, res.diskMiB * 1024 * 1024);
  assert.ok(res.diskMiB % 64 === 0 && res.diskMiB >= 256 + 64 && res.diskMiB < 1024, String(res.diskMiB));
  assert.equal((await stat(out)).size, res.bytesApparent);
  assert.ok(res.bytesAllocated > 0 && res.bytesAllocated <= res.bytesApparent);
  assert.ok(res.appBytes >= JSON.stringify(PKG).length + 15);
  assert.ok(lines.length > 0);
  // only the image is left next to it: no staging folder, no temp image
  assert.deepEqual(await readdir(path.dirname(out)), ['demo.ext4']);

  assert.equal(JSON.parse(debugfs(out, 'cat /app/package.json')).scripts.start, 'node server.js');
  assert.match(debugfs(out, 'stat /bin/busybox'), /Type: regular/);
  assert.match(debugfs(out, 'stat /bin/sh'), /Type: symlink/);
  assert.match(debugfs(out, 'stat /app/dep.js'), /Type: symlink/);
  assert.match(debugfs(out, 'cat /app/node_modules/dep/index.js'), /module\.exports/);
  // app files are root-owned inside the image even if the host file is not
  assert.match(debugfs(out, 'stat /app/server.js'), /User:\s+0\s+Group:\s+0/);
  assert.match(execFileSync('dumpe2fs', ['-h', out], { env: ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /volume name:\s+thaw-root/);
  // the user's folder is untouched
  assert.equal((await stat(path.join(app, 'server.js'))).uid, 1000);
});

test('bad app folders give their codes and leave nothing behind', async (t) => {
  const { d, base, app, out } = await setup(t);
  const build = (appDir: string, maxAppBytes = 1 << 20) => buildAppImage({ appDir, baseRootfs: base, out, diskMiB: 1024, build: false, maxAppBytes });
  const mk = async (name: string, pkg: string | null): Promise<string> => {
    const dir = path.join(d, name);
    await mkdir(dir);
    if (pkg !== null) await writeFile(path.join(dir, 'package.json'), pkg);
    return dir;
  };
  const esc = await mk('esc', JSON.stringify(PKG));
  await symlink('../base/bin/busybox', path.join(esc, 'bb'));
  const cases: [string, string][] = [
    [path.join(d, 'missing'), 'APP_DIR_MISSING'],
    [await mk('nopkg', null), 'APP_NO_PACKAGE_JSON'],
    [await mk('badjson', '{nope'), 'APP_NO_PACKAGE_JSON'],
    [await mk('nostart', '{"scripts":{}}'), 'APP_NO_START_SCRIPT'],
    [esc, 'APP_SYMLINK_ESCAPES'],
  ];
  for (const [dir, code] of cases) await assert.rejects(build(dir), (e) => isThawError(e, code as 'APP_DIR_MISSING'), code);

  await writeFile(path.join(app, 'big.bin'), Buffer.alloc(4096, 1));
  await assert.rejects(build(app, 1000), (e) => isThawError(e, 'APP_TOO_LARGE'));
  assert.deepEqual(await readdir(path.dirname(out)), [], 'no staging folder or temp image left');
});

test('content that needs a disk over the limit is APP_TOO_LARGE naming the option', async (t) => {
  const { base, app, out } = await setup(t);
  await writeFile(path.join(app, 'blob.bin'), randomBytes(40 * 1024 * 1024));
  await assert.rejects(
    buildAppImage({ appDir: app, baseRootfs: base, out, diskMiB: 280, build: false, maxAppBytes: 100 << 20 }),
    (e) => isThawError(e, 'APP_TOO_LARGE') && /thaw up --max-disk-mib/.test(e.message) && e.details?.maxDiskMiB === 280,
  );
  assert.deepEqual(await readdir(path.dirname(out)), []);
});

test('the base root is the one of the Node line package.json engines.node picks (26 by default)', async (t) => {
  const { d, base, app, out } = await setup(t);
  const asked: number[] = [];
  const rootFor = async (line: number) => {
    asked.push(line);
    const dir = path.join(d, `base-${line}`);
    await rm(dir, { recursive: true, force: true });
    execFileSync('cp', ['-a', base, dir]);
    await writeFile(path.join(dir, 'etc', 'node-line'), `${line}\n`);
    return dir;
  };
  for (const [engines, line] of [[undefined, 26], ['>=22 <23', 22], ['^24', 24], ['>=18', 26]] as const) {
    await writeFile(path.join(app, 'package.json'), JSON.stringify({ ...PKG, ...(engines ? { engines: { node: engines } } : {}) }));
    await rm(out, { force: true });
    const res = await buildAppImage({ appDir: app, baseRootfs: rootFor, out, diskMiB: 1024, build: false, maxAppBytes: 1 << 20 });
    assert.equal(res.nodeLine, line, String(engines));
    assert.equal(debugfs(out, 'cat /etc/node-line').trim(), String(line));
    assert.deepEqual(res.run.argv, ['/bin/sh', '-c', 'exec node server.js'], 'the run config does not depend on the line');
  }
  assert.deepEqual(asked, [26, 22, 24, 26]);
});
