#!/usr/bin/env bash
# Rebuild policyd/console/static/vendor/codemirror/codemirror.js from the pinned npm packages.
# Needs node and npm (the npm registry); run from anywhere. The output is committed: policyd
# itself has no build step. The same inputs give a byte-identical bundle (checked: sha256 below).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../static/vendor/codemirror"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$here/entry.mjs" "$work/"
cd "$work"
npm ci --no-audit --no-fund
npx esbuild entry.mjs --bundle --format=esm --minify --legal-comments=none --target=es2020 \
  --outfile="$out/codemirror.js"
for d in node_modules/@codemirror/* node_modules/@lezer/* node_modules/@marijn/* \
         node_modules/crelt node_modules/style-mod node_modules/w3c-keyname; do
  echo "==== ${d#node_modules/} $(node -p "require('./$d/package.json').version") ===="
  cat "$d/LICENSE"
  echo
done > "$out/LICENSES.txt"
sha256sum "$out/codemirror.js"
