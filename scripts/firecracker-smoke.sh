#!/usr/bin/env bash
# First run of Thaw's Firecracker driver on a KVM host. NOT YET RUN ON A REAL HOST.
#
#   sudo scripts/firecracker-smoke.sh /path/to/firecracker [THAWS]
#
# Fetches nothing. Given a firecracker binary it runs the same sequence as
# `thaw bench lifecycle` (cold boot -> bake -> THAWS thaws of the demo app, each
# thaw falling back to a cold boot if it fails, with the reason in the JSON's
# fallback_reason) with `--driver firecracker`, and prints the same JSON.
# Needs: root (it creates one TAP device), a /dev/kvm that works, the host
# packages of `npm run setup` (guest kernel, qemu-img for the bake's disk copy),
# and xz/gzip/zstd to extract the guest kernel: Firecracker on x86_64 boots an
# uncompressed ELF vmlinux, extracted here from the same /boot/vmlinuz the QEMU
# driver boots. Everything it creates (TAP, vmlinux, the bench's temp data
# folder) is removed on exit.
set -euo pipefail

FC=${1:-}
THAWS=${2:-3}
TAP=${THAW_SMOKE_TAP:-thawfcsmoke0}
die() { echo "firecracker-smoke: $*" >&2; exit 2; }

[ -n "$FC" ] || die "usage: $0 /path/to/firecracker [THAWS]"
[ -x "$FC" ] || die "$FC is not an executable file"
FC=$(readlink -f "$FC")
[ "$(id -u)" = 0 ] || die "run as root (it creates the TAP device $TAP)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is missing or not read-write: Firecracker needs KVM"
"$FC" --version >&2 || die "$FC --version failed"
cd "$(dirname "$0")/.."

WORK=$(mktemp -d /tmp/thaw-fc-smoke.XXXXXX)
cleanup() {
  ip link del "$TAP" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The guest kernel the QEMU driver uses (src/guest/assets.ts: newest /boot/vmlinuz-* with modules).
VMLINUZ=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-*: apt-get install linux-image-amd64"

# Find the compressed payload inside the bzImage and decompress it until an ELF comes out
# (what the kernel's scripts/extract-vmlinux does).
extract_vmlinux() {
  local img=$1 out=$2 magic cmd off
  for pair in 'fd377a585a00:xz -dc' '1f8b0800:gzip -dc' '28b52ffd:zstd -dc'; do
    magic=${pair%%:*}
    cmd=${pair#*:}
    for off in $(LC_ALL=C grep -obaP "$(echo "$magic" | sed 's/../\\x&/g')" "$img" | cut -d: -f1); do
      tail -c "+$((off + 1))" "$img" | $cmd >"$out" 2>/dev/null || true
      [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && return 0
    done
  done
  return 1
}
extract_vmlinux "$VMLINUZ" "$WORK/vmlinux" || die "could not extract an ELF vmlinux from $VMLINUZ"
echo "firecracker-smoke: guest kernel $WORK/vmlinux (from $VMLINUZ)" >&2

# One TAP for the one VM that runs at a time (the guest IP 172.16.0.2 is baked into every seed).
ip tuntap add dev "$TAP" mode tap
ip addr add 172.16.0.1/30 dev "$TAP"
ip link set dev "$TAP" up

THAW_FIRECRACKER="$FC" THAW_GUEST_VMLINUX="$WORK/vmlinux" THAW_FIRECRACKER_TAP="$TAP" \
  node bin/thaw.js --json bench lifecycle --driver firecracker --thaws "$THAWS"
