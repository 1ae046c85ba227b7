// What the fake Firecracker sees of its host: its files and its network devices.
// Rules (each a 400 fault where the fake applies it):
// - J1 Under the jailer, Firecracker lives in its chroot: "use pivot_root() to
//   switch the old system root mount point with a new one base in chroot_dir"
//   (docs/jailer.md, "Jailer Operation"), so `/x` is `<chroot_dir>/x` and
//   nothing outside exists. The fake cannot really chroot (it is a Node script
//   that needs the repository), so with FAKE_CHROOT set it maps absolute paths
//   into that folder and refuses any path that leaves it (`..`, or a symlink
//   pointing out), as the real chroot would fail to find it.
//   The same holds for the mount jail without the jailer (FAKE_VISIBLE: only
//   that folder and /usr exist).
// - J2 "the user which Firecracker runs as must have both read and write
//   permissions to the backing file for a RW block device" (same document,
//   "Observations"): the fake runs as the uid the jailer (or setpriv) gave it
//   and checks access with that uid, so a file not handed over fails.
// - N1 `host_dev_name` names a TAP that exists in Firecracker's network
//   namespace (docs/network-setup.md creates it with `ip tuntap add ... mode
//   tap` in the namespace the VMM runs in; docs/jailer.md `--netns`). Firecracker
//   attaches with TUNSETIFF(IFF_TAP); for an unprivileged process a missing
//   device cannot be created, and a persistent TAP owned by another user is
//   refused (kernel Documentation/networking/tuntap.rst, TUNSETOWNER).
import { execFileSync } from 'node:child_process';
import { access, constants, lstat, stat } from 'node:fs/promises';
import path from 'node:path';

export class HostFault extends Error {}

const CHROOT = process.env.FAKE_CHROOT ?? '';
/** Without the jailer, the mount jail (mount-jail.ts) shows the VMM its VM folder and /usr only. */
const VISIBLE = process.env.FAKE_VISIBLE ?? '';

/**
 * J1: the path to open for a path Firecracker was given. Jailed: `/` is the jail root, which is
 * the working folder (`..` stops at `/`, as in a chroot); the result is relative to it, since the
 * folders above the jail are not the VMM's to traverse.
 */
export function at(p: string): string {
  if (CHROOT) return `.${path.posix.resolve('/', p)}`;
  if (VISIBLE && path.isAbsolute(p) && ![VISIBLE, '/usr'].some((d) => p === d || p.startsWith(`${d}/`))) throw new HostFault(`${p}: No such file or directory (not in the VMM's mount jail)`);
  return p;
}

/** J1, J2: `p` opens for reading (and writing) as this process's user. */
export async function mustAccess(p: string, what: string, write = false): Promise<string> {
  try {
    const file = at(p);
    if ((CHROOT || VISIBLE) && (await lstat(file)).isSymbolicLink()) throw new HostFault(`${p}: a symbolic link, which need not resolve inside the jail`);
    await access(file, constants.R_OK | (write ? constants.W_OK : 0));
    return file;
  } catch (err) {
    throw new HostFault(`${what}: ${(err as Error).message}`);
  }
}

/** For the log: inode and whether this process could write the file. */
export async function fileFacts(p: string): Promise<{ ino: number; writable: boolean }> {
  const file = at(p);
  const st = await stat(file);
  const writable = await access(file, constants.W_OK).then(() => true, () => false);
  return { ino: st.ino, writable };
}

/** N1: `name` is a TAP in this process's network namespace that this user may attach to. */
export function checkTap(name: string): void {
  let out: string;
  try {
    out = execFileSync('ip', ['-d', '-o', 'link', 'show', 'dev', name], { cwd: '/', encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    throw new HostFault(`Could not create the network device: Open tap device failed: ${name}: no such TAP in this network namespace`);
  }
  if (!/\btun type tap\b/.test(out)) throw new HostFault(`Could not create the network device: Open tap device failed: ${name} is not a TAP`);
  const owner = /\buser (\d+)\b/.exec(out)?.[1];
  const uid = process.getuid?.() ?? 0;
  if (owner !== undefined && uid !== 0 && Number(owner) !== uid) throw new HostFault(`Could not create the network device: Open tap device failed: ${name} belongs to uid ${owner}, not ${uid} (Operation not permitted)`);
}
