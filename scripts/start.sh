#!/usr/bin/env bash
# `npm start`: set-up (dependencies, engine, Prisma clients), database migration, a production build of the
# dashboard when its sources changed, then the server with an embedded local agent on http://127.0.0.1:3000.
# Environment: DATABASE_URL (default SQLite data/flashlab.db), PORT, HOST, FLASHLAB_ADMIN_TOKEN,
# FLASHLAB_EMBEDDED_AGENT=off to run without the local agent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh

echo "== migrating the database"
node --import ./node_modules/tsx/dist/loader.mjs scripts/migrate.ts

# Rebuild only when something the build reads is newer than the last build.
stamp=.next/.flashlab-build-stamp
if [ ! -f "$stamp" ] || [ -n "$(find app lib contracts server prisma/schema.prisma next.config.js tsconfig.json package-lock.json \
    -newer "$stamp" -type f 2>/dev/null | head -1)" ]; then
  echo "== building the dashboard (next build)"
  npx next build
  touch "$stamp"
fi

export FLASHLAB_EMBEDDED_AGENT="${FLASHLAB_EMBEDDED_AGENT:-on}"
export NODE_ENV=production
echo "== starting flashlab on http://${HOST:-127.0.0.1}:${PORT:-3000}"
exec node --enable-source-maps --import ./node_modules/tsx/dist/loader.mjs server.ts
