#!/usr/bin/env bash
# `npm run bench [-- group ...]`: brings up the services (as npm test does), runs the benchmarks, writes
# bench/results.json, and stops the services it started. Compiled first (tsconfig.bench.json → .dmtp/bench-dist).
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
# The benchmarks and every process they start run compiled, as an installed package runs (dist/): through tsx each
# process would also hold the TypeScript loader (~35 MB of resident memory, which coordinator.rss_* would count).
rm -rf .dmtp/bench-dist
npx tsc -p tsconfig.bench.json
export BENCH_RESULTS_FILE="$ROOT/bench/results.json"
run_child node .dmtp/bench-dist/bench/run.js "$@"
