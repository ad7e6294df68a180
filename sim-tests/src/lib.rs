//! Deterministic simulation of a Horcrux cluster: the real openraft, the real
//! `ClusterState::apply`, the real proposal batching and the real guest actors (actix), in
//! one thread on a paused tokio clock, over an in-memory network that drops, delays and
//! partitions and simulated hosts whose QEMU is slow, fails and dies, with nodes crashing
//! (with or without power loss) and restarting, under a seeded workload. Invariants are checked as the run goes; a run is a pure function of its seed.

// openraft's network and storage traits fix their (large) error types; helpers share them.
#![allow(clippy::result_large_err)]

pub mod host;
pub mod mem_store;
pub mod net;
pub mod port;
pub mod store;
pub mod world;

pub use world::{run, Bug, Outcome, SimConfig, StoreKind};
