#!/usr/bin/env bash
# `npm test`: does its own set-up (dependencies, native engine, Prisma client), then runs every test.
# Node's test runner runs test/**/*.test.ts; Playwright runs test/playwright/*.spec.ts in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh

mapfile -t files < <(find test -name '*.test.ts' -not -path 'test/fixtures/*' | sort)
echo "== node tests (${#files[@]} files)"
status=0
node --import ./node_modules/tsx/dist/loader.mjs --test --test-concurrency=2 --test-timeout=900000 \
  --test-reporter=spec "${files[@]}" || status=$?

if [ -d test/playwright ] && ls test/playwright/*.spec.ts >/dev/null 2>&1; then
  echo "== playwright"
  npx playwright test --config test/playwright/playwright.config.ts || status=$?
fi
exit $status
