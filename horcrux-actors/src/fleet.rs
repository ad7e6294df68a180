//! `GuestFleet`: keeps one supervised `GuestActor` per guest this node owns, in step with
//! the replicated state (on every applied entry and on a periodic tick).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use horcrux_core::{ClusterState, Guest};
use horcrux_drivers::{GuestLaunch, Hypervisor, ObservedPower};

use crate::guest::{GuestActor, MigrateOut, Reconcile, Retire, StatusBoard};
use crate::port::{read, ClusterPort};
use crate::runtime::{RuntimeError, VolumeFactory};
use crate::tasks::TaskLog;

/// Re-observe every guest this often even when nothing is committed.
const TICK: Duration = Duration::from_secs(5);

pub struct GuestFleet {
    cluster: Arc<dyn ClusterPort>,
    hv: Arc<dyn Hypervisor>,
    volumes: VolumeFactory,
    board: StatusBoard,
    guests: BTreeMap<u32, Addr<GuestActor>>,
}

/// Bring owned guests in line with the state (fire and forget). After a commit only the
/// set of actors is refreshed: the API's task drives the guest itself so its log tells
/// what happened; the periodic tick (and start-up) reconciles power for every guest.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncAll {
    pub power: bool,
}

/// Move a stopped guest this node owns to `target` (offline migration).
#[derive(Message)]
#[rtype(result = "Result<u64, RuntimeError>")]
pub struct MigrateOne {
    pub vmid: u32,
    pub target: String,
}

/// The node is going away (the simulation crashes it): end every guest actor and the fleet
/// for good, leaving the guests themselves alone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Reconcile one guest now and answer with the outcome.
#[derive(Message)]
#[rtype(result = "Result<ObservedPower, RuntimeError>")]
pub struct ReconcileOne {
    pub vmid: u32,
    pub task: Option<TaskLog>,
}

/// Resolves a guest's disks and boot files to host paths through its storage pools.
pub fn launch_for(
    state: &ClusterState,
    guest: &Guest,
    volumes: &VolumeFactory,
) -> Result<GuestLaunch, RuntimeError> {
    let spec = guest.vm_spec().clone();
    let mut disk_paths = Vec::with_capacity(spec.disks.len());
    for d in &spec.disks {
        let pool = state
            .storage
            .get(&d.storage)
            .ok_or_else(|| RuntimeError::Driver(format!("storage {} is gone", d.storage)))?;
        let volid =
            d.volume.as_deref().ok_or_else(|| RuntimeError::Driver("disk without a volume".into()))?;
        disk_paths.push(volumes(pool).path(volid).map_err(|e| RuntimeError::Driver(e.to_string()))?);
    }
    let mut spec = spec;
    if let Some(boot) = spec.boot.as_mut() {
        // Boot files on a storage become that storage's host paths here, on the owner.
        for file in [Some(&mut boot.kernel), boot.initrd.as_mut()].into_iter().flatten() {
            let parsed = horcrux_core::ids::parse_boot_file("boot", file);
            let resolved = match parsed.map_err(|e| RuntimeError::Driver(e.to_string()))? {
                horcrux_core::ids::BootFile::Host(_) => None,
                horcrux_core::ids::BootFile::Volume { storage, volid } => {
                    let pool = state
                        .storage
                        .get(storage)
                        .ok_or_else(|| RuntimeError::Driver(format!("storage {storage} is gone")))?;
                    Some(volumes(pool).path(volid).map_err(|e| RuntimeError::Driver(e.to_string()))?)
                }
            };
            if let Some(path) = resolved {
                *file = path.display().to_string();
            }
        }
    }
    Ok(GuestLaunch { vmid: guest.vmid, name: guest.name.clone(), spec, disk_paths })
}

impl GuestFleet {
    pub fn new(
        cluster: Arc<dyn ClusterPort>,
        hv: Arc<dyn Hypervisor>,
        volumes: VolumeFactory,
        board: StatusBoard,
    ) -> Self {
        Self { cluster, hv, volumes, board, guests: BTreeMap::new() }
    }

    fn actor(&mut self, vmid: u32) -> Addr<GuestActor> {
        let (hv, cluster, board) = (self.hv.clone(), self.cluster.clone(), self.board.clone());
        self.guests
            .entry(vmid)
            .or_insert_with(|| Supervisor::start(move |_| GuestActor::new(vmid, hv, cluster, board)))
            .clone()
    }

