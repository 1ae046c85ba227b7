// Seed replication through S3-compatible object storage. A seed travels as
// one object `${prefix}${app}/${seedId}.tar.zst` (see pack.ts), carrying the
// SHA-256 of its manifest.json as metadata (x-amz-meta-manifest-sha256).
// Uploads are checked afterwards (HeadObject); pulls verify every byte.
// Credentials come from the SDK's default chain (AWS_ACCESS_KEY_ID, ...).
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand,
  S3Client, paginateListObjectsV2,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { ThawError, isThawError } from '../errors.ts';
import { readManifest, sha256File } from './files.ts';
import type { Manifest } from './manifest.ts';
import { packSeed, unpackSeed } from './pack.ts';

export const DEFAULT_PREFIX = 'seeds/';
const PART_SIZE = 8 * 1024 * 1024;
const META_SHA = 'manifest-sha256';
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface SeedStoreOptions {
  endpoint?: string;
  bucket: string;
  region?: string;
  forcePathStyle?: boolean;
  prefix?: string;
  /** TCP connect timeout; short so "object storage down" fails fast. Default 2000. */
  connectionTimeoutMs?: number;
  /** Socket idle timeout during a transfer. Default 30000. */
  socketTimeoutMs?: number;
  /** SDK attempts per request (its own retry). Default 3. */
  maxAttempts?: number;
  /** Whole-upload attempts on network errors. Default 3. */
  uploadAttempts?: number;
  /** First backoff between whole-upload attempts (doubles). Default 500. */
  retryDelayMs?: number;
  /** Progress of an upload (compressed bytes sent) or a pull (compressed bytes read). */
  onProgress?: (bytes: number) => void;
}

export interface SeedObject { key: string; bytes: number; lastModified: Date | undefined }
export interface SeedHead extends SeedObject { manifestSha256: string | undefined }

/** Object storage settings from the `--s3-*` flags (null: no replication). */
export function s3FromFlags(o: { s3Endpoint?: string; s3Bucket?: string; s3Region?: string }): { bucket: string; endpoint?: string; region?: string } | null {
  return o.s3Bucket ? { bucket: o.s3Bucket, ...(o.s3Endpoint ? { endpoint: o.s3Endpoint } : {}), ...(o.s3Region ? { region: o.s3Region } : {}) } : null;
}

/** Object key of a seed: `${prefix}${app}/${seedId}.tar.zst`. */
export function seedKey(app: string, seedId: string, prefix = DEFAULT_PREFIX): string {
  return objectKey(prefix, app, seedId, 'seed');
}

/**
 * Object key `${prefix}${app}/${id}.tar.zst` of one of an app's objects (`kind`: seed, backup).
 * Both names must be safe path segments: INVALID_REQUEST otherwise.
 */
export function objectKey(prefix: string, app: string, id: string, kind: string): string {
  for (const [what, v] of [['app', app], [`${kind} id`, id]] as const) {
    if (!SAFE_NAME.test(v)) throw new ThawError('INVALID_REQUEST', `invalid ${what} for a ${kind} key: ${JSON.stringify(v)}`);
  }
  return `${prefix}${app}/${id}.tar.zst`;
}

type AwsError = Error & { code?: string; $metadata?: { httpStatusCode?: number }; $retryable?: unknown; Code?: string };
const NET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED']);

