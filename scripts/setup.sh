#!/usr/bin/env bash
# Installs what Thaw needs on a Debian 12 host, idempotently:
# Debian packages (QEMU, guest kernel, busybox, e2fsprogs, zstd...), npm
# packages, and the guest assets (kernel, initramfs, base root filesystem),
# which are cached under ~/.cache/thaw by a hash of their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-system-x86 qemu-utils linux-image-amd64 busybox-static e2fsprogs zstd cpio xz-utils tar gzip gcc libc6-dev libsodium-dev libjansson-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/thaw-apt.log 2>&1; then
    $SUDO apt-get update -q >>/tmp/thaw-apt.log 2>&1
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/thaw-apt.log 2>&1 || { tail -20 /tmp/thaw-apt.log; exit 1; }
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

node --import tsx scripts/build-assets.ts
