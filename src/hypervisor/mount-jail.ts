// The VMM's file-system jail, the part of Firecracker's jailer that chroots:
// a private mount namespace (`unshare --mount`) whose root is an empty tmpfs
// holding only what a VMM process needs to run:
//   /usr (read-only; /bin, /sbin, /lib, /lib64 are links into it, as on a
//        merged-/usr Debian), for the VMM binary, its libraries and firmware;
//   /dev/{null,zero,random,urandom}, /dev/kvm and /dev/net/tun when present;
//   /proc (the VMM opens its handed-over descriptors as /proc/self/fd/N);
//   its own VM folder, at the same path, as its working folder.
// Not the node's data folder, seeds, other VMs, /etc, /root, /home, /var, /tmp:
// files outside its folder (kernel, initrd, a seed's memory image and disk,
// the app's volume) are inherited descriptors (jail.ts). Every step execs
// (unshare without --fork, sh, chroot, setpriv), so the process the node
// started stays the VMM's pid.
import { existsSync } from 'node:fs';

/** Where the jail's tmpfs root is mounted, inside each VMM's private mount namespace only. */
export const JAIL_ROOT = '/run/thaw-jail';

const UNSHARE = ['/usr/bin/unshare', '/bin/unshare'].find((p) => existsSync(p));

// $1: the VM folder; then the VMM's argv. `set -e`: any failed mount stops the VMM from starting.
const SCRIPT = `set -e
D="$1"; shift
R=${JAIL_ROOT}
mkdir -p "$R"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R"
mkdir -p "$R/usr" "$R/proc" "$R/dev/net" "$R$D"
mount --rbind /usr "$R/usr"
mount -o remount,bind,ro "$R/usr"
for l in bin sbin lib lib64; do [ -e "/usr/$l" ] && ln -s "usr/$l" "$R/$l"; done
for d in null zero random urandom kvm net/tun; do
  if [ -e "/dev/$d" ]; then touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; fi
done
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$D" "$R$D"
exec chroot "$R" /bin/sh -c 'cd "$1"; shift; exec "$@"' jail "$D" "$@"`;

/** Whether VMMs can be jailed in a mount namespace here (root, util-linux's unshare; THAW_VMM_CHROOT=0 turns it off). */
export function mountJailAvailable(): boolean {
  return !!UNSHARE && process.getuid?.() === 0 && process.env.THAW_VMM_CHROOT !== '0';
}

/** `argv` (absolute binary paths under /usr) run with `dir` as the only folder of the host it can see. */
export function mountJail(dir: string, argv: string[]): string[] {
  return [UNSHARE!, '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', SCRIPT, 'thaw-jail', dir, ...argv];
}
