// Seed packing for replication: a seed folder <-> one stream of
// `tar --sparse --format=posix | zstd`. Both directions stream through two
// supervised child processes (never the whole seed in memory); holes in
// mem.ram and disk.img stay holes on both ends. Unpacking lands in
// `DEST.partial-<random>`, is verified against the manifest, made read-only,
// then renamed into place: a failed unpack leaves nothing behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ThawError, asThawError, isThawError } from '../errors.ts';
import { UndoStack } from '../undo.ts';
import { readManifest, sha256File, verifySeedFull } from './files.ts';
import { SEED_FILES, type Manifest } from './manifest.ts';

/** Archive members, in order: the manifest first so a reader learns it early. */
export const SEED_MEMBERS = ['manifest.json', ...SEED_FILES] as const;
const STDERR_TAIL = 2048;

export interface PackResult { bytesIn: number; bytesOut: number; ms: number }
export interface UnpackResult { manifest: Manifest; bytes: number; ms: number }
export interface UnpackOptions {
  /** Refuse archives whose uncompressed tar stream exceeds this many bytes (SEED_CORRUPT). */
  maxBytes?: number;
  /** Called with the running count of compressed bytes read. */
  onProgress?: (bytes: number) => void;
  /** Expected SHA-256 of manifest.json (e.g. from object metadata); mismatch is SEED_CORRUPT. */
  manifestSha256?: string;
}

interface Tool { name: string; child: ChildProcess; stderr: string; killed: boolean; exit: Promise<void> }

class ToolFailed extends Error {
  constructor(readonly tool: Tool, readonly code: number | null, readonly signal: NodeJS.Signals | null, readonly spawnError?: Error) {
    super(spawnError ? `${tool.name}: ${spawnError.message}` : `${tool.name} exited with ${code ?? signal}: ${tool.stderr.trim()}`);
  }
}

/** Child processes and pipes of one pack/unpack; the first failure kills everything. */
class Supervisor {
  readonly tools: Tool[] = [];
  private readonly waits: Promise<unknown>[] = [];
  firstError: unknown;
  failed = false;

  /** `stdin`: another tool's stdout to read directly (a pipe between the two, no copy through Node). */
  spawn(name: string, args: string[], stdin?: Readable): Tool {
    const child = spawn(name, args, { stdio: [stdin ?? 'pipe', 'pipe', 'pipe'] });
    const tool: Tool = { name, child, stderr: '', killed: false, exit: Promise.resolve() };
    child.stderr!.setEncoding('utf8').on('data', (s: string) => { tool.stderr = (tool.stderr + s).slice(-STDERR_TAIL); });
    tool.exit = new Promise<void>((resolve) => {
      child.once('error', (err) => { this.fail(new ToolFailed(tool, null, null, err)); resolve(); });
      child.once('close', (code, signal) => {
        if (code !== 0 && !tool.killed) this.fail(new ToolFailed(tool, code, signal));
        resolve();
      });
    });
    this.tools.push(tool);
    this.waits.push(tool.exit);
    return tool;
  }

  watch(p: Promise<unknown>): void {
    this.waits.push(p.catch((err) => this.fail(err)));
  }

  fail(err: unknown): void {
    if (!this.failed) { this.failed = true; this.firstError = err; }
    for (const t of this.tools) {
      if (t.child.exitCode === null && t.child.signalCode === null && t.child.pid !== undefined) {
        t.killed = true;
        t.child.kill('SIGKILL');
      }
    }
  }

  exited(): Promise<unknown> { return Promise.all(this.tools.map((t) => t.exit)); }
  settled(): Promise<unknown> { return Promise.allSettled(this.waits); }
  anyStderr(re: RegExp): boolean { return this.tools.some((t) => re.test(t.stderr)); }
}

function counter(onBytes: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try { onBytes(chunk.length); } catch (err) { cb(err as Error); return; }
      cb(null, chunk);
    },
  });
}

