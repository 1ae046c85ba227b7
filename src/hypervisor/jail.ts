// How a VMM process is started, Firecracker-jailer style:
// - inside its VM's network namespace (nsenter), when it has one;
// - as the VM's own unprivileged uid (one per network slot) with no
//   capabilities and no way to gain any (setpriv), QEMU's seccomp sandbox on
//   (SANDBOX: no exec, no set*uid, no obsolete or scheduler syscalls);
// - in the VM folder (its cwd), which it owns; every file outside it (kernel,
//   initrd, a seed's memory image and disk, the state to load) is an inherited
//   descriptor opened as /proc/self/fd/N: the VMM needs no path into the
//   node's folders, which stay root-only (0700) and that it cannot traverse;
// - dying with the node (parent-death signal, set after the uid change).
// A seed's files stay root-owned and read-only, except that its memory image
// is group-writable for the VMMs' group: QEMU 7.2 opens a private
// (copy-on-write) memory file read-write. A VMM that writes to it changes its
// mtime and ctime, which it cannot set back (it does not own the file), so the
// next wake's identity check re-hashes the seed and refuses it.
import { chown, mkdir, open, readFile, rm, stat, chmod, type FileHandle } from 'node:fs/promises';
import { createWriteStream, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import type { VmSpec } from './types.ts';
import { mountJail, mountJailAvailable } from './mount-jail.ts';

/** QEMU's seccomp sandbox: no obsolete syscalls, no set*uid, no fork/exec, no scheduler/affinity changes. */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';
/** First uid of the VMMs (uid = base + network slot) and their one group. */
export const VMM_UID_BASE = Number(process.env.THAW_VMM_UID_BASE ?? 200_000);
export const VMM_GID = Number(process.env.THAW_VMM_GID ?? 200_000);
/** The state a restore loads is the VMM's descriptor 3. */
export const STATE_FD = 3;
/** A bake's state stream goes to this socket in the VM folder. */
export const STATE_SOCK = 'state.sock';

export function vmmOwner(slotIndex: number): { uid: number; gid: number } {
  return { uid: VMM_UID_BASE + slotIndex, gid: VMM_GID };
}

const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
const NSENTER = ['/usr/bin/nsenter', '/bin/nsenter'].find((p) => existsSync(p)) ?? 'nsenter';

/**
 * The argv that starts `vmm` (binary + args) for this VM. `groups`: supplementary groups the
 * jailed VMM keeps (Firecracker: the group of /dev/kvm); default none.
 */
export function vmmCommand(spec: Pick<VmSpec, 'tap' | 'jail' | 'dir'>, vmm: string[], groups: readonly number[] = []): string[] {
  let argv = vmm;
  if (SETPRIV) {
    const drop = spec.jail
      ? ['--reuid', String(spec.jail.uid), '--regid', String(spec.jail.gid), ...(groups.length ? ['--groups', groups.join(',')] : ['--clear-groups']), '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs']
      : [];
    argv = [SETPRIV, ...drop, '--pdeathsig', 'KILL', '--', ...argv];
  } else if (spec.jail) throw new ThawError('HOST_MISSING_TOOL', 'setpriv (util-linux) is needed to run the VMM unprivileged');
  // A jailed VMM sees only its own folder and /usr (mount-jail.ts); the uid drop happens inside.
  if (spec.jail && mountJailAvailable()) argv = mountJail(path.resolve(spec.dir), argv);
  if (spec.tap) argv = [NSENTER, `--net=/run/netns/${spec.tap.netns}`, '--', ...argv];
  // Die with the node from the first step on, not only once QEMU runs: a node killed while the
  // jail is being set up must not leave an orphan that goes on to start QEMU. (The uid change
  // clears the setting, so the inner setpriv sets it again.)
  if (SETPRIV && argv[0] !== SETPRIV) argv = [SETPRIV, '--pdeathsig', 'KILL', '--', ...argv];
  return argv;
}

/**
 * The VMM's whole environment: a PATH and its VM folder (THAW_VM_DIR, which names the VM for
 * tools and tests that look for its process). Nothing of the node's own environment (object
 * storage keys, tokens) reaches a VMM.
 */
export function vmmEnv(spec: Pick<VmSpec, 'dir'>): NodeJS.ProcessEnv {
  return { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', THAW_VM_DIR: path.resolve(spec.dir) };
}

export interface HandedFiles {
  /** Descriptors for the child's fd 3, 4, ... */
  fds: number[];
  /** The name QEMU opens `file` by: relative inside the VM folder, else /proc/self/fd/N. */
  path(kind: string, file: string): string;
  /** QEMU's -blockdev arguments for the disk (node `disk0`) and the app's volume (node `vol0`). */
  blockdev: string[];
  close(): void;
}

/** The backing file named in a qcow2 header (null: none). */
async function qcow2Backing(file: string): Promise<string | null> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(20);
    await fh.read(head, 0, 20, 0);
    const off = Number(head.readBigUInt64BE(8));
    const len = head.readUInt32BE(16);
    if (!off || !len) return null;
    const name = Buffer.alloc(len);
    await fh.read(name, 0, len, off);
    return path.resolve(path.dirname(file), name.toString('utf8'));
  } finally {
    await fh.close();
  }
}

