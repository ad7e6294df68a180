//! Membership and quorum as this node sees them: who is a voter or learner, who answered
//! recently, who leads, and whether the voters that answer are a majority (votequorum's
//! rule: quorate when votes >= expected / 2 + 1).

use serde::Serialize;

use crate::types::NodeId;

/// A member that has not answered for this long counts as offline.
pub const ONLINE_WITHIN_MS: u64 = 2_000;

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub api_address: String,
    pub voter: bool,
    pub online: bool,
    pub local: bool,
    /// Milliseconds since this node last heard from the member (0 for itself).
    pub last_contact_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub leader: Option<String>,
    pub leader_id: Option<NodeId>,
    pub quorate: bool,
    /// Online voters.
    pub votes: u32,
    /// All voters.
    pub expected_votes: u32,
    pub quorum: u32,
    pub term: u64,
    pub nodes: Vec<MemberStatus>,
    /// This node's log: what it applied, its last snapshot, and what it compacted away.
    pub local: LocalLog,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalLog {
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
}

/// Votes needed for quorum among `expected` voters.
pub fn quorum_of(expected: u32) -> u32 {
    expected / 2 + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn majority() {
        assert_eq!(super::quorum_of(1), 1);
        assert_eq!(super::quorum_of(2), 2);
        assert_eq!(super::quorum_of(3), 2);
        assert_eq!(super::quorum_of(5), 3);
    }
}
