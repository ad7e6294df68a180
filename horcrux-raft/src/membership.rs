//! Membership: liveness between members, cluster status and the votequorum view, join
//! tokens and admission, promotion of learners (keeping voters odd), and removal.

use std::collections::BTreeSet;
use std::time::Duration;

use horcrux_core::{ids, Command};
use openraft::{ChangeMembers, Raft, ServerState};

use crate::corosync::{QuorumMember, QuorumView};
use crate::handle::{ClusterHandle, ProposeError, MAX_VOTERS, OP_TIMEOUT};
use crate::join::JoinTokenData;
use crate::node::HorcruxNode;
use crate::pki::ClusterCa;

/// Failed join attempts one source address may make per minute.
pub const MAX_JOIN_FAILURES: usize = 10;
const JOIN_FAILURE_WINDOW_MS: u64 = 60_000;
use crate::status::{quorum_of, ClusterStatus, LocalLog, MemberStatus, ONLINE_WITHIN_MS};
use crate::transport::{ForwardError, JoinRequest, JoinResponse, RpcRequest, RpcResponse};
use crate::types::{NodeId, TypeConfig};

/// How many voters a cluster of `members` nodes should have: odd, at most `MAX_VOTERS`.
pub fn voter_target(members: usize) -> usize {
    let n = members.clamp(1, MAX_VOTERS);
    if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

impl ClusterHandle {
    pub fn heard_from(&self, node: NodeId) {
        if let Some(net) = &self.net {
            net.heard_from(node);
        }
    }

    pub(crate) async fn ping_loop(self) {
        let Some(net) = self.net.clone() else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !self.is_stopping() {
            tick.tick().await;
            let _ = self.cluster_status();
            let members: Vec<(NodeId, HorcruxNode)> = {
                let m = self.raft.metrics().borrow().membership_config.clone();
                m.membership()
                    .nodes()
                    .filter(|(id, _)| **id != self.node_id)
                    .map(|(id, n)| (*id, n.clone()))
                    .collect()
            };
            for (id, node) in members {
                let (net, me) = (net.clone(), self.node_id);
                tokio::spawn(async move {
                    let _ = net
                        .call(
                            Some(id),
                            &node.raft_addr,
                            &RpcRequest::Ping { from: me },
                            Duration::from_secs(1),
                        )
                        .await;
                });
            }
        }
    }

    /// Membership, liveness and quorum as this node sees them.
    pub fn cluster_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut nodes = Vec::new();
        let mut votes = 0;
        for (id, node) in membership.nodes() {
            let local = *id == self.node_id;
            let since = if local {
                Some(Duration::ZERO)
            } else {
                self.net.as_ref().and_then(|n| n.last_contact(*id))
            };
            let online = since.is_some_and(|d| d.as_millis() as u64 <= ONLINE_WITHIN_MS);
            let voter = voters.contains(id);
            if voter && online {
                votes += 1;
            }
            nodes.push(MemberStatus {
                id: *id,
                name: node.name.clone(),
                address: node.raft_addr.clone(),
                api_address: node.api_addr.clone(),
                voter,
                online,
                local,
                last_contact_ms: since.map(|d| d.as_millis() as u64),
            });
        }
        let expected = voters.len() as u32;
        let leader_id = m.current_leader;
        ClusterStatus {
            leader: leader_id.and_then(|l| membership.get_node(&l)).map(|n| n.name.clone()),
            leader_id,
            quorate: votes >= quorum_of(expected),
            votes,
            expected_votes: expected,
            quorum: quorum_of(expected),
            term: m.current_term,
            nodes,
            local: LocalLog {
                last_applied: m.last_applied.map(|l| l.index),
                snapshot: m.snapshot.map(|l| l.index),
                purged: m.purged.map(|l| l.index),
            },
        }
    }

    /// What `corosync-quorumtool -s` would print on this node if corosync ran this cluster:
    /// the Raft membership as it is (one vote per voter, expected votes the number of
    /// voters, quorate when Raft has a majority), with node names and ids from an imported
    /// corosync.conf where they match members (else the Raft ids). It never shows a state
    /// the cluster is not in: an imported `expected_votes`, `two_node` or `wait_for_all`
    /// does not change what Raft needs for quorum, so it does not change the view either.
    pub fn quorum_view(&self) -> QuorumView {
        let status = self.cluster_status();
        let seed = self.read_local(|s| s.corosync.clone());
        let nodeid = |name: &str, raft_id: NodeId| {
            seed.as_ref()
                .and_then(|c| c.nodes.iter().find(|n| n.name == name))
                .map(|n| n.nodeid)
                .unwrap_or(raft_id as u32)
        };
        let mut members: Vec<QuorumMember> = status
            .nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| QuorumMember {
                nodeid: nodeid(&n.name, n.id),
                votes: u32::from(n.voter),
                name: n.name.clone(),
                local: n.local,
            })
            .collect();
        members.sort_by_key(|m| m.nodeid);
        let total: u32 = members.iter().map(|m| m.votes).sum();
        let local = status.nodes.iter().find(|n| n.local);
        let local_id = local.map(|n| nodeid(&n.name, n.id)).unwrap_or(self.node_id as u32);
        let ring_rep = status
            .leader_id
            .and_then(|l| status.nodes.iter().find(|n| n.id == l))
            .map(|n| nodeid(&n.name, n.id))
            .unwrap_or(local_id);
        QuorumView {
            date_unix: self.now_ms() / 1000,
            node_id: local_id,
            ring_id: format!("{ring_rep}.{:x}", status.term),
            expected_votes: status.expected_votes,
            highest_expected: status.expected_votes.max(total),
            total_votes: total,
            quorum: status.quorum,
            quorate: status.quorate,
            two_node: false,
            wait_for_all: false,
            members,
        }
    }

    /// Creates a join token valid for `ttl`; returns it encoded.
    pub async fn create_join_token(&self, ttl: Duration) -> Result<String, ProposeError> {
        let Some(ca) = self.read_local(|s| s.cluster_ca.clone()) else {
            // The node's configuration, not a passing outage: 409, not 503.
            return Err(ProposeError::Rejected(horcrux_core::ApplyError::Conflict {
                message: "this cluster has no transport: start the node with --cluster-listen to add members"
                    .into(),
            }));
        };
        if self.net.is_none() {
            return Err(ProposeError::Rejected(horcrux_core::ApplyError::Conflict {
                message: "start this node with --cluster-listen to add members".into(),
            }));
        }
        use rand::Rng;
        let mut rng = rand::rngs::OsRng;
        let id: String = (0..12)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
            .collect();
        let secret: String = (0..32).map(|_| format!("{:02x}", rng.gen::<u8>())).collect();
        let expires_ms = self.now_ms() + ttl.as_millis() as u64;
        self.propose(Command::CreateJoinToken {
            id: id.clone(),
            secret_sha256: ids::sha256_hex(&secret),
            expires_ms,
        })
        .await?;
        let fp = crate::certs::ca_fingerprint(&ca);
        let addrs: Vec<String> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.raft_addr.clone())
            .filter(|a| !a.is_empty())
            .collect();
        let previous = ca.previous_cert_pem.as_deref().and_then(|p| crate::pki::fingerprint_pem(p).ok());
        Ok(JoinTokenData { id, secret, ca_fingerprint: fp, addrs, previous_ca_fingerprint: previous }
            .encode())
    }

    /// Admits a joining node (leader only): consumes its token through Raft, issues its
    /// certificate, adds it as a learner, and promotes it to voter once it caught up.
    pub async fn admit(&self, req: JoinRequest, source: std::net::IpAddr) -> JoinResponse {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return match self.leader_node() {
                Some((_, n)) => JoinResponse::Redirect { leader_addr: n.raft_addr },
                None => JoinResponse::Refused { reason: "no leader: the cluster has lost quorum".into() },
            };
        }
        if self.join_throttled(source) {
            return JoinResponse::Refused {
                reason: format!("too many failed join attempts from {source}; try again in a minute"),
            };
        }
        let answer = self.admit_checked(req).await;
        if matches!(answer, JoinResponse::Refused { .. }) {
            self.join_failed(source);
        }
        answer
    }

    /// Whether `source` failed `MAX_JOIN_FAILURES` times within the last minute.
    fn join_throttled(&self, source: std::net::IpAddr) -> bool {
        let now = self.now_ms();
        let mut f = self.join_failures.lock().unwrap_or_else(|p| p.into_inner());
        let times = f.entry(source).or_default();
        times.retain(|t| now.saturating_sub(*t) < JOIN_FAILURE_WINDOW_MS);
        times.len() >= MAX_JOIN_FAILURES
    }

    fn join_failed(&self, source: std::net::IpAddr) {
        let now = self.now_ms();
        let mut f = self.join_failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded under a flood of sources: forget those whose failures are all old.
        if f.len() > 10_000 {
            f.retain(|_, t| t.iter().any(|t| now.saturating_sub(*t) < JOIN_FAILURE_WINDOW_MS));
        }
        f.entry(source).or_default().push(now);
    }

    async fn admit_checked(&self, req: JoinRequest) -> JoinResponse {
        if req.node.raft_addr.is_empty() {
            return JoinResponse::Refused { reason: "the joining node has no cluster address".into() };
        }
        let Some(public_key) = ids::hex_decode(&req.public_key_hex) else {
            return JoinResponse::Refused { reason: "the join request's public key is not hex".into() };
        };
        let secret_sha256 = ids::sha256_hex(&req.secret);
        // Checked on the leader's state before anything is proposed: a wrong guess writes
        // nothing to the log.
        let now = self.now_ms();
        let check = self.read_local(|s| s.check_join(&req.token_id, &secret_sha256, &req.node.name, now));
        if let Err(e) = check {
            tracing::warn!(node = %req.node.name, "refused a join: {e}");
            return JoinResponse::Refused { reason: e.to_string() };
        }
        let consume = Command::ConsumeJoinToken {
            id: req.token_id.clone(),
            secret_sha256,
            node: req.node.name.clone(),
        };
        if let Err(e) = self.propose(consume).await {
            return JoinResponse::Refused { reason: e.to_string() };
        }
        // The id was assigned in log order by the token's consumption, applied here already.
        let Some(node_id) = self.read_local(|s| s.join_tokens.get(&req.token_id).and_then(|t| t.node_id))
        else {
            return JoinResponse::Refused { reason: "no node id was assigned".into() };
        };
        let Some(rec) = self.read_local(|s| s.cluster_ca.clone()) else {
            return JoinResponse::Refused { reason: "the cluster has no CA".into() };
        };
        let ca = ClusterCa::from_record(&rec);
        let expires_s = crate::pki::now_s() + crate::pki::CERT_LIFETIME_S;
        let cert_pem = match ca.issue_member(node_id, &req.node.name, &public_key, expires_s) {
            Ok(c) => c,
            Err(e) => return JoinResponse::Refused { reason: e.to_string() },
        };
        let fingerprint = match crate::pki::fingerprint_pem(&cert_pem) {
            Ok(f) => f,
            Err(e) => return JoinResponse::Refused { reason: e.to_string() },
        };
        let record = Command::SetMemberCert {
            node_id,
            name: req.node.name.clone(),
            fingerprint,
            keep_previous: false,
            ca: crate::certs::ca_fingerprint(&rec),
        };
        if let Err(e) = self.propose(record).await {
            return JoinResponse::Refused { reason: format!("could not record the certificate: {e}") };
        }
        if let Err(e) = self.raft.add_learner(node_id, req.node.clone(), false).await {
            return JoinResponse::Refused { reason: format!("could not add the node: {e}") };
        }
        tracing::info!(node_id, name = %req.node.name, "admitted a node as learner");
        tokio::spawn(promote_when_caught_up(self.raft.clone(), node_id));
        let members =
            self.read_local(|s| s.member_certs.iter().map(|(id, c)| (*id, c.fingerprint.clone())).collect());
        // Every CA the members trust (two during a roll: some members still present a
        // certificate from the previous one).
        let ca_pem = rec.trusted_pems().concat();
        JoinResponse::Accepted { node_id, cert_pem, ca_pem, members, expires_s }
    }

    /// Removes a member (voter or learner) from the cluster, through the leader.
    pub async fn remove_member(&self, name: &str) -> Result<(), ProposeError> {
        let res = match self.remove_member_here(name).await {
            Err(ForwardError::NotLeader { .. }) => match (self.leader_node(), &self.net) {
                (Some((id, node)), Some(net)) => {
                    let req = RpcRequest::RemoveMember { name: name.to_string() };
                    match net.call(Some(id), &node.raft_addr, &req, OP_TIMEOUT * 3).await {
                        Ok(RpcResponse::RemoveMember(r)) => r,
                        Ok(_) => Err(ForwardError::Unavailable("unexpected reply from the leader".into())),
                        // A node removing itself loses its connection to the leader as the
                        // removal commits (the leader drops non-members), possibly before
                        // the answer arrives: it has left if it has seen the change.
                        Err(_) if name == self.node_name() && self.saw_own_removal().await => Ok(()),
                        Err(e) => {
                            Err(ForwardError::Unavailable(format!("quorum lost: leader unreachable: {e}")))
                        }
                    }
                }
                _ => Err(ForwardError::Unavailable("quorum lost: no leader is elected".into())),
            },
            other => other,
        };
        res.map_err(|e| match e {
            ForwardError::Refused(m) => {
                ProposeError::Rejected(horcrux_core::ApplyError::Conflict { message: m })
            }
            ForwardError::NotLeader { .. } => ProposeError::Unavailable("no leader".into()),
            ForwardError::Unavailable(m) => ProposeError::Unavailable(m),
        })
    }

    /// Whether this node sees itself out of the latest membership it has received, within
    /// a few seconds (the node table alone is not enough: it changes first, and a removal
    /// cut short there is finished by a retry).
    async fn saw_own_removal(&self) -> bool {
        let me = self.node_name().to_string();
        for _ in 0..50 {
            let m = self.raft.metrics().borrow().membership_config.membership().clone();
            if !m.nodes().any(|(_, n)| n.name == me) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Leader only: takes `name` out of the node table (refused there while it owns
    /// guests), then out of the Raft membership (promoting a learner if that leaves room).
    /// In this order the leader can remove itself, and a retry after a partial failure
    /// finishes the job.
    pub async fn remove_member_here(&self, name: &str) -> Result<(), ForwardError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(ForwardError::NotLeader { leader: m.current_leader });
        }
        let membership = m.membership_config.membership().clone();
        let id = membership.nodes().find(|(_, n)| n.name == name).map(|(i, _)| *i);
        if let Some(id) = id {
            if membership.voter_ids().any(|v| v == id) && membership.voter_ids().count() == 1 {
                return Err(ForwardError::Refused("cannot remove the last voter".into()));
            }
        }
        let in_table = match self.propose(Command::RemoveNode { name: name.to_string() }).await {
            Ok(_) => true,
            Err(ProposeError::Rejected(horcrux_core::ApplyError::NotFound { .. })) => false,
            Err(ProposeError::Rejected(e)) => return Err(ForwardError::Refused(e.to_string())),
            Err(e) => return Err(ForwardError::Unavailable(e.to_string())),
        };
        let Some(id) = id else {
            return if in_table {
                Ok(())
            } else {
                Err(ForwardError::Refused(format!("no member named {name}")))
            };
        };
        remove_from_membership(&self.raft, id).await.map_err(ForwardError::Unavailable)?;
        tracing::info!(node_id = id, name, "removed from the cluster");
        Ok(())
    }
}