/** Open what the VMM needs and give the jailed VMM its folder. */
export async function handOver(spec: VmSpec, incoming: boolean, state?: string): Promise<HandedFiles> {
  const handles: FileHandle[] = [];
  const named = new Map<string, string>();
  const inDir = (f: string) => path.dirname(path.resolve(f)) === path.resolve(spec.dir);
  const give = async (kind: string, file: string, flags = 'r') => {
    const fh = await open(file, flags).catch((err: NodeJS.ErrnoException) => {
      throw new ThawError('VM_START_FAILED', `cannot open the VM's ${kind} (${file}): ${err.code ?? err.message}`, { cause: err });
    });
    handles.push(fh);
    named.set(kind, `/proc/self/fd/${2 + handles.length}`);
  };
  try {
    if (incoming) {
      if (!state) throw new ThawError('INTERNAL', 'a restore needs its state file');
      await give('state', state); // fd 3 = STATE_FD
    }
    await give('kernel', spec.kernel);
    await give('initrd', spec.initrd);
    if (!inDir(spec.memFile)) await give('mem', spec.memFile);
    const backing = spec.diskFormat === 'qcow2' ? await qcow2Backing(spec.disk) : null;
    if (backing) await give('backing', backing);
    if (spec.volume) await give('volume', spec.volume, 'r+');
    if (spec.jail) {
      const { uid, gid } = spec.jail;
      await chown(spec.dir, uid, gid);
      await chown(spec.disk, uid, gid);
      // The app's volume is read-write for this VM's VMM only (the one writer the store's lease allows).
      if (spec.volume) await chown(spec.volume, uid, gid);
      if (!inDir(spec.memFile)) await shareMemImage(spec.memFile);
    }
    const disk = path.basename(spec.disk);
    const blockdev = [
      ...(backing ? ['-blockdev', `driver=file,node-name=basef,filename=${named.get('backing')},read-only=on`, '-blockdev', 'driver=raw,node-name=base,file=basef,read-only=on'] : []),
      '-blockdev', `driver=file,node-name=diskf,filename=${inDir(spec.disk) ? disk : spec.disk},cache.no-flush=on`,
      '-blockdev', `driver=${spec.diskFormat},node-name=disk0,file=diskf,cache.no-flush=on${backing ? ',backing=base' : ''}`,
      // The volume's writes must survive a crash: unlike the root overlay, guest flushes reach the host file.
      ...(spec.volume ? ['-blockdev', `driver=file,node-name=volf,filename=${named.get('volume')},discard=unmap`, '-blockdev', 'driver=raw,node-name=vol0,file=volf,discard=unmap'] : []),
    ];
    return {
      fds: handles.map((h) => h.fd),
      path: (kind, file) => (inDir(file) ? path.basename(file) : (named.get(kind) ?? file)),
      blockdev,
      close: () => void Promise.all(handles.map((h) => h.close())).catch(() => {}),
    };
  } catch (err) {
    await Promise.all(handles.map((h) => h.close().catch(() => {})));
    throw err;
  }
}

/** A seed's memory image: root-owned, readable and writable by the VMM group only (mode 0460). */
export async function shareMemImage(file: string): Promise<void> {
  const st = await stat(file);
  if (st.uid !== 0 || st.gid !== VMM_GID) await chown(file, 0, VMM_GID);
  if ((st.mode & 0o777) !== 0o460) await chmod(file, 0o460);
}

/** Receive a bake's state stream on STATE_SOCK into `file`. */
export async function stateSink(spec: VmSpec, file: string): Promise<{ done: Promise<void>; close(): void }> {
  const sock = path.join(spec.dir, STATE_SOCK);
  await rm(sock, { force: true });
  await mkdir(path.dirname(file), { recursive: true });
  let resolveDone!: () => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<void>((res, rej) => ((resolveDone = res), (rejectDone = rej)));
  done.catch(() => {});
  const srv = net.createServer((c) => {
    srv.close();
    const out = createWriteStream(file, { mode: 0o600 });
    c.pipe(out);
    out.on('finish', resolveDone);
    out.on('error', rejectDone);
    c.on('error', rejectDone);
  });
  await new Promise<void>((res, rej) => srv.once('error', rej).listen(sock, res));
  if (spec.jail) await chown(sock, spec.jail.uid, spec.jail.gid);
  return { done, close: () => void (srv.close(), rm(sock, { force: true }).catch(() => {})) };
}

/** uid and seccomp mode of a running process (for checks and tests). */
export async function processJail(pid: number): Promise<{ uid: number; seccomp: number }> {
  const st = await readFile(`/proc/${pid}/status`, 'utf8');
  return { uid: Number(/^Uid:\s+(\d+)/m.exec(st)?.[1] ?? -1), seccomp: Number(/^Seccomp:\s+(\d+)/m.exec(st)?.[1] ?? -1) };
}
