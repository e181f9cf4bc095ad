#!/usr/bin/env bash
# Installs the npm dependencies when they are missing or older than package-lock.json, so that `npm test`,
# `npm run demo` and `npm run bench` work on a fresh clone with no `npm install` first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "deps: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
