#!/usr/bin/env bash
# The test command (`npm test`; CI runs exactly this through .ci/run).
# Installs what it needs, starts a throwaway Postgres for the store tests,
# type-checks, then runs every test: unit tests next to the code
# (src/**/*.test.ts) and real-VM tests (test/vm/*.test.ts), one file at a time
# because VMs under TCG need the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# What only the tests need: clang with libFuzzer and the sanitizers (the agent's fuzz test).
bash scripts/apt-install.sh test clang libclang-rt-14-dev
# Real browsers for the dashboard test (test/vm/dashboard.test.ts drives them with playwright-core).
bash scripts/apt-install.sh test chromium firefox-esr
# A real registry for the OCI image tests.
bash scripts/oci-tools.sh

PGDIR="${TMPDIR:-/tmp}/thaw-pg-test-$$"
cleanup() { bash scripts/pg-stop.sh "$PGDIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
if pg_env="$(PGPORT="${THAW_TEST_PGPORT:-55432}" bash scripts/pg-start.sh "$PGDIR" 2>/tmp/thaw-pg-start.log)"; then
  eval "$pg_env"
  echo "test: Postgres at $THAW_TEST_PG"
else
  echo "test: could not start Postgres (see /tmp/thaw-pg-start.log)"; cat /tmp/thaw-pg-start.log; exit 1
fi

echo "test: type-check"
npx tsc --noEmit -p .
npx tsc --noEmit -p web

mapfile -t files < <(find src test -name '*.test.ts' -not -path '*/node_modules/*' | sort)
echo "test: ${#files[@]} test files"
node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