/** The object (or bucket key) is not there: 404 in any of the SDK's spellings. */
export function isNotFound(err: unknown): boolean {
  const e = err as AwsError;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

function isNetworkError(err: unknown): boolean {
  if (isThawError(err) && err.code !== 'S3_ERROR') return false;
  const e = (isThawError(err) ? err.cause : err) as AwsError | undefined;
  if (!e) return false;
  return NET_CODES.has(e.code ?? '') || e.name === 'TimeoutError' || e.name === 'RequestTimeout'
    || (e.$metadata?.httpStatusCode ?? 0) >= 500 || Boolean(e.$retryable);
}

/** An object-storage failure as S3_ERROR (a ThawError passes through), with the SDK's name, code and status. */
export function s3Error(what: string, err: unknown): ThawError {
  if (isThawError(err)) return err;
  const e = err as AwsError;
  const detail = [e?.name, e?.code, e?.message].filter(Boolean).join(': ') || String(err);
  return new ThawError('S3_ERROR', `${what}: ${detail}`, { cause: err, details: { status: e?.$metadata?.httpStatusCode } });
}

export class SeedStore {
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  private readonly opts: SeedStoreOptions;

  constructor(opts: SeedStoreOptions) {
    this.opts = opts;
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? DEFAULT_PREFIX;
    this.client = new S3Client({
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      region: opts.region ?? 'us-east-1',
      forcePathStyle: opts.forcePathStyle ?? true,
      maxAttempts: opts.maxAttempts ?? 3,
      // S3-compatible stores often lack the SDK's newer default checksums.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: opts.connectionTimeoutMs ?? 2000, socketTimeout: opts.socketTimeoutMs ?? 30_000 },
    });
  }

  key(app: string, seedId: string): string {
    return seedKey(app, seedId, this.prefix);
  }

  /** Create the bucket unless it exists. */
  async ensureBucket(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      return;
    } catch (err) {
      if (!isNotFound(err)) throw s3Error(`cannot reach bucket ${this.bucket}`, err);
    }
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      const name = (err as AwsError)?.name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw s3Error(`cannot create bucket ${this.bucket}`, err);
    }
  }

  /** Pack and upload a seed folder; retried on network errors, then checked with HeadObject. */
  async upload(seedDir: string, key?: string, opts: { onProgress?: (bytes: number) => void } = {}): Promise<{ key: string; bytesCompressed: number; ms: number }> {
    const t0 = performance.now();
    const manifest = await readManifest(seedDir);
    const manifestSha = await sha256File(path.join(seedDir, 'manifest.json'));
    const objKey = key ?? this.key(manifest.app, manifest.seed_id);
    const attempts = this.opts.uploadAttempts ?? 3;
    for (let attempt = 1; ; attempt++) {
      try {
        const bytes = await this.uploadOnce(seedDir, objKey, manifestSha, opts.onProgress ?? this.opts.onProgress);
        await this.checkUploaded(objKey, bytes, manifestSha);
        return { key: objKey, bytesCompressed: bytes, ms: Math.round(performance.now() - t0) };
      } catch (err) {
        if (attempt >= attempts || !isNetworkError(err)) throw s3Error(`uploading seed to ${objKey} failed`, err);
        await sleep((this.opts.retryDelayMs ?? 500) * 2 ** (attempt - 1));
      }
    }
  }

  private async uploadOnce(seedDir: string, key: string, manifestSha: string, onProgress?: (bytes: number) => void): Promise<number> {
    const pack = packSeed(seedDir, { onProgress });
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: key, Body: pack.stream, ContentType: 'application/zstd', Metadata: { [META_SHA]: manifestSha } },
      partSize: PART_SIZE,
      queueSize: 2,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      pack.stream.destroy();
      const packErr = await pack.done.then(() => undefined, (e: unknown) => e);
      // A pack failure (bad seed, missing tool) explains the failed upload better.
      if (isThawError(err)) throw err;
      if (isThawError(packErr) && !/aborted/.test(packErr.message)) throw packErr;
      throw s3Error(`uploading seed to ${key} failed`, err);
    }
    return (await pack.done).bytesOut;
  }

  private async checkUploaded(key: string, bytes: number, manifestSha: string): Promise<void> {
    const head = await this.head(key);
    if (head && head.bytes === bytes && head.manifestSha256 === manifestSha) return;
    await this.remove(key).catch(() => {});
    throw new ThawError('S3_ERROR', `uploaded seed ${key} does not check out: ${head ? `${head.bytes} bytes, manifest ${head.manifestSha256}` : 'object missing'}; expected ${bytes} bytes, manifest ${manifestSha}`);
  }

  /** Download and unpack a seed into destDir (which must not exist); every byte is verified. */
  async pull(key: string, destDir: string, opts: { maxBytes?: number; onProgress?: (bytes: number) => void } = {}): Promise<{ manifest: Manifest; bytesCompressed: number; ms: number }> {
    const t0 = performance.now();
    let res;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      if (isNotFound(err)) throw new ThawError('SEED_MISSING', `no seed object ${key} in bucket ${this.bucket}`, { cause: err });
      throw s3Error(`fetching seed ${key} failed`, err);
    }
    if (!(res.Body instanceof Readable)) throw new ThawError('S3_ERROR', `seed object ${key} has no readable body`);
    const body = res.Body;
    // Body errors (connection lost mid-transfer) are object-storage failures, not corrupt seeds.
    const input = new PassThrough();
    body.on('error', (err) => input.destroy(s3Error(`reading seed ${key} failed`, err)));
    input.on('close', () => { if (!body.readableEnded) body.destroy(); });
    body.pipe(input);
    const out = await unpackSeed(input, destDir, {
      maxBytes: opts.maxBytes,
      onProgress: opts.onProgress ?? this.opts.onProgress,
      manifestSha256: res.Metadata?.[META_SHA],
    });
    return { manifest: out.manifest, bytesCompressed: out.bytes, ms: Math.round(performance.now() - t0) };
  }

  /** Size, date and manifest hash of a seed object; null when it does not exist. */
  async head(key: string): Promise<SeedHead | null> {
    try {
      const h = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { key, bytes: h.ContentLength ?? 0, lastModified: h.LastModified, manifestSha256: h.Metadata?.[META_SHA] };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw s3Error(`head of seed ${key} failed`, err);
    }
  }

  /** Delete a seed object (no error when it is already gone). */
  async remove(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      if (!isNotFound(err)) throw s3Error(`deleting seed ${key} failed`, err);
    }
  }

  /** Every seed object under the prefix. */
  async list(): Promise<SeedObject[]> {
    const out: SeedObject[] = [];
    try {
      for await (const page of paginateListObjectsV2({ client: this.client }, { Bucket: this.bucket, Prefix: this.prefix })) {
        for (const o of page.Contents ?? []) {
          if (o.Key) out.push({ key: o.Key, bytes: o.Size ?? 0, lastModified: o.LastModified });
        }
      }
    } catch (err) {
      throw s3Error(`listing seeds in ${this.bucket} failed`, err);
    }
    return out;
  }

  /** Close the client's sockets. */
  destroy(): void {
    this.client.destroy();
  }
}
