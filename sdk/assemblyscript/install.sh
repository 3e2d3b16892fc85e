#!/usr/bin/env bash
# Install the AssemblyScript compiler (npm) that sdk/build.py uses for *.ts agents, into
# sdk/assemblyscript/node_modules, with npm's cache under ~/.cache/qhybrid/npm.
set -euo pipefail
cd "$(dirname "$0")"
if [[ -x node_modules/.bin/asc ]] && node_modules/.bin/asc --version 2>/dev/null | grep -q 0.28.20; then
  exit 0
fi
npm install --no-audit --no-fund --cache "${HOME}/.cache/qhybrid/npm" >/dev/null
node_modules/.bin/asc --version
