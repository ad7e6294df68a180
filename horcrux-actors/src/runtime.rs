//! `NodeRuntime`: the handle the API holds. It runs the actor system on its own thread
//! (actix needs a local runtime) and exposes reconcile, observed status and tasks.

use std::sync::Arc;

use actix::prelude::*;
use horcrux_core::StoragePool;
use horcrux_drivers::{Hypervisor, ObservedPower, VolumeStore};
use horcrux_raft::ClusterHandle;

use crate::fleet::{GuestFleet, MigrateOne, ReconcileOne};
use crate::guest::{GuestStatus, StatusBoard};
use crate::port::ClusterPort;
use crate::storage::{PoolOf, PoolStatus, Refresh, StorageBoard, StorageFleet};
use crate::tasks::{TaskLog, TaskRegistry};

/// Builds the volume store behind a storage pool (directory pools with qemu-img in
/// production, in-memory stores in simulation).
pub type VolumeFactory = Arc<dyn Fn(&StoragePool) -> Arc<dyn VolumeStore> + Send + Sync>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("guest {0} does not exist")]
    NotFound(u32),
    #[error("guest {vmid} is owned by node {node}")]
    NotOwned { vmid: u32, node: String },
    #[error("{0}")]
    Driver(String),
    #[error("the actor system is not running")]
    ActorGone,
    /// The guest is not in a state that allows the operation here.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Cluster(#[from] horcrux_raft::ProposeError),
}

/// Starts a supervised guest fleet in the current actix system (the daemon's actor thread,
/// or the simulation's runtime).
pub fn start_fleet(
    cluster: Arc<dyn ClusterPort>,
    hv: Arc<dyn Hypervisor>,
    volumes: VolumeFactory,
    board: StatusBoard,
) -> Addr<GuestFleet> {
    Supervisor::start(move |_| GuestFleet::new(cluster, hv, volumes, board))
}

#[derive(Clone)]
pub struct NodeRuntime {
    cluster: ClusterHandle,
    fleet: Addr<GuestFleet>,
    board: StatusBoard,
    tasks: TaskRegistry,
    volumes: VolumeFactory,
    hv: Arc<dyn Hypervisor>,
    storages: Addr<StorageFleet>,
    storage_board: StorageBoard,
    metrics: Option<crate::metrics::MetricsStore>,
}

impl NodeRuntime {
    /// Starts the actor system on a dedicated thread and the guest fleet inside it.
    /// `fence`: how this node starts and feeds its fence; `None`: HA guests cannot start
    /// here (the lease is still renewed and the HA manager still runs on the leader).
    pub fn start(
        cluster: ClusterHandle,
        hv: Arc<dyn Hypervisor>,
        volumes: VolumeFactory,
        tasks: TaskRegistry,
        fence: Option<crate::ha::FenceLauncher>,
    ) -> std::io::Result<Self> {
        let board = StatusBoard::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let port: Arc<dyn ClusterPort> = Arc::new(cluster.clone());
        let (h, v, b, t) = (hv.clone(), volumes.clone(), board.clone(), tasks.clone());
        let storage_board = StorageBoard::default();
        let (sp, sv, sb) = (port.clone(), volumes.clone(), storage_board.clone());
        std::thread::Builder::new().name("horcrux-actors".into()).spawn(move || {
            let sys = actix::System::new();
            sys.block_on(async move {
                let lease = crate::ha::LeaseCell::default();
                let (p, l) = (port.clone(), lease.clone());
                Supervisor::start(move |_| crate::ha::LeaseAgent::new(p, fence, l));
                let p = port.clone();
                Supervisor::start(move |_| crate::ha::HaManager::new(p, Some(t)));
                let storages = Supervisor::start(move |_| StorageFleet::new(sp, sv, sb));
                let fleet = Supervisor::start(move |_| GuestFleet::new(port, h, v, b).with_lease(lease));
                let _ = tx.send((fleet, storages));
            });
            if let Err(e) = sys.run() {
                tracing::error!("actor system ended: {e}");
            }
        })?;
        let (fleet, storages) =
            rx.recv().map_err(|_| std::io::Error::other("actor system failed to start"))?;
        Ok(Self { cluster, fleet, board, tasks, volumes, hv, storages, storage_board, metrics: None })
    }

    /// Drives one guest to its replicated desired state now; logs into `task` if given.
    pub async fn reconcile(&self, vmid: u32, task: Option<TaskLog>) -> Result<ObservedPower, RuntimeError> {
        self.fleet.send(ReconcileOne { vmid, task }).await.map_err(|_| RuntimeError::ActorGone)?
    }

    /// Offline migration, run on the guest's owner: checks that its process is gone here,
    /// then commits the move to `target` (conditional on the guest's revision). Answers
    /// with the new revision.
    pub async fn migrate(&self, vmid: u32, target: String) -> Result<u64, RuntimeError> {
        self.fleet.send(MigrateOne { vmid, target }).await.map_err(|_| RuntimeError::ActorGone)?
    }

    /// The last observation of a guest; a guest never observed counts as stopped.
    pub fn observed(&self, vmid: u32) -> GuestStatus {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vmid)
            .cloned()
            .unwrap_or(GuestStatus { power: ObservedPower::Stopped, last_error: None })
    }

    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    pub fn tasks(&self) -> &TaskRegistry {
        &self.tasks
    }

    pub fn volumes(&self) -> &VolumeFactory {
        &self.volumes
    }

    pub fn volume_store(&self, pool: &StoragePool) -> Arc<dyn VolumeStore> {
        (self.volumes)(pool)
    }

    /// Storage `id` on this node as its actor last found it (`None`: not configured here,
    /// or not probed yet).
    pub fn storage_status(&self, id: &str) -> Option<PoolStatus> {
        self.storage_board.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Has storage `id`'s actor activate and measure it now, waiting at most `timeout`
    /// (then the last status, if any). `None`: the storage does not exist on this node.
    pub async fn refresh_storage(&self, id: &str, timeout: std::time::Duration) -> Option<PoolStatus> {
        let actor = self.storages.send(PoolOf(id.to_string())).await.ok().flatten()?;
        match tokio::time::timeout(timeout, actor.send(Refresh)).await {
            Ok(Ok(st)) => Some(st),
            _ => self.storage_status(id),
        }
    }

    /// Keeps this node's metrics under `dir` and samples them every
    /// [`crate::metrics::interval`] from now on (a task on the current tokio runtime);
    /// `disk`: the file system reported as the node's root disk.
    pub fn with_metrics(mut self, dir: std::path::PathBuf, disk: std::path::PathBuf) -> Self {
        let store = crate::metrics::MetricsStore::new(dir);
        tokio::spawn(crate::metrics::sample_forever(
            store.clone(),
            self.cluster.clone(),
            self.hv.clone(),
            self.storage_board.clone(),
            disk,
        ));
        self.metrics = Some(store);
        self
    }

    /// This node's metrics, if it keeps them.
    pub fn metrics(&self) -> Option<&crate::metrics::MetricsStore> {
        self.metrics.as_ref()
    }

    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.hv
    }
}
