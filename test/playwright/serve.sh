#!/usr/bin/env bash
# Starts the product for the Playwright tests: a fresh SQLite database in a temp folder, migrated, the Next app
# built when its sources changed, then server.ts with its embedded CPU agent on 127.0.0.1:$PORT.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
: "${PORT:?PORT must be set}"
tmp=$(mktemp -d /tmp/flashlab-pw.XXXXXX)
export DATABASE_URL="file:$tmp/flashlab.db" HOST=127.0.0.1 FLASHLAB_EMBEDDED_AGENT=1 NODE_ENV=production
unset FLASHLAB_ADMIN_TOKEN
node --import ./node_modules/tsx/dist/loader.mjs scripts/migrate.ts >&2
bash test/playwright/build-next.sh >&2
trap 'rm -rf "$tmp"' EXIT
node --import ./node_modules/tsx/dist/loader.mjs server.ts &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid; rm -rf "$tmp"' EXIT TERM INT
wait $pid
