//! openraft's type configuration for Horcrux.

use std::io::Cursor;

use horcrux_core::{ApplyError, ApplyOk, Request};

pub type NodeId = u64;

/// What applying one entry produced, sent back to the proposer.
pub type Response = Result<ApplyOk, ApplyError>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        Node = crate::node::HorcruxNode,
        AsyncRuntime = crate::runtime::HorcruxRuntime,
);

// `declare_raft_types!` defaults SnapshotData to `Cursor<Vec<u8>>`; keep the import used.
#[allow(dead_code)]
type SnapshotBytes = Cursor<Vec<u8>>;
