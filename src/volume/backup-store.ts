// Volume backups in the S3-compatible object storage seeds use (src/seed/s3.ts):
// one object `volumes/APP/BACKUP_ID.tar.zst` per backup (see backup.ts for the
// format), carrying its SHA-256 as metadata (x-amz-meta-sha256). An upload is
// checked afterwards (HeadObject: size and hash); a download lands in a file
// whose SHA-256 must be the recorded one before it is unpacked.
import { createReadStream, createWriteStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { ThawError } from '../errors.ts';
import { isNotFound, objectKey, s3Error, type SeedStore } from '../seed/s3.ts';
import { verifyPacked } from './backup.ts';

export const BACKUP_PREFIX = 'volumes/';
const META_SHA = 'sha256';
/** Object key of one backup of an app's volume. */
export function backupKey(app: string, backupId: string): string {
  return objectKey(BACKUP_PREFIX, app, backupId, 'backup');
}

/** Upload a packed backup file under `key`; resolves once HeadObject shows the same size and hash. */
export async function uploadBackup(s3: SeedStore, packed: string, key: string, sha256: string): Promise<{ bytes: number; ms: number }> {
  const t0 = performance.now();
  const { size } = await stat(packed);
  try {
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: createReadStream(packed), ContentLength: size, ContentType: 'application/zstd', Metadata: { [META_SHA]: sha256 } }));
    const h = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    if (h.ContentLength !== size || h.Metadata?.[META_SHA] !== sha256) {
      await removeBackup(s3, key).catch(() => {});
      throw new ThawError('S3_ERROR', `uploaded volume backup ${key} does not check out (${h.ContentLength} bytes, sha256 ${h.Metadata?.[META_SHA]})`);
    }
  } catch (err) {
    throw s3Error(`uploading volume backup to ${key} failed`, err);
  }
  return { bytes: size, ms: Math.round(performance.now() - t0) };
}

/**
 * Download `key` into the file `dest` and check it against `sha256` (and the object's own
 * metadata): VOLUME_BACKUP_CORRUPT on a mismatch (the file is removed), VOLUME_BACKUP_NOT_FOUND
 * when the object is gone.
 */
export async function downloadBackup(s3: SeedStore, key: string, sha256: string, dest: string): Promise<{ bytes: number; ms: number }> {
  const t0 = performance.now();
  let res;
  try {
    res = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  } catch (err) {
    if (isNotFound(err)) throw new ThawError('VOLUME_BACKUP_NOT_FOUND', `no volume backup ${key} in bucket ${s3.bucket}`, { cause: err });
    throw s3Error(`fetching volume backup ${key} failed`, err);
  }
  if (!(res.Body instanceof Readable)) throw new ThawError('S3_ERROR', `volume backup ${key} has no readable body`);
  try {
    await pipeline(res.Body, createWriteStream(dest, { mode: 0o600 })).catch((err) => {
      throw s3Error(`reading volume backup ${key} failed`, err);
    });
    if (res.Metadata?.[META_SHA] !== undefined && res.Metadata[META_SHA] !== sha256) {
      throw new ThawError('VOLUME_BACKUP_CORRUPT', `volume backup ${key} says SHA-256 ${res.Metadata[META_SHA]}, recorded ${sha256}`);
    }
    await verifyPacked(dest, sha256);
  } catch (err) {
    await rm(dest, { force: true });
    throw err;
  }
  return { bytes: (await stat(dest)).size, ms: Math.round(performance.now() - t0) };
}

/** Delete a backup object (no error when it is already gone). */
export async function removeBackup(s3: SeedStore, key: string): Promise<void> {
  try {
    await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key }));
  } catch (err) {
    if (!isNotFound(err)) throw s3Error(`deleting volume backup ${key} failed`, err);
  }
}
