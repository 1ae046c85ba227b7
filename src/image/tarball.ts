// Safe intake of app uploads: a streaming reader for gzip or plain tar
// (POSIX ustar, GNU long names 'L'/'K', pax 'x' path/linkpath/size) that
// extracts into a temp folder next to `dest` and renames it into place only
// when everything passed. Limits are enforced while streaming. Only regular
// files, folders, symlinks that stay inside the root and hard links to a
// regular file already extracted from the same archive are accepted (what
// npm, pnpm, yarn and node-gyp write); nothing is ever written through a
// symlink.

import { chmod, link, lstat, mkdir, mkdtemp, open, readdir, rename, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { ThawError } from '../errors.ts';
import { symlinkEscapes } from './validate.ts';

/** maxBytes limits the compressed input and the uncompressed tar stream, each; maxEntries defaults to 100000. */
export interface ExtractOpts { maxBytes: number; maxEntries?: number }

const META_MAX = 1024 * 1024; // long names and pax headers

const invalid = (msg: string, details?: Record<string, unknown>): ThawError => new ThawError('TARBALL_INVALID', msg, details ? { details } : {});
const unsafe = (entry: string, reason: string): ThawError =>
  new ThawError('TARBALL_UNSAFE_ENTRY', `unsafe tar entry ${JSON.stringify(entry)}: ${reason}`, { details: { entry, reason } });
const tooLarge = (msg: string, maxBytes: number): ThawError =>
  new ThawError('TARBALL_TOO_LARGE', `${msg}; raise it with thaw up --max-upload-mib, or leave files out with .thawignore`, { details: { maxBytes, option: '--max-upload-mib' } });

/** Exact-size reads over an async iterator of chunks. */
class ByteReader {
  private bufs: Buffer[] = [];
  private len = 0;
  private done = false;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<void> {
    while (this.len < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length > 0) {
        this.bufs.push(r.value);
        this.len += r.value.length;
      }
    }
  }

  private take(n: number): Buffer {
    const all = this.bufs.length === 1 ? this.bufs[0]! : Buffer.concat(this.bufs);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.bufs = rest.length > 0 ? [rest] : [];
    this.len = rest.length;
    return out;
  }

  /** `n` bytes, or null at a clean end of input; a partial read is TARBALL_INVALID. */
  async read(n: number): Promise<Buffer | null> {
    await this.fill(n);
    if (this.len === 0 && n > 0) return null;
    if (this.len < n) throw invalid('tarball is truncated');
    return this.take(n);
  }

  /** Exactly `n` bytes; end of input is TARBALL_INVALID. */
  async need(n: number): Promise<Buffer> {
    const b = await this.read(n);
    if (b === null) throw invalid('tarball is truncated');
    return b;
  }

  /** Up to `max` (> 0) bytes, at least one. */
  async chunk(max: number): Promise<Buffer> {
    await this.fill(1);
    if (this.len === 0) throw invalid('tarball is truncated');
    const first = this.bufs[0]!;
    return this.take(Math.min(max, first.length));
  }

  async drain(): Promise<void> {
    this.bufs = [];
    this.len = 0;
    while (!(await this.it.next()).done);
    this.done = true;
  }
}

function inputChunks(input: Buffer | NodeJS.ReadableStream): AsyncIterable<Buffer> {
  if (Buffer.isBuffer(input)) return (async function* () { if (input.length > 0) yield input; })();
  // Do not destroy the caller's stream when we stop early (e.g. an HTTP request).
  const r = input as NodeJS.ReadableStream & { iterator?: (o: { destroyOnReturn: boolean }) => AsyncIterator<unknown> };
  const it = typeof r.iterator === 'function' ? r.iterator({ destroyOnReturn: false }) : r[Symbol.asyncIterator]();
  return (async function* () {
    for await (const c of { [Symbol.asyncIterator]: () => it }) yield typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
  })();
}

async function* limit(src: AsyncIterable<Buffer>, max: number, what: string): AsyncGenerator<Buffer> {
  let total = 0;
  for await (const c of src) {
    total += c.length;
    if (total > max) throw tooLarge(`${what} tarball is over the ${max} byte limit`, max);
    yield c;
  }
}

async function* gunzip(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const gz = createGunzip();
  const feeding = pipeline(src, gz).then(() => undefined, (err: unknown) => err);
  for await (const c of gz) yield c as Buffer;
  const err = await feeding;
  if (err) throw err;
}

