#!/usr/bin/env bash
# The whole test suite: installs the Debian packages and builds the tiny guest the tests
# need (scripts/lab.sh), then builds once and runs every test with cargo nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lab.sh
export HORCRUX_TINY_GUEST="${HORCRUX_TINY_GUEST:-$PWD/.lab/tiny-guest}"
cargo build --workspace --all-targets --locked
# The deterministic simulation sweeps: 500 seeds x 60 s of simulated time, 5 nodes (+2 that
# join and leave), every fault kind on, over the in-memory disk model (about 1 min in
# release); then 100 seeds over the product's RocksDB stores (about 1 min). A failing seed
# prints its replay command.
cargo run --release --locked -p sim-tests -- --seeds 500 --secs 60
cargo run --release --locked -p sim-tests -- --seeds 100 --secs 60 --store rocksdb
# The HA protocol simulation (leases, fence, manager under crashes, kills, hangs,
# partitions and 5% clock drift): 1000 seeds x 120 s, with the failover-time distribution.
HA_SIM_SEEDS=1000 cargo test --release --locked -p sim-tests --test ha -- --nocapture
cargo nextest run --workspace --locked --profile ci "$@"
