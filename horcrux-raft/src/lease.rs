//! HA leases through the leader (`docs/ha.md`): a member asks the leader to renew its
//! lease; the leader confirms its leadership with a heartbeat round a majority answers
//! (the check a linearizable read makes) *after* the request arrived, records the grant in
//! its [`LeaseTable`] on its monotonic clock, and answers with its commit index. Grants
//! are not log entries: the table belongs to one term, and a new leader starts an empty one
//! (counting every lease from its takeover).

use std::time::Duration;

use horcrux_core::ha::lease::LeaseTable;
use horcrux_core::ha::manager;
use horcrux_core::ha::resources::HaOptions;
use openraft::ServerState;

use crate::handle::{ClusterHandle, ProposeError};
use crate::transport::{ForwardError, RpcRequest, RpcResponse};
use crate::types::NodeId;

/// Milliseconds of this host's monotonic clock (`CLOCK_MONOTONIC`, the clock the fence
/// reads too), never stepped.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// How long a renewal may take before the node counts it failed (it renews every second).
const RENEW_TIMEOUT: Duration = Duration::from_millis(1500);

impl ClusterHandle {
    /// The term this node leads, if it is the leader.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.state == ServerState::Leader && m.current_leader == Some(self.node_id)).then_some(m.current_term)
    }

    /// As leader, the lease table of the current term (started now if this term has none).
    pub fn lease_table(&self) -> Option<LeaseTable> {
        let term = self.leading_term()?;
        let mut t = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if t.as_ref().is_none_or(|t| t.term != term) {
            *t = Some(LeaseTable::new(term, monotonic_ms()));
        }
        t.clone()
    }

    /// Grants `node`'s renewal if this node leads: leadership is confirmed after the
    /// request arrived, and the grant recorded only if the term did not change meanwhile.
    pub async fn grant_lease_here(&self, node: &str) -> Result<u64, ForwardError> {
        let Some(term) = self.leading_term() else {
            let leader = self.raft.metrics().borrow().current_leader;
            return Err(ForwardError::NotLeader { leader });
        };
        let index = self.read_index_here().await?;
        let now = monotonic_ms();
        if self.leading_term() != Some(term) {
            return Err(ForwardError::Unavailable("leadership changed during the renewal".into()));
        }
        let opts = self.read_local(|s| HaOptions::from_options(&s.options));
        let mut t = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let table = match t.as_mut() {
            Some(table) if table.term == term => table,
            _ => t.insert(LeaseTable::new(term, now)),
        };
        // A node declared failed gets no lease until the manager has fenced its guests
        // (found by the HA simulation: granting first lets it restart a guest the manager
        // is about to recover elsewhere).
        let live = table.liveness(node, now, &opts);
        if self.read_local(|s| manager::withhold_lease(s, node, live)) {
            return Err(ForwardError::Refused(format!(
                "node {node} was declared failed; its HA guests are being fenced"
            )));
        }
        table.grant(node, now);
        Ok(index)
    }

    /// A renewal asked by member `peer` (named by its certificate).
    pub(crate) async fn grant_lease_to_member(&self, peer: NodeId) -> Result<u64, ForwardError> {
        let name = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().get_node(&peer).map(|n| n.name.clone())
        };
        let name = name.ok_or_else(|| ForwardError::Refused(format!("node {peer} is not a member")))?;
        self.grant_lease_here(&name).await
    }

    /// Renews this node's lease through the leader; answers the leader's commit index at
    /// the grant. The caller counts the lease from before it called.
    pub async fn renew_lease(&self) -> Result<u64, ProposeError> {
        let attempt = async {
            match self.grant_lease_here(&self.node_name).await {
                Ok(i) => Ok(i),
                Err(ForwardError::NotLeader { .. }) => {
                    let (Some((id, node)), Some(net)) = (self.leader_node(), &self.net) else {
                        return Err(ProposeError::Unavailable("no leader is elected".into()));
                    };
                    if id == self.node_id {
                        return Err(ProposeError::Unavailable("leadership is changing".into()));
                    }
                    match net.call(Some(id), &node.raft_addr, &RpcRequest::RenewLease, RENEW_TIMEOUT).await {
                        Ok(RpcResponse::Lease(Ok(i))) => Ok(i),
                        Ok(RpcResponse::Lease(Err(e))) => Err(ProposeError::Unavailable(e.to_string())),
                        Ok(_) => Err(ProposeError::Unavailable("unexpected reply from the leader".into())),
                        Err(e) => {
                            Err(ProposeError::Unavailable(format!("leader {} unreachable: {e}", node.name)))
                        }
                    }
                }
                Err(e) => Err(ProposeError::Unavailable(e.to_string())),
            }
        };
        tokio::time::timeout(RENEW_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("the renewal timed out".into())))
    }

    /// The index this node has applied (HA starts wait for the grant's index).
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }
}