/** Split off the first two bytes (gzip sniffing) without losing them. */
async function sniff(src: AsyncIterable<Buffer>): Promise<{ gzip: boolean; stream: AsyncIterable<Buffer> }> {
  const it = src[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let n = 0;
  while (n < 2) {
    const r = await it.next();
    if (r.done) break;
    head.push(r.value);
    n += r.value.length;
  }
  const first = Buffer.concat(head);
  const stream = (async function* () {
    if (first.length > 0) yield first;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
  })();
  return { gzip: first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b, stream };
}

function cstr(h: Buffer, off: number, len: number): string {
  const s = h.subarray(off, off + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
}

function num(h: Buffer, off: number, len: number, field: string): number {
  if (h[off]! & 0x80) {
    let v = h[off]! & 0x7f;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + h[i]!;
    return v;
  }
  const s = h.subarray(off, off + len).toString('latin1').replace(/[\0 ]+$/g, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw invalid(`bad ${field} field in tar header`);
  return parseInt(s, 8);
}

function checkHeader(h: Buffer): void {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  if (num(h, 148, 8, 'checksum') !== sum) throw invalid('tar header checksum mismatch (not a tar file?)');
}

function parsePax(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < buf.length) {
    const sp = buf.indexOf(0x20, pos);
    const len = sp < 0 ? NaN : Number(buf.subarray(pos, sp).toString('latin1'));
    if (!Number.isInteger(len) || len <= 0 || pos + len > buf.length) throw invalid('malformed pax header');
    const rec = buf.subarray(sp + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    pos += len;
  }
  return out;
}

/** Relative path without './' and empty segments ('' for the root), or TARBALL_UNSAFE_ENTRY. */
function safeRel(name: string): string {
  if (name.includes('\0')) throw unsafe(name, 'NUL in path');
  if (name.startsWith('/')) throw unsafe(name, 'absolute path');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(name, '".." in path');
  return parts.join('/');
}

type Kind = 'dir' | 'file' | 'link';

async function extractTar(reader: ByteReader, root: string, maxBytes: number, maxEntries: number) {
  const kinds = new Map<string, Kind>();
  const dirModes = new Map<string, number>();
  const links: { rel: string; name: string }[] = [];
  let [files, bytes, entries] = [0, 0, 0];
  let longName: string | undefined, longLink: string | undefined;
  let pax: Record<string, string> = {};

  const ensureParents = async (rel: string, name: string): Promise<void> => {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join('/');
      const k = kinds.get(prefix);
      if (k === 'link') throw unsafe(name, `path goes through the symlink ${prefix}`);
      if (k === 'file') throw invalid(`tar entry ${name} is below the file ${prefix}`, { entry: name });
      if (k === undefined) {
        await mkdir(path.join(root, prefix), { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e; });
        kinds.set(prefix, 'dir');
      }
    }
  };

  for (;;) {
    const h = await reader.read(512);
    if (h === null || h.every((b) => b === 0)) break; // end of archive
    checkHeader(h);
    if (++entries > maxEntries) throw new ThawError('TARBALL_TOO_LARGE', `tarball has more than ${maxEntries} entries`, { details: { maxEntries } });
    const type = h[156] === 0 ? '0' : String.fromCharCode(h[156]!);
    let size = num(h, 124, 12, 'size');

    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      if (size > META_MAX) throw invalid(`tar metadata entry of ${size} bytes is too large`);
      const data = await reader.need(Math.ceil(size / 512) * 512);
      const body = data.subarray(0, size);
      if (type === 'L') longName = cstr(body, 0, body.length);
      else if (type === 'K') longLink = cstr(body, 0, body.length);
      else if (type === 'x') pax = { ...pax, ...parsePax(body) };
      continue; // global pax headers ('g') are ignored
    }

    const magic = h.subarray(257, 263).toString('latin1');
    const prefix = magic === 'ustar\0' ? cstr(h, 345, 155) : '';
    const name = pax.path ?? longName ?? (prefix ? `${prefix}/${cstr(h, 0, 100)}` : cstr(h, 0, 100));
    const linkname = pax.linkpath ?? longLink ?? cstr(h, 157, 100);
    if (pax.size !== undefined) {
      if (!/^\d+$/.test(pax.size)) throw invalid('bad pax size');
      size = Number(pax.size);
    }
    longName = longLink = undefined;
    pax = {};
    const mode = num(h, 100, 8, 'mode') & 0o777;
    const padded = Math.ceil(size / 512) * 512;

    const rel = safeRel(name);
    if (type === '3' || type === '4' || type === '6') throw unsafe(name, 'device and fifo entries are not allowed');
    if (!['0', '7', '5', '2', '1'].includes(type)) throw unsafe(name, `unsupported entry type '${type}'`);
    if (rel === '') {
      if (type !== '5') throw unsafe(name, 'root entry is not a folder');
      await reader.need(padded);
      continue;
    }
    await ensureParents(rel, name);
    const full = path.join(root, rel);
    const existing = kinds.get(rel);
    if (existing === 'dir' && type !== '5') throw invalid(`tar entry ${name} replaces a folder`, { entry: name });
    if (existing === 'file' || existing === 'link') await rm(full, { force: true });

    if (type === '5') {
      if (existing !== 'dir') await mkdir(full, { mode: 0o755 });
      kinds.set(rel, 'dir');
      dirModes.set(rel, mode);
      await reader.need(padded);
    } else if (type === '1') {
      // A hard link: its target must be a regular file this archive already wrote (so it is inside the root and not a symlink).
      let target: string | null = null;
      try {
        target = safeRel(linkname);
      } catch {
        target = null; // absolute, '..', NUL
      }
      if (target === null || kinds.get(target) !== 'file') throw unsafe(name, `hard link target ${linkname} is not a file earlier in the archive`);
      await link(path.join(root, target), full);
      kinds.set(rel, 'file');
      files++;
      await reader.need(padded);
    } else if (type === '2') {
      if (linkname === '') throw invalid(`symlink ${name} has no target`, { entry: name });
      if (path.posix.isAbsolute(linkname)) throw unsafe(name, `symlink target ${linkname} is absolute`);
      const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(rel), linkname));
      if (resolved === '..' || resolved.startsWith('../')) throw unsafe(name, `symlink target ${linkname} is outside the root`);
      await symlink(linkname, full);
      kinds.set(rel, 'link');
      links.push({ rel, name });
      await reader.need(padded);
    } else {
      if (bytes + size > maxBytes) throw tooLarge(`tarball contents are over the ${maxBytes} byte limit`, maxBytes);
      const fh = await open(full, 'wx', 0o600);
      try {
        for (let left = size, c: Buffer; left > 0; left -= c.length) await fh.write((c = await reader.chunk(left)));
        await fh.chmod(mode);
      } finally {
        await fh.close();
      }
      await reader.need(padded - size);
      kinds.set(rel, 'file');
      files++;
      bytes += size;
    }
  }
  await reader.drain();

  // Lexical checks above cannot see chains through other symlinks; resolve for real.
  for (const l of links) if (await symlinkEscapes(root, l.rel)) throw unsafe(l.name, 'symlink resolves outside the root');
  const dirs = [...dirModes.entries()].sort((a, b) => b[0].length - a[0].length);
  for (const [rel, mode] of dirs) await chmod(path.join(root, rel), mode | 0o700);
  return { files, bytes };
}

