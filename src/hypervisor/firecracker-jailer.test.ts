import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isThawError } from '../errors.ts';
import { jailerCommand, jailId, jailRoot } from './firecracker-jailer.ts';

test('the jailer command line follows docs/jailer.md', () => {
  const j = { uid: 1234, gid: 1234, chrootBase: '/var/lib/thaw/jail', netns: '/var/run/netns/thaw-a' };
  assert.deepEqual(jailerCommand(j, 'app-1', '/usr/bin/firecracker', ['--api-sock', 'fc.sock']), [
    'jailer', '--id', 'app-1', '--exec-file', '/usr/bin/firecracker', '--uid', '1234', '--gid', '1234',
    '--chroot-base-dir', '/var/lib/thaw/jail', '--netns', '/var/run/netns/thaw-a', '--', '--api-sock', 'fc.sock',
  ]);
  assert.deepEqual(jailerCommand({ uid: 0, gid: 0 }, 'x', 'firecracker', []), ['jailer', '--id', 'x', '--exec-file', 'firecracker', '--uid', '0', '--gid', '0', '--']);
  assert.equal(jailRoot(j, 'app-1', '/usr/bin/firecracker'), '/var/lib/thaw/jail/firecracker/app-1/root');
  assert.equal(jailRoot({ uid: 1, gid: 1 }, 'b', '/opt/fc/firecracker-v1.9'), '/srv/jailer/firecracker-v1.9/b/root');
});

test('ids outside [A-Za-z0-9-]{1,64} and bad uids are refused', () => {
  for (const id of ['', 'a_b', 'a/b', 'x'.repeat(65)]) assert.throws(() => jailerCommand({ uid: 1, gid: 1 }, id, 'fc', []), (e: unknown) => isThawError(e, 'INTERNAL'));
  assert.throws(() => jailerCommand({ uid: -1, gid: 1 }, 'a', 'fc', []), (e: unknown) => isThawError(e, 'INTERNAL'));
});

test('cgroup v2 limits, the exec file name rule and the jail id of a VM id', () => {
  assert.deepEqual(jailerCommand({ uid: 7, gid: 8, cgroups: ['memory.max=402653184'], parentCgroup: 'thaw' }, 'a', '/usr/bin/firecracker', []), [
    'jailer', '--id', 'a', '--exec-file', '/usr/bin/firecracker', '--uid', '7', '--gid', '8', '--cgroup-version', '2', '--parent-cgroup', 'thaw', '--cgroup', 'memory.max=402653184', '--',
  ]);
  assert.throws(() => jailerCommand({ uid: 1, gid: 1, cgroups: ['memory.max'] }, 'a', 'firecracker', []), (e: unknown) => isThawError(e, 'INTERNAL'));
  assert.throws(() => jailerCommand({ uid: 1, gid: 1 }, 'a', '/usr/bin/fc', []), (e: unknown) => isThawError(e, 'INTERNAL') && /firecracker/.test(e.message));
  assert.equal(jailId('notes-m1x2y3ab'), 'notes-m1x2y3ab');
  assert.equal(jailId('a_b.c'), 'a-b-c');
  assert.equal(jailId('x'.repeat(70)).length, 64);
});
