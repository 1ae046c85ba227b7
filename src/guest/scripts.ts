// Scripts that run inside the guest. Kept as strings so their content is part
// of the asset cache key.

/** virtio and ext4 modules, in load order (crc32c-intel does not load under TCG; crc32c_generic does). */
export const MODULES = [
  'virtio_ring', 'virtio', 'virtio_mmio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci',
  'virtio_blk', 'virtio_console', 'failover', 'net_failover', 'virtio_net', 'virtio-rng',
  'crc32c_generic', 'crc16', 'mbcache', 'jbd2', 'ext4',
] as const;

/** Kernel command line. init_on_free=1: freed pages are zeroed, so a stopped app leaves no secret in RAM. */
export const KERNEL_CMDLINE =
  'console=ttyS0 quiet loglevel=3 edd=off reboot=t panic=-1 tsc=reliable no_timer_check init_on_free=1 random.trust_cpu=on';

export const INITRAMFS_INIT = `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in ${MODULES.map((m) => m.replace(/-/g, '_')).join(' ')}; do
  [ -f /lib/modules/$m.ko ] && $B insmod /lib/modules/$m.ko 2>/dev/null
done
if $B grep -q thaw.probe=1 /proc/cmdline; then echo THAW-PROBE-OK; $B poweroff -f; fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do $B usleep 10000; i=$((i+1)); done
$B mount -t ext4 -o rw,noatime /dev/vda /newroot || { echo "THAW: cannot mount /dev/vda"; $B poweroff -f; }
$B mount --move /dev /newroot/dev
$B umount /proc /sys
exec $B switch_root /newroot /sbin/thaw-init
`;

export const ROOT_INIT = `#!/bin/sh
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755,size=64m tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/thaw && chmod 700 /run/thaw
hostname thaw
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2
echo THAW-INIT-OK
while true; do
  /usr/local/bin/node /opt/thaw/agent.mjs
  echo "THAW: agent exited ($?), restarting"
  usleep 20000
done
`;
