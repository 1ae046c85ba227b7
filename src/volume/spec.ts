// What a volume is, as the user names it: `--volume /data[:SIZE]`. A volume is
// a per-app ext4 disk mounted at an absolute path in the guest after the gate
// and unmounted before every pause, so no seed ever holds a page of it.
import path from 'node:path';
import { ThawError } from '../errors.ts';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const DEFAULT_VOLUME_BYTES = GiB;
/** ext4 with a journal needs a few MiB; beyond 1 TiB a sparse file is still fine but untested. */
export const MIN_VOLUME_BYTES = 16 * MiB;
export const MAX_VOLUME_BYTES = 1024 * GiB;

/**
 * Paths the platform manages or the guest needs to run: a volume may be none
 * of them, hold one (e.g. /var holds /var/lib/thaw) or lie inside one. Debian's
 * aliases (/var/run and /var/lock are links into /run) are listed too; the agent
 * also refuses a mount path that leads through any symlink in the guest.
 */
export const SYSTEM_PATHS = ['/proc', '/sys', '/dev', '/run', '/var/run', '/var/lock', '/tmp', '/var/tmp', '/etc', '/var/lib/thaw', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/usr', '/boot'] as const;

export interface VolumeSpec {
  /** Absolute, normalised mount path in the guest. */
  path: string;
  /** Size of the ext4 filesystem in bytes (a multiple of 1 MiB). */
  sizeBytes: number;
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, m: MiB, mib: MiB, g: GiB, gib: GiB, t: 1024 * GiB, tib: 1024 * GiB };

/** "1GiB", "512MiB", "2G", "1073741824" -> bytes, rounded up to whole MiB. VOLUME_INVALID otherwise or out of range. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new ThawError('VOLUME_INVALID', `volume size "${text}" is not a size like 1GiB, 512MiB or 2G`);
  const bytes = Math.ceil((Number(m[1]) * unit) / MiB) * MiB;
  return checkSize(bytes);
}

export function checkSize(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_VOLUME_BYTES || bytes > MAX_VOLUME_BYTES || bytes % MiB !== 0) {
    throw new ThawError('VOLUME_INVALID', `volume size ${bytes} bytes is out of range: a whole number of MiB from 16MiB to 1TiB`);
  }
  return bytes;
}

const within = (a: string, b: string): boolean => a === b || a.startsWith(`${b}/`);

/** Linux's NAME_MAX and a bound on the whole path, in bytes. */
const NAME_MAX = 255;
const PATH_MAX_BYTES = 255;

/**
 * An absolute guest path that is not `/` and does not overlap a system path; returned normalised.
 * Refused (VOLUME_INVALID): relative paths, `.`/`..` components, whitespace, control characters
 * and backslashes (the kernel escapes them in /proc/mounts, where the agent looks the mount up),
 * text not in Unicode NFC (two spellings of one folder), more than 255 bytes, a component of more
 * than NAME_MAX bytes.
 */
export function checkVolumePath(p: string): string {
  const bad = (why: string) => new ThawError('VOLUME_INVALID', `volume path ${JSON.stringify(String(p).slice(0, 80))} ${why}`);
  if (typeof p !== 'string' || !p.startsWith('/')) throw bad('must be an absolute path such as /data');
  if (Buffer.byteLength(p) > PATH_MAX_BYTES) throw bad(`is longer than ${PATH_MAX_BYTES} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\s\\\u0000-\u001f\u007f-\u009f\u2028\u2029\ufeff]/u.test(p)) throw bad('must not contain whitespace, control characters or backslashes');
  if (p !== p.normalize('NFC')) throw bad('is not in Unicode NFC form');
  const parts = p.split('/');
  if (parts.some((c) => c === '..' || c === '.')) throw bad('must not contain . or .. components');
  if (parts.some((c) => Buffer.byteLength(c) > NAME_MAX)) throw bad(`has a component longer than ${NAME_MAX} bytes`);
  const norm = path.posix.normalize(p).replace(/\/+$/, '');
  if (norm === '') throw new ThawError('VOLUME_INVALID', 'the volume cannot be mounted at /: pick a folder such as /data');
  const hit = SYSTEM_PATHS.find((s) => within(norm, s) || within(s, norm));
  if (hit) throw new ThawError('VOLUME_INVALID', `volume path ${norm} overlaps ${hit}, which Thaw or the guest manages`);
  return norm;
}

/**
 * The volume may lie inside the app's working folder (/app/data) but must not be it or hold it:
 * mounted there, it would hide the app's own files. VOLUME_INVALID otherwise.
 */
export function checkVolumeAgainstCwd(volumePath: string, cwd: string): void {
  const c = path.posix.normalize(cwd).replace(/\/+$/, '') || '/';
  if (within(c, volumePath)) throw new ThawError('VOLUME_INVALID', `volume path ${volumePath} would hide the app's working folder ${c}: mount it inside, e.g. ${c}/data`);
}

/** `/data` or `/data:SIZE` (the --volume flag). */
export function parseVolumeArg(arg: string): VolumeSpec {
  const i = arg.lastIndexOf(':');
  const p = i > 0 ? arg.slice(0, i) : arg;
  const size = i > 0 ? parseSize(arg.slice(i + 1)) : DEFAULT_VOLUME_BYTES;
  return { path: checkVolumePath(p), sizeBytes: size };
}

export function formatBytes(n: number): string {
  if (n % GiB === 0) return `${n / GiB}GiB`;
  if (n % MiB === 0) return `${n / MiB}MiB`;
  return `${n}B`;
}
