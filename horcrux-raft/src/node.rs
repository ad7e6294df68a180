//! What the Raft membership records about a node.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct HorcruxNode {
    pub name: String,
    /// QUIC address for Raft and node-to-node RPCs (empty for a standalone node).
    pub raft_addr: String,
    /// HTTPS API address.
    pub api_addr: String,
}

impl std::fmt::Display for HorcruxNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}
