import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isThawError } from '../errors.ts';
import { checkVolumeAgainstCwd, checkVolumePath, GiB, MiB, parseSize, parseVolumeArg } from './spec.ts';

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return isThawError(err) ? err.code : String(err);
  }
  return 'no error';
};

test('--volume /PATH[:SIZE] parses, with 1GiB by default', () => {
  assert.deepEqual(parseVolumeArg('/data'), { path: '/data', sizeBytes: GiB });
  assert.deepEqual(parseVolumeArg('/data/'), { path: '/data', sizeBytes: GiB });
  assert.deepEqual(parseVolumeArg('/srv/db:512MiB'), { path: '/srv/db', sizeBytes: 512 * MiB });
  assert.deepEqual(parseVolumeArg('/var/data:2G'), { path: '/var/data', sizeBytes: 2 * GiB });
  assert.equal(parseSize('1073741824'), GiB);
  assert.equal(parseSize('1.5GiB'), 1.5 * GiB);
  assert.equal(parseSize('20000001'), 20 * MiB); // rounded up to whole MiB
});

test('bad volume paths and sizes are VOLUME_INVALID', () => {
  for (const p of ['data', '', '/', '//', '/proc', '/proc/x', '/dev', '/tmp/x', '/var', '/var/lib', '/var/lib/thaw/x', '/usr/local', '/etc', '/run/data', '/a/../b', '/a/./b', '/x\0y', `/${'a'.repeat(300)}`]) {
    assert.equal(code(() => checkVolumePath(p)), 'VOLUME_INVALID', p);
  }
  // The kind of fault, not the example: whitespace and control characters (escaped in /proc/mounts),
  // backslashes, non-NFC text, over-long components or paths counted in bytes, Debian's links into /run.
  const long = `/${'é'.repeat(128)}`; // 128 chars, 256 bytes
  for (const p of ['/my data', '/data\n', '/da\tta', '/data\u00a0x', '/a\\b', '/x\u0085', '/cafe\u0301', long, `/a/${'b'.repeat(256)}`, '/var/run/x', '/var/lock', '/var/tmp/d', '/lib32']) {
    assert.equal(code(() => checkVolumePath(p)), 'VOLUME_INVALID', JSON.stringify(p));
  }
  assert.equal(checkVolumePath('/données/café'), '/données/café', 'NFC unicode is fine');
  assert.equal(checkVolumePath('/srv//db/'), '/srv/db');
  assert.equal(checkVolumePath(`/${'a'.repeat(254)}`).length, 255);
  assert.doesNotThrow(() => checkVolumeAgainstCwd('/app/data', '/app'));
  assert.doesNotThrow(() => checkVolumeAgainstCwd('/application', '/app'));
  for (const [v, cwd] of [['/app', '/app'], ['/app', '/app/'], ['/srv', '/srv/www/site']]) assert.equal(code(() => checkVolumeAgainstCwd(v!, cwd!)), 'VOLUME_INVALID', `${v} on ${cwd}`);
  for (const s of ['0', '1MiB', '15MiB', '2TiB', 'lots', '1 GB', '-1G', '1e9']) assert.equal(code(() => parseSize(s)), 'VOLUME_INVALID', s);
  assert.equal(code(() => parseVolumeArg('relative:1G')), 'VOLUME_INVALID');
  assert.equal(code(() => parseVolumeArg('/:1G')), 'VOLUME_INVALID');
});
