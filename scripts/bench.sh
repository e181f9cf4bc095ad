#!/usr/bin/env bash
# `npm run bench [-- group ...]`: brings up the services (as npm test does), runs the benchmarks, writes
# bench/results.json, and stops the services it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/ensure-deps.sh
started="$(mktemp)"
cleanup() {
  local rc=$?
  # shellcheck disable=SC2046
  [ -s "$started" ] && bash scripts/services.sh down $(sort -u "$started" | tr '\n' ' ') || true
  rm -f "$started"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash scripts/services.sh up --started-file "$started"
set -a
eval "$(bash scripts/services.sh env)"
set +a
npx tsx bench/run.ts "$@"
