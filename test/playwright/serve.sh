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
# Playwright signals the whole process group, so the server usually stops on its own; a second SIGTERM would make
# it skip its graceful shutdown. Send one only if it is still running after 10 s.
stop() {
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap stop EXIT TERM INT
wait $pid
