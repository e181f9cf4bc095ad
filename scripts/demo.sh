#!/usr/bin/env bash
# `npm run demo [-- --short]`: installs what is missing, brings up etcd, Kafka and PostgreSQL on 127.0.0.1 (as
# npm test does; services you point at with ETCD_ENDPOINTS, KAFKA_BROKERS, DATABASE_URL are used as they are),
# runs the example shop (examples/demo.ts: a coordinator and the shop's services as child processes, a few hundred
# orders, one instance killed and restarted, consistency checks from the databases and the Kafka topic), and
# stops the services it started — also when the demo fails or is interrupted. Exits with the demo's status.
#   npm run demo                      # 300 orders (DEMO_ORDERS, DEMO_CONCURRENCY to change)
#   npm run demo -- --short           # about 60 orders, for CI
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/ensure-deps.sh

# shellcheck source=scripts/run-guard.sh
source scripts/run-guard.sh

echo "== services" >&2
bash scripts/services.sh up --started-file "$started"
set -a
eval "$(bash scripts/services.sh env)"
set +a
# Not exec: the trap above must still stop the services once the demo is done. The demo stops its own children
# on SIGINT/SIGTERM before it exits.
run_child npx tsx examples/demo.ts "$@"
