import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isThawError } from '../errors.ts';
import { symlinkEscapes, validateAppDir, validateAppName } from './validate.ts';

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-validate-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

const PKG = JSON.stringify({ name: 'demo', scripts: { start: 'node server.js' } });

test('validateAppName accepts good names and rejects bad ones', () => {
  for (const ok of ['a', 'my-app', 'a1', 'x'.repeat(40)]) validateAppName(ok);
  for (const bad of ['', 'A', '1app', 'app-', 'my_app', 'x'.repeat(41), 'a b', '-a']) {
    assert.throws(() => validateAppName(bad), (e) => isThawError(e, 'INVALID_APP_NAME'), bad);
  }
});

test('a good app folder validates, with inner symlinks and node_modules', async (t) => {
  const d = await tmp(t);
  await writeFile(path.join(d, 'package.json'), PKG);
  await mkdir(path.join(d, 'node_modules/.bin'), { recursive: true });
  await mkdir(path.join(d, 'node_modules/foo'), { recursive: true });
  await writeFile(path.join(d, 'node_modules/foo/cli.js'), '');
  await symlink('../foo/cli.js', path.join(d, 'node_modules/.bin/foo'));
  await symlink('node_modules', path.join(d, 'nm')); // symlinked folder: not followed
  await symlink('missing-but-inside', path.join(d, 'dangling'));
  const { pkg } = await validateAppDir(d);
  assert.deepEqual(pkg, { name: 'demo', start: 'node server.js', scripts: { start: 'node server.js' } });
});

test('each bad folder gives its code', async (t) => {
  const d = await tmp(t);
  const mk = async (name: string, files: Record<string, string>): Promise<string> => {
    const dir = path.join(d, name);
    await mkdir(dir);
    for (const [f, c] of Object.entries(files)) await writeFile(path.join(dir, f), c);
    return dir;
  };
  const cases: [string, string][] = [
    [path.join(d, 'nope'), 'APP_DIR_MISSING'],
    [await mk('nopkg', { 'server.js': '' }), 'APP_NO_PACKAGE_JSON'],
    [await mk('badjson', { 'package.json': '{"scripts":' }), 'APP_NO_PACKAGE_JSON'],
    [await mk('arrayjson', { 'package.json': '[]' }), 'APP_NO_PACKAGE_JSON'],
    [await mk('nostart', { 'package.json': '{"scripts":{"test":"x"}}' }), 'APP_NO_START_SCRIPT'],
    [await mk('numstart', { 'package.json': '{"scripts":{"start":1}}' }), 'APP_NO_START_SCRIPT'],
  ];
  await writeFile(path.join(d, 'afile'), 'x');
  cases.push([path.join(d, 'afile'), 'APP_DIR_MISSING']);
  for (const [dir, code] of cases) {
    await assert.rejects(validateAppDir(dir), (e) => isThawError(e, code as 'APP_DIR_MISSING'), `${dir} -> ${code}`);
  }
});

test('escaping symlinks are refused: absolute, .., and through another symlink', async (t) => {
  const d = await tmp(t);
  const make = async (name: string, setup: (dir: string) => Promise<void>): Promise<string> => {
    const dir = path.join(d, name);
    await mkdir(dir);
    await writeFile(path.join(dir, 'package.json'), PKG);
    await setup(dir);
    return dir;
  };
  const abs = await make('abs', (dir) => symlink('/etc/passwd', path.join(dir, 'pw')));
  const up = await make('up', async (dir) => {
    await mkdir(path.join(dir, 'lib'));
    await symlink('../../outside', path.join(dir, 'lib/x'));
  });
  // lexically p/q/x/../.. = p (inside), but x -> root/r so it really lands above the root
  const chain = await make('chain', async (dir) => {
    await mkdir(path.join(dir, 'p/q'), { recursive: true });
    await mkdir(path.join(dir, 'r'));
    await symlink('../../r', path.join(dir, 'p/q/x'));
    await symlink('x/../..', path.join(dir, 'p/q/y'));
  });
  const loop = await make('loop', async (dir) => {
    await symlink('b', path.join(dir, 'a'));
    await symlink('a', path.join(dir, 'b'));
  });
  for (const dir of [abs, up, chain, loop]) {
    await assert.rejects(validateAppDir(dir), (e) => isThawError(e, 'APP_SYMLINK_ESCAPES'), dir);
  }
  assert.equal(await symlinkEscapes(chain, 'p/q/x'), false);
  assert.equal(await symlinkEscapes(chain, 'p/q/y'), true);
});
