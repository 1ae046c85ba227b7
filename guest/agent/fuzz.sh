#!/usr/bin/env bash
# Fuzzes the agent's message parser: fuzz.sh SECONDS WORKDIR
# Builds fuzz.c with protocol.c, seal.c and util.c under libFuzzer, ASan and
# UBSan into WORKDIR, then runs it for SECONDS over a copy of corpus/ (the
# run adds what it finds to WORKDIR/corpus, never to the repo). Exits non-zero
# when libFuzzer finds a crash, leak, UB or timeout; the input that did it is
# left in WORKDIR (crash-*, leak-*, timeout-*): add it to corpus/ with the fix.
# Needs clang and libclang-rt-14-dev (apt-get install clang libclang-rt-14-dev),
# libsodium-dev and libjansson-dev.
# Extra arguments after WORKDIR go to libFuzzer (e.g. -jobs=2, or an input
# file to replay instead of fuzzing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:?usage: fuzz.sh SECONDS WORKDIR}"
work="${2:?usage: fuzz.sh SECONDS WORKDIR}"
shift 2
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;; esac
if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz.sh: clang not found: apt-get install clang libclang-rt-14-dev" >&2
  exit 127
fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"

clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing \
  -o "$work/agent-fuzz" "$here"/fuzz.c "$here"/protocol.c "$here"/seal.c "$here"/util.c \
  -l:libsodium.a -l:libjansson.a -lm
echo "fuzz.sh: built $work/agent-fuzz"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

if [ "$#" -gt 0 ] && [ -f "${!#}" ]; then # replay inputs: fuzz.sh 0 WORKDIR crash-...
  exec "$work/agent-fuzz" -max_len=131072 -timeout=10 "$@"
fi
[ "$seconds" -gt 0 ] || { echo "fuzz.sh: SECONDS must be at least 1 (0 is for replaying input files)" >&2; exit 2; }

rm -rf "$work/corpus"
cp -R "$here/corpus" "$work/corpus"
# -max_len: a scrub canary of 64 KiB is 87,384 base64 characters.
cd "$work"
"$work/agent-fuzz" -max_total_time="$seconds" -max_len=131072 -timeout=10 -rss_limit_mb=2048 \
  -dict="$here/fuzz.dict" -artifact_prefix="$work/" -print_final_stats=1 "$@" "$work/corpus"
