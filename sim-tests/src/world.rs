//! One simulated run: build the nodes, drive the workload and faults, check invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use horcrux_actors::{ClusterPort, GuestFleet, MigrateOne, ReconcileOne, Shutdown, VolumeFactory};
use horcrux_core::{Command, DesiredPower, GuestConfig, Request, VmSpec};
use horcrux_raft::{HorcruxNode, NodeId, Proposer, TypeConfig};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::host::Hosts;
use crate::mem_store::{MemLog, MemSm};
use crate::net::{Router, RouterInner, SimNet};
use crate::port::{Proposers, SimPort};
use crate::store::{NodeStore, RocksStore};

mod crashes;
mod guests;
mod membership;

/// A deliberately injected bug, to prove the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    None,
    /// Node 2's state machine skips every 25th entry.
    SkipEntry,
    /// Node 2's disk stores every 40th entry under a wrong term.
    CorruptLog,
    /// The client counts a write as acknowledged as soon as a node accepts it, before it
    /// is committed.
    AckBeforeCommit,
    /// Reads are served from any node's local state, without the leader's read barrier.
    StaleRead,
    /// Node 2's actors believe they are node 1, so they run node 1's guests too.
    WrongOwner,
    /// Hosts keep reporting a guest whose QEMU died as running, so nobody restarts it.
    StaleStatus,
    /// Node 2's state machine ignores guest migrations: an owner change applied on one
    /// node only.
    SkipMigrate,
    /// Migrations are committed by whichever node the client asked, without the owner
    /// checking that the guest's QEMU is gone.
    UncheckedMigrate,
    /// The RocksDB log store reports appends durable before the WAL sync that covers them
    /// (a missing fsync): a power loss then drops entries the node counted or acknowledged.
    EarlyFlush,
}

/// One client operation in the history the linearizability checker reads.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    /// `None` for a write; for a read, what it returned (if it completed).
    read: Option<Option<String>>,
    invoke_ms: u64,
    /// When it returned successfully; `None`: failed or timed out (indeterminate).
    ok_ms: Option<u64>,
}

/// Which storage the nodes run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The in-memory model: slow and failing disks, power loss of what is not durable.
    Mem,
    /// The product's RocksDB `LogStore` (with the production sync path) and
    /// `StateMachineStore`: no slow or failing disk, but power losses drop every write no
    /// sync covered.
    Rocks,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes in the initial cluster.
    pub nodes: u64,
    /// Further nodes the workload joins (and may remove again).
    pub spares: u64,
    pub store: StoreKind,
    pub sim_secs: u64,
    pub faults: bool,
    pub bug: Bug,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self { seed, nodes: 5, spares: 2, sim_secs: 60, faults: true, bug: Bug::None, store: StoreKind::Mem }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub acked: usize,
}

struct Node {
    store: NodeStore,
    raft: Option<Raft<TypeConfig>>,
    /// The product's write path: batches concurrent writes into one entry.
    proposer: Option<Proposer>,
    /// The node's guest actors, over its simulated host.
    fleet: Option<Addr<GuestFleet>>,
    port: Option<Arc<SimPort>>,
    /// This node's clock offset from simulated time (clock skew).
    skew_ms: i64,
    /// The node belongs to the cluster as far as the workload knows (initial, or joined
    /// and not removed since): a crashed member is restarted, a non-member is not.
    member: bool,
}

/// What the checker reads of one node: id, log ids by index, state hash by applied index,
/// last applied index.
type NodeView = (NodeId, BTreeMap<u64, openraft::LogId<NodeId>>, BTreeMap<u64, u64>, u64);

struct World {
    cfg: SimConfig,
    router: Router,
    nodes: BTreeMap<NodeId, Node>,
    raft_config: Arc<Config>,
    trace: Arc<Mutex<Vec<String>>>,
    /// Writes the client saw acknowledged: key -> value.
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    history: Arc<Mutex<Vec<Op>>>,
    violations: Vec<String>,
    start: tokio::time::Instant,
    last_leader: Option<(NodeId, u64)>,
    hosts: Hosts,
    proposers: Proposers,
    /// Guests the workload created (some may be deleted since).
    vmids: Vec<u32>,
    /// Where RocksDB stores live (`StoreKind::Rocks`); removed at the end.
    root: Option<tempfile::TempDir>,
    stores_made: u64,
}

/// Wall-clock epoch of the simulation (2026-01-01), so timestamps look real.
const EPOCH_MS: u64 = 1_767_225_600_000;

