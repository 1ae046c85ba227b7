import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isThawError } from '../errors.ts';
import { DEFAULT_PATH, imageArgv, imageEnv, imagePort, imageRunConfig, parseImageConfig, readInRoot, resolveUser } from './oci-config.ts';
import { unsafeReason } from './oci-scan.ts';

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n# comment\nbroken line\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n';
const GROUP = 'root:x:0:\nstaff:x:50:app\napp:x:1001:\n';
const cfg = (config: Record<string, unknown>) => parseImageConfig({ architecture: 'amd64', os: 'linux', config });

test('argv is Entrypoint + Cmd; a command replaces Cmd; none is IMAGE_NO_COMMAND', () => {
  assert.deepEqual(imageArgv(cfg({ Entrypoint: ['/ep', '-x'], Cmd: ['a', 'b'] })), ['/ep', '-x', 'a', 'b']);
  assert.deepEqual(imageArgv(cfg({ Entrypoint: ['/ep'], Cmd: ['a'] }), ['z']), ['/ep', 'z']);
  assert.deepEqual(imageArgv(cfg({ Cmd: ['/bin/sh', '-c', 'echo'] }), ['/bin/other']), ['/bin/other']);
  assert.deepEqual(imageArgv(cfg({ Entrypoint: null, Cmd: ['x'] })), ['x']);
  assert.deepEqual(imageArgv(cfg({ Entrypoint: ['/ep'], Cmd: ['a'] }), []), ['/ep', 'a']);
  for (const c of [{}, { Entrypoint: [], Cmd: [] }, { Entrypoint: null, Cmd: null }, { Cmd: [''] }]) {
    assert.throws(() => imageArgv(cfg(c)), (e: unknown) => isThawError(e, 'IMAGE_NO_COMMAND'), JSON.stringify(c));
  }
  assert.throws(() => imageArgv(parseImageConfig({})), (e: unknown) => isThawError(e, 'IMAGE_NO_COMMAND'));
});

test('Env becomes a record; ExposedPorts gives the lowest TCP port', () => {
  assert.deepEqual(imageEnv(cfg({ Env: ['A=1', 'B=x=y', 'A=2', 'EMPTY=', 'NOEQ', '=bad'] })), { A: '2', B: 'x=y', EMPTY: '', NOEQ: '' });
  assert.equal(imagePort(cfg({ ExposedPorts: { '8080/tcp': {}, '53/udp': {}, '9000': {} } })), 8080);
  assert.equal(imagePort(cfg({ ExposedPorts: { '10000/tcp': {}, '80/tcp': {} } })), 80);
  assert.equal(imagePort(cfg({ ExposedPorts: { '53/udp': {}, 'junk': {}, '0/tcp': {}, '70000/tcp': {} } })), null);
  assert.equal(imagePort(cfg({})), null);
});

test('User: uid[:gid] and names from the image passwd/group', () => {
  const r = (spec: string, p: string | null = PASSWD, g: string | null = GROUP) => resolveUser(spec, p, g);
  assert.deepEqual(r(''), { uid: 0, gid: 0, home: '/root' });
  assert.deepEqual(r('', null, null), { uid: 0, gid: 0, home: '/' });
  assert.deepEqual(r('app'), { uid: 1000, gid: 1001, home: '/home/app' });
  assert.deepEqual(r('app:staff'), { uid: 1000, gid: 50, home: '/home/app' });
  assert.deepEqual(r('app:7'), { uid: 1000, gid: 7, home: '/home/app' });
  assert.deepEqual(r('1000'), { uid: 1000, gid: 1001, home: '/home/app' });
  assert.deepEqual(r('4242'), { uid: 4242, gid: 0, home: '/' });
  assert.deepEqual(r('4242:4343', null, null), { uid: 4242, gid: 4343, home: '/' });
  assert.deepEqual(r('nobody'), { uid: 65534, gid: 65534, home: '/nonexistent' });
  assert.deepEqual(r('0:app'), { uid: 0, gid: 1001, home: '/root' });
  for (const bad of ['ghost', 'app:ghosts', 'ghost:0', '99999999999', '1:99999999999']) {
    assert.throws(() => r(bad), (e: unknown) => isThawError(e, 'IMAGE_USER_UNKNOWN'), bad);
  }
  assert.throws(() => r('app', null, null), (e: unknown) => isThawError(e, 'IMAGE_USER_UNKNOWN'));
});

