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
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/keyhouse"
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# As the README's first command runs it: default database (keyhouse.db in the working directory,
# with its key file made on first start); only the port is changed.
(cd "$work" && env -u DATABASE_URL -u KEYHOUSE_ENCRYPTION_KEYS -u ENCRYPTION_KEY \
  KEYHOUSE_LISTEN="127.0.0.1:$port" "$bin" serve >"$work/serve.log" 2>&1) &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
for f in keyhouse.db keyhouse.db.key; do
  [ -f "$work/$f" ] || { echo "tests/docs: keyhouse serve made no $f in its working directory" >&2; cat "$work/serve.log" >&2; exit 1; }
done
[ "$(stat -c %a "$work/keyhouse.db.key")" = 600 ] || { echo "tests/docs: keyhouse.db.key is not mode 0600" >&2; exit 1; }
node tests/docs/check.mjs "http://127.0.0.1:$port" "$shots"
echo "docs: screenshots in $shots"
