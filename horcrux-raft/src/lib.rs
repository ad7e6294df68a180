//! The replicated log: openraft with RocksDB storage, and the [`ClusterHandle`] the rest of
//! Horcrux uses to propose commands and read cluster state.

// openraft's storage traits fix `StorageError` (large) as the error type; helpers share it.
#![allow(clippy::result_large_err)]

mod certs;
pub mod codec;
pub mod corosync;
mod handle;
pub mod join;
mod lease;
mod log_store;
mod membership;
mod network;
mod node;
pub mod pki;
mod proposer;
mod raft_thread;
pub mod runtime;
mod state_machine;
pub mod status;
mod store;
pub mod transport;
mod types;
mod upgrade;

pub use handle::{ClusterHandle, ClusterOptions, OpenOptions, ProposeError, MAX_VOTERS};
pub use join::JoinTokenData;
pub use lease::monotonic_ms;
pub use log_store::{sync_and_report, LogStore, SyncQueue};
pub use membership::{promote_when_caught_up, remove_from_membership, voter_target, MAX_JOIN_FAILURES};
pub use network::NoPeerNetwork;
pub use node::HorcruxNode;
pub use proposer::Proposer;
pub use state_machine::{SmData, StateMachineStore};
pub use store::{open_db, open_db_with, OpenError};
pub use types::{ApplyResult, Batch, NodeId, Response, TypeConfig};