test('readInRoot follows symlinks with the root as /, never onto the host', async (t) => {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-ocicfg-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const root = path.join(d, 'root');
  await mkdir(path.join(root, 'etc'), { recursive: true });
  await mkdir(path.join(root, 'real'), { recursive: true });
  await writeFile(path.join(root, 'real/passwd'), PASSWD);
  await writeFile(path.join(d, 'host-secret'), 'secret:x:0:0::/:/x\n');
  await symlink('/real/passwd', path.join(root, 'etc/passwd'));
  await symlink('../../../../../host-secret', path.join(root, 'etc/group'));
  await symlink('/etc/passwd', path.join(root, 'etc/loop1'));
  await symlink('loop2', path.join(root, 'etc/loop2'));
  await symlink(path.join(d, 'host-secret'), path.join(root, 'etc/abs'));
  assert.equal(await readInRoot(root, '/etc/passwd'), PASSWD);
  assert.equal(await readInRoot(root, '/etc/loop1'), PASSWD);
  assert.equal(await readInRoot(root, '/etc/group'), null); // resolves to /host-secret inside the root: missing
  assert.equal(await readInRoot(root, '/etc/abs'), null); // the host path, taken inside the root: missing
  assert.equal(await readInRoot(root, '/etc/loop2'), null);
  assert.equal(await readInRoot(root, '/etc'), null);
  assert.equal(await readInRoot(root, '/nothing/here'), null);
  assert.equal(await readInRoot(root, '/real/passwd', 10), null);
});

test('imageRunConfig: workdir, user, env defaults and port', async (t) => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'thaw-ocicfg-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  await mkdir(path.join(root, 'etc'));
  await writeFile(path.join(root, 'etc/passwd'), PASSWD);
  await writeFile(path.join(root, 'etc/group'), GROUP);
  const c = cfg({ Entrypoint: ['/app/run'], Cmd: ['--serve'], WorkingDir: 'srv', User: 'app:staff', Env: ['FOO=bar'], ExposedPorts: { '3000/tcp': {} } });
  assert.deepEqual(await imageRunConfig(c, root), {
    run: { argv: ['/app/run', '--serve'], cwd: '/srv', uid: 1000, gid: 50, port: 3000, env: { PATH: DEFAULT_PATH, HOME: '/home/app', FOO: 'bar' } },
    port: 3000,
  });
  const c2 = cfg({ Cmd: ['x'], Env: ['PATH=/only', 'HOME=/h'] });
  await assert.rejects(imageRunConfig(c2, root, { command: ['/y', ''] }), (e: unknown) => isThawError(e, 'IMAGE_INVALID')); // RunConfig has no empty args
  assert.deepEqual((await imageRunConfig(c2, root)).run, { argv: ['x'], cwd: '/', uid: 0, gid: 0, port: 8080, env: { PATH: '/only', HOME: '/h' } });
  await assert.rejects(imageRunConfig(cfg({ Cmd: ['x'], User: 'ghost' }), root), (e: unknown) => isThawError(e, 'IMAGE_USER_UNKNOWN'));
  assert.throws(() => parseImageConfig({ config: { Cmd: 'not-an-array' } }), (e: unknown) => isThawError(e, 'IMAGE_INVALID'));
});

test('layer entry rules: absolute, "..", hard links and symlinks out of the root', () => {
  const ok: [string, string, string?][] = [
    ['etc/passwd', 'file'],
    ['./etc/', 'directory'],
    ['./', 'directory'],
    ['/', 'directory'],
    ['usr/bin/sh', 'symlink', '/bin/busybox'],
    ['usr/lib/x', 'symlink', '../../etc/x'],
    ['lib', 'symlink', 'usr/lib'],
    ['a/b/c', 'symlink', '../../d'],
    ['a', 'symlink', '.'],
    ['bin/ln', 'link', 'bin/busybox'],
    ['./bin/ln', 'link', './bin/busybox'],
    ['etc/.wh.old', 'file'],
    ['opt/.wh..wh..opq', 'file'],
    ['x..y/..z', 'file'],
  ];
  for (const [name, type, link] of ok) assert.equal(unsafeReason(name, type, link), null, name);
  const bad: [string, string, string | undefined, RegExp][] = [
    ['/etc/passwd', 'file', undefined, /absolute/],
    ['/', 'file', undefined, /absolute/],
    ['/etc/', 'directory', undefined, /absolute/],
    ['../evil', 'file', undefined, /\.\./],
    ['a/../../evil', 'file', undefined, /\.\./],
    ['a/../b', 'directory', undefined, /\.\./],
    ['esc', 'symlink', '..', /outside/],
    ['a/b', 'symlink', '../../x', /outside/],
    ['a', 'symlink', 'b/../../x', /outside/],
    ['l', 'symlink', '', /without a target/],
    ['h', 'link', '/etc/shadow', /absolute/],
    ['h', 'link', '../x', /\.\./],
    ['h', 'link', '', /without a target/],
  ];
  for (const [name, type, link, re] of bad) assert.match(unsafeReason(name, type, link) ?? '', re, name);
});
