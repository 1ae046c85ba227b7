// What the guest boots with besides the agent: its kernel modules and the
// kernel command line. Part of the asset cache key.

/**
 * Modules in load order (crc32c-intel does not load under TCG; crc32c_generic
 * does). The vsock modules serve Firecracker's agent channel; under QEMU,
 * without a vsock device, they load and stay idle.
 */
export const MODULES = [
  'virtio_ring', 'virtio', 'virtio_mmio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'virtio-rng',
  'vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport',
  'crc32c_generic', 'crc16', 'mbcache', 'jbd2', 'ext4',
] as const;

/** Kernel command line. init_on_free=1: freed pages are zeroed, so a stopped app leaves no secret in RAM. */
export const KERNEL_CMDLINE =
  'console=ttyS0 quiet loglevel=3 edd=off reboot=t panic=-1 tsc=reliable no_timer_check init_on_free=1 random.trust_cpu=on';
