#!/usr/bin/env bash
# Runs Horcrux: a single-node cluster in /var/lib/horcrux, HTTPS API on 0.0.0.0:8006.
# Extra arguments go to `horcrux serve` (e.g. --data-dir, --listen, --node-name).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked --bin horcrux
exec target/release/horcrux serve "$@"
