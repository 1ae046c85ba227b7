#!/usr/bin/env bash
# Start a throwaway Postgres for tests (idempotent).
#   eval "$(scripts/pg-start.sh [DATA_DIR])"     # DATA_DIR defaults to /tmp/thaw-pg; PGPORT overrides 55432
# Runs as the `postgres` OS user when started as root, trust auth on the unix
# socket (in DATA_DIR) and 127.0.0.1, creates database thaw_test, and prints
#   export THAW_TEST_PG=postgres://postgres@127.0.0.1:PORT/thaw_test
# on stdout (everything else goes to stderr). Stop it with scripts/pg-stop.sh.
set -euo pipefail

dir=${1:-/tmp/thaw-pg}
port=${PGPORT:-55432}
db=thaw_test
log() { echo "pg-start: $*" >&2; }

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r b; do [ -x "$b/initdb" ] && echo "$b"; done | tail -n 1; }

bin=$(find_bin)
if [ -z "$bin" ]; then
  log "installing the postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q postgresql >&2; then
    apt-get update -q >&2
    apt-get install -y -q postgresql >&2
  fi
  bin=$(find_bin)
  [ -n "$bin" ] || { log "initdb not found after installing postgresql"; exit 1; }
fi

# Root cannot run postgres: run every server-side tool as the postgres user.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
chmod 700 "$dir"

if [ ! -f "$dir/PG_VERSION" ]; then
  log "initdb $dir"
  as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-sync >&2
fi

if as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  log "already running in $dir"
else
  log "starting on 127.0.0.1:$port"
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >&2 \
    || { tail -n 20 "$dir/server.log" >&2 || true; exit 1; }
fi

for _ in $(seq 1 100); do
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
  sleep 0.1
done
"$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || { log "not ready on port $port"; exit 1; }

psql=("$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1)
if [ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
  "${psql[@]}" -c "CREATE DATABASE $db" >&2
fi

echo "export THAW_TEST_PG=postgres://postgres@127.0.0.1:$port/$db"
