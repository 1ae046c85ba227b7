// Test helper: a real S3-protocol server (s3rver) on 127.0.0.1, random port,
// storing into a fresh temp folder that stop() removes. Credentials: S3RVER/S3RVER.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createRequire } from 'node:module';
import type { AddressInfo, Server } from 'node:net';
import os from 'node:os';
import path from 'node:path';

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: Server & { closeAllConnections?: () => void };
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverInstance;

// s3rver ships no type declarations; load it through require with a local type.
const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as S3rverCtor;

// s3rver 3.7's FilesystemStore.putObject resolves when its hashing stream has
// finished, before the file write stream has flushed: a GetObject right after a
// (multipart) upload can read a truncated object. Real S3 has no such window,
// so wait for the write to finish before putObject resolves.
interface StoredObject { bucket: string; key: string; metadata: Record<string, string>; content: Buffer | NodeJS.ReadableStream }
const FilesystemStore = require('s3rver/lib/stores/filesystem') as { prototype: Record<string, unknown> };
const fsExtra = require('fs-extra') as { mkdirp(p: string): Promise<void>; createWriteStream(p: string): NodeJS.WritableStream };
FilesystemStore.prototype.putObject = async function putObject(this: {
  getResourcePath(b: string, k: string, t: string): string;
  putMetadata(b: string, k: string, m: Record<string, string>, md5: string): Promise<void>;
}, object: StoredObject) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fsExtra.mkdirp(path.dirname(objectPath));
  const md5 = createHash('md5');
  let size = 0;
  const source = Buffer.isBuffer(object.content) ? Readable.from([object.content]) : (object.content as Readable);
  await pipeline(
    source,
    new Transform({
      transform(chunk: Buffer, _enc, cb) {
        md5.update(chunk);
        size += chunk.length;
        cb(null, chunk);
      },
    }),
    fsExtra.createWriteStream(objectPath),
  );
  const digest = md5.digest('hex');
  await this.putMetadata(object.bucket, object.key, object.metadata, digest);
  return { size, md5: digest };
};

export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface S3TestServer {
  endpoint: string;
  directory: string;
  /** Stop listening, drop open connections and remove the data folder; safe to call twice. */
  stop(): Promise<void>;
  /** Stop listening but keep the data (restart with startS3Server({ port, directory })). */
  pause(): Promise<void>;
}

/** `address`: where it listens (default 127.0.0.1). */
export async function startS3Server(opts: { buckets?: string[]; port?: number; directory?: string; address?: string } = {}): Promise<S3TestServer> {
  const directory = opts.directory ?? (await mkdtemp(path.join(os.tmpdir(), 'thaw-s3rver-')));
  const server = new S3rver({
    address: opts.address ?? '127.0.0.1',
    port: opts.port ?? 0,
    silent: true,
    directory,
    configureBuckets: (opts.buckets ?? []).map((name) => ({ name })),
  });
  let addr: AddressInfo;
  try {
    addr = await server.run();
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  let stopped: Promise<void> | undefined;
  let paused: Promise<void> | undefined;
  const close = () => {
    paused ??= (async () => {
      const closing = server.close();
      server.httpServer?.closeAllConnections?.();
      await closing;
    })();
    return paused;
  };
  return {
    pause: close,
    endpoint: `http://${opts.address ?? '127.0.0.1'}:${addr.port}`,
    directory,
    stop() {
      stopped ??= (async () => {
        await close();
        await rm(directory, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
