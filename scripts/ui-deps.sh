#!/usr/bin/env bash
# Installs the browser tests' npm packages (tests/ui: playwright-core, axe-core) from
# tests/ui/package-lock.json with `npm ci`, when tests/ui/node_modules is missing or older
# than the lock file. Called by scripts/deps.sh once Node.js, npm and Chromium are there.
# No browser is downloaded: the tests drive Debian's /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
# playwright-core 1.61.1 needs Node.js >= 18 (1.62 and later need 20).
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "ui-deps: Node.js $(node --version) is too old for playwright-core: 18 or later is needed" >&2
  exit 1
fi
# npm writes node_modules/.package-lock.json at the end of every install.
stamp=tests/ui/node_modules/.package-lock.json
if [ ! -e "$stamp" ] || [ tests/ui/package-lock.json -nt "$stamp" ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error
fi
