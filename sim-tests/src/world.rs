//! One simulated run: build the nodes, drive the workload and faults, check invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_core::{Command, Request};
use horcrux_raft::{HorcruxNode, NodeId, Proposer, TypeConfig};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::mem_store::{MemLog, MemSm};
use crate::net::{Router, RouterInner, SimNet};

/// A deliberately injected bug, to prove the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    None,
    /// Node 2's state machine skips every 25th entry.
    SkipEntry,
    /// The client counts a write as acknowledged as soon as a node accepts it, before it
    /// is committed.
    AckBeforeCommit,
    /// Reads are served from any node's local state, without the leader's read barrier.
    StaleRead,
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

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    pub sim_secs: u64,
    pub faults: bool,
    pub bug: Bug,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self { seed, nodes: 5, sim_secs: 60, faults: true, bug: Bug::None }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub acked: usize,
}

struct Node {
    log: MemLog,
    sm: MemSm,
    raft: Option<Raft<TypeConfig>>,
    /// The product's write path: batches concurrent writes into one entry.
    proposer: Option<Proposer>,
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
}

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

    async fn boot(&mut self, id: NodeId) {
        let node = self.nodes.get(&id).unwrap();
        let net = SimNet { router: self.router.clone(), me: id };
        let raft = Raft::new(id, self.raft_config.clone(), net, node.log.clone(), node.sm.clone())
            .await
            .expect("raft starts over in-memory storage");
        self.router.0.lock().unwrap().rafts.insert(id, raft.clone());
        let node = self.nodes.get_mut(&id).unwrap();
        node.proposer = Some(Proposer::spawn(raft.clone()));
        node.raft = Some(raft);
    }

    async fn crash(&mut self, id: NodeId, lose_unsynced: bool) {
        self.router.0.lock().unwrap().rafts.remove(&id);
        self.nodes.get_mut(&id).unwrap().proposer = None;
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.take()) {
            let _ = r.shutdown().await;
        }
        let log = &self.nodes[&id].log;
        if lose_unsynced {
            let lost = log.crash_losing_unsynced();
            self.log(format!("crash n{id}, losing {lost} unflushed log entries"));
        } else {
            log.crash_keeping_all();
            self.log(format!("crash n{id}"));
        }
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
            ts_ms: self.now_ms(),
            cmd: Command::SetClusterOption { key: key.clone(), value: value.clone() },
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
        let sm = self.nodes[&via].sm.clone();
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
                let got = sm.0.lock().unwrap().data.state.options.get(&key).cloned();
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

    /// Committed log prefixes agree, and every node's state after the same index is equal.
    fn check_safety(&mut self) {
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let sm = n.sm.0.lock().unwrap();
                let applied = sm.data.last_applied.map(|l| l.index).unwrap_or(0);
                (*id, n.log.log_ids(), sm.history.clone(), applied)
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    horcrux_raft::runtime::seed_thread_rng(cfg.seed);
    rt.block_on(simulate(cfg))
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
        cfg: cfg.clone(),
    };
    for id in 1..=cfg.nodes {
        let sm = MemSm::default();
        if cfg.bug == Bug::SkipEntry && id == 2 {
            sm.0.lock().unwrap().skip_every = Some(25);
        }
        w.nodes.insert(id, Node { log: MemLog::default(), sm, raft: None, proposer: None });
        w.router.0.lock().unwrap().group.insert(id, 0);
        w.boot(id).await;
    }
    let members: BTreeMap<NodeId, HorcruxNode> = (1..=cfg.nodes).map(|id| (id, World::member(id))).collect();
    w.nodes[&1].raft.as_ref().unwrap().initialize(members).await.expect("initialize");
    w.log(format!("cluster of {} nodes initialised", cfg.nodes));

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
        if cfg.faults {
            let roll = rng.gen_range(0..1000);
            let running = w.running();
            if roll < 8 && running.len() > 1 {
                // Often the leader, at a random instant: possibly mid-flush.
                let id = match leader {
                    Some((l, _)) if rng.gen_bool(0.5) => l,
                    _ => running[rng.gen_range(0..running.len())],
                };
                let lose = rng.gen_bool(0.5);
                tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
                w.crash(id, lose).await;
            } else if roll < 30 {
                let down: Vec<NodeId> = w.nodes.keys().copied().filter(|id| !running.contains(id)).collect();
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
    let down: Vec<NodeId> = w.nodes.keys().copied().filter(|id| !w.running().contains(id)).collect();
    for id in down {
        w.boot(id).await;
        w.log(format!("restart n{id} (heal)"));
    }
    w.log("all faults healed".into());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut converged = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let applied: BTreeSet<Option<u64>> =
            w.nodes.values().map(|n| n.sm.0.lock().unwrap().data.last_applied.map(|l| l.index)).collect();
        if w.leader().is_some() && applied.len() == 1 {
            converged = true;
            break;
        }
    }
    w.check_safety();
    w.check_linearizable();
    if !converged {
        for (id, n) in &w.nodes {
            let m = n.raft.as_ref().map(|r| r.metrics().borrow().clone());
            let applied = n.sm.0.lock().unwrap().data.last_applied.map(|l| l.index);
            let (first, last, purged) = {
                let l = n.log.0.lock().unwrap();
                (
                    l.entries.keys().next().copied(),
                    l.entries.keys().next_back().copied(),
                    l.last_purged.map(|p| p.index),
                )
            };
            w.log(format!(
                "n{id}: applied {applied:?}, log {first:?}..{last:?}, purged {purged:?}, state {:?}, term {:?}, leader {:?}, running {:?}",
                m.as_ref().map(|m| m.state),
                m.as_ref().map(|m| m.current_term),
                m.as_ref().and_then(|m| m.current_leader),
                m.as_ref().map(|m| m.running_state.clone())
            ));
        }
        w.violations.push("liveness: the cluster did not converge within 20 s after faults healed".into());
    }
    // No acknowledged write is lost: every node holds every acknowledged key.
    let acked = w.acked.lock().unwrap().clone();
    for (id, n) in &w.nodes {
        let sm = n.sm.0.lock().unwrap();
        if let Some((k, v)) = acked.iter().find(|(k, v)| sm.data.state.options.get(*k) != Some(*v)) {
            w.violations.push(format!("acknowledged write {k}={v} is missing on n{id}"));
            break;
        }
    }
    let final_hashes: BTreeSet<u64> =
        w.nodes.values().map(|n| crate::mem_store::state_hash(&n.sm.0.lock().unwrap().data.state)).collect();
    w.log(format!("end: {} acknowledged writes, final state hashes {final_hashes:x?}", acked.len()));
    for id in w.running() {
        w.crash(id, false).await;
    }
    let trace = w.trace.lock().unwrap().clone();
    Outcome { trace, violations: w.violations, acked: acked.len() }
}
