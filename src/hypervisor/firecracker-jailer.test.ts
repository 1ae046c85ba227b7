import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isThawError } from '../errors.ts';
import { jailerCommand, jailRoot } from './firecracker-jailer.ts';

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
