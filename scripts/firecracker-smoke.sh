#!/usr/bin/env bash
# First run of Thaw's Firecracker driver on a KVM host. NOT YET RUN ON A REAL HOST
# (the development host has no usable KVM; there this script is only syntax-checked).
#
#   sudo scripts/firecracker-smoke.sh /path/to/firecracker [/path/to/jailer] [THAWS]
#
# Fetches nothing. Given a firecracker binary (and, optionally, the jailer of
# the same release) it runs the sequence of `thaw bench lifecycle` (cold boot ->
# bake -> THAWS thaws of the demo app, each thaw falling back to a cold boot if
# it fails, with the reason in the JSON's fallback_reason) with
# `--driver firecracker`, in up to three phases:
#   1. plain: one TAP in the host's namespace (THAW_FIRECRACKER_TAP), no jail;
#   2. netns: each VM in its own network namespace thv-TAG-N on its TAP tap0
#      (`--netns`), Firecracker under the nsenter/setpriv/mount jail that QEMU
#      uses (THAW_JAILER=none);
#   3. jailer (only when a jailer is given): the same namespaces, Firecracker
#      started by the jailer (--id, --exec-file, --uid/--gid 200000+N,
#      --chroot-base-dir in the VM folder, --netns /var/run/netns/thv-...).
# Each phase prints its JSON on stdout (and keeps it in /tmp/thaw-fc-smoke-PHASE.json)
# and fails unless every thaw was a snapshot boot. After the last phase no thv-
# namespace that was not there before may be left.
# Needs: root, a /dev/kvm that works, the host packages of `npm run setup`
# (guest kernel, qemu-img for the bake's disk copy, iproute2, nftables).
# For phase 2, Firecracker must live under /usr (e.g. /usr/local/bin): the
# mount jail shows a VMM /usr and its own folder only. Everything the script
# creates (the TAP, the namespaces, the bench's temp data folders) is removed.
set -euo pipefail

FC=${1:-}
JAILER=${2:-}
THAWS=${3:-3}
TAP=${THAW_SMOKE_TAP:-thawfcsmoke0}
die() { echo "firecracker-smoke: $*" >&2; exit 2; }

[ -n "$FC" ] || die "usage: $0 /path/to/firecracker [/path/to/jailer] [THAWS]"
[ -x "$FC" ] || die "$FC is not an executable file"
FC=$(readlink -f "$FC")
if [ -n "$JAILER" ]; then
  [ -x "$JAILER" ] || die "$JAILER is not an executable file"
  JAILER=$(readlink -f "$JAILER")
  "$JAILER" --version >&2 || die "$JAILER --version failed"
fi
[ "$(id -u)" = 0 ] || die "run as root (TAP devices, namespaces, VMM uids)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is missing or not read-write: Firecracker needs KVM"
"$FC" --version >&2 || die "$FC --version failed"
case "$FC" in /usr/*) ;; *) echo "firecracker-smoke: $FC is not under /usr: phase 2's mount jail will not find it" >&2 ;; esac
cd "$(dirname "$0")/.."

cleanup() { ip link del "$TAP" 2>/dev/null || true; }
trap cleanup EXIT
NS_BEFORE=$(ip netns list | awk '/^thv-/ {print $1}' | sort)

# Every thaw in a phase's JSON must be a snapshot boot.
check() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const bad = r.thaws.filter((t) => t.boot_mode !== "snapshot");
    if (bad.length) { console.error(`firecracker-smoke: ${process.argv[1]}: ${bad.length} thaw(s) fell back:`, bad.map((t) => t.fallback_reason)); process.exit(1); }
    console.error(`firecracker-smoke: ${process.argv[1]}: ${r.thaws.length} snapshot thaws, median ${r.median_thaw_ms} ms`);
  ' "$1"
}

# run PHASE [VAR=value...]: the lifecycle bench with BENCH_FLAGS, checked.
run() {
  local name=$1
  shift
  echo "firecracker-smoke: phase $name" >&2
  env "$@" node bin/thaw.js --json bench lifecycle --driver firecracker --thaws "$THAWS" "${BENCH_FLAGS[@]}" \
    | tee "/tmp/thaw-fc-smoke-$name.json" | check "$name"
}

# 1. One TAP for the one VM that runs at a time. The guest's init gives itself
# 10.0.2.15/24 via 10.0.2.2 (QEMU's user-mode addresses, also in every seed).
ip tuntap add dev "$TAP" mode tap
ip addr add 10.0.2.2/24 dev "$TAP"
ip link set dev "$TAP" up
BENCH_FLAGS=()
run plain THAW_FIRECRACKER="$FC" THAW_FIRECRACKER_TAP="$TAP" THAW_JAILER=none
ip link del "$TAP"

# 2. Per-VM namespaces; Firecracker under the same jail as QEMU.
BENCH_FLAGS=(--netns)
run netns THAW_FIRECRACKER="$FC" THAW_JAILER=none

# 3. Per-VM namespaces and the jailer.
if [ -n "$JAILER" ]; then
  run jailer THAW_FIRECRACKER="$FC" THAW_JAILER="$JAILER"
fi

NS_AFTER=$(ip netns list | awk '/^thv-/ {print $1}' | sort)
LEFT=$(comm -13 <(echo "$NS_BEFORE") <(echo "$NS_AFTER") | grep . || true)
[ -z "$LEFT" ] || die "namespaces left behind: $LEFT"
echo "firecracker-smoke: all phases passed" >&2
