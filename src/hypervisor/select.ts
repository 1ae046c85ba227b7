// Picks the hypervisor driver a node runs (`--driver qemu|firecracker`).
import type { GuestAssets } from '../guest/assets.ts';
import { FirecrackerDriver } from './firecracker.ts';
import { QemuDriver } from './qemu.ts';
import type { DriverName, Hypervisor } from './types.ts';

export const DRIVERS: readonly DriverName[] = ['qemu', 'firecracker'];

export interface DriverSetup {
  assets: GuestAssets;
  /** QEMU: address app port forwards bind to. */
  bindHost?: string;
  /** Firecracker binary (default $THAW_FIRECRACKER or `firecracker` on PATH). The TAP of its VMs: $THAW_FIRECRACKER_TAP. */
  firecracker?: string;
}

export function createHypervisor(name: DriverName, o: DriverSetup): Hypervisor {
  if (name === 'firecracker') {
    const tap = process.env.THAW_FIRECRACKER_TAP;
    return new FirecrackerDriver({ binary: o.firecracker ?? process.env.THAW_FIRECRACKER ?? 'firecracker', ...(tap ? { tap } : {}) });
  }
  return new QemuDriver({ probeAssets: async () => o.assets, ...(o.bindHost ? { bindHost: o.bindHost } : {}) });
}

/**
 * Guest assets as the driver boots them: Firecracker on x86_64 loads an
 * uncompressed ELF kernel, so $THAW_GUEST_VMLINUX (extracted from the same
 * kernel, see scripts/firecracker-smoke.sh) replaces the bzImage path.
 */
export function assetsFor(name: DriverName, assets: GuestAssets): GuestAssets {
  const vmlinux = process.env.THAW_GUEST_VMLINUX;
  return name === 'firecracker' && vmlinux ? { ...assets, kernel: vmlinux } : assets;
}
