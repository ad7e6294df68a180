//! `GuestFleet`: keeps one supervised `GuestActor` per guest this node owns, in step with
//! the replicated state (on every applied entry and on a periodic tick).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use horcrux_core::{ClusterState, Guest};
use horcrux_drivers::{GuestLaunch, Hypervisor, ObservedPower};

use crate::guard::{catch, guarded, panicked};
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
    /// This node's HA lease (`ha.rs`): an HA guest starts only under a current one.
    lease: crate::ha::LeaseCell,
    /// HA guests with a start in flight.
    ha_starting: Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
}

/// How often HA guests meant to run here but not running are started again.
const HA_RETRY: Duration = Duration::from_millis(500);

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

/// Whether the HA manager manages guest `vmid` (an HA resource not `ignored`).
fn is_ha(s: &ClusterState, vmid: u32) -> bool {
    s.ha_resources
        .get(&horcrux_core::ha::resources::vm_sid(vmid))
        .is_some_and(|r| r.state != horcrux_core::ha::resources::RequestedState::Ignored)
}

/// Resolves a guest's disks (host paths or network volumes) and boot files (host paths)
/// through its storage pools.
pub fn launch_for(
    state: &ClusterState,
    guest: &Guest,
    volumes: &VolumeFactory,
) -> Result<GuestLaunch, RuntimeError> {
    let spec = guest.vm_spec().clone();
    let mut disks = Vec::with_capacity(spec.disks.len());
    for d in &spec.disks {
        let pool = state
            .storage
            .get(&d.storage)
            .ok_or_else(|| RuntimeError::Driver(format!("storage {} is gone", d.storage)))?;
        let volid =
            d.volume.as_deref().ok_or_else(|| RuntimeError::Driver("disk without a volume".into()))?;
        disks.push(volumes(pool).source(volid).map_err(|e| RuntimeError::Driver(e.to_string()))?);
    }
    let mut cdroms = Vec::with_capacity(spec.cdroms.len());
    for c in &spec.cdroms {
        let Some(volid) = &c.volume else {
            cdroms.push(None);
            continue;
        };
        let storage = volid.split(':').next().unwrap_or_default();
        let pool = state
            .storage
            .get(storage)
            .ok_or_else(|| RuntimeError::Driver(format!("storage {storage} is gone")))?;
        cdroms.push(Some(volumes(pool).source(volid).map_err(|e| RuntimeError::Driver(e.to_string()))?));
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
    let arch = horcrux_core::arch::resolve(&state.architectures, "arch", spec.arch.as_deref())
        .map_err(|e| RuntimeError::Driver(e.to_string()))?;
    Ok(GuestLaunch {
        vmid: guest.vmid,
        name: guest.name.clone(),
        spec,
        disks,
        cdroms,
        ha_until_ms: None,
        arch,
        loadvm: guest.resume.clone(),
    })
}

impl GuestFleet {
    pub fn new(
        cluster: Arc<dyn ClusterPort>,
        hv: Arc<dyn Hypervisor>,
        volumes: VolumeFactory,
        board: StatusBoard,
    ) -> Self {
        Self {
            cluster,
            hv,
            volumes,
            board,
            guests: BTreeMap::new(),
            lease: Default::default(),
            ha_starting: Default::default(),
        }
    }

    /// HA guests start under the lease the node's `LeaseAgent` keeps in `lease`.
    pub fn with_lease(mut self, lease: crate::ha::LeaseCell) -> Self {
        self.lease = lease;
        self
    }

    /// The guest's actor, started if it has none or if its address is dead (an actor that
    /// died past its supervisor, e.g. a panic outside the guarded handlers).
    fn actor(&mut self, vmid: u32) -> Addr<GuestActor> {
        if let Some(addr) = self.guests.get(&vmid) {
            if addr.connected() {
                return addr.clone();
            }
            tracing::error!(vmid, "the guest actor is gone; starting a new one");
        }
        let (hv, cluster, board) = (self.hv.clone(), self.cluster.clone(), self.board.clone());
        let addr = Supervisor::start(move |_| GuestActor::new(vmid, hv, cluster, board));
        self.guests.insert(vmid, addr.clone());
        addr
    }

    /// The reconcile message for a guest this node owns, from the current state.
    /// An HA guest to be started gets the end of the current lease as its launch deadline;
    /// without a lease that allows a start (current, granted at an index this node has
    /// applied) it is not started: another node may be taking it over.
    fn reconcile_msg(&self, vmid: u32, task: Option<TaskLog>) -> Result<Reconcile, RuntimeError> {
        let node = self.cluster.node_name().to_string();
        // Read before the state, so the state holds at least everything up to it.
        let applied = self.cluster.applied_index();
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.cluster.monotonic_ms();
        read(&*self.cluster, |s| {
            let g = s.guests.get(&vmid).ok_or(RuntimeError::NotFound(vmid))?;
            if g.node != node {
                return Err(RuntimeError::NotOwned { vmid, node: g.node.clone() });
            }
            let mut launch = launch_for(s, g, &self.volumes)?;
            if is_ha(s, vmid) && g.desired.is_running() {
                let sid = horcrux_core::ha::resources::vm_sid(vmid);
                if !horcrux_core::ha::manager::may_start(s, &sid) {
                    return Err(RuntimeError::Busy(format!(
                        "HA guest {vmid} is not 'started' for the HA manager (being fenced or recovered)"
                    )));
                }
                match lease {
                    Some(l) if l.allows_start(now, applied, horcrux_drivers::fence::MIN_LEFT_MS) => {
                        launch.ha_until_ms = Some(l.deadline_ms());
                    }
                    _ => {
                        return Err(RuntimeError::Busy(format!(
                            "HA guest {vmid}: this node holds no current lease; not starting it"
                        )))
                    }
                }
            }
            Ok(Reconcile { desired: g.desired, revision: g.revision, launch, task })
        })
    }
}

impl Actor for GuestFleet {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut applied = self.cluster.subscribe_guest_changes();
        let addr = ctx.address();
        // An actor future: a restart (which runs `started` again) cancels it, so there is
        // never more than one.
        ctx.spawn(
            async move {
                while applied.changed().await.is_ok() && addr.connected() {
                    addr.do_send(SyncAll { power: false });
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(TICK, |_, ctx| ctx.address().do_send(SyncAll { power: true }));
        ctx.run_interval(HA_RETRY, |act, _| act.retry_ha_starts());
        ctx.address().do_send(SyncAll { power: true });
    }
}

impl actix::Supervised for GuestFleet {}

impl Handler<SyncAll> for GuestFleet {
    type Result = ();

    fn handle(&mut self, msg: SyncAll, ctx: &mut Context<Self>) {
        guarded(self, ctx, WHAT, |act, _| act.sync_all(msg));
    }
}

/// What a panic in this actor is called in logs and answers.
const WHAT: &str = "guest fleet";

impl GuestFleet {
    fn sync_all(&mut self, msg: SyncAll) {
        let node = self.cluster.node_name().to_string();
        let owned: Vec<u32> =
            read(&*self.cluster, |s| s.guests.values().filter(|g| g.node == node).map(|g| g.vmid).collect());
        let gone: Vec<u32> = self.guests.keys().filter(|v| !owned.contains(v)).copied().collect();
        for vmid in gone {
            if let Some(addr) = self.guests.remove(&vmid) {
                addr.do_send(Retire);
            }
        }
        self.complete_ha_moves();
        if !msg.power {
            // A guest this node just took over (an HA recovery) is driven at once.
            let new: Vec<u32> = owned.iter().filter(|v| !self.guests.contains_key(v)).copied().collect();
            for vmid in new {
                self.reconcile_owned(vmid);
            }
            return;
        }
        // A guest process this node must not run (deleted, or never ours) is stopped: after
        // a partition or a crash the state may have moved on without this host. Only on a
        // state known to be current (a read barrier through the leader): a node cut off, or
        // still catching up after a restart, would otherwise kill guests its stale copy does
        // not place here yet.
        let (hv, cluster) = (self.hv.clone(), self.cluster.clone());
        let strays = catch(async move {
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
        actix::spawn(async move {
            if let Err(p) = strays.await {
                tracing::error!("looking for stray guests panicked ({p})");
            }
        });
        for vmid in owned {
            self.reconcile_owned(vmid);
        }
    }

    /// HA guests owned here, meant to run and not running (a recovery that arrived while
    /// the lease did not allow a start, an HA guest that exited): started again now rather
    /// than at the next tick.
    fn retry_ha_starts(&mut self) {
        let node = self.cluster.node_name().to_string();
        let wanted: Vec<u32> = read(&*self.cluster, |s| {
            s.guests
                .values()
                .filter(|g| g.node == node && g.desired.is_running() && is_ha(s, g.vmid))
                .map(|g| g.vmid)
                .collect()
        });
        let running: Vec<u32> = {
            let b = self.board.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|v| b.get(v).is_some_and(|s| s.power == ObservedPower::Running))
                .copied()
                .collect()
        };
        for vmid in wanted.into_iter().filter(|v| !running.contains(v)) {
            if !self.ha_starting.lock().unwrap_or_else(|p| p.into_inner()).contains(&vmid) {
                self.reconcile_owned(vmid);
            }
        }
    }

    /// Reconciles an owned guest in the background. A failed start of an HA guest is
    /// reported to the HA manager (which retries, relocates, or gives up).
    fn reconcile_owned(&mut self, vmid: u32) {
        let msg = match self.reconcile_msg(vmid, None) {
            Ok(msg) => msg,
            // No lease to start an HA guest under: asked again every HA_RETRY.
            Err(e @ RuntimeError::Busy(_)) => return tracing::debug!(vmid, "not reconciled: {e}"),
            Err(e) => return tracing::warn!(vmid, "cannot reconcile: {e}"),
        };
        let ha_start = msg.launch.ha_until_ms.is_some();
        let addr = self.actor(vmid);
        if !ha_start {
            // A busy actor already has work queued; the next tick catches up.
            let _ = addr.try_send(msg);
            return;
        }
        let (cluster, starting) = (self.cluster.clone(), self.ha_starting.clone());
        starting.lock().unwrap_or_else(|p| p.into_inner()).insert(vmid);
        actix::spawn(async move {
            if let Ok(Err(e)) = addr.send(msg).await {
                let sid = horcrux_core::ha::resources::vm_sid(vmid);
                tracing::warn!(vmid, "HA guest failed to start: {e}");
                let node = cluster.node_name().to_string();
                let _ = cluster.propose(horcrux_core::Command::HaStartFailed { sid, node }).await;
            }
            starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&vmid);
        });
    }

    /// The owner's part of an HA relocation: once the guest is stopped here, it moves to
    /// its target (and starts there if it is to run).
    fn complete_ha_moves(&self) {
        use horcrux_core::ha::resources::{RequestedState, ServiceState};
        let node = self.cluster.node_name().to_string();
        let moves: Vec<(u32, horcrux_core::Command)> = read(&*self.cluster, |s| {
            s.ha_resources
                .values()
                .filter(|r| matches!(r.service, ServiceState::Relocate | ServiceState::Migrate))
                .filter_map(|r| {
                    let vmid = horcrux_core::ha::resources::vmid_of(&r.sid)?;
                    let g = s.guests.get(&vmid).filter(|g| g.node == node && !g.desired.is_running())?;
                    let run = r.state == RequestedState::Started;
                    let cmd = horcrux_core::Command::HaTransition {
                        sid: r.sid.clone(),
                        expected_revision: r.revision,
                        service: if run { ServiceState::Started } else { ServiceState::Stopped },
                        node: Some(r.target.clone()?),
                        run: Some(run),
                        failed_nodes: r.failed_nodes.clone(),
                        target: None,
                    };
                    Some((g.vmid, cmd))
                })
                .collect()
        });
        for (vmid, cmd) in moves {
            let (hv, cluster) = (self.hv.clone(), self.cluster.clone());
            actix::spawn(async move {
                // Only once its process is gone here: it must never run on two nodes.
                if matches!(hv.status(vmid).await, Ok(ObservedPower::Stopped)) {
                    if let Err(e) = cluster.propose(cmd).await {
                        tracing::debug!(vmid, "HA move not committed yet: {e}");
                    }
                }
            });
        }
    }
}

impl Handler<MigrateOne> for GuestFleet {
    type Result = ResponseFuture<Result<u64, RuntimeError>>;

    fn handle(&mut self, msg: MigrateOne, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, WHAT, |act, _| act.migrate_one(msg))
            .unwrap_or_else(|| Box::pin(async { Err(RuntimeError::Driver(panicked(WHAT))) }))
    }
}

impl GuestFleet {
    fn migrate_one(&mut self, msg: MigrateOne) -> ResponseFuture<Result<u64, RuntimeError>> {
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

    fn handle(&mut self, msg: ReconcileOne, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, WHAT, |act, _| act.reconcile_one(msg))
            .unwrap_or_else(|| Box::pin(async { Err(RuntimeError::Driver(panicked(WHAT))) }))
    }
}

impl GuestFleet {
    fn reconcile_one(&mut self, msg: ReconcileOne) -> ResponseFuture<Result<ObservedPower, RuntimeError>> {
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

#[cfg(test)]
mod tests {
    //! The fleet against a fake cluster port and hypervisor: a dead guest-actor address is
    //! replaced, and stray guests are stopped only on a state known to be current.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use horcrux_core::{ApplyOk, Command};
    use horcrux_drivers::{BoxFuture, DirStorage, DriverError, ShutdownOutcome, VolumeStore};
    use horcrux_raft::ProposeError;
    use tokio::sync::watch;

    use super::*;

    struct FakePort {
        state: ClusterState,
        current: AtomicBool,
        changes: watch::Sender<u64>,
    }

    impl ClusterPort for FakePort {
        fn node_name(&self) -> &str {
            "n1"
        }
        fn with_state(&self, f: &mut dyn FnMut(&ClusterState)) {
            f(&self.state)
        }
        fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }
        fn propose_as(
            &self,
            _: Option<horcrux_core::access::Actor>,
            _: Command,
        ) -> BoxFuture<'static, Result<ApplyOk, ProposeError>> {
            Box::pin(async { Err(ProposeError::Unavailable("fake".into())) })
        }
        fn read_barrier(&self) -> BoxFuture<'static, Result<(), ProposeError>> {
            let current = self.current.load(Ordering::SeqCst);
            Box::pin(async move {
                if current {
                    Ok(())
                } else {
                    Err(ProposeError::Unavailable("no leader".into()))
                }
            })
        }
    }

    /// Reports guest 999 (not in the state) running until it is stopped.
    #[derive(Default)]
    struct StrayHv {
        stopped: Mutex<Vec<u32>>,
    }

    impl Hypervisor for StrayHv {
        fn start<'a>(&'a self, _: &'a GuestLaunch) -> BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async { Ok(()) })
        }
        fn status(&self, _: u32) -> BoxFuture<'_, Result<ObservedPower, DriverError>> {
            Box::pin(async { Ok(ObservedPower::Stopped) })
        }
        fn stop(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
            self.stopped.lock().unwrap().push(vmid);
            Box::pin(async { Ok(()) })
        }
        fn shutdown(&self, _: u32, _: Duration) -> BoxFuture<'_, Result<ShutdownOutcome, DriverError>> {
            Box::pin(async { Ok(ShutdownOutcome::Graceful) })
        }
        fn wait_exit(&self, _: u32) -> BoxFuture<'_, ()> {
            Box::pin(std::future::pending())
        }
        fn serial_log(&self, _: u32) -> PathBuf {
            PathBuf::from("/dev/null")
        }
        fn running_guests(&self) -> BoxFuture<'_, Result<Vec<u32>, DriverError>> {
            let stray = !self.stopped.lock().unwrap().contains(&999);
            Box::pin(async move { Ok(if stray { vec![999] } else { vec![] }) })
        }
    }

    fn fleet(current: bool) -> (GuestFleet, Arc<FakePort>, Arc<StrayHv>) {
        let port = Arc::new(FakePort {
            state: ClusterState::default(),
            current: AtomicBool::new(current),
            changes: watch::channel(0).0,
        });
        let hv = Arc::new(StrayHv::default());
        let volumes: VolumeFactory =
            Arc::new(|p| Arc::new(DirStorage::new(p.id.clone(), "/nonexistent")) as Arc<dyn VolumeStore>);
        (GuestFleet::new(port.clone(), hv.clone(), volumes, StatusBoard::default()), port, hv)
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// A handler that panics outside the guards (every real handler is guarded).
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Unguarded;

    impl Handler<Unguarded> for GuestActor {
        type Result = ();
        fn handle(&mut self, _: Unguarded, _: &mut Context<Self>) {
            panic!("unguarded panic");
        }
    }

    #[test]
    fn a_dead_guest_actor_address_is_replaced() {
        actix::System::new().block_on(async {
            let (mut fleet, _, _) = fleet(true);
            let first = fleet.actor(100);
            assert!(first.connected());
            // An unguarded panic takes the actor and its supervisor down: the address the
            // fleet holds is dead.
            first.do_send(Unguarded);
            settle().await;
            assert!(!first.connected(), "the panicked actor's mailbox is closed");
            let second = fleet.actor(100);
            assert!(second.connected(), "the fleet starts a new actor for a dead address");
            assert_eq!(fleet.guests.len(), 1);
            assert!(fleet.actor(100).connected());
        });
    }

    #[test]
    fn strays_are_stopped_only_on_a_state_known_to_be_current() {
        actix::System::new().block_on(async {
            let (fleet, port, hv) = fleet(false);
            let addr = fleet.start();
            addr.send(SyncAll { power: true }).await.unwrap();
            settle().await;
            assert!(hv.stopped.lock().unwrap().is_empty(), "no read barrier, no stray killing");
            port.current.store(true, Ordering::SeqCst);
            addr.send(SyncAll { power: true }).await.unwrap();
            settle().await;
            assert_eq!(*hv.stopped.lock().unwrap(), vec![999], "the stray is stopped after a barrier");
        });
    }
}
