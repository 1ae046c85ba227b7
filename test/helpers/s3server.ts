// Test helper: a real S3-protocol server (s3rver) on 127.0.0.1, random port,
// storing into a fresh temp folder that stop() removes. Credentials: S3RVER/S3RVER.
import { mkdtemp, rm } from 'node:fs/promises';
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
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverCtor;

export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface S3TestServer {
  endpoint: string;
  directory: string;
  /** Stop listening, drop open connections and remove the data folder; safe to call twice. */
  stop(): Promise<void>;
}

export async function startS3Server(opts: { buckets?: string[] } = {}): Promise<S3TestServer> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'thaw-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
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
  return {
    endpoint: `http://127.0.0.1:${addr.port}`,
    directory,
    stop() {
      stopped ??= (async () => {
        const closing = server.close();
        server.httpServer?.closeAllConnections?.();
        await closing;
        await rm(directory, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