impl World {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn log(&self, line: String) {
        let t = self.now_ms();
        self.trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
    }

    fn member(id: NodeId) -> HorcruxNode {
        HorcruxNode { name: format!("n{id}"), raft_addr: format!("sim:{id}"), api_addr: String::new() }
    }

    /// A fresh store for node `id` (a new data dir).
    fn new_store(&mut self, id: NodeId, seed: u64) -> NodeStore {
        self.stores_made += 1;
        match &self.root {
            None => NodeStore::Mem { log: MemLog::new(seed, self.cfg.faults), sm: MemSm::default() },
            Some(root) => {
                let dir = root.path().join(format!("n{id}-{}", self.stores_made));
                NodeStore::Rocks(RocksStore::open(dir, seed, self.cfg.bug == Bug::EarlyFlush))
            }
        }
    }

    async fn boot(&mut self, id: NodeId) {
        let node = self.nodes.get(&id).unwrap();
        node.store.power_on();
        let net = SimNet { router: self.router.clone(), me: id };
        let cfg = self.raft_config.clone();
        let started = match &node.store {
            NodeStore::Mem { log, sm } => Raft::new(id, cfg, net, log.clone(), sm.clone()).await,
            NodeStore::Rocks(r) => Raft::new(id, cfg, net, r.log_store(), r.sm.clone()).await,
        };
        let raft = match started {
            Ok(raft) => raft,
            Err(e) => {
                let v = format!("n{id} cannot restart from its stored log and state: {e}");
                self.log(v.clone());
                self.violations.push(v);
                return;
            }
        };
        self.router.0.lock().unwrap().rafts.insert(id, raft.clone());
        let proposer = Proposer::spawn(&tokio::runtime::Handle::current(), raft.clone());
        self.proposers.lock().unwrap().insert(id, proposer.clone());
        let (start, skew) = (self.start, node.skew_ms);
        let name = if self.cfg.bug == Bug::WrongOwner && id == 2 { "n1".into() } else { format!("n{id}") };
        let port = Arc::new(SimPort {
            id,
            name,
            sm: node.store.view(),
            proposers: self.proposers.clone(),
            router: self.router.clone(),
            clock: Arc::new(move || {
                (EPOCH_MS + start.elapsed().as_millis() as u64).saturating_add_signed(skew)
            }),
        });
        let store = self.hosts.volume_store(id);
        let volumes: VolumeFactory = Arc::new(move |_| store.clone());
        let fleet = horcrux_actors::start_fleet(
            port.clone() as Arc<dyn ClusterPort>,
            self.hosts.hypervisor(id),
            volumes,
            Default::default(),
        );
        let node = self.nodes.get_mut(&id).unwrap();
        node.proposer = Some(proposer);
        node.raft = Some(raft);
        node.fleet = Some(fleet);
        node.port = Some(port);
    }

