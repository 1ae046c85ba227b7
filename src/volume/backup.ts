// The backup format of a volume file: one member `volume.ext4` in
// `tar --sparse --format=posix | zstd -T0 -3`. GNU tar finds the file's holes
// with SEEK_DATA/SEEK_HOLE, so only the blocks the filesystem allocated are
// read and packed (a 1 GiB volume holding 10 MB packs about 10 MB of input),
// and extracting makes the holes again. A packed backup is a file beside the
// volume (packing is the consistent copy; uploading it can come later) named by
// its SHA-256, which is checked before anything is unpacked:
// VOLUME_BACKUP_CORRUPT when the bytes are not the ones recorded.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { sha256File } from '../seed/files.ts';

/** The one archive member. */
export const BACKUP_MEMBER = 'volume.ext4';
const STDERR_TAIL = 2048;

/** A packed backup: its bytes (compressed), their SHA-256, and the volume file's apparent size. */
export interface PackedBackup {
  sha256: string;
  bytes: number;
  apparentBytes: number;
  ms: number;
}

interface Ran { code: number | null; stderr: string; spawnError?: Error }

function started(child: ChildProcess): Promise<Ran> {
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr = (stderr + s).slice(-STDERR_TAIL); });
  return new Promise((resolve) => {
    child.once('error', (err) => resolve({ code: null, stderr, spawnError: err }));
    child.once('close', (code) => resolve({ code, stderr }));
  });
}

/** `a | b`, both supervised: resolves when both exited 0; rejects with which one failed and its stderr. */
async function pipeTools(a: [string, string[]], b: [string, string[]], what: string, code: 'INTERNAL' | 'VOLUME_BACKUP_CORRUPT'): Promise<void> {
  const first = spawn(a[0], a[1], { stdio: ['ignore', 'pipe', 'pipe'] });
  const second = spawn(b[0], b[1], { stdio: [first.stdout!, 'ignore', 'pipe'] });
  // The second tool holds its own end of the pipe; ours would keep the first's 'close' from firing.
  first.stdout!.destroy();
  const [ra, rb] = await Promise.all([started(first), started(second)]);
  for (const [name, r] of [[a[0], ra], [b[0], rb]] as const) {
    if (r.spawnError) throw new ThawError('HOST_MISSING_TOOL', `cannot run ${name}: ${r.spawnError.message}`, { cause: r.spawnError });
  }
  // The second tool's failure explains a broken pipe in the first.
  for (const [name, r] of [[b[0], rb], [a[0], ra]] as const) {
    if (r.code !== 0) throw new ThawError(code, `${what}: ${name} exited ${r.code}: ${r.stderr.trim()}`, { details: { stderr: r.stderr } });
  }
}

/**
 * Pack the (unmounted, unattached) volume file into `out` (written beside it as
 * `out.partial-*`, renamed into place). Resolves with its size and SHA-256.
 */
export async function packVolumeFile(file: string, out: string): Promise<PackedBackup> {
  const t0 = performance.now();
  const st = await stat(file).catch((err) => {
    throw new ThawError('VOLUME_NOT_FOUND', `no volume file ${file} to back up`, { cause: err });
  });
  const tmp = `${out}.partial-${randomBytes(4).toString('hex')}`;
  try {
    await pipeTools(
      ['tar', ['--sparse', '--format=posix', '--numeric-owner', '--owner=0', '--group=0', `--transform=s,.*,${BACKUP_MEMBER},`, '-cf', '-', '-C', path.dirname(file), path.basename(file)]],
      ['zstd', ['-T0', '-3', '-q', '-f', '-o', tmp]],
      `packing volume ${path.basename(file)}`,
      'INTERNAL',
    );
    const [sha256, packed] = await Promise.all([sha256File(tmp), stat(tmp)]);
    await rename(tmp, out);
    return { sha256, bytes: packed.size, apparentBytes: st.size, ms: Math.round(performance.now() - t0) };
  } finally {
    await rm(tmp, { force: true });
  }
}

/** VOLUME_BACKUP_CORRUPT unless the packed file's SHA-256 is `sha256`. */
export async function verifyPacked(packed: string, sha256: string): Promise<void> {
  const got = await sha256File(packed);
  if (got !== sha256) {
    throw new ThawError('VOLUME_BACKUP_CORRUPT', `volume backup ${path.basename(packed)} has SHA-256 ${got.slice(0, 12)}…, recorded ${sha256.slice(0, 12)}…: refused`, { details: { sha256: got, expected: sha256 } });
  }
}

/**
 * Verify a packed backup against its recorded SHA-256, unpack it beside `dest`
 * and rename the volume file into place (replacing what was there). A corrupt or
 * truncated backup is VOLUME_BACKUP_CORRUPT and leaves `dest` untouched.
 */
export async function unpackVolumeFile(packed: string, sha256: string, dest: string): Promise<{ apparentBytes: number; ms: number }> {
  const t0 = performance.now();
  await verifyPacked(packed, sha256);
  await mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.unpack-${randomBytes(4).toString('hex')}`;
  await mkdir(tmp, { mode: 0o700 });
  try {
    await pipeTools(
      ['zstd', ['-d', '-q', '-c', packed]],
      // --ignore-zeros: read to the end, so zstd never writes its tail into a closed pipe.
      ['tar', ['-x', '-f', '-', '--ignore-zeros', '-C', tmp, '--no-same-owner', '--no-same-permissions', '--no-wildcards', BACKUP_MEMBER]],
      'volume backup is corrupt or truncated',
      'VOLUME_BACKUP_CORRUPT',
    );
    const file = path.join(tmp, BACKUP_MEMBER);
    const st = await lstat(file).catch(() => null);
    if (!st?.isFile() || st.nlink !== 1) throw new ThawError('VOLUME_BACKUP_CORRUPT', `volume backup lacks a plain ${BACKUP_MEMBER}`);
    await rename(file, dest);
    return { apparentBytes: st.size, ms: Math.round(performance.now() - t0) };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
