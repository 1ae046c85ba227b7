// The jailer command line for a Firecracker VM (Firecracker docs/jailer.md,
// "Jailer Usage"): `jailer --id <id> --exec-file <firecracker> --uid <uid>
// --gid <gid> [--cgroup-version 2 --parent-cgroup P --cgroup F=V]...
// [--chroot-base-dir <base>] [--netns <path>] -- <firecracker args>`.
// The jailer chroots Firecracker into `<base>/<exec_file_name>/<id>/root`
// ("Jailer Operation") and chowns that folder to uid:gid; every relative path
// the driver passes (disk.raw, vsock.sock, the snapshot files) is a file there,
// placed by the driver beforehand (firecracker-jail.ts: "The user must create
// hard links for (or copy) any resources ... inside the jailed root folder").
// Not passed on purpose: `--daemonize` (the node supervises the process: its
// stdout/stderr are the console log and its exit is the VM's exit) and
// `--new-pid-ns` (the pid the node holds must be Firecracker's).
import { basename, join } from 'node:path';
import { ThawError } from '../errors.ts';

export interface JailerSettings {
  /** jailer binary (default 'jailer'). */
  binary?: string;
  uid: number;
  gid: number;
  /** Where jails are built (jailer default /srv/jailer). */
  chrootBase?: string;
  /** Network namespace handle to join, e.g. /var/run/netns/thv-TAG-N. */
  netns?: string;
  /** cgroup v2 files to set, `file=value` (e.g. memory.max=570425344), under `--parent-cgroup`. */
  cgroups?: readonly string[];
  parentCgroup?: string;
}

/** "id ... may contain alphanumeric characters and hyphens. The maximum id length is currently 64 characters." */
const JAIL_ID = /^[A-Za-z0-9-]{1,64}$/;
/** `--cgroup` "must follow this format: `<cgroup_file>=<value>`". */
const CGROUP = /^[a-z]+\.[a-z._]+=[^\s=]+$/;

/** A VM id as a jailer (and Firecracker `--id`) id: other characters become '-', at most 64. */
export function jailId(vmId: string): string {
  const id = vmId.replace(/[^A-Za-z0-9-]/g, '-').slice(-64);
  return id || 'vm';
}

/** The jailer argv (binary first) that runs `firecracker` with `fcArgs` for VM `id`. */
export function jailerCommand(j: JailerSettings, id: string, firecracker: string, fcArgs: readonly string[]): string[] {
  if (!JAIL_ID.test(id)) throw new ThawError('INTERNAL', `jailer id "${id}" must be 1-64 letters, digits or dashes`);
  if (!basename(firecracker).includes('firecracker')) throw new ThawError('INTERNAL', `the jailer's exec file name must include "firecracker", got ${firecracker}`);
  for (const [k, v] of [['uid', j.uid], ['gid', j.gid]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new ThawError('INTERNAL', `jailer ${k} must be a non-negative integer, got ${v}`);
  }
  for (const c of j.cgroups ?? []) if (!CGROUP.test(c)) throw new ThawError('INTERNAL', `jailer --cgroup must be <cgroup_file>=<value>, got "${c}"`);
  const cg = j.cgroups?.length ? ['--cgroup-version', '2', ...(j.parentCgroup ? ['--parent-cgroup', j.parentCgroup] : []), ...j.cgroups.flatMap((c) => ['--cgroup', c])] : [];
  return [
    j.binary ?? 'jailer',
    '--id', id,
    '--exec-file', firecracker,
    '--uid', String(j.uid),
    '--gid', String(j.gid),
    ...cg,
    ...(j.chrootBase ? ['--chroot-base-dir', j.chrootBase] : []),
    ...(j.netns ? ['--netns', j.netns] : []),
    '--',
    ...fcArgs,
  ];
}

/** The folder Firecracker sees as `/` (and works in) under the jailer. */
export function jailRoot(j: Partial<JailerSettings>, id: string, firecracker: string): string {
  return join(j.chrootBase ?? '/srv/jailer', basename(firecracker), id, 'root');
}
