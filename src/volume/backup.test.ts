// The volume backup format against a real S3 server (s3rver): sparse and
// compressed round trip, hash checked on download, a corrupted backup refused.
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startS3Server, type S3TestServer } from '../../test/helpers/s3server.ts';
import { isThawError } from '../errors.ts';
import { sha256File } from '../seed/files.ts';
import { SeedStore } from '../seed/s3.ts';
import { packVolumeFile, unpackVolumeFile } from './backup.ts';
import { backupKey, downloadBackup, removeBackup, uploadBackup } from './backup-store.ts';
import { createVolume } from './file.ts';

const MiB = 1024 * 1024;
const savedEnv = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
let root: string;
let server: S3TestServer;
let s3: SeedStore;

before(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  root = await mkdtemp(path.join(os.tmpdir(), 'thaw-volbackup-test-'));
  server = await startS3Server({ buckets: ['vols'] });
  s3 = new SeedStore({ endpoint: server.endpoint, bucket: 'vols', forcePathStyle: true });
});

after(async () => {
  s3?.destroy();
  await server?.stop();
  await rm(root, { recursive: true, force: true });
  process.env.AWS_ACCESS_KEY_ID = savedEnv.id;
  process.env.AWS_SECRET_ACCESS_KEY = savedEnv.secret;
  if (savedEnv.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
  if (savedEnv.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
});

/** A 256 MiB ext4 volume with 4 MiB of incompressible bytes written into its free space. */
async function makeVolume(file: string): Promise<void> {
  await createVolume(file, 256 * MiB);
  const fh = await open(file, 'r+');
  await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, 200 * MiB);
  await fh.close();
}

test('a volume round-trips through object storage: sparse, compressed, the same bytes', async () => {
  const file = path.join(root, 'a.ext4');
  await makeVolume(file);
  const want = await sha256File(file);
  const packed = await packVolumeFile(file, path.join(root, 'a.tar.zst'));
  assert.equal(packed.apparentBytes, 256 * MiB);
  assert.ok(packed.bytes < 6 * MiB, `packed ${packed.bytes} bytes: only the allocated blocks (4 MiB of random + ext4 metadata), compressed`);
  assert.equal(packed.sha256, await sha256File(path.join(root, 'a.tar.zst')));

  const key = backupKey('app', 's-1');
  const up = await uploadBackup(s3, path.join(root, 'a.tar.zst'), key, packed.sha256);
  assert.equal(up.bytes, packed.bytes);
  const got = path.join(root, 'down.tar.zst');
  await downloadBackup(s3, key, packed.sha256, got);
  const dest = path.join(root, 'restored.ext4');
  const r = await unpackVolumeFile(got, packed.sha256, dest);
  assert.equal(r.apparentBytes, 256 * MiB);
  assert.equal(await sha256File(dest), want, 'the same bytes');
  const st = await stat(dest);
  assert.ok(st.blocks * 512 < 16 * MiB, `restored file is sparse (${st.blocks * 512} bytes allocated)`);
  assert.deepEqual((await readdir(root)).filter((f) => /partial|unpack/.test(f)), [], 'no temporary file left');
  await removeBackup(s3, key);
  await removeBackup(s3, key); // gone already: no error
});

test('a corrupted backup is refused with VOLUME_BACKUP_CORRUPT, and the volume file is left as it was', async () => {
  const file = path.join(root, 'b.ext4');
  await makeVolume(file);
  const packedFile = path.join(root, 'b.tar.zst');
  const packed = await packVolumeFile(file, packedFile);
  const key = backupKey('app', 's-2');
  // The object's bytes change after the backup was recorded (bit rot, a tampered store).
  const body = await readFile(packedFile);
  body.writeUInt8(body.readUInt8(body.length >> 1) ^ 0xff, body.length >> 1);
  await s3.client.send(new PutObjectCommand({ Bucket: 'vols', Key: key, Body: body, Metadata: { sha256: packed.sha256 } }));
  const got = path.join(root, 'b-down.tar.zst');
  await assert.rejects(downloadBackup(s3, key, packed.sha256, got), (e) => isThawError(e, 'VOLUME_BACKUP_CORRUPT'));
  await assert.rejects(stat(got), 'the refused download is removed');

  // A packed file whose hash does not match is not unpacked over the current volume.
  const dest = path.join(root, 'current.ext4');
  await writeFile(dest, 'current data');
  await writeFile(got, body);
  await assert.rejects(unpackVolumeFile(got, packed.sha256, dest), (e) => isThawError(e, 'VOLUME_BACKUP_CORRUPT'));
  // Right hash, broken content (recorded wrongly): tar/zstd refuse it, still a code.
  await assert.rejects(unpackVolumeFile(got, await sha256File(got), dest), (e) => isThawError(e, 'VOLUME_BACKUP_CORRUPT'));
  assert.equal(await readFile(dest, 'utf8'), 'current data', 'current volume untouched');
  await assert.rejects(downloadBackup(s3, backupKey('app', 'missing'), packed.sha256, got), (e) => isThawError(e, 'VOLUME_BACKUP_NOT_FOUND'));
  await removeBackup(s3, key);
});
