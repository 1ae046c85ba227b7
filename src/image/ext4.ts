// One path from a root folder to a disk image: a sparse raw ext4 file made by
// `mkfs.ext4 -d` (no loop mounts), for Node folders and OCI images alike.
// Before that, the paths the platform manages in every guest are checked:
// an image may hold them as folders (or not at all), never as anything else.
import { lstat, open, readdir } from 'node:fs/promises';
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

/** How much of an ext4 filesystem a tree takes: 4 KiB blocks (hard links once) and inodes. */
export interface TreeUsage { blocks: number; inodes: number }

export async function treeUsage(root: string): Promise<TreeUsage> {
  const seen = new Set<number>();
  let blocks = 0;
  let inodes = 0;
  const stack = [root];
  while (stack.length > 0) {
    const d = stack.pop()!;
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = await lstat(p);
      if (st.nlink > 1 && !st.isDirectory()) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      inodes++;
      if (e.isDirectory()) stack.push(p);
      if (!e.isSymbolicLink() || st.size >= 60) blocks += Math.max(1, Math.ceil(st.size / 4096)) + (st.size > 48 * 4096 ? Math.ceil(st.size / (4096 * 1024)) : 0);
    }
  }
  return { blocks, inodes: inodes + 1 };
}

/** Free space every image gets on top of its content, for what the app writes at run time. */
export const DISK_HEADROOM_MIB = 256;

/**
 * The disk size for a tree: its blocks and inode tables, plus 10%, the
 * journal and DISK_HEADROOM_MIB, rounded up to 64 MiB. APP_TOO_LARGE (naming
 * `thaw up --max-disk-mib`) when that is over maxDiskMiB.
 */
export function diskMiBFor(u: TreeUsage, maxDiskMiB: number): { diskMiB: number; inodes: number } {
  const inodes = Math.ceil(u.inodes * 1.25) + 4096;
  const bytes = u.blocks * 4096 * 1.1 + inodes * 256 + 64 * 1024 * 1024 + DISK_HEADROOM_MIB * 1024 * 1024;
  const diskMiB = Math.ceil(bytes / (64 * 1024 * 1024)) * 64;
  if (diskMiB > maxDiskMiB) {
    throw new ThawError('APP_TOO_LARGE', `the image needs a ${diskMiB} MiB disk (${u.blocks * 4} KiB of files in ${u.inodes} inodes plus ${DISK_HEADROOM_MIB} MiB free), over the ${maxDiskMiB} MiB limit; raise it with thaw up --max-disk-mib`, {
      details: { diskMiB, maxDiskMiB, contentBytes: u.blocks * 4096, option: '--max-disk-mib' },
    });
  }
  return { diskMiB, inodes };
}

/**
 * Write `root` as a sparse ext4 image at `out` (which must not exist), sized
 * from its content (diskMiBFor) up to maxDiskMiB. Returns the size chosen.
 * APP_TOO_LARGE when it does not fit.
 */
export async function makeExt4(root: string, out: string, maxDiskMiB: number, log: (l: string) => void = () => {}): Promise<{ diskMiB: number }> {
  await checkPlatformPaths(root);
  const { diskMiB, inodes } = diskMiBFor(await treeUsage(root), maxDiskMiB);
  const diskBytes = diskMiB * 1024 * 1024;
  const fh = await open(out, 'wx', 0o644);
  try {
    await fh.truncate(diskBytes);
  } finally {
    await fh.close();
  }
  log(`mkfs.ext4 ${diskMiB} MiB (limit ${maxDiskMiB} MiB)`);
  const mk = await run('mkfs.ext4', ['-q', '-F', '-L', 'thaw-root', '-N', String(inodes), '-E', 'root_owner=0:0', '-d', root, out]);
  if (mk.code === 0) return { diskMiB };
  const noSpace = /could not allocate|no space|no free space|not enough space|ENOSPC/i.test(mk.stderr);
  const contentBytes = await treeBytes(root);
  if (noSpace || contentBytes >= diskBytes * 0.9) {
    throw new ThawError('APP_TOO_LARGE', `the root (${contentBytes} bytes) does not fit a ${diskMiB} MiB disk`, {
      details: { contentBytes, diskMiB, stderr: tail(mk.stderr, 5) },
    });
  }
  throw new ThawError('IMAGE_BUILD_FAILED', `mkfs.ext4 failed (exit ${mk.code}): ${tail(mk.stderr)}`, { details: { stderr: tail(mk.stderr, 40) } });
}
