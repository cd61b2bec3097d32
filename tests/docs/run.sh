#!/usr/bin/env bash
# Renders /docs (Swagger UI) and /redoc (ReDoc) of a real `keyhouse serve` in headless Chromium
# with nothing reachable but localhost, takes screenshots and checks both pages list the
# endpoints. Needs Debian's `chromium` package and Node.js 20.
#
# Usage: bash tests/docs/run.sh [screenshot-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."

shots="${1:-target/docs-screenshots}"
mkdir -p "$shots"
command -v chromium >/dev/null || { echo "tests/docs: Debian's chromium package is needed (apt-get install chromium)" >&2; exit 1; }
[ -d tests/docs/node_modules/playwright-core ] || npm ci --no-audit --no-fund --prefix tests/docs

cargo build --quiet --locked -p keyhouse
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="sqlite://$work/keyhouse.db?mode=rwc" KEYHOUSE_LISTEN="127.0.0.1:$port" \
  target/debug/keyhouse serve >"$work/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
node tests/docs/check.mjs "http://127.0.0.1:$port" "$shots"
echo "docs: screenshots in $shots"