    /// The reconcile message for a guest this node owns, from the current state.
    fn reconcile_msg(&self, vmid: u32, task: Option<TaskLog>) -> Result<Reconcile, RuntimeError> {
        let node = self.cluster.node_name().to_string();
        read(&*self.cluster, |s| {
            let g = s.guests.get(&vmid).ok_or(RuntimeError::NotFound(vmid))?;
            if g.node != node {
                return Err(RuntimeError::NotOwned { vmid, node: g.node.clone() });
            }
            Ok(Reconcile {
                desired: g.desired,
                revision: g.revision,
                launch: launch_for(s, g, &self.volumes)?,
                task,
            })
        })
    }
}

impl Actor for GuestFleet {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut applied = self.cluster.subscribe_guest_changes();
        let addr = ctx.address();
        actix::spawn(async move {
            while applied.changed().await.is_ok() && addr.connected() {
                addr.do_send(SyncAll { power: false });
            }
        });
        ctx.run_interval(TICK, |_, ctx| ctx.address().do_send(SyncAll { power: true }));
        ctx.address().do_send(SyncAll { power: true });
    }
}

impl actix::Supervised for GuestFleet {}

impl Handler<SyncAll> for GuestFleet {
    type Result = ();

    fn handle(&mut self, msg: SyncAll, _ctx: &mut Context<Self>) {
        let node = self.cluster.node_name().to_string();
        let owned: Vec<u32> =
            read(&*self.cluster, |s| s.guests.values().filter(|g| g.node == node).map(|g| g.vmid).collect());
        let gone: Vec<u32> = self.guests.keys().filter(|v| !owned.contains(v)).copied().collect();
        for vmid in gone {
            if let Some(addr) = self.guests.remove(&vmid) {
                addr.do_send(Retire);
            }
        }
        if !msg.power {
            return;
        }
        // A guest process this node must not run (deleted, or never ours) is stopped: after
        // a partition or a crash the state may have moved on without this host. Only on a
        // state known to be current (a read barrier through the leader): a node cut off, or
        // still catching up after a restart, would otherwise kill guests its stale copy does
        // not place here yet.
        let (hv, cluster) = (self.hv.clone(), self.cluster.clone());
        actix::spawn(async move {
            if let Err(e) = cluster.read_barrier().await {
                return tracing::debug!(
                    "not looking for stray guests: the state is not known to be current: {e}"
                );
            }
            let node = cluster.node_name().to_string();
            let keep: Vec<u32> =
                read(&*cluster, |s| s.guests.values().filter(|g| g.node == node).map(|g| g.vmid).collect());
            let running = match hv.running_guests().await {
                Ok(r) => r,
                Err(e) => return tracing::warn!("cannot list running guests: {e}"),
            };
            for vmid in running.into_iter().filter(|v| !keep.contains(v)) {
                tracing::warn!(vmid, "guest runs here but the cluster does not place it here; stopping it");
                if let Err(e) = hv.stop(vmid).await {
                    tracing::warn!(vmid, "could not stop the stray guest: {e}");
                }
            }
        });
        for vmid in owned {
            match self.reconcile_msg(vmid, None) {
                // A busy actor already has work queued; the next tick catches up.
                Ok(msg) => {
                    let _ = self.actor(vmid).try_send(msg);
                }
                Err(e) => tracing::warn!(vmid, "cannot reconcile: {e}"),
            }
        }
    }
}

impl Handler<MigrateOne> for GuestFleet {
    type Result = ResponseFuture<Result<u64, RuntimeError>>;

    fn handle(&mut self, msg: MigrateOne, _ctx: &mut Context<Self>) -> Self::Result {
        let revision = match self.reconcile_msg(msg.vmid, None) {
            Ok(r) if r.desired.is_running() => {
                let e = RuntimeError::Busy(format!(
                    "guest {} is meant to run; stop it before an offline migration",
                    msg.vmid
                ));
                return Box::pin(async move { Err(e) });
            }
            Ok(r) => r.revision,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let addr = self.actor(msg.vmid);
        Box::pin(async move {
            addr.send(MigrateOut { target: msg.target, revision })
                .await
                .map_err(|_| RuntimeError::ActorGone)?
        })
    }
}

impl Handler<Shutdown> for GuestFleet {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        for (_, addr) in std::mem::take(&mut self.guests) {
            addr.do_send(Retire);
        }
        ctx.terminate();
    }
}

impl Handler<ReconcileOne> for GuestFleet {
    type Result = ResponseFuture<Result<ObservedPower, RuntimeError>>;

    fn handle(&mut self, msg: ReconcileOne, _ctx: &mut Context<Self>) -> Self::Result {
        let reconcile = match self.reconcile_msg(msg.vmid, msg.task) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let addr = self.actor(msg.vmid);
        Box::pin(async move {
            addr.send(reconcile).await.map_err(|_| RuntimeError::ActorGone)?.map_err(RuntimeError::Driver)
        })
    }
}
