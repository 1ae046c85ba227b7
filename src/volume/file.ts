// The volume file on its node: a sparse raw ext4 image per app, checked with
// e2fsck before every attach (which also replays the journal after a crash)
// and grown with resize2fs. Never copied into a seed; only one VM attaches it
// (QEMU's image lock on the node, the store's lease across control planes).
import { execFile as execFileCb } from 'node:child_process';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ThawError } from '../errors.ts';
import { checkSize } from './spec.ts';

const execFile = promisify(execFileCb);

/** DATA/volumes/APP.ext4 on the node. */
export function volumeFile(nodeDataDir: string, app: string): string {
  return path.join(nodeDataDir, 'volumes', `${app}.ext4`);
}

export interface AttachCheck {
  /** The file did not exist and was made now. */
  created: boolean;
  /** e2fsck's exit code (0 clean, 1 errors fixed or journal replayed); null when created. */
  fsck: number | null;
  /** The filesystem was grown to the recorded size. */
  grown: boolean;
  ms: number;
}

interface ExecFailure {
  code?: number | string;
  stdout?: string;
  stderr?: string;
}

async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await execFile(cmd, args, { maxBuffer: 4 << 20 });
    return { code: 0, out: `${r.stdout}${r.stderr}` };
  } catch (err) {
    const e = err as ExecFailure;
    if (e.code === 'ENOENT') throw new ThawError('HOST_MISSING_TOOL', `${cmd} is not installed (e2fsprogs)`, { cause: err });
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** A fresh sparse ext4 image of sizeBytes, made beside `file` and renamed into place. */
export async function createVolume(file: string, sizeBytes: number): Promise<void> {
  checkSize(sizeBytes);
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.new-${process.pid}`;
  try {
    const fh = await open(tmp, 'w', 0o600);
    await fh.truncate(sizeBytes);
    await fh.close();
    const r = await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', 'thaw-volume', '-E', 'root_owner=0:0', tmp]);
    if (r.code !== 0) throw new ThawError('VOLUME_CHECK_FAILED', `mkfs.ext4 failed: ${r.out.trim().slice(-500)}`);
    await rename(tmp, file);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** e2fsck -p (preen: replays the journal, fixes what is safe); VOLUME_CHECK_FAILED when it cannot. */
export async function checkVolume(file: string, opts: { force?: boolean } = {}): Promise<number> {
  const r = await run('e2fsck', ['-p', ...(opts.force ? ['-f'] : []), file]);
  // 0: clean; 1: errors corrected; 2: corrected, "reboot" (meaningless for a file). 4+: left uncorrected or failed.
  if (r.code < 0 || r.code >= 4) throw new ThawError('VOLUME_CHECK_FAILED', `e2fsck -p ${path.basename(file)} exited ${r.code}: ${r.out.trim().slice(-500)}`, { details: { exit: r.code } });
  return r.code;
}

/** Grow the filesystem to sizeBytes (offline: no VM may have it attached). Never shrinks. */
export async function growVolume(file: string, sizeBytes: number): Promise<boolean> {
  checkSize(sizeBytes);
  const { size } = await stat(file);
  if (size >= sizeBytes) return false;
  await checkVolume(file, { force: true }); // resize2fs insists on a freshly checked filesystem
  const fh = await open(file, 'r+');
  try {
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
  const r = await run('resize2fs', [file]);
  if (r.code !== 0) throw new ThawError('VOLUME_CHECK_FAILED', `resize2fs failed: ${r.out.trim().slice(-500)}`);
  return true;
}

/**
 * The superblock says what `e2fsck -p` would decide without a check: cleanly unmounted
 * (s_state VALID, not ERROR) and no journal to replay (incompat RECOVER clear). Reading it
 * saves spawning e2fsck on every wake; anything else runs e2fsck -p.
 */
export async function cleanlyUnmounted(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const sb = Buffer.alloc(1024);
    const { bytesRead } = await fh.read(sb, 0, 1024, 1024);
    if (bytesRead < 1024 || sb.readUInt16LE(0x38) !== 0xef53) return false; // s_magic
    const state = sb.readUInt16LE(0x3a); // s_state: 1 VALID_FS, 2 ERROR_FS
    const incompat = sb.readUInt32LE(0x60); // s_feature_incompat: 0x4 RECOVER (journal needs replay)
    const maxMounts = sb.readInt16LE(0x36); // s_max_mnt_count (-1: never forced)
    const interval = sb.readUInt32LE(0x44); // s_checkinterval (0: never forced)
    return (state & 3) === 1 && (incompat & 0x4) === 0 && maxMounts <= 0 && interval === 0;
  } finally {
    await fh.close();
  }
}

/** Before an attach: make the file if missing, else check it (journal replay) and grow it to the recorded size. */
export async function prepareVolume(file: string, sizeBytes: number): Promise<AttachCheck> {
  const t0 = performance.now();
  const exists = await stat(file).then(() => true, () => false);
  if (!exists) {
    await createVolume(file, sizeBytes);
    return { created: true, fsck: null, grown: false, ms: Math.round(performance.now() - t0) };
  }
  const fsck = (await cleanlyUnmounted(file)) ? 0 : await checkVolume(file);
  const grown = await growVolume(file, sizeBytes);
  return { created: false, fsck, grown, ms: Math.round(performance.now() - t0) };
}

/** Apparent and allocated bytes of the file (it is sparse). */
export async function volumeUsage(file: string): Promise<{ bytes: number; allocated: number } | null> {
  const s = await stat(file).catch(() => null);
  return s ? { bytes: s.size, allocated: s.blocks * 512 } : null;
}

export async function deleteVolume(file: string): Promise<void> {
  await rm(file, { force: true });
}