    fn running(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.raft.is_some()).map(|(id, _)| *id).collect()
    }

    fn leader(&self) -> Option<(NodeId, u64)> {
        self.nodes.iter().find_map(|(id, n)| {
            let m = n.raft.as_ref()?.metrics().borrow().clone();
            (m.state == ServerState::Leader).then_some((*id, m.current_term))
        })
    }

    fn client_write(&self, via: NodeId, seq: u64) {
        let Some(proposer) = self.nodes[&via].proposer.clone() else { return };
        let key = format!("k{seq}");
        let value = format!("v{seq}");
        self.log(format!("write {key} via n{via}"));
        let req = Request {
            ts_ms: (EPOCH_MS + self.now_ms()).saturating_add_signed(self.nodes[&via].skew_ms),
            cmd: Command::SetClusterOption { key: key.clone(), value: value.clone() },
            actor: None,
            id: Some(horcrux_core::RequestId { client: via, seq }),
        };
        let (trace, acked, bug, start) = (self.trace.clone(), self.acked.clone(), self.cfg.bug, self.start);
        let history = self.history.clone();
        let op = history.lock().unwrap().len();
        history.lock().unwrap().push(Op {
            key: key.clone(),
            read: None,
            invoke_ms: self.now_ms(),
            ok_ms: None,
        });
        if bug == Bug::AckBeforeCommit {
            acked.lock().unwrap().insert(key.clone(), value.clone());
            history.lock().unwrap()[op].ok_ms = Some(self.now_ms());
        }
        tokio::spawn(async move {
            let res = tokio::time::timeout(Duration::from_secs(3), proposer.propose(req)).await;
            let t = start.elapsed().as_millis();
            let line = match res {
                Ok(Ok(Ok(ok))) => {
                    acked.lock().unwrap().insert(key.clone(), value);
                    history.lock().unwrap()[op].ok_ms.get_or_insert(t as u64);
                    format!("ack {key} at index {}", ok.revision)
                }
                Ok(Ok(Err(e))) => format!("refused {key}: {e}"),
                Ok(Err(e)) => format!("failed {key}: {}", short(&e.to_string())),
                Err(_) => format!("timeout {key} (indeterminate)"),
            };
            trace.lock().unwrap().push(format!("t={t:>6}ms {line}"));
        });
    }

    /// A linearizable read of `key` through `via` (the leader confirms leadership and the
    /// node waits until it applied that far), recorded in the history.
    fn client_read(&self, via: NodeId, key: String) {
        let Some(raft) = self.nodes[&via].raft.clone() else { return };
        let sm = self.nodes[&via].store.view();
        let (history, trace, start, bug) =
            (self.history.clone(), self.trace.clone(), self.start, self.cfg.bug);
        let op = history.lock().unwrap().len();
        history.lock().unwrap().push(Op {
            key: key.clone(),
            read: Some(None),
            invoke_ms: self.now_ms(),
            ok_ms: None,
        });
        tokio::spawn(async move {
            let barrier = if bug == Bug::StaleRead {
                Ok(())
            } else {
                match tokio::time::timeout(Duration::from_secs(3), raft.ensure_linearizable()).await {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(()),
                }
            };
            let t = start.elapsed().as_millis() as u64;
            if barrier.is_ok() {
                let got = sm.with_data(|d| d.state.options.get(&key).cloned());
                trace.lock().unwrap().push(format!("t={t:>6}ms read {key} via n{via} = {got:?}"));
                let mut h = history.lock().unwrap();
                h[op].read = Some(got);
                h[op].ok_ms = Some(t);
            }
        });
    }

    /// Linearizability of the key-value view, for write-once keys: a read that began after
    /// a key's write was acknowledged must see it, and once a read saw a key, every read
    /// that began after that one returned must see it too.
    fn check_linearizable(&mut self) {
        let h = self.history.lock().unwrap().clone();
        let writes: BTreeMap<&str, &Op> =
            h.iter().filter(|o| o.read.is_none()).map(|o| (o.key.as_str(), o)).collect();
        let reads: Vec<&Op> = h.iter().filter(|o| o.read.is_some() && o.ok_ms.is_some()).collect();
        for r in &reads {
            let seen = matches!(r.read, Some(Some(_)));
            if let Some(w) = writes.get(r.key.as_str()) {
                if w.ok_ms.is_some_and(|acked| acked < r.invoke_ms) && !seen {
                    self.violations.push(format!(
                        "linearizability: read of {} at {} ms missed its write acknowledged at {} ms",
                        r.key,
                        r.invoke_ms,
                        w.ok_ms.unwrap_or(0)
                    ));
                    return;
                }
            }
            for earlier in &reads {
                let before = earlier.ok_ms.is_some_and(|e| e < r.invoke_ms);
                if before && earlier.key == r.key && matches!(earlier.read, Some(Some(_))) && !seen {
                    self.violations.push(format!(
                        "linearizability: read of {} at {} ms went back in time (an earlier read saw it)",
                        r.key, r.invoke_ms
                    ));
                    return;
                }
            }
        }
    }

    /// Committed log prefixes agree, every node's state after the same index is equal, and
    /// no guest ever ran on two nodes at once.
    fn check_safety(&mut self) {
        let host_violations = std::mem::take(&mut self.hosts.0.lock().unwrap().violations);
        if let Some(v) = host_violations.into_iter().next() {
            self.violations.push(format!("guest safety: {v}"));
            return;
        }
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let (ids, history, applied) = n.store.views();
                (*id, ids, history, applied)
            })
            .collect();
        for (i, (a, log_a, hist_a, applied_a)) in views.iter().enumerate() {
            for (b, log_b, hist_b, applied_b) in views.iter().skip(i + 1) {
                let upto = (*applied_a).min(*applied_b);
                for (idx, id_a) in log_a.range(..=upto) {
                    if let Some(id_b) = log_b.get(idx) {
                        if id_a != id_b {
                            self.violations.push(format!(
                                "committed log prefix disagrees at index {idx}: n{a} has {id_a}, n{b} has {id_b}"
                            ));
                            return;
                        }
                    }
                }
                for (idx, h_a) in hist_a {
                    if let Some(h_b) = hist_b.get(idx) {
                        if h_a != h_b {
                            self.violations.push(format!(
                                "applied state differs at index {idx}: n{a} and n{b} hold different states"
                            ));
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Runs one seed to completion and reports its trace and any invariant violations.
pub fn run(cfg: SimConfig) -> Outcome {
    // An actix system (the guest actors need one) over a paused current-thread runtime.
    let seed = cfg.seed;
    let sys = actix_rt::System::with_tokio_rt(move || crate::runtime(seed));
    sys.block_on(simulate(cfg))
}

async fn simulate(cfg: SimConfig) -> Outcome {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let router = Router(Arc::new(Mutex::new(RouterInner {
        rafts: BTreeMap::new(),
        group: BTreeMap::new(),
        cut: BTreeSet::new(),
        dup_per_mille: if cfg.faults { 10 } else { 0 },
        drop_per_mille: if cfg.faults { 50 } else { 0 },
        max_delay_ms: if cfg.faults { 20 } else { 1 },
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x0e7),
        append_entries_sent: 0,
    })));
    let raft_config = Config {
        cluster_name: "sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(100),
        max_in_snapshot_log_to_keep: 20,
        ..Default::default()
    };
    let mut w = World {
        router,
        nodes: BTreeMap::new(),
        raft_config: Arc::new(raft_config.validate().expect("valid raft config")),
        trace: Arc::default(),
        acked: Arc::default(),
        history: Arc::default(),
        violations: Vec::new(),
        start: tokio::time::Instant::now(),
        last_leader: None,
        hosts: Hosts::new(cfg.seed, cfg.faults),
        proposers: Arc::default(),
        vmids: Vec::new(),
        root: (cfg.store == StoreKind::Rocks).then(|| {
            // On tmpfs when there is one: the stores' fsyncs then cost nothing.
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            tempfile::Builder::new()
                .prefix("horcrux-sim-")
                .tempdir_in(base)
                .expect("a directory for the stores")
        }),
        stores_made: 0,
        cfg: cfg.clone(),
    };
    w.hosts.0.lock().unwrap().stale_status = cfg.bug == Bug::StaleStatus;
    for id in 1..=cfg.nodes + cfg.spares {
        let store = w.new_store(id, cfg.seed ^ (id << 32));
        if let NodeStore::Mem { log, sm } = &store {
            let mut sm = sm.0.lock().unwrap();
            if cfg.bug == Bug::SkipEntry && id == 2 {
                sm.skip_every = Some(25);
            }
            if cfg.bug == Bug::SkipMigrate && id == 2 {
                sm.skip_migrate = true;
            }
            if cfg.bug == Bug::CorruptLog && id == 2 {
                log.0.lock().unwrap().corrupt_every = Some(40);
            }
        }
        // Clock skew within the bound the design assumes (500 ms).
        let skew_ms = if cfg.faults { rng.gen_range(-500..=500) } else { 0 };
        let member = id <= cfg.nodes;
        let node = Node { store, raft: None, proposer: None, fleet: None, port: None, skew_ms, member };
        w.nodes.insert(id, node);
        w.router.0.lock().unwrap().group.insert(id, 0);
    }
    for id in 1..=cfg.nodes {
        w.boot(id).await;
    }
    let members: BTreeMap<NodeId, HorcruxNode> = (1..=cfg.nodes).map(|id| (id, World::member(id))).collect();
    w.nodes[&1].raft.as_ref().unwrap().initialize(members).await.expect("initialize");
    w.log(format!("cluster of {} nodes initialised", cfg.nodes));
    // Guests name their owner, so every node registers first (as each daemon does); the
    // `local` directory pool every node has.
    let port = w.nodes[&1].port.clone().expect("node 1 runs");
    let local = horcrux_core::StorageKind::Dir { path: "/var/lib/horcrux".into() };
    if let Err(e) = port.propose(Command::AddStorage { id: "local".into(), kind: local }).await {
        w.log(format!("add storage local: {e}"));
    }
    for id in 1..=cfg.nodes {
        let cmd = Command::RegisterNode { name: format!("n{id}"), api_addr: format!("sim:{id}") };
        if let Err(e) = port.propose(cmd).await {
            w.log(format!("register n{id}: {e}"));
        }
    }

    let step = Duration::from_millis(50);
    let steps = cfg.sim_secs * 1000 / 50;
    let mut seq = 0u64;
    for n in 0..steps {
        tokio::time::sleep(step).await;
        let leader = w.leader();
        if leader != w.last_leader {
            if let Some((id, term)) = leader {
                w.log(format!("leader n{id} term {term}"));
            }
            w.last_leader = leader;
        }
        if rng.gen_bool(0.4) {
            let via = match leader {
                Some((id, _)) if rng.gen_bool(0.8) => Some(id),
                _ => {
                    let running = w.running();
                    (!running.is_empty()).then(|| running[rng.gen_range(0..running.len())])
                }
            };
            if let Some(via) = via {
                seq += 1;
                w.client_write(via, seq);
            }
        }
        if seq > 0 && rng.gen_bool(0.2) {
            let key = format!("k{}", rng.gen_range(1..=seq));
            let via = match (leader, cfg.bug) {
                (Some((id, _)), b) if b != Bug::StaleRead => Some(id),
                _ => {
                    let running = w.running();
                    (!running.is_empty()).then(|| running[rng.gen_range(0..running.len())])
                }
            };
            if let Some(via) = via {
                w.client_read(via, key);
            }
        }
        w.reap_failed().await;
        let events = std::mem::take(&mut w.hosts.0.lock().unwrap().events);
        for e in events {
            w.log(e);
        }
        if rng.gen_range(0..1000) < 3 {
            w.join_spare(&mut rng).await;
        }
        if rng.gen_range(0..1000) < 3 {
            w.remove_member(&mut rng).await;
        }
        if rng.gen_bool(0.15) {
            let running = w.running();
            if !running.is_empty() {
                let via = running[rng.gen_range(0..running.len())];
                w.guest_op(via, &mut rng);
            }
        }
        if cfg.faults && rng.gen_range(0..1000) < 5 {
            // QEMU dies under a running guest.
            let placed: Vec<(u32, NodeId)> = w
                .hosts
                .placements()
                .into_iter()
                .flat_map(|(v, on)| on.into_iter().map(move |n| (v, n)))
                .collect();
            if !placed.is_empty() {
                let (vmid, node) = placed[rng.gen_range(0..placed.len())];
                w.hosts.kill(node, vmid);
                w.log(format!("QEMU of guest {vmid} dies on n{node}"));
            }
        }
        if cfg.faults {
            let roll = rng.gen_range(0..1000);
            let running = w.running();
            if roll < 8 && running.len() > 1 {
                // Often the leader, at a random instant: possibly mid-flush.
                let id = match leader {
                    Some((l, _)) if rng.gen_bool(0.5) => l,
                    _ => running[rng.gen_range(0..running.len())],
                };
                let power_loss = rng.gen_bool(0.5);
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
                w.crash(id, power_loss).await;
            } else if roll < 10 && running.len() > 1 {
                // Just after a write is acknowledged (within 300 ms), while the disks may
                // still be syncing what came with it.
                let acked = w.acked.lock().unwrap().len();
                for _ in 0..300 {
                    if w.acked.lock().unwrap().len() > acked {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
                w.blackout().await;
            } else if roll < 30 {
                let down: Vec<NodeId> = w
                    .nodes
                    .iter()
                    .filter(|(id, n)| n.member && !running.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                if !down.is_empty() {
                    let id = down[rng.gen_range(0..down.len())];
                    w.boot(id).await;
                    w.log(format!("restart n{id}"));
                }
            } else if roll < 38 {
                let ids: Vec<NodeId> = w.nodes.keys().copied().collect();
                let isolated: BTreeSet<NodeId> = ids.iter().copied().filter(|_| rng.gen_bool(0.4)).collect();
                let mut r = w.router.0.lock().unwrap();
                for id in &ids {
                    r.group.insert(*id, u32::from(isolated.contains(id)));
                }
                drop(r);
                w.log(format!("partition {isolated:?} from the rest"));
            } else if roll < 43 {
                if let Some((id, _)) = leader {
                    let mut r = w.router.0.lock().unwrap();
                    for other in w.nodes.keys() {
                        r.group.insert(*other, u32::from(*other == id));
                    }
                    drop(r);
                    w.log(format!("isolate leader n{id}"));
                }
            } else if roll < 48 {
                let ids: Vec<NodeId> = w.nodes.keys().copied().collect();
                let (a, b) = (ids[rng.gen_range(0..ids.len())], ids[rng.gen_range(0..ids.len())]);
                if a != b {
                    w.router.0.lock().unwrap().cut.insert((a, b));
                    w.log(format!("cut n{a} -> n{b} (one way)"));
                }
            } else if roll < 70 {
                let mut r = w.router.0.lock().unwrap();
                let was = r.group.values().any(|g| *g != 0) || !r.cut.is_empty();
                r.group.values_mut().for_each(|g| *g = 0);
                r.cut.clear();
                drop(r);
                if was {
                    w.log("heal partitions".into());
                }
            }
        }
        if n % 10 == 0 {
            w.check_safety();
            if !w.violations.is_empty() {
                break;
            }
        }
    }

    // Heal everything and require convergence within a bounded time (liveness).
    {
        let mut r = w.router.0.lock().unwrap();
        r.group.values_mut().for_each(|g| *g = 0);
        r.cut.clear();
        r.drop_per_mille = 0;
        r.dup_per_mille = 0;
    }
    w.hosts.0.lock().unwrap().faults = false;
    w.reap_failed().await;
    for n in w.nodes.values() {
        n.store.heal();
    }
    let down: Vec<NodeId> =
        w.nodes.iter().filter(|(id, n)| n.member && !w.running().contains(id)).map(|(id, _)| *id).collect();
    for id in down {
        w.boot(id).await;
        w.log(format!("restart n{id} (heal)"));
    }
    w.log("all faults healed".into());
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Joins and removals that timed out settle now: the committed membership decides who
    // is a member; a node outside it stops (as a refused joiner exits).
    if let Some((leader, _)) = w.leader() {
        let raft = w.nodes[&leader].raft.clone().expect("the leader runs");
        let members: BTreeSet<NodeId> =
            raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        for id in w.nodes.keys().copied().collect::<Vec<_>>() {
            let member = members.contains(&id);
            if !member && w.nodes[&id].raft.is_some() {
                w.crash(id, false).await;
            }
            if member && w.nodes[&id].raft.is_none() {
                w.boot(id).await;
            }
            w.nodes.get_mut(&id).unwrap().member = member;
        }
        w.log(format!("members at the end: {members:?}"));
    }
    let mut converged = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let applied: BTreeSet<Option<u64>> =
            w.nodes.values().filter(|n| n.member).map(|n| n.store.applied()).collect();
        if w.leader().is_some() && applied.len() == 1 {
            converged = true;
            break;
        }
    }
    w.check_safety();
    w.check_linearizable();
    if converged {
        // Guests: within 30 s of quiet (six fleet ticks), each runs exactly where the state
        // wants it: on its owner if meant to run, nowhere otherwise.
        let mut placed = Err(String::new());
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            placed = w.guest_placement();
            if placed.is_ok() {
                break;
            }
        }
        if let Err(why) = placed {
            w.violations.push(format!("liveness: 30 s after faults healed, {why}"));
        }
        w.check_safety();
    }
    if !converged {
        for (id, n) in &w.nodes {
            let m = n.raft.as_ref().map(|r| r.metrics().borrow().clone());
            let applied = n.store.applied();
            let (first, last) = n.store.log_bounds();
            w.log(format!(
                "n{id}: applied {applied:?}, log {first:?}..{last:?}, state {:?}, term {:?}, leader {:?}, running {:?}",
                m.as_ref().map(|m| m.state),
                m.as_ref().map(|m| m.current_term),
                m.as_ref().and_then(|m| m.current_leader),
                m.as_ref().map(|m| m.running_state.clone())
            ));
        }
        w.violations.push("liveness: the cluster did not converge within 20 s after faults healed".into());
    }
    // No acknowledged write is lost: every member holds every acknowledged key.
    let acked = w.acked.lock().unwrap().clone();
    for (id, n) in w.nodes.iter().filter(|(_, n)| n.member) {
        let missing = n.store.with_data(|d| {
            acked
                .iter()
                .find(|(k, v)| d.state.options.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
        });
        if let Some((k, v)) = missing {
            w.violations.push(format!("acknowledged write {k}={v} is missing on n{id}"));
            break;
        }
    }
    let final_hashes: BTreeSet<u64> =
        w.nodes.values().filter(|n| n.member).map(|n| n.store.state_hash()).collect();
    w.log(format!("end: {} acknowledged writes, final state hashes {final_hashes:x?}", acked.len()));
    let running_guests = w.hosts.placements().len();
    w.log(format!("end: {running_guests} guests running, {} created", w.vmids.len()));
    for id in w.running() {
        w.crash(id, false).await;
    }
    let trace = w.trace.lock().unwrap().clone();
    Outcome { trace, violations: w.violations, acked: acked.len() }
}
