#!/usr/bin/env bash
# `npm start`: install what is needed, start Thaw with the demo app on embedded
# defaults (SQLite, local seed folder, QEMU), and keep it in the foreground.
# Ctrl-C stops Thaw and deletes every VM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DATA="${THAW_DATA:-$HOME/.thaw}"
PORT="${THAW_PORT:-8080}"
API_PORT="${THAW_API_PORT:-7070}"
IDLE="${THAW_IDLE_TIMEOUT:-30}"
export THAW_DATA="$DATA"

node bin/thaw.js up --data "$DATA" --port "$PORT" --api-port "$API_PORT" --idle-timeout "$IDLE" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null' INT TERM EXIT
for _ in $(seq 1 600); do
  [ -f "$DATA/instance.json" ] && node bin/thaw.js --data "$DATA" apps >/dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { echo "thaw up exited; see the log above"; exit 1; }
  sleep 0.2
done

node bin/thaw.js --data "$DATA" deploy examples/hello --name hello --env WHO=world --idle-timeout "$IDLE"
cat <<MSG

Thaw is up with the demo app "hello" (asleep until the first request).
  curl -H 'Host: hello.localhost' http://127.0.0.1:$PORT/          # first request: cold boot (~10 s under TCG)
  curl -H 'Host: hello.localhost' -d 'hi' http://127.0.0.1:$PORT/  # write a marker to the app's disk
  # after ${IDLE}s idle the VM is baked into a seed and deleted; the next request thaws it:
  curl -si -H 'Host: hello.localhost' http://127.0.0.1:$PORT/ | grep -i x-thaw
  THAW_DATA=$DATA npx thaw wakes hello                              # every wake, with its boot mode and timings
  THAW_DATA=$DATA npx thaw env set hello WHO=rotated                # applies at the next wake
Ctrl-C stops Thaw (apps, env, seeds and wake history stay in $DATA).
MSG
wait $UP