function classify(err: unknown): ThawError {
  if (err instanceof ThawError) return err;
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.code === 'string' && e.code.startsWith('Z_')) return new ThawError('TARBALL_INVALID', `not a valid gzip stream: ${e.message}`, { cause: err });
  if (e?.syscall) return new ThawError('INTERNAL', `extracting the tarball failed: ${e.message}`, { cause: err });
  return new ThawError('TARBALL_INVALID', `reading the tarball failed: ${e?.message ?? String(err)}`, { cause: err });
}

export async function extractAppTarball(
  input: Buffer | NodeJS.ReadableStream,
  dest: string,
  opts: ExtractOpts,
): Promise<{ files: number; bytes: number }> {
  const target = path.resolve(dest);
  const existing = await lstat(target).catch(() => null);
  if (existing && !(existing.isDirectory() && (await readdir(target)).length === 0)) {
    throw new ThawError('INTERNAL', `extract destination ${target} already exists`, { details: { dest: target } });
  }
  await mkdir(path.dirname(target), { recursive: true });
  const tmp = await mkdtemp(path.join(path.dirname(target), `.${path.basename(target)}.extract-`));
  try {
    const { gzip, stream } = await sniff(limit(inputChunks(input), opts.maxBytes, 'compressed'));
    const tar = limit(gzip ? gunzip(stream) : stream, opts.maxBytes, 'uncompressed');
    const it = tar[Symbol.asyncIterator]();
    let res: { files: number; bytes: number };
    try {
      res = await extractTar(new ByteReader(it), tmp, opts.maxBytes, opts.maxEntries ?? 100_000);
    } finally {
      await it.return?.(undefined).catch(() => {}); // stop gunzip and upstream reads on early exit
    }
    await chmod(tmp, 0o755);
    await rename(tmp, target);
    return res;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw classify(err);
  }
}

/** Kept here for callers of the old home. */
export { packAppDir } from './pack.ts';
