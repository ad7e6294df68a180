#!/usr/bin/env bash
# Benchmark: time from a start request to QMP `running`, Horcrux vs the same QEMU command
# line launched bare. Usage: bench/vm-start.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lab.sh
cargo build --release --locked --bin horcrux
exec python3 bench/vm-start.py "$PWD/target/release/horcrux" "${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}" "${1:-5}"
