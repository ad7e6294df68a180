//! `ClusterHandle`: opens the Raft node over its RocksDB store, initialises a cluster on
//! first start or joins one with a token, proposes commands (forwarding to the leader),
//! reads linearizably (ReadIndex through the leader), and reports membership and quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use horcrux_core::{ids, ApplyOk, ClusterState, Command, Request};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState};
use rocksdb::DB;
use tokio::sync::watch;

use crate::corosync::{QuorumMember, QuorumView, Votequorum};
use crate::join::JoinTokenData;
use crate::log_store::LogStore;
use crate::network::NoPeerNetwork;
use crate::node::HorcruxNode;
use crate::pki::ClusterCa;
use crate::state_machine::StateMachineStore;
use crate::status::{quorum_of, ClusterStatus, LocalLog, MemberStatus, ONLINE_WITHIN_MS};
use crate::store::{cf, open_db, synced, CF_META};
use crate::transport::{
    self, ApiCall, ApiHandler, ApiReply, ForwardError, JoinRequest, JoinResponse, NodeIdentity, QuicNetwork,
    RpcRequest, RpcResponse,
};
use crate::types::{NodeId, Response, TypeConfig};

/// A write or read that cannot complete within this answers "unavailable" (503).
const OP_TIMEOUT: Duration = Duration::from_secs(4);
/// How long start-up waits for a leader before serving anyway (writes then answer 503).
const LEADER_WAIT: Duration = Duration::from_secs(15);
const KEY_NODE: &[u8] = b"node";
/// Voters are capped (odd); further nodes stay learners that replicate and serve reads.
pub const MAX_VOTERS: usize = 5;

#[cfg(test)]
mod tests {
    #[test]
    fn voter_targets_are_odd_and_capped() {
        let t: Vec<usize> = (1..=8).map(super::voter_target).collect();
        assert_eq!(t, vec![1, 1, 3, 3, 5, 5, 5, 5]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] horcrux_core::ApplyError),
    /// No leader, no quorum, or the log could not commit in time.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    #[error("raft storage: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> ProposeError {
    ProposeError::Storage(e.to_string())
}

pub struct ClusterOptions {
    /// QUIC listen address for Raft and node-to-node RPCs (also what peers dial).
    pub listen: SocketAddr,
    /// A join token (`horcrux cluster token create`); used only on first start.
    pub join: Option<String>,
}

pub struct OpenOptions {
    pub dir: PathBuf,
    pub node_name: String,
    /// The HTTPS API address recorded for this node.
    pub api_addr: String,
    /// `None`: a standalone node without a cluster transport.
    pub cluster: Option<ClusterOptions>,
    /// Build a snapshot (and compact the log) every this many entries; `None`: openraft's
    /// default (5000).
    pub snapshot_logs: Option<u64>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Certs {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIdentity {
    id: NodeId,
    name: String,
    #[serde(default)]
    certs: Option<Certs>,
}

fn load_identity(db: &DB) -> Result<Option<StoredIdentity>, ProposeError> {
    match db.get_cf(cf(db, CF_META), KEY_NODE).map_err(storage)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(storage)?)),
        None => Ok(None),
    }
}

fn save_identity(db: &DB, ident: &StoredIdentity) -> Result<(), ProposeError> {
    let bytes = serde_json::to_vec(ident).map_err(storage)?;
    db.put_cf_opt(cf(db, CF_META), KEY_NODE, bytes, &synced()).map_err(storage)
}

