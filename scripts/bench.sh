#!/usr/bin/env bash
# `npm run bench [-- group ...]`: brings up the services (as npm test does), runs the benchmarks, writes
# bench/results.json, and stops the services it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/ensure-deps.sh
# shellcheck source=scripts/run-guard.sh
source scripts/run-guard.sh
bash scripts/services.sh up --started-file "$started"
set -a
eval "$(bash scripts/services.sh env)"
set +a
run_child npx tsx bench/run.ts "$@"
