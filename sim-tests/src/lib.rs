//! Deterministic simulation of a Horcrux cluster: the real openraft, the real
//! `ClusterState::apply`, the real proposal batching and the real guest actors (actix), in
//! one thread on a paused tokio clock, over an in-memory network that drops, delays and
//! partitions and simulated hosts whose QEMU is slow, fails and dies, with nodes crashing
//! (with or without power loss) and restarting, under a seeded workload. Invariants are checked as the run goes; a run is a pure function of its seed.

// openraft's network and storage traits fix their (large) error types; helpers share them.
#![allow(clippy::result_large_err)]

// openraft's un-`biased` `select!`s draw from tokio's runtime RNG; only with
// `--cfg tokio_unstable` (set in .cargo/config.toml) can a test seed it.
#[cfg(not(tokio_unstable))]
compile_error!("sim-tests must be built with RUSTFLAGS='--cfg tokio_unstable' (see .cargo/config.toml)");

pub mod ha;
pub mod host;
pub mod mem_store;
pub mod net;
pub mod port;
pub mod store;
pub mod world;

pub use world::{run, Bug, Outcome, SimConfig, StoreKind};

/// The simulation's runtime: one thread, a paused clock, and every source of randomness
/// seeded from `seed` (tokio's own RNG, behind `select!` and the scheduler, and the thread
/// RNG openraft draws election timeouts from).
pub fn runtime(seed: u64) -> tokio::runtime::Runtime {
    horcrux_raft::runtime::seed_thread_rng(seed);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("a current-thread runtime")
}
