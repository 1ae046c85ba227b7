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
# packages of `npm run setup` (guest kernel, qemu-img for the bake's disk copy).
# Both drivers boot the same guest assets (the kernel is already an ELF vmlinux
# with a PVH entry, which Firecracker on x86_64 needs). Everything it creates
# (the TAP, the bench's temp data folder) is removed on exit.
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

cleanup() { ip link del "$TAP" 2>/dev/null || true; }
trap cleanup EXIT

# One TAP for the one VM that runs at a time. The guest's init gives itself
# 10.0.2.15/24 via 10.0.2.2 (QEMU's user-mode addresses, also in every seed).
ip tuntap add dev "$TAP" mode tap
ip addr add 10.0.2.2/24 dev "$TAP"
ip link set dev "$TAP" up

THAW_FIRECRACKER="$FC" THAW_FIRECRACKER_TAP="$TAP" \
  node bin/thaw.js --json bench lifecycle --driver firecracker --thaws "$THAWS"
