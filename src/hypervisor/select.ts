// Picks the hypervisor driver a node runs (`--driver qemu|firecracker`). Both
// boot the same guest assets: the kernel is an uncompressed ELF vmlinux with a
// PVH entry (src/guest/assets.ts), which Firecracker on x86_64 loads as it is.
import type { GuestAssets } from '../guest/assets.ts';
import { FirecrackerDriver } from './firecracker.ts';
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

export function createHypervisor(name: DriverName, o: DriverSetup): Hypervisor {
  if (name === 'firecracker') {
    const tap = process.env.THAW_FIRECRACKER_TAP;
    return new FirecrackerDriver({ binary: o.firecracker ?? process.env.THAW_FIRECRACKER ?? 'firecracker', ...(tap ? { tap } : {}) });
  }
  return new QemuDriver({ probeAssets: async () => o.assets, ...(o.bindHost ? { bindHost: o.bindHost } : {}), ...(o.appHost ? { appHost: o.appHost } : {}) });
}
