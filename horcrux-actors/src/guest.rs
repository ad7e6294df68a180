//! `GuestActor`: one per guest owned by this node. It drives the hypervisor toward the
//! desired power state, publishes what it observes, notices a guest that exits on its own,
//! and is restarted by its supervisor (without touching the guest) if it panics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use horcrux_core::{Command, DesiredPower};
use horcrux_drivers::{DriverError, GuestLaunch, Hypervisor, ObservedPower, ShutdownOutcome};
use serde::Serialize;

use crate::guard::{catch, guarded, panicked};
use crate::port::ClusterPort;
use horcrux_raft::ProposeError;

/// What a panic in this actor is called in logs and answers.
const WHAT: &str = "guest actor";

/// How long to wait before retrying to record a guest's own exit.
const EXIT_RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
use crate::tasks::TaskLog;

/// What this node last observed of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestStatus {
    pub power: ObservedPower,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub type StatusBoard = Arc<Mutex<HashMap<u32, GuestStatus>>>;

/// Bring the guest to `desired`. Answers with what the guest is afterwards.
#[derive(Message)]
#[rtype(result = "Result<ObservedPower, String>")]
pub struct Reconcile {
    pub desired: DesiredPower,
    /// The guest's revision: a guest that exited by itself is not restarted by a reconcile
    /// of the same (or an older) revision.
    pub revision: u64,
    pub launch: GuestLaunch,
    pub task: Option<TaskLog>,
}

/// The hypervisor reported that the guest's process went away.
#[derive(Message)]
#[rtype(result = "()")]
struct Exited {
    generation: u64,
}

/// The exit watcher of `generation` failed (its driver call panicked): nothing waits on the
/// QEMU any more, so the next reconcile arms a new watcher.
#[derive(Message)]
#[rtype(result = "()")]
struct WatcherLost {
    generation: u64,
}

/// Hand the (stopped) guest to another node: the actor checks that its process is gone,
/// then commits the move. Atomic with the actor's other work, so nothing starts the guest
/// here in between; the commit is conditional on `revision`, so a start requested
/// meanwhile makes it fail instead.
#[derive(Message)]
#[rtype(result = "Result<u64, crate::RuntimeError>")]
pub struct MigrateOut {
    pub target: String,
    pub revision: u64,
}

/// The guest left this node's care (deleted): stop the actor, leave the host alone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

pub struct GuestActor {
    vmid: u32,
    hv: Arc<dyn Hypervisor>,
    cluster: Arc<dyn ClusterPort>,
    board: StatusBoard,
    /// Bumped whenever an exit would be expected (we stopped it) or stale (actor restarted).
    generation: u64,
    last_revision: u64,
    /// Revision at which the guest exited on its own; no restart until the revision moves.
    exited_at_revision: Option<u64>,
    retired: bool,
    /// The generation of the exit watcher waiting on the running QEMU: one per QEMU, not
    /// one per reconcile (the periodic tick reconciles every running guest).
    watcher: Option<u64>,
}

impl GuestActor {
    pub fn new(
        vmid: u32,
        hv: Arc<dyn Hypervisor>,
        cluster: Arc<dyn ClusterPort>,
        board: StatusBoard,
    ) -> Self {
        Self {
            vmid,
            hv,
            cluster,
            board,
            generation: 0,
            last_revision: 0,
            exited_at_revision: None,
            retired: false,
            watcher: None,
        }
    }

    fn publish(&self, power: ObservedPower, last_error: Option<String>) {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.vmid, GuestStatus { power, last_error });
    }

    fn watch_exit(&self, ctx: &mut Context<Self>) {
        let (hv, vmid, generation, addr) = (self.hv.clone(), self.vmid, self.generation, ctx.address());
        actix::spawn(async move {
            match catch(async { hv.wait_exit(vmid).await }).await {
                Ok(()) => addr.do_send(Exited { generation }),
                Err(p) => {
                    tracing::error!(vmid, "the exit watcher panicked ({p}); arming a new one");
                    addr.do_send(WatcherLost { generation });
                }
            }
        });
    }
}

impl Actor for GuestActor {
    type Context = Context<Self>;
}

impl actix::Supervised for GuestActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(vmid = self.vmid, "guest actor restarting");
        // Exit watchers of the previous incarnation must not count.
        self.generation += 1;
    }
}

