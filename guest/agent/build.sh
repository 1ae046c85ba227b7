#!/usr/bin/env bash
# Builds the static guest agent: build.sh OUT_BINARY
# Needs gcc, libsodium-dev and libjansson-dev (their static libraries).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUT}"
gcc -std=gnu11 -Os -static -Wall -Wextra -Werror -Wno-unused-parameter -fno-strict-aliasing \
  -ffunction-sections -fdata-sections -Wl,--gc-sections -s \
  -o "$out" "$here"/main.c "$here"/init.c "$here"/loop.c "$here"/protocol.c "$here"/ops.c \
  "$here"/app.c "$here"/volume.c "$here"/gate.c "$here"/seal.c "$here"/util.c -lsodium -ljansson -lm
