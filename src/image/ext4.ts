// One path from a root folder to a disk image: a sparse raw ext4 file made by
// `mkfs.ext4 -d` (no loop mounts), for Node folders and OCI images alike.
// Before that, the paths the platform manages in every guest are checked:
// an image may hold them as folders (or not at all), never as anything else.
import { lstat, open } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { run, tail, treeBytes } from './exec.ts';

/** Mounted or created at boot by the guest agent (docs/ARCHITECTURE.md, "Paths the platform manages"). */
export const PLATFORM_DIRS = ['/proc', '/sys', '/dev', '/run', '/tmp', '/var/lib/thaw'] as const;

/** IMAGE_PATH_CONFLICT when the root holds a platform-managed path as something other than a folder. */
export async function checkPlatformPaths(root: string): Promise<void> {
  for (const p of PLATFORM_DIRS) {
    const st = await lstat(path.join(root, p)).catch(() => null);
    if (st && !st.isDirectory()) {
      throw new ThawError('IMAGE_PATH_CONFLICT', `the image has ${p} as a ${st.isSymbolicLink() ? 'symlink' : 'file'}; Thaw mounts a folder there at boot`, { details: { path: p } });
    }
  }
}

/** Write `root` as a sparse ext4 image of diskMiB at `out` (which must not exist). APP_TOO_LARGE when it does not fit. */
export async function makeExt4(root: string, out: string, diskMiB: number, log: (l: string) => void = () => {}): Promise<void> {
  await checkPlatformPaths(root);
  const diskBytes = diskMiB * 1024 * 1024;
  const fh = await open(out, 'wx', 0o644);
  try {
    await fh.truncate(diskBytes);
  } finally {
    await fh.close();
  }
  log(`mkfs.ext4 ${diskMiB} MiB`);
  const mk = await run('mkfs.ext4', ['-q', '-F', '-L', 'thaw-root', '-E', 'root_owner=0:0', '-d', root, out]);
  if (mk.code === 0) return;
  const noSpace = /could not allocate|no space|no free space|not enough space|ENOSPC/i.test(mk.stderr);
  const contentBytes = await treeBytes(root);
  if (noSpace || contentBytes >= diskBytes * 0.9) {
    throw new ThawError('APP_TOO_LARGE', `the root (${contentBytes} bytes) does not fit a ${diskMiB} MiB disk`, {
      details: { contentBytes, diskMiB, stderr: tail(mk.stderr, 5) },
    });
  }
  throw new ThawError('IMAGE_BUILD_FAILED', `mkfs.ext4 failed (exit ${mk.code}): ${tail(mk.stderr)}`, { details: { stderr: tail(mk.stderr, 40) } });
}
