#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (as root) and builds the
# tiny test guest. Idempotent: safe to run before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/tiny-guest.sh "${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}"
