#!/usr/bin/env bash
# `npm test`: installs what is missing, brings up the real services the tests need (etcd, Kafka, PostgreSQL on
# 127.0.0.1), type-checks and lints, runs the unit tests then the integration tests, and stops the services it
# started — also when a test fails or the run is interrupted. Services that were already running are left alone.
#   npm test                  # everything
#   npm test -- unit          # unit tests only (no services)
#   npm test -- integration   # integration tests only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
what="${1:-all}"
case "$what" in
  all | unit | integration) ;;
  *) echo "usage: npm test [-- unit|integration] (not '$what')" >&2; exit 2 ;;
esac

bash scripts/ensure-deps.sh

# shellcheck source=scripts/run-guard.sh
source scripts/run-guard.sh

if [ "$what" = all ]; then
  echo "== typecheck and lint" >&2
  npx tsc -p tsconfig.json --noEmit
  npx eslint .
  npx prettier --check . >/dev/null || { npx prettier --check .; exit 1; }
  bash scripts/gen-api-docs.sh --check # the API reference in docs/api must match the code
fi
if [ "$what" = all ] || [ "$what" = unit ]; then
  echo "== unit tests" >&2
  run_child npx mocha --reporter test/support/reporter.js --reporter-option label=unit 'test/unit/**/*.test.ts'
fi
if [ "$what" = all ] || [ "$what" = integration ]; then
  echo "== services" >&2
  bash scripts/services.sh up --started-file "$started"
  set -a
  eval "$(bash scripts/services.sh env)"
  set +a
  echo "== integration tests (etcd $ETCD_ENDPOINTS, kafka $KAFKA_BROKERS, postgres $DATABASE_URL)" >&2
  run_child npx mocha --reporter test/support/reporter.js --reporter-option label=integration 'test/integration/**/*.test.ts'
fi
