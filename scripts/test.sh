#!/usr/bin/env bash
# The whole test suite: installs the Debian packages and builds the tiny guest the tests
# need (scripts/lab.sh), then builds once and runs every test with cargo nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lab.sh
export HORCRUX_TINY_GUEST="${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}"
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --profile ci "$@"