async fn drive(
    hv: Arc<dyn Hypervisor>,
    desired: DesiredPower,
    launch: GuestLaunch,
    task: Option<TaskLog>,
    may_start: bool,
) -> Result<ObservedPower, DriverError> {
    let log = |l: String| {
        if let Some(t) = &task {
            t.log(l);
        }
    };
    let vmid = launch.vmid;
    let observed = hv.status(vmid).await?;
    match (desired, observed) {
        (DesiredPower::Running, ObservedPower::Stopped) if may_start => {
            log(format!("starting guest {vmid}"));
            hv.start(&launch).await?;
            let now = hv.status(vmid).await?;
            log(format!("guest {vmid} is {now:?}").to_lowercase());
            Ok(now)
        }
        (
            DesiredPower::Stopped { graceful_timeout_s: None },
            ObservedPower::Running | ObservedPower::Paused,
        ) => {
            log(format!("stopping guest {vmid}"));
            hv.stop(vmid).await?;
            Ok(ObservedPower::Stopped)
        }
        (
            DesiredPower::Stopped { graceful_timeout_s: Some(t) },
            ObservedPower::Running | ObservedPower::Paused,
        ) => {
            log(format!("requesting shutdown of guest {vmid} (timeout {t} s)"));
            match hv.shutdown(vmid, std::time::Duration::from_secs(t.into())).await? {
                ShutdownOutcome::Graceful => log("guest powered off".into()),
                ShutdownOutcome::Forced => log(format!("guest did not power off within {t} s; stopped it")),
            }
            Ok(ObservedPower::Stopped)
        }
        (_, now) => {
            log(format!("guest {vmid} is already {now:?}").to_lowercase());
            Ok(now)
        }
    }
}

impl GuestActor {
    /// The synchronous half of a reconcile: bookkeeping, and the driver work to run.
    fn begin(&mut self, msg: Reconcile) -> (BoxedDrive, bool) {
        if msg.revision > self.last_revision {
            self.last_revision = msg.revision;
        }
        let may_start = match self.exited_at_revision {
            Some(r) if msg.revision <= r => false,
            _ => {
                self.exited_at_revision = None;
                true
            }
        };
        let stopping = !msg.desired.is_running();
        if stopping {
            // The exit we are about to cause is expected.
            self.generation += 1;
        }
        // A start that resumed from a snapshot's saved state: the state is used up.
        let resume = msg.launch.loadvm.clone();
        let (cluster, vmid) = (self.cluster.clone(), self.vmid);
        let fut = drive(self.hv.clone(), msg.desired, msg.launch, msg.task, may_start);
        let fut = async move {
            let r = fut.await;
            if let (Ok(ObservedPower::Running | ObservedPower::Paused), Some(tag)) = (&r, resume) {
                if let Err(e) = cluster.propose(horcrux_core::Command::ClearResume { vmid, tag }).await {
                    tracing::warn!(vmid, "the guest resumed from its snapshot; recording it failed: {e}");
                }
            }
            r
        };
        (Box::pin(fut), stopping)
    }

    /// The half after the driver answered: publish, and watch a QEMU left running.
    fn finish(
        &mut self,
        ctx: &mut Context<Self>,
        res: Result<ObservedPower, DriverError>,
        stopping: bool,
    ) -> Result<ObservedPower, String> {
        match res {
            Err(e) => {
                let power =
                    self.board.lock().unwrap_or_else(|p| p.into_inner()).get(&self.vmid).map(|s| s.power);
                self.publish(power.unwrap_or(ObservedPower::Stopped), Some(e.to_string()));
                Err(e.to_string())
            }
            Ok(power) => {
                self.publish(power, None);
                // A watcher of this generation already waits on this QEMU; one of an older
                // generation waits on one we stopped since (it ends with it).
                let watched = self.watcher == Some(self.generation);
                if power != ObservedPower::Stopped && !stopping && !watched {
                    self.generation += 1;
                    self.watcher = Some(self.generation);
                    self.watch_exit(ctx);
                }
                Ok(power)
            }
        }
    }
}

type BoxedDrive = std::pin::Pin<Box<dyn std::future::Future<Output = Result<ObservedPower, DriverError>>>>;

impl Handler<Reconcile> for GuestActor {
    type Result = AtomicResponse<Self, Result<ObservedPower, String>>;

    fn handle(&mut self, msg: Reconcile, ctx: &mut Context<Self>) -> Self::Result {
        let Some((fut, stopping)) = guarded(self, ctx, WHAT, |act, _| act.begin(msg)) else {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(panicked(WHAT)))));
        };
        AtomicResponse::new(Box::pin(catch(fut).into_actor(self).map(move |res, act, ctx| {
            match res {
                Err(p) => {
                    tracing::error!(
                        vmid = act.vmid,
                        "guest actor panicked ({p}); its supervisor restarts it"
                    );
                    ctx.stop();
                    Err(panicked(WHAT))
                }
                Ok(res) => guarded(act, ctx, WHAT, |act, ctx| act.finish(ctx, res, stopping))
                    .unwrap_or_else(|| Err(panicked(WHAT))),
            }
        })))
    }
}

