#!/usr/bin/env bash
# Builds the dashboard into .next unless the last build is newer than everything it reads. The stamp and the list
# are the ones `npm start` (scripts/start.sh) uses, so a build made by either serves both.
set -euo pipefail
cd "$(dirname "$0")/../.."
stamp=.next/.flashlab-build-stamp
if [ -f "$stamp" ] && [ -z "$(find app lib contracts server prisma/schema.prisma next.config.js tsconfig.json package-lock.json \
    -newer "$stamp" -type f 2>/dev/null | head -1)" ]; then
  echo "== dashboard build is up to date"
  exit 0
fi
echo "== building the dashboard (next build)"
npx next build
touch "$stamp"
