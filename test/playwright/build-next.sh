#!/usr/bin/env bash
# Builds the Next app into .next unless a build newer than every source it depends on is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
stamp=.next/BUILD_ID
if [ -f "$stamp" ] && [ -z "$(find app lib contracts server next.config.* package.json -newer "$stamp" -type f 2>/dev/null | head -1)" ]; then
  echo "== Next app is up to date"
  exit 0
fi
echo "== building the Next app"
npx next build
