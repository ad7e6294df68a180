//! The replicated log: openraft with RocksDB storage, and the [`ClusterHandle`] the rest of
//! Horcrux uses to propose commands and read cluster state.

mod handle;
mod log_store;
mod network;
mod state_machine;
mod store;
mod types;

pub use handle::{ClusterHandle, OpenOptions, ProposeError};
pub use network::NoPeerNetwork;
pub use state_machine::StateMachineStore;
pub use types::{NodeId, Response, TypeConfig};