impl Handler<WatcherLost> for GuestActor {
    type Result = ();

    fn handle(&mut self, msg: WatcherLost, _ctx: &mut Context<Self>) {
        if self.watcher == Some(msg.generation) {
            self.watcher = None;
        }
    }
}

impl Handler<Exited> for GuestActor {
    type Result = ();

    fn handle(&mut self, msg: Exited, ctx: &mut Context<Self>) {
        guarded(self, ctx, WHAT, |act, ctx| act.exited(msg, ctx));
    }
}

impl GuestActor {
    fn exited(&mut self, msg: Exited, ctx: &mut Context<Self>) {
        if self.watcher == Some(msg.generation) {
            self.watcher = None;
        }
        if msg.generation != self.generation || self.retired {
            return;
        }
        self.generation += 1;
        tracing::warn!(vmid = self.vmid, "guest exited on its own");
        self.publish(ObservedPower::Stopped, Some("guest exited on its own".into()));
        let vmid = self.vmid;
        let ha = crate::port::read(&*self.cluster, |s| {
            s.ha_resources
                .get(&horcrux_core::ha::resources::vm_sid(vmid))
                .is_some_and(|r| r.state != horcrux_core::ha::resources::RequestedState::Ignored)
        });
        if ha {
            // An HA guest stays requested started: the fleet starts it again (under a
            // current lease only), as Proxmox's LRM does.
            tracing::info!(vmid, "HA guest exited; it is started again");
            return;
        }
        self.exited_at_revision = Some(self.last_revision);
        // Record it in the cluster so the guest stays stopped, as Proxmox does. Retry until
        // it commits: without the record the state says "running" while nothing runs it.
        // The write is conditional on the revision we saw, so a user's later start wins.
        let (cluster, vmid, revision) = (self.cluster.clone(), self.vmid, self.last_revision);
        let fut = async move {
            let cmd = Command::SetDesiredPower {
                vmid,
                expected_revision: Some(revision),
                desired: DesiredPower::Stopped { graceful_timeout_s: None },
            };
            loop {
                match cluster.propose(cmd.clone()).await {
                    Ok(_) => return,
                    Err(ProposeError::Rejected(e)) => {
                        tracing::info!(vmid, "guest changed since it exited; not recording the exit: {e}");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(vmid, "could not record the guest's exit yet: {e}");
                        tokio::time::sleep(EXIT_RECORD_RETRY).await;
                    }
                }
            }
        };
        ctx.spawn(catch(fut).into_actor(self).map(move |res, _, _| {
            if let Err(p) = res {
                tracing::error!(vmid, "recording the guest's exit panicked ({p})");
            }
        }));
    }
}

impl Handler<MigrateOut> for GuestActor {
    type Result = AtomicResponse<Self, Result<u64, crate::RuntimeError>>;

    fn handle(&mut self, msg: MigrateOut, _ctx: &mut Context<Self>) -> Self::Result {
        let (hv, cluster, vmid) = (self.hv.clone(), self.cluster.clone(), self.vmid);
        let fut = async move {
            use crate::RuntimeError;
            match hv.status(vmid).await.map_err(|e| RuntimeError::Driver(e.to_string()))? {
                ObservedPower::Stopped => {}
                other => {
                    return Err(RuntimeError::Busy(
                        format!("guest {vmid} is still {other:?} on this node; stop it first").to_lowercase(),
                    ))
                }
            }
            let cmd =
                Command::MigrateGuest { vmid, expected_revision: Some(msg.revision), target: msg.target };
            Ok(cluster.propose(cmd).await?.revision)
        };
        AtomicResponse::new(Box::pin(catch(fut).into_actor(self).map(|res, _, ctx| {
            res.unwrap_or_else(|p| {
                tracing::error!("guest actor panicked while migrating out ({p}); its supervisor restarts it");
                ctx.stop();
                Err(crate::RuntimeError::Driver(panicked(WHAT)))
            })
        })))
    }
}

impl Handler<Retire> for GuestActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.retired = true;
        self.board.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.vmid);
        // A supervised actor that stops is restarted while anyone holds its address; the
        // fleet dropped its own, so it ends with the last caller's. `retired` keeps a
        // restarted one from recording exits meanwhile.
        ctx.terminate();
    }
}
