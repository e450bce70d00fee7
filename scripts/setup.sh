#!/usr/bin/env bash
# Shared set-up of `npm start` and `npm test`: installs dependencies when package-lock.json changed, builds the
# native engine when its sources changed, and generates the Prisma client. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if ! command -v g++ >/dev/null || ! command -v make >/dev/null || ! command -v python3 >/dev/null; then
  echo "flashlab needs a C++ toolchain to build its engine: install g++, make and python3 (Debian: apt-get install build-essential python3)" >&2
  exit 1
fi
stamp=node_modules/.flashlab-lock-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  echo "== installing dependencies"
  npm ci --no-audit --no-fund
  touch "$stamp"
fi
echo "== building the native engine"
node scripts/build-native.mjs
if [ -f prisma/schema.prisma ]; then
  echo "== generating the Prisma clients (SQLite and PostgreSQL)"
  node --import ./node_modules/tsx/dist/loader.mjs prisma/generate.ts >/dev/null
fi
