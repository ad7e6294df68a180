//! HA on a node: the `LeaseAgent` renews this node's lease through the leader every quarter
//! lease and feeds the fence with its end (and reports the node's hardware once); the
//! `HaManager`, active on the leader only, runs the manager's decisions
//! (`horcrux_core::ha::manager::plan`) against the leader's lease table and commits them,
//! logging each move with its placement explanation in a task.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use horcrux_core::ha::lease::NodeLease;
use horcrux_core::ha::manager;
use horcrux_core::ha::resources::HaOptions;
use horcrux_core::Command;
use horcrux_drivers::fence::FenceClient;

use crate::guard::catch;
use crate::port::{read, ClusterPort};
use crate::tasks::TaskRegistry;

/// This node's current lease: written by the agent, read by the fleet before it starts an
/// HA guest.
pub type LeaseCell = Arc<Mutex<Option<NodeLease>>>;

/// How the daemon starts its fence: this program with `fence --socket SOCKET`.
#[derive(Clone, Debug)]
pub struct FenceLauncher {
    pub client: FenceClient,
    pub program: PathBuf,
    pub log: PathBuf,
}

impl FenceLauncher {
    /// Starts the fence unless one answers (it outlives the daemon: a restarted daemon
    /// feeds the same fence, and the guests it holds keep running).
    pub fn ensure_running(&self) -> Result<(), String> {
        if self.client.alive() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        std::process::Command::new(&self.program)
            .arg("fence")
            .arg("--socket")
            .arg(self.client.socket())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the fence: {e}"))?;
        for _ in 0..100 {
            if self.client.alive() {
                tracing::info!(socket = %self.client.socket().display(), "fence started");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the fence did not answer within 2 s".into())
    }
}

pub struct LeaseAgent {
    port: Arc<dyn ClusterPort>,
    fence: Option<FenceLauncher>,
    lease: LeaseCell,
}

impl LeaseAgent {
    pub fn new(port: Arc<dyn ClusterPort>, fence: Option<FenceLauncher>, lease: LeaseCell) -> Self {
        LeaseAgent { port, fence, lease }
    }
}

/// Feeds the fence `deadline_ms`, starting it first if it does not answer.
async fn feed(fence: FenceLauncher, deadline_ms: u64) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        if fence.client.feed(deadline_ms).is_ok() {
            return Ok(());
        }
        fence.ensure_running()?;
        fence.client.feed(deadline_ms).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

impl Actor for LeaseAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (port, fence, cell) = (self.port.clone(), self.fence.clone(), self.lease.clone());
        let renewals = async move {
            let mut failing = false;
            loop {
                let opts = read(&*port, |s| HaOptions::from_options(&s.options));
                let sent = port.monotonic_ms();
                match port.renew_lease().await {
                    Ok(grant_index) => {
                        let lease = NodeLease { sent_ms: sent, lease_ms: opts.lease_ms, grant_index };
                        *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
                        if let Some(f) = &fence {
                            if let Err(e) = feed(f.clone(), lease.deadline_ms()).await {
                                tracing::error!("cannot feed the fence: {e}; HA guests here will be killed");
                            }
                        }
                        if failing {
                            tracing::info!("HA lease renewed again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("HA lease not renewed: {e}");
                            failing = true;
                        }
                    }
                }
                let next = sent + opts.lease_ms / 4;
                let wait = next.saturating_sub(port.monotonic_ms());
                tokio::time::sleep(Duration::from_millis(wait.max(50))).await;
            }
        };
        ctx.spawn(
            async move {
                if let Err(p) = catch(renewals).await {
                    tracing::error!("the lease agent panicked ({p})");
                }
            }
            .into_actor(self)
            .map(|_, _, ctx: &mut Context<Self>| ctx.stop()),
        );
        // Report this node's hardware for placement (again until it is recorded).
        let port = self.port.clone();
        ctx.spawn(
            async move {
                let facts = horcrux_drivers::host::node_facts();
                let name = port.node_name().to_string();
                loop {
                    let same = read(&*port, |s| s.nodes.get(&name).map(|n| n.facts == facts));
                    if same == Some(true) {
                        return;
                    }
                    if same.is_some() {
                        let cmd = Command::ReportNodeFacts { name: name.clone(), facts: facts.clone() };
                        if port.propose(cmd).await.is_ok() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            .into_actor(self),
        );
    }
}

impl actix::Supervised for LeaseAgent {}

/// How often the manager looks at the leases and the state.
const MANAGER_TICK: Duration = Duration::from_millis(200);

pub struct HaManager {
    port: Arc<dyn ClusterPort>,
    tasks: Option<TaskRegistry>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    leading: bool,
}

impl HaManager {
    pub fn new(port: Arc<dyn ClusterPort>, tasks: Option<TaskRegistry>) -> Self {
        HaManager { port, tasks, busy: Arc::default(), leading: false }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        use std::sync::atomic::Ordering;
        let Some(table) = self.port.lease_table() else {
            if self.leading {
                tracing::info!("no longer the leader: the HA manager is idle");
                self.leading = false;
            }
            return;
        };
        if !self.leading {
            tracing::info!(term = table.term, "leader: the HA manager is active");
            self.leading = true;
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let now = self.port.monotonic_ms();
        let steps = read(&*self.port, |s| {
            let o = HaOptions::from_options(&s.options);
            manager::plan(s, &|n| table.liveness(n, now, &o))
        });
        let (port, tasks) = (self.port.clone(), self.tasks.clone());
        let node = port.node_name().to_string();
        let run = async move {
            for step in steps {
                let (kind, moves) = match &step.cmd {
                    Command::HaTransition { node: Some(_), .. } => ("harecover", true),
                    Command::HaTransition { run: Some(true), .. } => ("hastart", false),
                    Command::HaTransition { run: Some(false), .. } => ("hastop", false),
                    _ => ("hamanager", false),
                };
                let vmid = horcrux_core::ha::resources::vmid_of(&step.sid).unwrap_or(0).to_string();
                let task = tasks.as_ref().filter(|_| moves).map(|t| t.create(kind, &vmid, "root@pam"));
                for line in &step.explanation {
                    tracing::info!(sid = %step.sid, node = %node, "{line}");
                    if let Some(t) = &task {
                        t.log(line.clone());
                    }
                }
                let res = port.propose(step.cmd).await;
                if let Err(e) = &res {
                    tracing::debug!(sid = %step.sid, "HA transition not committed: {e}");
                }
                if let Some(t) = task {
                    t.finish(res.map(|_| ()));
                }
            }
        };
        ctx.spawn(
            async move {
                if let Err(p) = catch(run).await {
                    tracing::error!("the HA manager panicked ({p})");
                }
            }
            .into_actor(self)
            .map(move |_, act: &mut Self, _| act.busy.store(false, Ordering::SeqCst)),
        );
    }
}

impl Actor for HaManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.busy.store(false, std::sync::atomic::Ordering::SeqCst);
        ctx.run_interval(MANAGER_TICK, |act, ctx| act.tick(ctx));
    }
}

impl actix::Supervised for HaManager {}
