//! `ClusterHandle`: opens the Raft node over its RocksDB store, initialises a cluster on
//! first start or joins one with a token, proposes commands (forwarding to the leader),
//! reads linearizably (ReadIndex through the leader), and reports membership and quorum.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use horcrux_core::{ApplyOk, ClusterState, Command, Request};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Config, Raft};
use rocksdb::DB;
use tokio::sync::watch;

use crate::join::JoinTokenData;
use crate::log_store::LogStore;
use crate::network::NoPeerNetwork;
use crate::node::HorcruxNode;
use crate::pki::ClusterCa;
use crate::proposer::Proposer;
use crate::raft_thread::RaftThread;
use crate::state_machine::StateMachineStore;
use crate::store::{cf, open_db, synced, CF_META};
use crate::transport::{
    self, ApiCall, ApiHandler, ApiReply, ForwardError, NodeIdentity, QuicNetwork, RpcRequest, RpcResponse,
};
use crate::types::{ApplyResult, NodeId, TypeConfig};

/// A write or read that cannot complete within this answers "unavailable" (503).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(4);
/// How long start-up waits for a leader before serving anyway (writes then answer 503).
const LEADER_WAIT: Duration = Duration::from_secs(15);
pub(crate) const KEY_NODE: &[u8] = b"node";
/// Voters are capped (odd); further nodes stay learners that replicate and serve reads.
pub const MAX_VOTERS: usize = 5;

#[derive(Debug, Clone, thiserror::Error)]
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

pub(crate) fn storage(e: impl std::fmt::Display) -> ProposeError {
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
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}
horcrux_core::evolving!(Certs { ca_pem, cert_pem, key_pem });

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredIdentity {
    pub(crate) id: NodeId,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) certs: Option<Certs>,
    /// The members' certificate fingerprints the join answer named: what this node's
    /// transport trusts until its copy of the state records members' certificates.
    #[serde(default)]
    pub(crate) pinned: BTreeMap<NodeId, String>,
    /// When the transport certificate expires (Unix seconds; 0: a certificate from before
    /// lifetimes, not renewed).
    #[serde(default)]
    pub(crate) cert_expires_s: u64,
    /// This node joined an existing cluster (it must never initialise one of its own, even
    /// if it restarts before the leader's first entries reached it).
    #[serde(default)]
    pub(crate) joined: bool,
}
horcrux_core::evolving!(StoredIdentity { id, name, certs, pinned, cert_expires_s, joined });

fn load_identity(db: &DB) -> Result<Option<StoredIdentity>, ProposeError> {
    match db.get_cf(cf(db, CF_META), KEY_NODE).map_err(storage)? {
        Some(bytes) => Ok(Some(crate::codec::decode(&bytes).map_err(storage)?)),
        None => Ok(None),
    }
}

pub(crate) fn save_identity(db: &DB, ident: &StoredIdentity) -> Result<(), ProposeError> {
    let bytes = crate::codec::encode(ident).map_err(storage)?;
    db.put_cf_opt(cf(db, CF_META), KEY_NODE, bytes, &synced()).map_err(storage)
}

/// See `ClusterHandle::member_by_fingerprint`.
fn lookup_member(
    sm: &StateMachineStore,
    pinned: &BTreeMap<NodeId, String>,
    fingerprint: &str,
) -> Option<NodeId> {
    let (found, any) = {
        let data = sm.read();
        (data.state.member_by_fingerprint(fingerprint), !data.state.member_certs.is_empty())
    };
    if any {
        return found;
    }
    pinned
        .iter()
        .find(|(_, f)| horcrux_core::ids::ct_eq(f.as_bytes(), fingerprint.as_bytes()))
        .map(|(id, _)| *id)
}

