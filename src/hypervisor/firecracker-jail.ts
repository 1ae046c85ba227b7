// How a Firecracker VMM is started and what it sees (issue 11).
//
// Two ways, one layout. Firecracker resolves every path of its API in one
// folder, its "work" folder, where the driver places the VM's files first:
//   vmlinux, initrd            the guest assets (hard link, else a copy; read-only)
//   disk.raw                   the VM's own raw disk (the VM folder's; uid:gid)
//   volume.raw                 the app's volume (a hard link: the same file; uid:gid)
//   seed-state.bin, seed-mem.ram  a thaw's seed (hard link, else a copy; root, 0444)
//   fc.sock, vsock.sock        sockets Firecracker creates
// - With the jailer (FirecrackerOptions.jailer, and the VM has a VMM uid): the
//   work folder is the jail's root `<VM folder>/jail/firecracker/<id>/root`
//   (docs/jailer.md: the jailer copies the binary in, mknods /dev/kvm and
//   /dev/net/tun, chowns the root to uid:gid, joins `--netns`, pivot_roots and
//   drops to uid:gid; its API socket is `/fc.sock` inside). destroy() removes
//   it with the VM folder.
// - Without it: the VM folder itself, under the same jail as QEMU (jail.ts):
//   nsenter into the VM's namespace, setpriv to the VM's uid with no
//   capabilities (plus the group of /dev/kvm, which Firecracker opens), and the
//   mount jail that shows it only /usr and its folder.
// A seed's memory image and state are read-only to the VMM: Firecracker opens
// both with File::open (read-only) and maps the memory MAP_PRIVATE, so guest
// writes are copy-on-write in the process (src/vmm/src/persist.rs,
// guest_memory_from_file; docs/snapshotting/snapshot-support.md).
import { chown, copyFile, link, mkdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { jailerCommand, jailId, jailRoot } from './firecracker-jailer.ts';
import { vmmCommand } from './jail.ts';
import type { SnapshotFiles, VmSpec } from './types.ts';

export const DISK_FILE = 'disk.raw';
export const VSOCK_FILE = 'vsock.sock';
export const VOLUME_FILE = 'volume.raw';
export const KERNEL_FILE = 'vmlinux';
export const INITRD_FILE = 'initrd';
/** A thaw's seed, as placed in the work folder. */
export const SEED_STATE = 'seed-state.bin';
export const SEED_MEM = 'seed-mem.ram';
/** A bake's snapshot, written by Firecracker in its work folder, then moved into the seed. */
const SNAP_STATE = 'snap-state.bin';
const SNAP_MEM = 'snap-mem.ram';
const API_FILE = 'fc.sock';

export interface JailerOptions {
  /** The jailer binary. */
  binary: string;
  /** Where jails are built (default: `jail/` in each VM folder, removed with it). */
  chrootBase?: string;
  /** Put the VM in a cgroup v2 with memory.max = guest memory + 128 MiB (the jailer's `--cgroup`). Default off: see docs/ARCHITECTURE.md. */
  cgroup?: boolean;
}

export interface FcPlace {
  /** Host folder where Firecracker resolves its paths (its cwd, or its jail root). */
  work: string;
  /** What to spawn (binary first); run with cwd = the VM folder. */
  argv: string[];
  apiSocket: string;
  vsockSocket: string;
  /** The jail folder destroy() removes besides the VM folder (a chroot base outside it), or null. */
  jailDir: string | null;
  /** cgroup folder the jailer made (removed by destroy()), or null. */
  cgroupDir: string | null;
}

/** `bin` as an absolute path (looked up on PATH when it has no slash), or null when it is not there. */
export function which(bin: string, env: NodeJS.ProcessEnv = process.env): string | null {
  if (bin.includes('/')) return existsSync(bin) ? path.resolve(bin) : null;
  for (const dir of (env.PATH ?? '').split(':')) if (dir && existsSync(path.join(dir, bin))) return path.join(dir, bin);
  return null;
}

/** The group that may open /dev/kvm read-write (a jailed VMM keeps it), if any. */
function kvmGroup(dev = '/dev/kvm'): number[] {
  try {
    const st = statSync(dev);
    return (st.mode & 0o060) === 0o060 && st.gid !== 0 ? [st.gid] : [];
  } catch {
    return [];
  }
}

/** Where and how Firecracker runs for this VM. */
export function placement(spec: VmSpec, binary: string, jailer: JailerOptions | undefined): FcPlace {
  const id = jailId(spec.id);
  if (jailer && spec.jail) {
    const chrootBase = jailer.chrootBase ?? path.join(spec.dir, 'jail');
    const work = jailRoot({ chrootBase }, id, binary);
    const parentCgroup = 'thaw';
    const cgroups = jailer.cgroup ? [`memory.max=${(spec.memMiB + 128) * 1024 * 1024}`] : [];
    const argv = jailerCommand({ binary: jailer.binary, ...spec.jail, chrootBase, ...(spec.tap ? { netns: `/var/run/netns/${spec.tap.netns}` } : {}), cgroups, parentCgroup }, id, binary, ['--api-sock', `/${API_FILE}`]);
    return {
      work,
      argv,
      apiSocket: path.join(work, API_FILE),
      vsockSocket: path.join(work, VSOCK_FILE),
      jailDir: jailer.chrootBase ? path.dirname(work) : null,
      cgroupDir: cgroups.length ? path.join('/sys/fs/cgroup', parentCgroup, id) : null,
    };
  }
  return {
    work: spec.dir,
    argv: vmmCommand(spec, [binary, '--id', id, '--api-sock', API_FILE], spec.jail ? kvmGroup() : []),
    apiSocket: path.join(spec.dir, API_FILE),
    vsockSocket: path.join(spec.dir, VSOCK_FILE),
    jailDir: null,
    cgroupDir: null,
  };
}

/** Hard-link `src` to `dst` (replacing it); `copy`: fall back to a copy across file systems. */
async function place(src: string, dst: string, copy: boolean): Promise<void> {
  if (path.resolve(src) === path.resolve(dst)) return;
  await rm(dst, { force: true });
  try {
    await link(src, dst);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (copy && (e.code === 'EXDEV' || e.code === 'EPERM')) return copyFile(src, dst);
    throw new ThawError('VM_START_FAILED', `cannot place ${src} in the Firecracker folder ${path.dirname(dst)}: ${e.code ?? e.message}${copy ? '' : ' (it must be on the same file system: the VMM writes this very file)'}`, { cause: err });
  }
}

/**
 * Put every file the VM needs in its work folder, with the owners the jailed
 * VMM needs: its disk and volume are the VM uid's (read-write), the rest stays
 * root's and is only read. `snap`: a thaw's seed files.
 */
export async function stage(spec: VmSpec, p: FcPlace, snap?: SnapshotFiles): Promise<void> {
  await mkdir(p.work, { recursive: true });
  // Firecracker refuses to bind an existing socket path.
  await Promise.all([API_FILE, VSOCK_FILE].map((f) => rm(path.join(p.work, f), { force: true })));
  const at = (f: string) => path.join(p.work, f);
  await place(spec.kernel, at(KERNEL_FILE), true);
  await place(spec.initrd, at(INITRD_FILE), true);
  await place(spec.disk, at(DISK_FILE), false);
  if (spec.volume) await place(spec.volume, at(VOLUME_FILE), false);
  if (snap) {
    await place(snap.state, at(SEED_STATE), true);
    await place(snap.mem, at(SEED_MEM), true);
  }
  if (spec.jail) {
    const { uid, gid } = spec.jail;
    // The jailer chowns its root itself; without it, the VM folder is the VMM's to create sockets in.
    if (p.work === spec.dir) await chown(spec.dir, uid, gid);
    await chown(at(DISK_FILE), uid, gid);
    // The one writer the store's volume lease allows.
    if (spec.volume) await chown(at(VOLUME_FILE), uid, gid);
  }
}

/** The snapshot paths Firecracker writes (in its work folder). */
export const snapshotTargets = { state: SNAP_STATE, mem: SNAP_MEM };

/** Move a bake's snapshot out of the work folder into the seed's paths (root's from then on). */
export async function collectSnapshot(p: FcPlace, snap: SnapshotFiles): Promise<void> {
  for (const [from, to] of [[SNAP_STATE, snap.state], [SNAP_MEM, snap.mem]] as const) {
    const src = path.join(p.work, from);
    await rename(src, to).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EXDEV') throw new ThawError('INTERNAL', `Cannot create snapshot: moving ${from} to ${to}: ${err.code ?? err.message}`, { cause: err });
      await copyFile(src, to);
      await rm(src, { force: true });
    });
    if (process.getuid?.() === 0 && (await stat(to)).uid !== 0) await chown(to, 0, 0);
  }
}

/** Remove what the jailer made outside the VM folder. Never throws. */
export async function unplace(p: FcPlace): Promise<void> {
  if (p.jailDir) await rm(p.jailDir, { recursive: true, force: true }).catch(() => {});
  if (p.cgroupDir && existsSync(p.cgroupDir)) await rmdir(p.cgroupDir).catch(() => {});
}
