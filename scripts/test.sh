#!/usr/bin/env bash
# The whole test suite: installs the Debian packages and builds the tiny guest the tests
# need (scripts/lab.sh), then builds once and runs every test with cargo nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lab.sh
export HORCRUX_TINY_GUEST="${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}"
cargo build --workspace --all-targets --locked
# The deterministic simulation sweep: 500 seeds x 60 s of simulated time, 5 nodes, every
# fault kind on (release build: about 25 s to run). A failing seed prints its replay command.
cargo run --release --locked -p sim-tests -- --seeds 500 --secs 60
cargo nextest run --workspace --locked --profile ci "$@"
