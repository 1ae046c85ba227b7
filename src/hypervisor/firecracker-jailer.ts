// The jailer command line for a Firecracker VM (Firecracker docs/jailer.md,
// "Jailer Usage"): `jailer --id <id> --exec-file <firecracker> --uid <uid>
// --gid <gid> [--chroot-base-dir <base>] [--netns <path>] -- <firecracker args>`.
// The jailer chroots Firecracker into `<base>/<exec_file_name>/<id>/root`
// ("Jailer Operation"), so every relative path the driver passes (disk.raw,
// vsock.sock, fc.sock) is a file in that folder.
// NOT WIRED INTO THE DRIVER YET: the driver would have to stage the kernel,
// initrd, disk and snapshot files into the chroot (hard links) and chown them
// to uid:gid; see docs/ARCHITECTURE.md. Only the command line is built here.
import { basename, join } from 'node:path';
import { ThawError } from '../errors.ts';

export interface JailerSettings {
  /** jailer binary (default 'jailer'). */
  binary?: string;
  uid: number;
  gid: number;
  /** Where jails are built (jailer default /srv/jailer). */
  chrootBase?: string;
  /** Network namespace handle to join, e.g. /var/run/netns/thaw-<id>. */
  netns?: string;
}

/** "id ... may contain alphanumeric characters and hyphens. The maximum id length is currently 64 characters." */
const JAIL_ID = /^[A-Za-z0-9-]{1,64}$/;

/** The jailer argv (binary first) that runs `firecracker` with `fcArgs` for VM `id`. */
export function jailerCommand(j: JailerSettings, id: string, firecracker: string, fcArgs: readonly string[]): string[] {
  if (!JAIL_ID.test(id)) throw new ThawError('INTERNAL', `jailer id "${id}" must be 1-64 letters, digits or dashes`);
  for (const [k, v] of [['uid', j.uid], ['gid', j.gid]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new ThawError('INTERNAL', `jailer ${k} must be a non-negative integer, got ${v}`);
  }
  return [
    j.binary ?? 'jailer',
    '--id', id,
    '--exec-file', firecracker,
    '--uid', String(j.uid),
    '--gid', String(j.gid),
    ...(j.chrootBase ? ['--chroot-base-dir', j.chrootBase] : []),
    ...(j.netns ? ['--netns', j.netns] : []),
    '--',
    ...fcArgs,
  ];
}

/** The folder Firecracker sees as `/` (and works in) under the jailer. */
export function jailRoot(j: JailerSettings, id: string, firecracker: string): string {
  return join(j.chrootBase ?? '/srv/jailer', basename(firecracker), id, 'root');
}
