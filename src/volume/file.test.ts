import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { isThawError } from '../errors.ts';
import { checkVolume, cleanlyUnmounted, growVolume, prepareVolume, volumeFile, volumeUsage } from './file.ts';
import { GiB, MiB } from './spec.ts';

const dumpe2fs = (f: string) => execFileSync('dumpe2fs', ['-h', f], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });

test('a volume file is made sparse, checked, grown, never shrunk', async (t) => {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-i12-vol-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const f = volumeFile(d, 'notes');
  assert.equal(f, path.join(d, 'volumes', 'notes.ext4'));
  const first = await prepareVolume(f, GiB);
  assert.equal(first.created, true);
  const u = (await volumeUsage(f))!;
  assert.equal(u.bytes, GiB);
  assert.ok(u.allocated < 64 * MiB, `sparse: ${u.allocated} bytes allocated`);
  assert.match(dumpe2fs(f), /Filesystem volume name:\s+thaw-volume/);
  assert.equal(await cleanlyUnmounted(f), true, 'a fresh filesystem is clean: no e2fsck spawned');
  const again = await prepareVolume(f, GiB);
  assert.deepEqual([again.created, again.fsck, again.grown], [false, 0, false]);
  const grown = await prepareVolume(f, 2 * GiB);
  assert.equal(grown.grown, true);
  assert.equal((await stat(f)).size, 2 * GiB);
  assert.match(dumpe2fs(f), /Block count:\s+524288/); // 2 GiB of 4 KiB blocks
  assert.equal(await growVolume(f, GiB), false, 'never shrinks');
  assert.equal((await stat(f)).size, 2 * GiB);
});

test('a file that is not ext4 is VOLUME_CHECK_FAILED', async (t) => {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-i12-vol-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const f = path.join(d, 'junk.ext4');
  await writeFile(f, Buffer.alloc(32 * MiB, 7));
  assert.equal(await cleanlyUnmounted(f), false);
  await assert.rejects(checkVolume(f), (e) => isThawError(e, 'VOLUME_CHECK_FAILED'));
});

test('a volume whose journal needs replay is not clean: e2fsck -p replays it', async (t) => {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-i12-vol-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const f = volumeFile(d, 'crashy');
  await prepareVolume(f, 64 * MiB);
  // Set the RECOVER flag as a crash with the volume mounted leaves it (debugfs edits the superblock).
  execFileSync('debugfs', ['-w', '-R', 'feature needs_recovery', f], { stdio: 'ignore' });
  assert.equal(await cleanlyUnmounted(f), false);
  const r = await prepareVolume(f, 64 * MiB);
  assert.ok(r.fsck !== null && r.fsck <= 1, String(r.fsck));
  assert.equal(await cleanlyUnmounted(f), true, 'clean after e2fsck -p');
});
