#!/usr/bin/env bash
# Stop the throwaway Postgres started by scripts/pg-start.sh and remove its data dir.
#   scripts/pg-stop.sh [DATA_DIR]    # defaults to /tmp/thaw-pg
set -euo pipefail

dir=${1:-/tmp/thaw-pg}
[ -e "$dir" ] || exit 0
if [ ! -f "$dir/PG_VERSION" ] && [ -n "$(ls -A "$dir")" ]; then
  echo "pg-stop: $dir is not a Postgres data dir; leaving it alone" >&2
  exit 1
fi

if [ -f "$dir/postmaster.pid" ]; then
  bin=/usr/lib/postgresql/$(cat "$dir/PG_VERSION")/bin
  if [ "$(id -u)" = 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi
  as_pg "$bin/pg_ctl" -D "$dir" -m fast -w -t 30 stop >&2 || true
fi
rm -rf "$dir"
