//! openraft's type configuration for Horcrux.

use std::io::Cursor;

use horcrux_core::{ApplyError, ApplyOk, Request};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// One log entry's payload: the requests proposed together. The leader gathers concurrent
/// proposals into one entry, so one fsync and one replication round serve all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Request>);

/// What applying one request produced, sent back to its proposer.
pub type ApplyResult = Result<ApplyOk, ApplyError>;

/// What applying one entry produced: one result per request of its [`Batch`], in order
/// (empty for blank and membership entries).
pub type Response = Vec<ApplyResult>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = Response,
        Node = crate::node::HorcruxNode,
        AsyncRuntime = crate::runtime::HorcruxRuntime,
);

// `declare_raft_types!` defaults SnapshotData to `Cursor<Vec<u8>>`; keep the import used.
#[allow(dead_code)]
type SnapshotBytes = Cursor<Vec<u8>>;
