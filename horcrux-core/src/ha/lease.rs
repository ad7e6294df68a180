//! Lease arithmetic (`docs/ha.md`), on plain monotonic milliseconds so that the daemon
//! (with the host's monotonic clock) and the simulation (with simulated, drifting clocks)
//! run the same code.
//!
//! The leader keeps a [`LeaseTable`]: when it last granted each node's renewal, and when it
//! took over. A node is failed once `lease + margin` has passed since the later of the two.
//! The node counts its own lease from when it *sent* the granted renewal ([`NodeLease`]).

use std::collections::BTreeMap;

use super::resources::HaOptions;

/// What the manager may conclude about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its lease runs for this much longer.
    Online { remaining_ms: u64 },
    /// Its lease may have ended but the margin has not passed: it is neither alive nor
    /// known to be fenced (Proxmox's `unknown`).
    Unknown,
    /// `lease + margin` has passed since the last grant: its fence has stopped its HA
    /// guests, they may run elsewhere.
    Failed,
}

/// The leader's grants, on its monotonic clock, for one term of leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    /// The leader's term the grants belong to.
    pub term: u64,
    /// When this leader took over (or first kept this table, if later).
    pub since_ms: u64,
    pub grants: BTreeMap<String, u64>,
}

impl LeaseTable {
    pub fn new(term: u64, now_ms: u64) -> Self {
        LeaseTable { term, since_ms: now_ms, grants: BTreeMap::new() }
    }

    /// Records a grant made now. Call only after the leadership of `term` was confirmed
    /// by a majority *after* the renewal arrived (`docs/ha.md`).
    pub fn grant(&mut self, node: &str, now_ms: u64) {
        let t = self.grants.entry(node.to_string()).or_insert(now_ms);
        *t = (*t).max(now_ms);
    }

    /// The later of the last grant and the takeover: a new leader knows none of its
    /// predecessor's grants, so it counts every lease as granted when it took over.
    pub fn last_grant(&self, node: &str) -> u64 {
        self.grants.get(node).copied().unwrap_or(0).max(self.since_ms)
    }

    pub fn liveness(&self, node: &str, now_ms: u64, o: &HaOptions) -> Liveness {
        let since = now_ms.saturating_sub(self.last_grant(node));
        if since < o.lease_ms {
            Liveness::Online { remaining_ms: o.lease_ms - since }
        } else if since < o.lease_ms + o.margin_ms {
            Liveness::Unknown
        } else {
            Liveness::Failed
        }
    }
}

/// A node's own lease: counted from when it sent the renewal the leader granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLease {
    pub sent_ms: u64,
    pub lease_ms: u64,
    /// The leader's commit index when it granted: HA guests may be started under this lease
    /// only from a state applied at least this far (which includes every recovery the
    /// leader had committed, so a node returning from a hang never starts a guest that was
    /// moved away while it was gone).
    pub grant_index: u64,
}

impl NodeLease {
    /// When the lease ends (and the fence kills the node's HA guests).
    pub fn deadline_ms(&self) -> u64 {
        self.sent_ms + self.lease_ms
    }

    /// Whether an HA guest may be started now, from a state applied up to `applied`,
    /// with at least `min_left_ms` of the lease left.
    pub fn allows_start(&self, now_ms: u64, applied: u64, min_left_ms: u64) -> bool {
        applied >= self.grant_index && now_ms + min_left_ms < self.deadline_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_failed_only_after_lease_and_margin_from_its_last_grant() {
        let o = HaOptions::default();
        let mut t = LeaseTable::new(3, 10_000);
        // A new leader counts from its takeover.
        assert_eq!(t.liveness("a", 13_999, &o), Liveness::Online { remaining_ms: 1 });
        assert_eq!(t.liveness("a", 14_000, &o), Liveness::Unknown);
        assert_eq!(t.liveness("a", 15_999, &o), Liveness::Unknown);
        assert_eq!(t.liveness("a", 16_000, &o), Liveness::Failed);
        t.grant("a", 12_000);
        assert_eq!(t.liveness("a", 16_000, &o), Liveness::Online { remaining_ms: 0 }.min_or_unknown());
        assert_eq!(t.liveness("a", 17_999, &o), Liveness::Unknown);
        assert_eq!(t.liveness("a", 18_000, &o), Liveness::Failed);
        // Grants never move back.
        t.grant("a", 11_000);
        assert_eq!(t.last_grant("a"), 12_000);
    }

    impl Liveness {
        /// `Online { 0 }` is never returned: at exactly `lease` the node is unknown.
        fn min_or_unknown(self) -> Self {
            match self {
                Liveness::Online { remaining_ms: 0 } => Liveness::Unknown,
                l => l,
            }
        }
    }

    #[test]
    fn a_node_starts_guests_only_under_a_current_lease_and_state() {
        let l = NodeLease { sent_ms: 1_000, lease_ms: 4_000, grant_index: 50 };
        assert_eq!(l.deadline_ms(), 5_000);
        assert!(l.allows_start(2_000, 50, 500));
        assert!(!l.allows_start(2_000, 49, 500), "state older than the grant");
        assert!(!l.allows_start(4_600, 60, 500), "too little lease left");
    }
}