/// Leader only: takes node `id` (voter or learner) out of the Raft membership, then
/// promotes a learner if that leaves room among the voters. Shared with the simulation.
pub async fn remove_from_membership(raft: &Raft<TypeConfig>, id: NodeId) -> Result<(), String> {
    let membership = raft.metrics().borrow().membership_config.membership().clone();
    let change = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false).await.map_err(|e| e.to_string())?;
    let after = raft.metrics().borrow().membership_config.clone();
    if let Some(l) = after.membership().learner_ids().next() {
        tokio::spawn(promote_when_caught_up(raft.clone(), l));
    }
    Ok(())
}

/// Promotes caught-up learners (`node_id` first) while the voter count is below its
/// target: the largest odd number not above the member count and `MAX_VOTERS`. An odd
/// count never costs fault tolerance (4 voters survive one failure, like 3) and keeps
/// elections decisive; the rest stay learners that replicate and serve reads.
pub async fn promote_when_caught_up(raft: Raft<TypeConfig>, node_id: NodeId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while tokio::time::Instant::now() < deadline {
        let m = raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return;
        }
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        let members = membership.nodes().count();
        let target = voter_target(members);
        if voters >= target {
            if voters >= MAX_VOTERS {
                tracing::info!(node_id, "voters capped at {MAX_VOTERS}; the node stays a learner");
            }
            return;
        }
        let caught_up = |id: &NodeId| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned()).flatten().map(|l| l.index);
            matches!((matched, m.last_log_index), (Some(a), Some(b)) if b.saturating_sub(a) <= 10)
        };
        let mut ready: Vec<NodeId> = membership.learner_ids().filter(|id| caught_up(id)).collect();
        ready.sort_by_key(|id| (*id != node_id, *id));
        let need = target - voters;
        if ready.len() >= need {
            let ids: BTreeSet<NodeId> = ready.into_iter().take(need).collect();
            match raft.change_membership(ChangeMembers::AddVoterIds(ids.clone()), false).await {
                Ok(_) => {
                    tracing::info!(?ids, "promoted to voter");
                    return;
                }
                Err(e) => tracing::warn!(?ids, "promotion failed, retrying: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn voter_targets_are_odd_and_capped() {
        let t: Vec<usize> = (1..=8).map(super::voter_target).collect();
        assert_eq!(t, vec![1, 1, 3, 3, 5, 5, 5, 5]);
    }
}
