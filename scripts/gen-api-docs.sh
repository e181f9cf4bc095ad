#!/usr/bin/env bash
# Regenerates the API reference (docs/api/*.md) from the TypeScript sources' exports and JSDoc.
#   scripts/gen-api-docs.sh            write docs/api/
#   scripts/gen-api-docs.sh --check    exit 1 if docs/api/ differs from what the sources generate
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec npx tsx scripts/gen-api-docs.ts "$@"
