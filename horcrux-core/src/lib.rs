//! Horcrux's domain model and replicated state machine.
//!
//! Pure code: no I/O, no clocks, no randomness. Every mutation of cluster state is a
//! [`Command`] applied by [`ClusterState::apply`], a deterministic function of the log.

pub mod access;
pub mod arch;
pub mod command;
pub mod evolving;
pub mod ha;
pub mod ids;
pub mod model;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod totp;
pub mod upid;
pub mod vmconfig;

pub use command::{ApplyError, ApplyOk, Command, Request, RequestId};
pub use ids::ValidationError;
pub use model::*;
pub use state::ClusterState;
pub use storage::{StorageConfig, StorageKind, StoragePool};
pub use upid::Upid;