/// Cheap to clone; shared by the API, the actors and the transport server.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) proposer: Proposer,
    pub(crate) sm: StateMachineStore,
    pub(crate) node_id: NodeId,
    pub(crate) node_name: Arc<str>,
    pub(crate) net: Option<QuicNetwork>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    api: Arc<std::sync::OnceLock<ApiHandler>>,
    tunnel: Arc<std::sync::OnceLock<transport::TunnelHandler>>,
    /// Where forwarded API calls run (the caller's runtime, not the Raft thread).
    api_runtime: tokio::runtime::Handle,
    /// Runs openraft, the proposer and the QUIC endpoint; stops with the last clone.
    _raft_thread: Arc<RaftThread>,
    /// Members' certificates as the join answer named them (see `StoredIdentity`).
    pinned: Arc<BTreeMap<NodeId, String>>,
    /// Counts login failures other members report (set by the HTTP layer).
    login_failures: Arc<std::sync::OnceLock<transport::LoginFailureHook>>,
    /// This node's stored identity and where it is kept (rewritten when the certificate is
    /// renewed), and the endpoint that presents it.
    pub(crate) stored: Arc<std::sync::Mutex<StoredIdentity>>,
    pub(crate) db: Arc<DB>,
    pub(crate) endpoint: Option<quinn::Endpoint>,
    /// Set by `shutdown`: the node's background loops end, releasing the store.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Failed join attempts per source address (rate limit).
    pub(crate) join_failures: Arc<std::sync::Mutex<BTreeMap<std::net::IpAddr, Vec<u64>>>>,
    /// This process's proposer id (random per open) and its next sequence number.
    client_id: u64,
    next_seq: Arc<std::sync::atomic::AtomicU64>,
    /// As leader: the HA leases granted in the current term (`lease.rs`).
    pub(crate) leases: Arc<std::sync::Mutex<Option<horcrux_core::ha::lease::LeaseTable>>>,
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
                        &t.ca_fingerprints(),
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
                        pinned: admitted.members,
                        cert_expires_s: admitted.expires_s,
                        joined: true,
                    };
                    save_identity(&db, &ident)?;
                    if std::env::var_os("HORCRUX_TEST_CRASH_AFTER_JOIN").is_some() {
                        // Tests: the process dies here, admitted but not yet replicated to.
                        std::process::exit(70);
                    }
                    tracing::info!(node_id = ident.id, "joined the cluster");
                    ident
                }
                None => {
                    fresh = true;
                    let ident = StoredIdentity {
                        id: 1,
                        name: opts.node_name.clone(),
                        certs: None,
                        pinned: BTreeMap::new(),
                        cert_expires_s: 0,
                        joined: false,
                    };
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
                let cert = ca.issue(identity.id, &identity.name).map_err(storage)?;
                identity.cert_expires_s = crate::pki::now_s() + crate::pki::CERT_LIFETIME_S;
                identity.certs = Some(Certs {
                    ca_pem: ca.cert_pem.clone(),
                    cert_pem: cert.cert_pem,
                    key_pem: cert.key_pem,
                });
                save_identity(&db, &identity)?;
            }
            new_ca = Some(ca);
        }
        // A node that ran standalone and now gets a cluster address: its CA is in its state
        // (the snapshot, or the log Raft::new replays). Until that is read, the endpoint uses
        // a throwaway identity nobody trusts; the real certificate is issued further down.
        let standalone_to_cluster = opts.cluster.is_some() && identity.certs.is_none();
        let endpoint_certs = match (&identity.certs, standalone_to_cluster) {
            (Some(c), _) => Some(c.clone()),
            (None, true) => {
                let throwaway = ClusterCa::create().map_err(storage)?;
                let cert = throwaway.issue(identity.id, &identity.name).map_err(storage)?;
                Some(Certs { ca_pem: throwaway.cert_pem, cert_pem: cert.cert_pem, key_pem: cert.key_pem })
            }
            (None, false) => None,
        };

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
        let log = LogStore::with_syncer(db.clone()).map_err(storage)?;
        let thread = Arc::new(RaftThread::start().map_err(storage)?);
        let (raft, net, endpoint) = match (&opts.cluster, &endpoint_certs) {
            (Some(c), Some(certs)) => {
                let id = NodeIdentity::from_pem(&certs.ca_pem, &certs.cert_pem, &certs.key_pem)
                    .map_err(storage)?;
                // The endpoint's driver runs where it is created: on the Raft thread.
                let endpoint = {
                    let _rt = thread.handle().enter();
                    quinn::Endpoint::server(id.server_config().map_err(storage)?, c.listen)
                        .map_err(|e| storage(format!("QUIC listen on {}: {e}", c.listen)))?
                };
                let net = QuicNetwork::new(endpoint.clone(), id.client_config().map_err(storage)?);
                let raft = thread
                    .run(Raft::new(identity.id, config, net.clone(), log, sm.clone()))
                    .await
                    .map_err(storage)?
                    .map_err(storage)?;
                (raft, Some(net), Some(endpoint))
            }
            _ => (
                thread
                    .run(Raft::new(identity.id, config, NoPeerNetwork, log, sm.clone()))
                    .await
                    .map_err(storage)?
                    .map_err(storage)?,
                None,
                None,
            ),
        };
        let handle = Self {
            proposer: Proposer::spawn(thread.handle(), raft.clone()),
            api_runtime: tokio::runtime::Handle::current(),
            _raft_thread: thread.clone(),
            raft,
            sm,
            node_id: identity.id,
            node_name: identity.name.clone().into(),
            net,
            clock: Arc::new(system_clock_ms),
            api: Arc::default(),
            tunnel: Arc::default(),
            pinned: Arc::new(identity.pinned.clone()),
            join_failures: Arc::default(),
            login_failures: Arc::default(),
            stored: Arc::new(std::sync::Mutex::new(identity.clone())),
            db: db.clone(),
            endpoint: endpoint.clone(),
            stopping: Arc::default(),
            client_id: rand::random(),
            next_seq: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            leases: Arc::default(),
        };
        if let Some(net) = &handle.net {
            // The dialing side checks the server is a current member too.
            let (sm, pinned) = (handle.sm.clone(), handle.pinned.clone());
            net.set_peer_check(Arc::new(move |fp| lookup_member(&sm, &pinned, fp)));
            // A member unreachable at its Raft address is tried on its other corosync links.
            let (sm, raft) = (handle.sm.clone(), handle.raft.clone());
            net.set_alternates(Arc::new(move |id| {
                let m = raft.metrics().borrow().membership_config.clone();
                let Some(node) = m.membership().get_node(&id).cloned() else { return Vec::new() };
                let links = sm
                    .read()
                    .state
                    .corosync
                    .as_ref()
                    .and_then(|c| c.nodes.iter().find(|n| n.name == node.name).map(|n| n.links.clone()));
                crate::corosync::link_addrs(&node.raft_addr, &links.unwrap_or_default())
            }));
        }
        if let Some(endpoint) = endpoint {
            thread.handle().spawn(transport::serve(endpoint, handle.clone()));
            thread.handle().spawn(handle.clone().ping_loop());
            thread.handle().spawn(handle.clone().renew_loop());
        }

        let initialized = handle.raft.is_initialized().await.map_err(storage)?;
        if !initialized && identity.joined && !joined {
            // Admitted before a crash, not yet replicated to: the leader added this node as a
            // learner and keeps sending it the log; a cluster of its own would be a rogue one.
            tracing::warn!(
                node_id = identity.id,
                "this node joined a cluster but has no copy of its log yet; waiting for the leader \
                 (if it was removed meanwhile, start over with a new data dir and token)"
            );
        }
        if !initialized && !joined && !identity.joined {
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
            let fingerprint = ca.fingerprint().map_err(storage)?;
            handle
                .propose(Command::SetClusterCa { cert_pem: ca.cert_pem, key_pem: ca.key_pem, fingerprint })
                .await?;
        }
        if standalone_to_cluster {
            let node = me(&identity.name);
            handle.adopt_transport(&mut identity, &node).await?;
        }
        // The node that made its own certificate (the cluster's first node) records it; a
        // joined node's was recorded by the leader that signed it.
        if let Some(fp) = &handle.certificate_fingerprint() {
            let recorded =
                handle.read_local(|s| s.member_certs.get(&identity.id).map(|c| c.fingerprint.clone()));
            if recorded.as_deref() != Some(fp.as_str()) && !joined {
                let ca = handle
                    .read_local(|s| s.cluster_ca.as_ref().map(crate::certs::ca_fingerprint))
                    .unwrap_or_default();
                let cmd = Command::SetMemberCert {
                    node_id: identity.id,
                    name: identity.name.clone(),
                    fingerprint: fp.clone(),
                    keep_previous: false,
                    ca,
                };
                if let Err(e) = handle.propose(cmd).await {
                    tracing::warn!("could not record this node's transport certificate: {e}");
                }
            }
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

    /// The current member whose transport certificate has this fingerprint: from the
    /// replicated record, or, while this node's copy has none yet (just joined, catching
    /// up), from the fingerprints its join answer named.
    pub fn member_by_fingerprint(&self, fingerprint: &str) -> Option<NodeId> {
        let (found, any) =
            self.read_local(|s| (s.member_by_fingerprint(fingerprint), !s.member_certs.is_empty()));
        if any {
            return found;
        }
        self.pinned
            .iter()
            .find(|(_, f)| horcrux_core::ids::ct_eq(f.as_bytes(), fingerprint.as_bytes()))
            .map(|(id, _)| *id)
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

    pub(crate) fn leader_node(&self) -> Option<(NodeId, HorcruxNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Proposes a command and waits until it is committed and applied (on the leader,
    /// forwarded there if this node follows).
    pub async fn propose(&self, cmd: Command) -> Result<ApplyOk, ProposeError> {
        self.propose_as(None, cmd).await
    }

    /// `propose` on behalf of an API caller: `apply` refuses an access-control change that
    /// would give anyone a right `actor` does not hold (`ApplyError::Forbidden`).
    pub async fn propose_as(
        &self,
        actor: Option<horcrux_core::access::Actor>,
        cmd: Command,
    ) -> Result<ApplyOk, ProposeError> {
        // Retried below with the same id: committed twice, it is applied once.
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = horcrux_core::RequestId { client: self.client_id, seq };
        let req = Request { ts_ms: self.now_ms(), cmd, actor, id: Some(id) };
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            let res: Result<(), String> = match self.propose_here(req.clone()).await {
                Ok(resp) => return Ok(resp?),
                Err(ForwardError::NotLeader { .. }) => match (self.leader_node(), &self.net) {
                    (Some((id, node)), Some(net)) if id != self.node_id => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let rpc = RpcRequest::Propose(req.clone());
                        let forward = net.call(Some(id), &node.raft_addr, &rpc, left);
                        // A dead leader does not answer: as soon as another leader is known,
                        // ask it instead of waiting out the timeout.
                        let reply = tokio::select! {
                            r = forward => r,
                            () = self.leader_other_than(id) => continue,
                        };
                        match reply {
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

    /// Resolves once this node knows a leader other than `id`.
    async fn leader_other_than(&self, id: NodeId) {
        let mut rx = self.raft.metrics();
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some_and(|l| l != id) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
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

    /// Proposes on this node only (batched with concurrent proposals); says so if it is
    /// not the leader.
    pub async fn propose_here(&self, req: Request) -> Result<ApplyResult, ForwardError> {
        self.proposer.propose(req).await
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
                let ask = net.call(Some(id), &node.raft_addr, &RpcRequest::ReadIndex, OP_TIMEOUT);
                // A dead leader does not answer: ask the next one as soon as it is known.
                let reply = tokio::select! {
                    r = ask => r,
                    () = self.leader_other_than(id) => return Box::pin(self.read_linearizable(f)).await,
                };
                match reply {
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

    /// Installs what serves API calls forwarded to this node (once, at start).
    pub fn set_api_handler(&self, handler: ApiHandler) {
        let _ = self.api.set(handler);
    }

    /// Sleeps `d`, waking each second to see whether the node is stopping; `false` once it is.
    pub(crate) async fn sleep_unless_stopping(&self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        while !self.is_stopping() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
        false
    }

    /// Where login failures reported by other members are counted.
    pub fn set_login_failure_hook(&self, hook: transport::LoginFailureHook) {
        let _ = self.login_failures.set(hook);
    }

    pub(crate) fn note_login_failures(&self, keys: Vec<String>) {
        if let Some(h) = self.login_failures.get() {
            h(keys.into_iter().take(16).collect());
        }
    }

    /// Tells every other member about login failures seen here (best effort, not waited
    /// for: a member that misses one counts a little less).
    pub fn broadcast_login_failures(&self, keys: Vec<String>) {
        let Some(net) = self.net.clone() else { return };
        let members: Vec<(NodeId, String)> = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, n)| (*id, n.raft_addr.clone()))
                .collect()
        };
        for (id, addr) in members {
            let (net, req) = (net.clone(), RpcRequest::LoginFailures { keys: keys.clone() });
            self.api_runtime.spawn(async move {
                let _ = net.call(Some(id), &addr, &req, Duration::from_secs(2)).await;
            });
        }
    }

    /// Serves an API call forwarded from another node, on the API runtime (this is called
    /// on the Raft thread, which must not run request handlers).
    pub async fn serve_api(&self, call: ApiCall, body: Option<transport::ApiBody>) -> ApiReply {
        let error = |status, msg: &str| ApiReply {
            status,
            content_type: None,
            body: serde_json::json!({ "error": msg }).to_string(),
        };
        match self.api.get() {
            Some(h) => self
                .api_runtime
                .spawn(h(call, body))
                .await
                .unwrap_or_else(|e| error(500, &format!("the forwarded request failed: {e}"))),
            None => error(503, "API not ready"),
        }
    }

    /// Installs what serves tunnels opened to this node (once, at start).
    pub fn set_tunnel_handler(&self, handler: transport::TunnelHandler) {
        let _ = self.tunnel.set(handler);
    }

    /// Serves a tunnel another member opened, on the API runtime; without a handler the
    /// stream is dropped (the other side sees it closed).
    pub async fn serve_tunnel(&self, call: ApiCall, tunnel: transport::Tunnel) {
        if let Some(h) = self.tunnel.get() {
            let _ = self.api_runtime.spawn(h(call, tunnel)).await;
        }
    }

    /// Opens a tunnel to `node` (by name) over the cluster transport.
    pub async fn open_tunnel(&self, node: &str, call: ApiCall) -> Result<transport::Tunnel, ProposeError> {
        let (id, addr) = self.member_addr(node)?;
        let Some(net) = &self.net else {
            return Err(ProposeError::Unavailable("this node has no cluster transport".into()));
        };
        net.open_tunnel(id, &addr, &call)
            .await
            .map_err(|e| ProposeError::Unavailable(format!("node {node} unreachable: {e}")))
    }

    /// Member `node`'s id and Raft address.
    fn member_addr(&self, node: &str) -> Result<(NodeId, String), ProposeError> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let found =
            m.membership().nodes().find(|(_, n)| n.name == node).map(|(id, n)| (*id, n.raft_addr.clone()));
        found.ok_or_else(|| ProposeError::Unavailable(format!("node {node} is not a cluster member")))
    }

    /// Carries an API call to `node` (by name) over the cluster transport.
    pub async fn forward_api(&self, node: &str, call: ApiCall) -> Result<ApiReply, ProposeError> {
        let (id, addr) = self.member_addr(node)?;
        let Some(net) = &self.net else {
            return Err(ProposeError::Unavailable("this node has no cluster transport".into()));
        };
        match net.call(Some(id), &addr, &RpcRequest::Api(call), Duration::from_secs(120)).await {
            Ok(RpcResponse::Api(r)) => Ok(r),
            Ok(_) => Err(ProposeError::Unavailable(format!("unexpected reply from node {node}"))),
            Err(e) => Err(ProposeError::Unavailable(format!("node {node} unreachable: {e}"))),
        }
    }

    /// Carries an API call to `node` with its body streamed (an upload of any size): the
    /// body's pieces go out as they come from `body`; an error from it cuts the call off
    /// there (the other node then keeps nothing of it).
    pub async fn forward_api_stream(
        &self,
        node: &str,
        call: ApiCall,
        body: transport::ApiBody,
    ) -> Result<ApiReply, ProposeError> {
        let (id, addr) = self.member_addr(node)?;
        let Some(net) = &self.net else {
            return Err(ProposeError::Unavailable("this node has no cluster transport".into()));
        };
        match net.call_streamed(id, &addr, &call, body, Duration::from_secs(300)).await {
            Ok(r) => Ok(r),
            Err(e) => Err(ProposeError::Unavailable(format!("node {node}: {e}"))),
        }
    }

    /// Stops Raft, the transport and the background loops; once the last clone of the
    /// handle is dropped the store is closed (and can be opened again in this process).
    pub async fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(e) = &self.endpoint {
            e.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
}
