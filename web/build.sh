#!/usr/bin/env bash
# Builds the web console into web/dist (checked in), or with --check verifies that web/dist is what
# the sources build to.
#
# node_modules are installed once per lockfile (npm ci) under the cargo target dir, never in the
# source tree. The build itself runs in a scratch copy of web/ and proto/ under the target dir, so
# the source tree is only written at web/dist, and only without --check.
set -euo pipefail

mode=build
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: bash web/build.sh [--check]" >&2; exit 2 ;;
esac

web="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$web")"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
mkdir -p "$target"

# One node_modules per lockfile, shared by every build.
hash="$(sha256sum "$web/package-lock.json" | cut -c1-16)"
deps="$target/web-node-$hash"
if [ ! -f "$deps/.installed" ]; then
  mkdir -p "$deps"
  (
    flock 9
    if [ ! -f "$deps/.installed" ]; then
      rm -rf "$deps/node_modules"
      cp "$web/package.json" "$web/package-lock.json" "$deps/"
      echo "web: npm ci into $deps" >&2
      (cd "$deps" && CI=true npm ci --no-audit --no-fund --loglevel=error </dev/null >&2)
      touch "$deps/.installed"
    fi
  ) 9>"$deps/.lock"
fi

scratch="$(mktemp -d "$target/web-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/web" "$scratch/proto"
tar -C "$web" --exclude=./dist --exclude=./node_modules --exclude=./src/gen --exclude=./.vite-cache -cf - . \
  | tar -C "$scratch/web" -xf -
cp -R "$root/proto/." "$scratch/proto/"
ln -s "$deps/node_modules" "$scratch/web/node_modules"

(
  cd "$scratch/web"
  export PATH="$scratch/web/node_modules/.bin:$PATH" CI=true
  buf generate >&2
  tsc --noEmit -p . >&2
  vite build --logLevel warn >&2
) </dev/null

if [ "$mode" = check ]; then
  if ! diff -r "$web/dist" "$scratch/web/dist" >/dev/null 2>&1; then
    echo "web/dist is stale: it differs from what web/ and proto/ build to." >&2
    diff -rq "$web/dist" "$scratch/web/dist" >&2 || true
    echo "Run: bash web/build.sh (and commit web/dist)" >&2
    exit 1
  fi
  echo "web/dist is up to date." >&2
else
  rm -rf "$web/dist"
  cp -R "$scratch/web/dist" "$web/dist"
  echo "web: built web/dist" >&2
fi
