// Thaw's own scan of an image layer before anything is unpacked. umoci
// confines entries that try to escape the root without saying so; silence is
// not refusal, so every layer is read here first (gzip, zstd or plain tar)
// and an entry that escapes is IMAGE_UNSAFE_LAYER, naming the entry:
//   - absolute names (`/etc/x`; a `/` folder entry is the root itself and
//     passes) and names with a `..` component;
//   - hard links whose target is absolute or has a `..` component (a hard
//     link names a path of the archive, relative to the root);
//   - symlinks whose relative target climbs above the root, resolved from
//     the link's folder. Absolute targets are fine: they resolve inside the
//     image's root (the guest's `/`), never on the host.
// The scan also sums the uncompressed file sizes against a byte limit.
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tarStream from 'tar-stream';
import { ThawError } from '../errors.ts';

export interface LayerScan {
  entries: number;
  /** Sum of the sizes of the regular files in the layer. */
  bytes: number;
}

export interface ScanOpts {
  /** The layer's digest, for messages. */
  layer?: string;
  /** APP_TOO_LARGE once `bytesBefore` plus this layer's file bytes pass it. */
  maxBytes?: number;
  bytesBefore?: number;
}

const SAFE_TYPES = new Set(['file', 'contiguous-file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo', 'pax-global-header']);

/** Path components of a tar name ('' and '.' dropped); `..` is kept for the caller to refuse. */
function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** Why the entry escapes the root, or null when it is safe. `type` is tar-stream's entry type. */
export function unsafeReason(name: string, type: string | null | undefined, linkname?: string | null): string | null {
  const parts = components(name);
  // `/` alone is the root folder itself (umoci insert DIR / writes it): nothing escapes.
  if (name.startsWith('/') && !(parts.length === 0 && type === 'directory')) return 'absolute path';
  if (parts.includes('..')) return '".." component';
  if (type === 'link') {
    const target = linkname ?? '';
    if (target === '') return 'hard link without a target';
    if (target.startsWith('/')) return `hard link to an absolute path ${JSON.stringify(target)}`;
    if (components(target).includes('..')) return `hard link target ${JSON.stringify(target)} has a ".." component`;
  }
  if (type === 'symlink') {
    const target = linkname ?? '';
    if (target === '') return 'symlink without a target';
    if (!target.startsWith('/')) {
      const at = parts.slice(0, -1);
      for (const c of components(target)) {
        if (c !== '..') at.push(c);
        else if (at.length === 0) return `symlink to ${JSON.stringify(target)} points outside the root`;
        else at.pop();
      }
    }
  }
  return null;
}

async function magic(file: string): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The layer as an uncompressed tar stream, and a promise that rejects if the decompressor fails. */
async function openLayer(file: string): Promise<{ stream: Readable; done: Promise<void> }> {
  const m = await magic(file);
  if (m[0] === 0x1f && m[1] === 0x8b) {
    const gunzip = createGunzip();
    return { stream: gunzip, done: pipeline(createReadStream(file), gunzip) };
  }
  if (m.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) {
    // Node 20's zlib has no zstd: use the zstd binary (installed by `npm run setup`).
    const child = spawn('zstd', ['-q', '-d', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
    const done = new Promise<void>((resolve, reject) => {
      child.on('error', (err: NodeJS.ErrnoException) =>
        reject(err.code === 'ENOENT' ? new ThawError('HOST_MISSING_TOOL', 'zstd is not installed', { cause: err, details: { tool: 'zstd' } }) : err),
      );
      child.on('close', (code, signal) => (code === 0 || signal === 'SIGTERM' ? resolve() : reject(new Error(`zstd: ${stderr.trim()}`))));
    });
    return { stream: child.stdout, done };
  }
  const stream = createReadStream(file);
  return { stream, done: Promise.resolve() };
}

/** Scan one layer blob (gzip, zstd or plain tar). Errors: IMAGE_UNSAFE_LAYER, IMAGE_INVALID, APP_TOO_LARGE. */
export async function scanLayer(file: string, opts: ScanOpts = {}): Promise<LayerScan> {
  const layer = opts.layer ?? file;
  const { stream, done } = await openLayer(file);
  const extract = tarStream.extract();
  const feed = pipeline(stream, extract);
  const settled = Promise.allSettled([feed, done]);
  let entries = 0;
  let bytes = 0;
  // umoci 0.4.7's `insert` writes layers that end right after the last file's
  // data (no padding, no end-of-archive blocks); Go's reader, so umoci and
  // Docker, accepts them. Every header has been seen by then, so a tar that
  // ends early is accepted when the last entry's data was complete.
  let lastComplete = true;
  const tolerable = (err: unknown): boolean => lastComplete && err instanceof Error && err.message === 'Unexpected end of data';
  try {
    for await (const entry of extract) {
      const h = entry.header;
      entries++;
      const reason = unsafeReason(h.name, h.type, h.linkname) ?? (h.type && !SAFE_TYPES.has(h.type) ? `unsupported entry type ${h.type}` : null);
      if (reason !== null) {
        throw new ThawError('IMAGE_UNSAFE_LAYER', `layer ${layer}: entry ${JSON.stringify(h.name)}: ${reason}`, {
          details: { layer, entry: h.name, reason, ...(h.linkname ? { target: h.linkname } : {}) },
        });
      }
      if (h.type === 'file' || h.type === 'contiguous-file') bytes += h.size ?? 0;
      if (opts.maxBytes !== undefined && (opts.bytesBefore ?? 0) + bytes > opts.maxBytes) {
        throw new ThawError('APP_TOO_LARGE', `the image's layers hold more than ${opts.maxBytes} bytes`, { details: { maxBytes: opts.maxBytes, layer } });
      }
      lastComplete = false;
      let got = 0;
      for await (const chunk of entry) got += (chunk as Buffer).length;
      lastComplete = got === (h.size ?? 0);
    }
    const [f, d] = await settled;
    if (d.status === 'rejected') throw d.reason;
    if (f.status === 'rejected' && !tolerable(f.reason)) throw f.reason;
  } catch (err) {
    stream.destroy();
    extract.destroy();
    const [, d] = await settled;
    if (err instanceof ThawError) throw err;
    if (tolerable(err) && d.status === 'fulfilled') return { entries, bytes };
    throw new ThawError('IMAGE_INVALID', `layer ${layer} is not a readable tar (gzip, zstd or plain): ${(err as Error).message}`, {
      cause: err,
      details: { layer },
    });
  }
  return { entries, bytes };
}