const NO_SPACE = /No space left on device|ENOSPC/;
const PIPE_BROKEN = new Set(['EPIPE', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

function diskFull(where: string, cause?: unknown): ThawError {
  return new ThawError('INTERNAL', `disk full while writing ${where}`, { cause, details: { reason: 'disk full', errno: 'ENOSPC' } });
}

function toolError(err: unknown): ThawError | undefined {
  if (!(err instanceof ToolFailed)) return undefined;
  if (err.spawnError) return new ThawError('HOST_MISSING_TOOL', `cannot run ${err.tool.name}: ${err.spawnError.message}`, { cause: err.spawnError });
  return undefined;
}

/**
 * Stream a seed folder as `tar --sparse --format=posix | zstd -T0 -3`.
 * `done` settles once both processes exited; on failure it rejects and the
 * stream is destroyed with the same ThawError (a consumer never sees a clean
 * end of a broken archive). Destroying `stream` aborts the pack.
 */
export function packSeed(seedDir: string, opts: { onProgress?: (bytes: number) => void } = {}): { stream: Readable; done: Promise<PackResult> } {
  const t0 = performance.now();
  const sup = new Supervisor();
  let bytesIn = 0;
  let bytesOut = 0;
  const tar = sup.spawn('tar', ['--sparse', '--format=posix', '--numeric-owner', '--owner=0', '--group=0', '-cf', '-', '-C', seedDir, ...SEED_MEMBERS]);
  const zstd = sup.spawn('zstd', ['-T0', '-3', '-q', '-c']);

  const classify = (): ThawError => {
    const err = sup.firstError;
    if (isThawError(err)) return err;
    const spawnErr = toolError(err);
    if (spawnErr) return spawnErr;
    if (err instanceof ToolFailed) {
      if (err.tool === tar && /Cannot stat|Cannot open/.test(tar.stderr)) {
        return new ThawError('SEED_MISSING', `seed ${seedDir} is incomplete: ${tar.stderr.trim()}`, { details: { stderr: tar.stderr } });
      }
      return new ThawError('INTERNAL', `packing seed ${seedDir} failed: ${err.message}`, { cause: err, details: { stderr: err.tool.stderr } });
    }
    return new ThawError('INTERNAL', `packing seed ${seedDir} aborted: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  };

  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytesOut += chunk.length;
      opts.onProgress?.(bytesOut);
      cb(null, chunk);
    },
    // Only end the stream once both tools exited cleanly.
    flush(cb) {
      void sup.exited().then(() => cb(sup.failed ? classify() : null));
    },
  });
  sup.watch(pipeline(tar.child.stdout!, counter((n) => { bytesIn += n; }), zstd.child.stdin!));
  sup.watch(pipeline(zstd.child.stdout!, stream));

  const done = sup.settled().then(() => {
    if (sup.failed) {
      const err = classify();
      stream.destroy(err);
      throw err;
    }
    return { bytesIn, bytesOut, ms: Math.round(performance.now() - t0) };
  });
  done.catch(() => {}); // the caller may only watch the stream
  return { stream, done };
}

async function extract(input: Readable, dir: string, opts: UnpackOptions): Promise<number> {
  const sup = new Supervisor();
  let bytes = 0;
  let tarBytes = 0;
  let inputError: unknown;
  input.once('error', (err) => { inputError = err; });
  const zstd = sup.spawn('zstd', ['-d', '-q', '-c']);
  // --ignore-zeros: tar reads to the end of its input instead of stopping at the
  // end-of-archive blocks, so zstd never writes the trailing padding into a closed pipe.
  const tar = sup.spawn('tar', ['-x', '-f', '-', '--ignore-zeros', '-C', dir, '--no-same-owner', '--no-same-permissions', '--no-wildcards', ...SEED_MEMBERS], opts.maxBytes === undefined ? zstd.child.stdout! : undefined);
  sup.watch(pipeline(input, counter((n) => { bytes += n; opts.onProgress?.(bytes); }), zstd.child.stdin!));
  if (opts.maxBytes === undefined) {
    // zstd feeds tar directly: the decompressed stream (the seed's data) never passes through
    // Node. tar holds its own copy of the pipe; closing ours lets zstd see a broken pipe when tar quits.
    zstd.child.stdout!.destroy();
  } else {
    const max = opts.maxBytes;
    const limit = counter((n) => {
      tarBytes += n;
      if (tarBytes > max) throw new ThawError('SEED_CORRUPT', `seed archive is larger than the limit of ${max} bytes`);
    });
    sup.watch(pipeline(zstd.child.stdout!, limit, tar.child.stdin!));
  }
  await sup.settled();
  if (!sup.failed) return bytes;

  const err = sup.firstError;
  if (sup.anyStderr(NO_SPACE)) throw diskFull(dir, err);
  if (isThawError(err)) throw err;
  // The input's own failure (object storage dropped the connection) explains it best, but
  // a broken pipe on the input is only the pipeline tearing down after a tool quit.
  if (inputError !== undefined && !PIPE_BROKEN.has((inputError as NodeJS.ErrnoException).code ?? '')) throw asThawError(inputError, 'INTERNAL');
  const spawnErr = toolError(err);
  if (spawnErr) throw spawnErr;
  if (err instanceof ToolFailed) {
    if (err.tool === tar && /Permission denied|Read-only file system/.test(tar.stderr)) {
      throw new ThawError('INTERNAL', `cannot write seed into ${dir}: ${tar.stderr.trim()}`, { cause: err });
    }
    throw new ThawError('SEED_CORRUPT', `seed archive is corrupt or truncated: ${err.message}`, { cause: err, details: { stderr: err.tool.stderr } });
  }
  // A pipe between the tools broke (tar or zstd quit first): the archive made a tool give up.
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'EPIPE') {
    throw new ThawError('SEED_CORRUPT', `seed archive is corrupt or truncated: ${tar.stderr.trim() || zstd.stderr.trim() || (err as Error).message}`, { cause: err });
  }
  throw new ThawError('INTERNAL', `unpacking seed failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/** Every member must be a plain file with one link (no symlink, hard link or folder tricks). */
async function checkMembers(dir: string): Promise<void> {
  for (const name of SEED_MEMBERS) {
    const st = await lstat(path.join(dir, name)).catch((err) => {
      throw new ThawError('SEED_CORRUPT', `seed archive lacks ${name}`, { cause: err });
    });
    if (!st.isFile() || st.nlink !== 1) throw new ThawError('SEED_CORRUPT', `seed archive member ${name} is not a plain file`);
  }
}

/**
 * Unpack a packed seed stream into `destDir` (which must not exist yet).
 * The input stream is consumed and, on failure, destroyed.
 */
export async function unpackSeed(input: Readable, destDir: string, opts: UnpackOptions = {}): Promise<UnpackResult> {
  const t0 = performance.now();
  try {
    return await UndoStack.run(async (undo) => {
      const exists = await lstat(destDir).then(() => true, () => false);
      if (exists) throw new ThawError('INTERNAL', `seed folder ${destDir} already exists`);
      await mkdir(path.dirname(destDir), { recursive: true });
      const tmp = `${destDir}.partial-${randomBytes(6).toString('hex')}`;
      await mkdir(tmp, { mode: 0o700 });
      undo.push('remove partial seed folder', () => rm(tmp, { recursive: true, force: true }));

      const bytes = await extract(input, tmp, opts);
      await checkMembers(tmp);
      const manifest = await readManifest(tmp).catch((err) => {
        throw isThawError(err, 'SEED_CORRUPT') ? err : new ThawError('SEED_CORRUPT', 'seed archive has no readable manifest', { cause: err });
      });
      if (opts.manifestSha256 !== undefined) {
        const got = await sha256File(path.join(tmp, 'manifest.json'));
        if (got !== opts.manifestSha256) throw new ThawError('SEED_CORRUPT', `manifest SHA-256 ${got} does not match expected ${opts.manifestSha256}`);
      }
      await verifySeedFull(tmp, manifest);
      for (const name of SEED_MEMBERS) await chmod(path.join(tmp, name), 0o444);
      await chmod(tmp, 0o755);
      await rename(tmp, destDir).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOTEMPTY' || err.code === 'EEXIST') throw new ThawError('INTERNAL', `seed folder ${destDir} already exists`, { cause: err });
        throw err;
      });
      return { manifest, bytes, ms: Math.round(performance.now() - t0) };
    });
  } catch (err) {
    input.destroy();
    if ((err as NodeJS.ErrnoException)?.code === 'ENOSPC') throw diskFull(destDir, err);
    throw asThawError(err, 'INTERNAL');
  }
}
