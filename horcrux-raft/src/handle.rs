//! `ClusterHandle`: open the Raft node over its RocksDB store, initialise a single-node
//! cluster on first start, propose commands and read state linearizably.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use horcrux_core::{ApplyError, ApplyOk, ClusterState, Command, Request};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Raft};

use crate::node::HorcruxNode;
use tokio::sync::watch;

use crate::log_store::LogStore;
use crate::network::NoPeerNetwork;
use crate::state_machine::StateMachineStore;
use crate::store::{cf, open_db, CF_META};
use crate::types::{NodeId, TypeConfig};

/// How long a proposal or a linearizable read may wait before it answers "unavailable".
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const KEY_NODE: &[u8] = b"node";

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// No leader, no quorum, or the log could not commit in time.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    #[error("raft storage: {0}")]
    Storage(String),
}

pub struct OpenOptions {
    pub dir: PathBuf,
    pub node_name: String,
    /// The HTTPS API address recorded for this node.
    pub api_addr: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeIdentity {
    id: NodeId,
    name: String,
}

/// Cheap to clone; shared by the API, the actors and the CLI server.
#[derive(Clone)]
pub struct ClusterHandle {
    raft: Raft<TypeConfig>,
    sm: StateMachineStore,
    node_id: NodeId,
    node_name: Arc<str>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterHandle {
    /// Opens (or creates) the store in `opts.dir` and starts the Raft node. On first start the
    /// node initialises a single-node cluster and registers itself.
    pub async fn open(opts: OpenOptions) -> Result<Self, ProposeError> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| ProposeError::Storage(format!("{}: {e}", opts.dir.display())))?;
        let db = open_db(&opts.dir).map_err(|e| ProposeError::Storage(e.to_string()))?;
        let identity =
            match db.get_cf(cf(&db, CF_META), KEY_NODE).map_err(|e| ProposeError::Storage(e.to_string()))? {
                Some(bytes) => serde_json::from_slice::<NodeIdentity>(&bytes)
                    .map_err(|e| ProposeError::Storage(e.to_string()))?,
                None => {
                    let ident = NodeIdentity { id: 1, name: opts.node_name.clone() };
                    let bytes =
                        serde_json::to_vec(&ident).map_err(|e| ProposeError::Storage(e.to_string()))?;
                    db.put_cf_opt(cf(&db, CF_META), KEY_NODE, bytes, &crate::store::synced())
                        .map_err(|e| ProposeError::Storage(e.to_string()))?;
                    ident
                }
            };
        if identity.name != opts.node_name {
            tracing::warn!(stored = %identity.name, requested = %opts.node_name, "node name is fixed at first start; keeping the stored one");
        }
        let config = Config {
            cluster_name: "horcrux".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| ProposeError::Storage(e.to_string()))?);
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(|e| ProposeError::Storage(e.to_string()))?;
        let raft = Raft::new(identity.id, config, NoPeerNetwork, log, sm.clone())
            .await
            .map_err(|e| ProposeError::Storage(e.to_string()))?;
        let handle = Self {
            raft,
            sm,
            node_id: identity.id,
            node_name: identity.name.clone().into(),
            clock: Arc::new(system_clock_ms),
        };
        let initialized =
            handle.raft.is_initialized().await.map_err(|e| ProposeError::Storage(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(identity.id, HorcruxNode { name: identity.name.clone(), raft_addr: String::new(), api_addr: opts.api_addr.clone() })]);
            handle.raft.initialize(members).await.map_err(|e| ProposeError::Storage(e.to_string()))?;
            tracing::info!(node = %identity.name, "initialised a new single-node cluster");
        }
        handle
            .raft
            .wait(Some(OP_TIMEOUT))
            .current_leader(identity.id, "single node elects itself")
            .await
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let registered = handle.read_local(|s| s.nodes.get(&*handle.node_name).map(|n| n.api_addr.clone()));
        if registered.as_deref() != Some(opts.api_addr.as_str()) {
            handle
                .propose(Command::RegisterNode { name: identity.name.clone(), api_addr: opts.api_addr })
                .await?;
        }
        Ok(handle)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Proposes a command and waits until it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<ApplyOk, ProposeError> {
        let req = Request { ts_ms: (self.clock)(), cmd };
        let res = tokio::time::timeout(OP_TIMEOUT, self.raft.client_write(req))
            .await
            .map_err(|_| ProposeError::Unavailable(format!("no commit within {OP_TIMEOUT:?}")))?;
        match res {
            Ok(resp) => Ok(resp.data?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::Unavailable(
                format!("this node is not the leader (leader: {:?})", f.leader_id),
            )),
            Err(e) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// Runs `f` on the state after confirming leadership and catching up to the read point.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> Result<R, ProposeError> {
        tokio::time::timeout(OP_TIMEOUT, self.raft.ensure_linearizable())
            .await
            .map_err(|_| ProposeError::Unavailable(format!("no read quorum within {OP_TIMEOUT:?}")))?
            .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        Ok(self.read_local(f))
    }

    /// Runs `f` on this node's applied state, without a round to the leader.
    pub fn read_local<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.sm.read().state)
    }

    /// Fires with the last applied log index whenever entries are applied.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.sm.subscribe_applied()
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}
