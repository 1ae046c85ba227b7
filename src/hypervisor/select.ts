// Picks the hypervisor driver a node runs (`--driver qemu|firecracker`). Both
// boot the same guest assets: the kernel is an uncompressed ELF vmlinux with a
// PVH entry (src/guest/assets.ts), which Firecracker on x86_64 loads as it is.
import type { GuestAssets } from '../guest/assets.ts';
import { FirecrackerDriver } from './firecracker.ts';
import { which } from './firecracker-jail.ts';
import { QemuDriver } from './qemu.ts';
import type { DriverName, Hypervisor } from './types.ts';

export const DRIVERS: readonly DriverName[] = ['qemu', 'firecracker'];

export interface DriverSetup {
  assets: GuestAssets;
  /** QEMU: address app port forwards bind to. */
  bindHost?: string;
  /** QEMU: address the router connects to for those forwards (default bindHost). */
  appHost?: string;
  /** Firecracker binary (default $THAW_FIRECRACKER or `firecracker` on PATH). The TAP of its VMs: $THAW_FIRECRACKER_TAP. */
  firecracker?: string;
}

/** The jailer binary when it is present and usable (root): $THAW_JAILER, else `jailer` on PATH; THAW_JAILER=none turns it off. */
export function findJailer(env: NodeJS.ProcessEnv = process.env): string | null {
  if (env.THAW_JAILER === 'none' || process.getuid?.() !== 0) return null;
  return which(env.THAW_JAILER ?? 'jailer', env);
}

export function createHypervisor(name: DriverName, o: DriverSetup): Hypervisor {
  if (name === 'firecracker') {
    const tap = process.env.THAW_FIRECRACKER_TAP;
    const jailer = findJailer();
    const bin = o.firecracker ?? process.env.THAW_FIRECRACKER ?? 'firecracker';
    // The jailer copies its --exec-file into the jail: it needs the binary's path.
    return new FirecrackerDriver({ binary: (jailer && which(bin, process.env)) || bin, ...(tap ? { tap } : {}), ...(jailer ? { jailer: { binary: jailer, cgroup: process.env.THAW_FC_CGROUP === '1', ...(process.env.THAW_JAILER_CHROOT_BASE ? { chrootBase: process.env.THAW_JAILER_CHROOT_BASE } : {}) } } : {}) });
  }
  return new QemuDriver({ probeAssets: async () => o.assets, ...(o.bindHost ? { bindHost: o.bindHost } : {}), ...(o.appHost ? { appHost: o.appHost } : {}) });
}
