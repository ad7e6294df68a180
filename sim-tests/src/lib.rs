//! Deterministic simulation of a Horcrux cluster: the real openraft and the real
//! `ClusterState::apply`, in one thread on a paused tokio clock, over an in-memory network
//! that drops, delays and partitions, with nodes crashing and restarting, under a seeded
//! workload. Invariants are checked as the run goes; a run is a pure function of its seed.

// openraft's network and storage traits fix their (large) error types; helpers share them.
#![allow(clippy::result_large_err)]

pub mod mem_store;
pub mod net;
pub mod world;

pub use world::{run, Bug, Outcome, SimConfig};