/// Cheap to clone; shared by the API, the actors and the transport server.
#[derive(Clone)]
pub struct ClusterHandle {
    raft: Raft<TypeConfig>,
    sm: StateMachineStore,
    node_id: NodeId,
    node_name: Arc<str>,
    net: Option<QuicNetwork>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Every voter has been online at once since this process started (what votequorum's
    /// wait_for_all waits for).
    all_seen: Arc<std::sync::atomic::AtomicBool>,
    api: Arc<std::sync::OnceLock<ApiHandler>>,
}

/// How many voters a cluster of `members` nodes should have: odd, at most `MAX_VOTERS`.
pub fn voter_target(members: usize) -> usize {
    let n = members.clamp(1, MAX_VOTERS);
    if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterHandle {
    /// Opens (or creates) the store in `opts.dir` and starts the Raft node. On first start
    /// the node either initialises a new cluster or joins one with `opts.cluster.join`.
    pub async fn open(opts: OpenOptions) -> Result<Self, ProposeError> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| storage(format!("{}: {e}", opts.dir.display())))?;
        // The store holds the replicated CA key: keep it private to root.
        let _ = std::fs::set_permissions(&opts.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let db = open_db(&opts.dir).map_err(storage)?;
        let sm = StateMachineStore::open(db.clone()).map_err(storage)?;
        let raft_addr = opts.cluster.as_ref().map(|c| c.listen.to_string()).unwrap_or_default();
        let me = |id_name: &str| HorcruxNode {
            name: id_name.to_string(),
            raft_addr: raft_addr.clone(),
            api_addr: opts.api_addr.clone(),
        };

        let mut joined = false;
        let mut fresh = false;
        let mut new_ca: Option<ClusterCa> = None;
        let mut identity = match load_identity(&db)? {
            Some(i) => i,
            None => match opts.cluster.as_ref().and_then(|c| c.join.as_deref()) {
                Some(token) => {
                    let t = JoinTokenData::decode(token).map_err(ProposeError::Unavailable)?;
                    let admitted = transport::join_cluster(
                        &t.addrs,
                        &t.ca_fingerprint,
                        &t.id,
                        &t.secret,
                        &me(&opts.node_name),
                    )
                    .await
                    .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
                    joined = true;
                    let ident = StoredIdentity {
                        id: admitted.node_id,
                        name: opts.node_name.clone(),
                        certs: Some(Certs {
                            ca_pem: admitted.ca_pem,
                            cert_pem: admitted.cert_pem,
                            key_pem: admitted.key_pem,
                        }),
                    };
                    save_identity(&db, &ident)?;
                    tracing::info!(node_id = ident.id, "joined the cluster");
                    ident
                }
                None => {
                    fresh = true;
                    let ident = StoredIdentity { id: 1, name: opts.node_name.clone(), certs: None };
                    save_identity(&db, &ident)?;
                    ident
                }
            },
        };
        if identity.name != opts.node_name {
            tracing::warn!(stored = %identity.name, requested = %opts.node_name, "node name is fixed at first start; keeping the stored one");
        }
        // Every cluster has a CA (it also signs each node's HTTPS certificate); the node that
        // creates the cluster creates it, and gives itself a transport certificate.
        if fresh {
            let ca = ClusterCa::create().map_err(storage)?;
            if opts.cluster.is_some() {
                let cert = ca.issue(&identity.name).map_err(storage)?;
                identity.certs = Some(Certs {
                    ca_pem: ca.cert_pem.clone(),
                    cert_pem: cert.cert_pem,
                    key_pem: cert.key_pem,
                });
                save_identity(&db, &identity)?;
            }
            new_ca = Some(ca);
        } else if opts.cluster.is_some() && identity.certs.is_none() {
            // The snapshot may hold the CA; the log after it is replayed only by Raft::new.
            let Some(rec) = sm.read().state.cluster_ca.clone() else {
                return Err(ProposeError::Storage(
                    "this node was started standalone; turning it into a cluster member is not supported yet \
                     (start a new data dir with --cluster-listen)"
                        .into(),
                ));
            };
            let ca = ClusterCa { cert_pem: rec.cert_pem, key_pem: rec.key_pem };
            let cert = ca.issue(&identity.name).map_err(storage)?;
            identity.certs =
                Some(Certs { ca_pem: ca.cert_pem, cert_pem: cert.cert_pem, key_pem: cert.key_pem });
            save_identity(&db, &identity)?;
        }

        let config = Config {
            cluster_name: "horcrux".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            install_snapshot_timeout: 2000,
            ..Default::default()
        };
        let config = match opts.snapshot_logs {
            Some(n) => Config {
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(n),
                max_in_snapshot_log_to_keep: 0,
                purge_batch_size: 1,
                ..config
            },
            None => config,
        };
        let config = Arc::new(config.validate().map_err(storage)?);
        let log = LogStore::new(db.clone()).map_err(storage)?;
        let (raft, net, endpoint) = match (&opts.cluster, &identity.certs) {
            (Some(c), Some(certs)) => {
                let id = NodeIdentity::from_pem(&certs.ca_pem, &certs.cert_pem, &certs.key_pem)
                    .map_err(storage)?;
                let endpoint = quinn::Endpoint::server(id.server_config().map_err(storage)?, c.listen)
                    .map_err(|e| storage(format!("QUIC listen on {}: {e}", c.listen)))?;
                let net = QuicNetwork::new(endpoint.clone(), id.client_config().map_err(storage)?);
                let raft =
                    Raft::new(identity.id, config, net.clone(), log, sm.clone()).await.map_err(storage)?;
                (raft, Some(net), Some(endpoint))
            }
            _ => (
                Raft::new(identity.id, config, NoPeerNetwork, log, sm.clone()).await.map_err(storage)?,
                None,
                None,
            ),
        };
        let handle = Self {
            raft,
            sm,
            node_id: identity.id,
            node_name: identity.name.clone().into(),
            net,
            clock: Arc::new(system_clock_ms),
            all_seen: Arc::default(),
            api: Arc::default(),
        };
        if let Some(endpoint) = endpoint {
            tokio::spawn(transport::serve(endpoint, handle.clone()));
            tokio::spawn(handle.clone().ping_loop());
        }

        let initialized = handle.raft.is_initialized().await.map_err(storage)?;
        if !initialized && !joined {
            let members = BTreeMap::from([(identity.id, me(&identity.name))]);
            handle.raft.initialize(members).await.map_err(storage)?;
            tracing::info!(node = %identity.name, "initialised a new cluster");
        }
        let leader = handle
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some() && m.last_applied.is_some(), "a leader is known")
            .await;
        if leader.is_err() {
            tracing::warn!("no leader after {LEADER_WAIT:?}; serving without quorum (writes answer 503)");
            return Ok(handle);
        }
        if joined {
            // Catch up before registering, so this node's reads are current.
            let _ = handle.read_linearizable(|_| ()).await;
        }
        if let Some(ca) = new_ca {
            handle.propose(Command::SetClusterCa { cert_pem: ca.cert_pem, key_pem: ca.key_pem }).await?;
        }
        let registered = handle.read_local(|s| s.nodes.get(&*handle.node_name).map(|n| n.api_addr.clone()));
        if registered.as_deref() != Some(opts.api_addr.as_str()) {
            let cmd = Command::RegisterNode { name: identity.name.clone(), api_addr: opts.api_addr.clone() };
            if let Err(e) = handle.propose(cmd).await {
                tracing::warn!("could not register this node's API address: {e}");
            }
        }
        Ok(handle)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster CA (replicated), if this cluster has one.
    pub fn cluster_ca(&self) -> Option<ClusterCa> {
        self.read_local(|s| s.cluster_ca.clone())
            .map(|r| ClusterCa { cert_pem: r.cert_pem, key_pem: r.key_pem })
    }

    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn leader_node(&self) -> Option<(NodeId, HorcruxNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Proposes a command and waits until it is committed and applied (on the leader,
    /// forwarded there if this node follows).
    pub async fn propose(&self, cmd: Command) -> Result<ApplyOk, ProposeError> {
        let req = Request { ts_ms: self.now_ms(), cmd };
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            let res: Result<(), String> = match self.propose_here(req.clone()).await {
                Ok(resp) => return Ok(resp?),
                Err(ForwardError::NotLeader { .. }) => match (self.leader_node(), &self.net) {
                    (Some((id, node)), Some(net)) if id != self.node_id => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match net
                            .call(Some(id), &node.raft_addr, &RpcRequest::Propose(req.clone()), left)
                            .await
                        {
                            Ok(RpcResponse::Propose(Ok(resp))) => {
                                let ok = resp?;
                                // Read-your-writes here too: wait until this node applied it.
                                self.wait_applied(ok.revision).await?;
                                return Ok(ok);
                            }
                            Ok(RpcResponse::Propose(Err(e))) => Err(e.to_string()),
                            Ok(_) => Err("unexpected reply from the leader".to_string()),
                            Err(e) => Err(format!("quorum lost: leader {} unreachable: {e}", node.name)),
                        }
                    }
                    _ => Err("quorum lost: no leader is elected".to_string()),
                },
                Err(ForwardError::Unavailable(m) | ForwardError::Refused(m)) => Err(m),
            };
            if tokio::time::Instant::now() >= deadline {
                let why = res.err().unwrap_or_default();
                return Err(ProposeError::Unavailable(format!(
                    "write not committed within {OP_TIMEOUT:?}: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        self.raft
            .wait(Some(OP_TIMEOUT))
            .applied_index_at_least(Some(index), "write applied on this node")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Unavailable(format!("write committed but not yet applied here: {e}")))
    }

    /// Proposes on this node only; says so if it is not the leader.
    pub async fn propose_here(&self, req: Request) -> Result<Response, ForwardError> {
        match tokio::time::timeout(OP_TIMEOUT, self.raft.client_write(req)).await {
            Err(_) => Err(ForwardError::Unavailable(format!(
                "quorum lost: the write was not committed within {OP_TIMEOUT:?}"
            ))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(e)) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }

    /// The leader's read index (ReadIndex), answered only by the leader.
    pub async fn read_index_here(&self) -> Result<u64, ForwardError> {
        match tokio::time::timeout(OP_TIMEOUT, self.raft.get_read_log_id()).await {
            Err(_) => Err(ForwardError::Unavailable("quorum lost: leadership not confirmed in time".into())),
            Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ForwardError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(e)) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }

    /// Runs `f` on state that reflects every write committed before the call: the leader
    /// confirms its leadership; a follower asks the leader for the read index and waits
    /// until it has applied that far.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> Result<R, ProposeError> {
        let index = match self.read_index_here().await {
            Ok(i) => i,
            Err(ForwardError::NotLeader { .. }) => {
                let (Some((id, node)), Some(net)) = (self.leader_node(), &self.net) else {
                    return Err(ProposeError::Unavailable("quorum lost: no leader is elected".into()));
                };
                match net.call(Some(id), &node.raft_addr, &RpcRequest::ReadIndex, OP_TIMEOUT).await {
                    Ok(RpcResponse::ReadIndex(Ok(i))) => i,
                    Ok(RpcResponse::ReadIndex(Err(e))) => {
                        return Err(ProposeError::Unavailable(e.to_string()))
                    }
                    Ok(_) => {
                        return Err(ProposeError::Unavailable("unexpected reply from the leader".into()))
                    }
                    Err(e) => {
                        return Err(ProposeError::Unavailable(format!(
                            "quorum lost: leader {} unreachable: {e}",
                            node.name
                        )))
                    }
                }
            }
            Err(ForwardError::Unavailable(m) | ForwardError::Refused(m)) => {
                return Err(ProposeError::Unavailable(m))
            }
        };
        self.raft
            .wait(Some(OP_TIMEOUT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|e| ProposeError::Unavailable(format!("not caught up with the leader: {e}")))?;
        Ok(self.read_local(f))
    }

    /// Runs `f` on this node's applied state, without a round to the leader.
    pub fn read_local<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.sm.read().state)
    }

    /// Fires with the applied log index whenever applied entries changed guests.
    pub fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
        self.sm.subscribe_guest_changes()
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn heard_from(&self, node: NodeId) {
        if let Some(net) = &self.net {
            net.heard_from(node);
        }
    }

    async fn ping_loop(self) {
        let Some(net) = self.net.clone() else { return };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
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
        if votes == expected {
            self.all_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
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

    /// What `corosync-quorumtool -s` would print on this node: the Raft membership mapped to
    /// corosync node ids (from an imported corosync.conf, else the Raft ids), with
    /// votequorum's rules.
    pub fn quorum_view(&self) -> QuorumView {
        let status = self.cluster_status();
        let seed = self.read_local(|s| s.corosync.clone());
        let nodeid = |name: &str, raft_id: NodeId| {
            seed.as_ref()
                .and_then(|c| c.nodes.iter().find(|n| n.name == name))
                .map(|n| n.nodeid)
                .unwrap_or(raft_id as u32)
        };
        let votes_of = |name: &str, voter: bool| {
            if !voter {
                return 0;
            }
            seed.as_ref()
                .and_then(|c| c.nodes.iter().find(|n| n.name == name))
                .map(|n| n.quorum_votes)
                .unwrap_or(1)
        };
        let mut members: Vec<QuorumMember> = status
            .nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| QuorumMember {
                nodeid: nodeid(&n.name, n.id),
                votes: votes_of(&n.name, n.voter),
                name: n.name.clone(),
                local: n.local,
            })
            .collect();
        members.sort_by_key(|m| m.nodeid);
        let vq = match &seed {
            Some(c) => {
                let mut vq = Votequorum::from_config(c);
                vq.expected_votes = vq.expected_votes.max(status.expected_votes);
                vq
            }
            None => {
                Votequorum { expected_votes: status.expected_votes, two_node: false, wait_for_all: false }
            }
        };
        let total: u32 = members.iter().map(|m| m.votes).sum();
        let all_seen = self.all_seen.load(std::sync::atomic::Ordering::Relaxed);
        let (quorum, quorate) = vq.evaluate(total, all_seen);
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
            expected_votes: vq.expected_votes,
            highest_expected: vq.expected_votes.max(total),
            total_votes: total,
            quorum,
            quorate,
            two_node: vq.two_node,
            wait_for_all: vq.wait_for_all,
            members,
        }
    }

    /// Creates a join token valid for `ttl`; returns it encoded.
    pub async fn create_join_token(&self, ttl: Duration) -> Result<String, ProposeError> {
        let Some(ca) = self.read_local(|s| s.cluster_ca.clone()) else {
            return Err(ProposeError::Unavailable(
                "this cluster has no transport: start the node with --cluster-listen to add members".into(),
            ));
        };
        if self.net.is_none() {
            return Err(ProposeError::Unavailable(
                "start this node with --cluster-listen to add members".into(),
            ));
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
        let fp =
            ClusterCa { cert_pem: ca.cert_pem, key_pem: String::new() }.fingerprint().map_err(storage)?;
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
        Ok(JoinTokenData { id, secret, ca_fingerprint: fp, addrs }.encode())
    }

    /// Admits a joining node (leader only): consumes its token through Raft, issues its
    /// certificate, adds it as a learner, and promotes it to voter once it caught up.
    pub async fn admit(&self, req: JoinRequest) -> JoinResponse {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return match self.leader_node() {
                Some((_, n)) => JoinResponse::Redirect { leader_addr: n.raft_addr },
                None => JoinResponse::Refused { reason: "no leader: the cluster has lost quorum".into() },
            };
        }
        if req.node.raft_addr.is_empty() {
            return JoinResponse::Refused { reason: "the joining node has no cluster address".into() };
        }
        let consume = Command::ConsumeJoinToken {
            id: req.token_id.clone(),
            secret_sha256: ids::sha256_hex(&req.secret),
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
        let Some(ca) = self.read_local(|s| s.cluster_ca.clone()) else {
            return JoinResponse::Refused { reason: "the cluster has no CA".into() };
        };
        let ca = ClusterCa { cert_pem: ca.cert_pem, key_pem: ca.key_pem };
        let cert = match ca.issue(&req.node.name) {
            Ok(c) => c,
            Err(e) => return JoinResponse::Refused { reason: e.to_string() },
        };
        if let Err(e) = self.raft.add_learner(node_id, req.node.clone(), false).await {
            return JoinResponse::Refused { reason: format!("could not add the node: {e}") };
        }
        tracing::info!(node_id, name = %req.node.name, "admitted a node as learner");
        tokio::spawn(self.clone().promote_when_caught_up(node_id));
        JoinResponse::Accepted {
            node_id,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            ca_pem: ca.cert_pem,
        }
    }

    /// Promotes caught-up learners (`node_id` first) while the voter count is below its
    /// target: the largest odd number not above the member count and `MAX_VOTERS`. An odd
    /// count never costs fault tolerance (4 voters survive one failure, like 3) and keeps
    /// elections decisive; the rest stay learners that replicate and serve reads.
    async fn promote_when_caught_up(self, node_id: NodeId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while tokio::time::Instant::now() < deadline {
            let m = self.raft.metrics().borrow().clone();
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
                let matched =
                    m.replication.as_ref().and_then(|r| r.get(id).cloned()).flatten().map(|l| l.index);
                matches!((matched, m.last_log_index), (Some(a), Some(b)) if b.saturating_sub(a) <= 10)
            };
            let mut ready: Vec<NodeId> = membership.learner_ids().filter(|id| caught_up(id)).collect();
            ready.sort_by_key(|id| (*id != node_id, *id));
            let need = target - voters;
            if ready.len() >= need {
                let ids: BTreeSet<NodeId> = ready.into_iter().take(need).collect();
                match self.raft.change_membership(ChangeMembers::AddVoterIds(ids.clone()), false).await {
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

    /// Installs what serves API calls forwarded to this node (once, at start).
    pub fn set_api_handler(&self, handler: ApiHandler) {
        let _ = self.api.set(handler);
    }

    pub async fn serve_api(&self, call: ApiCall) -> ApiReply {
        match self.api.get() {
            Some(h) => h(call).await,
            None => {
                ApiReply { status: 503, content_type: None, body: "{\"error\":\"API not ready\"}".into() }
            }
        }
    }

    /// Carries an API call to `node` (by name) over the cluster transport.
    pub async fn forward_api(&self, node: &str, call: ApiCall) -> Result<ApiReply, ProposeError> {
        let (id, addr) = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            let found = m
                .membership()
                .nodes()
                .find(|(_, n)| n.name == node)
                .map(|(id, n)| (*id, n.raft_addr.clone()));
            found.ok_or_else(|| ProposeError::Unavailable(format!("node {node} is not a cluster member")))?
        };
        let Some(net) = &self.net else {
            return Err(ProposeError::Unavailable("this node has no cluster transport".into()));
        };
        match net.call(Some(id), &addr, &RpcRequest::Api(call), Duration::from_secs(120)).await {
            Ok(RpcResponse::Api(r)) => Ok(r),
            Ok(_) => Err(ProposeError::Unavailable(format!("unexpected reply from node {node}"))),
            Err(e) => Err(ProposeError::Unavailable(format!("node {node} unreachable: {e}"))),
        }
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

    /// Leader only: takes `name` out of the Raft membership and the node table, then
    /// promotes a learner if that leaves room among the voters.
    pub async fn remove_member_here(&self, name: &str) -> Result<(), ForwardError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(ForwardError::NotLeader { leader: m.current_leader });
        }
        let membership = m.membership_config.membership().clone();
        let Some((id, _)) = membership.nodes().find(|(_, n)| n.name == name).map(|(i, n)| (*i, n.clone()))
        else {
            return Err(ForwardError::Refused(format!("no member named {name}")));
        };
        if let Some(vmid) = self.read_local(|s| s.guests.values().find(|g| g.node == name).map(|g| g.vmid)) {
            return Err(ForwardError::Refused(format!(
                "node {name} still owns guest {vmid}; migrate or delete its guests first"
            )));
        }
        let voter = membership.voter_ids().any(|v| v == id);
        if voter && membership.voter_ids().count() == 1 {
            return Err(ForwardError::Refused("cannot remove the last voter".into()));
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        match self.propose(Command::RemoveNode { name: name.to_string() }).await {
            Ok(_) | Err(ProposeError::Rejected(horcrux_core::ApplyError::NotFound { .. })) => {}
            Err(e) => return Err(ForwardError::Unavailable(e.to_string())),
        }
        tracing::info!(node_id = id, name, "removed from the cluster");
        let after = self.raft.metrics().borrow().membership_config.clone();
        if let Some(l) = after.membership().learner_ids().next() {
            tokio::spawn(self.clone().promote_when_caught_up(l));
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}
