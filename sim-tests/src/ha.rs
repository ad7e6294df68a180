//! The HA protocol in simulation: the real lease arithmetic (`LeaseTable`, `NodeLease`),
//! the real manager (`ha::manager::plan`), the real `ClusterState::apply` and the fence's
//! rules, on three hosts whose monotonic clocks run at different rates (up to 5% apart
//! from real time, five times the drift `docs/ha.md` assumes), under crashes (host death), killed daemons (the fence and
//! QEMU stay), hung daemons (SIGSTOP: the fence keeps running), partitions, message delays
//! and retransmitted losses, and leader changes. Consensus itself is abstracted (one committed log that
//! only a leader reaching a majority appends to; nodes apply it with a lag): the openraft
//! side is what `world.rs` simulates.
//!
//! Invariant, checked every simulated millisecond step: the HA guest's process runs on at
//! most one host. Liveness: after each fault the guest runs again within a bound. A run is
//! a pure function of its seed.

use horcrux_core::ha::lease::{LeaseTable, NodeLease};
use horcrux_core::ha::manager;
use horcrux_core::ha::resources::{HaOptions, RequestedState};
use horcrux_core::{ClusterState, Command, GuestConfig, NodeFacts, Request, VmSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A deliberately wrong protocol, to show the invariant catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaBug {
    None,
    /// The manager declares a node failed as soon as its lease has passed, without the
    /// margin.
    SkipMargin,
    /// A new leader's manager does not wait a full lease before declaring nodes failed.
    NoTakeoverWait,
    /// A node declared failed is granted a lease again before its guests are fenced, and
    /// starts a guest whatever the manager's state of it (the bug this simulation found).
    GrantWhileFencing,
}

#[derive(Debug, Clone)]
pub struct HaSimConfig {
    pub seed: u64,
    pub sim_secs: u64,
    pub bug: HaBug,
}

#[derive(Debug, Default)]
pub struct HaOutcome {
    pub violations: Vec<String>,
    /// Milliseconds from each fault of the guest's host to the guest running again.
    pub failovers_ms: Vec<u64>,
    pub trace: Vec<String>,
}

const NODES: usize = 3;
/// Clock-rate drift: up to 5% either way, five times what `docs/ha.md` assumes (the 2 s
/// margin covers up to 20% at a 4 s lease), so that a protocol without the margin fails
/// within a manager tick.
const DRIFT_PPM: i64 = 50_000;
const STEP_MS: u64 = 1;
const VMID: u32 = 301;
/// QEMU reaches QMP `running` this long after it was spawned.
const BOOT_MS: u64 = 100;
/// An election after the leader is lost.
const ELECTION_MS: (u64, u64) = (300, 1500);
/// One-way message delay; 10% of messages are lost once and retransmitted.
const DELAY_MS: (u64, u64) = (0, 20);
const RETRANSMIT_MS: (u64, u64) = (200, 600);
/// How far behind the log a node applies.
const APPLY_LAG_MS: (u64, u64) = (1, 30);
/// Once the faults heal, the guest runs again within this.
pub const LIVENESS_BOUND_MS: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Up,
    /// Killed (restarts at the time given); its fence and QEMU stay.
    Dead {
        until: u64,
    },
    /// SIGSTOP'd until then: no progress at all, its fence keeps running.
    Hung {
        until: u64,
    },
}

struct Host {
    /// The host is powered (false: crashed; the fence and QEMU died with it).
    alive: bool,
    /// Clock rate, parts per million off real time.
    rate_ppm: i64,
    offset: u64,
    daemon: Daemon,
    partitioned_until: u64,
    powered_on_at: u64,
    /// The guest's QEMU: spawned at (real time); `None`: not running.
    qemu: Option<u64>,
    fence_deadline: u64,
    lease: Option<NodeLease>,
    next_renew: u64,
    applied: usize,
    state: ClusterState,
}

impl Host {
    fn local(&self, real: u64) -> u64 {
        self.offset + (real as i128 * (1_000_000 + self.rate_ppm as i128) / 1_000_000) as u64
    }
    fn works(&self) -> bool {
        self.alive && self.daemon == Daemon::Up
    }
}

enum Msg {
    /// A renewal from node `from`, sent at its local time `sent`.
    Renew {
        from: usize,
        sent: u64,
    },
    Grant {
        to: usize,
        sent: u64,
        index: u64,
    },
}

struct Sim {
    cfg: HaSimConfig,
    rng: StdRng,
    now: u64,
    hosts: Vec<Host>,
    log: Vec<Request>,
    committed: ClusterState,
    leader: Option<usize>,
    term: u64,
    table: Option<LeaseTable>,
    electing_until: u64,
    next_manager: u64,
    msgs: Vec<(u64, Msg)>,
    out: HaOutcome,
    /// A fault that hit the guest's host and its time, until the guest runs again.
    pending_failover: Option<u64>,
    opts: HaOptions,
}

fn name(i: usize) -> String {
    format!("h{}", i + 1)
}

impl Sim {
    fn new(cfg: HaSimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut hosts = Vec::new();
        for _ in 0..NODES {
            hosts.push(Host {
                alive: true,
                rate_ppm: rng.gen_range(-DRIFT_PPM..=DRIFT_PPM),
                offset: rng.gen_range(0..1_000_000),
                daemon: Daemon::Up,
                partitioned_until: 0,
                powered_on_at: 0,
                qemu: None,
                fence_deadline: 0,
                lease: None,
                next_renew: 0,
                applied: 0,
                state: ClusterState::default(),
            });
        }
        let mut sim = Sim {
            cfg,
            rng,
            now: 0,
            hosts,
            log: Vec::new(),
            committed: ClusterState::default(),
            leader: Some(0),
            term: 1,
            table: None,
            electing_until: 0,
            next_manager: 0,
            msgs: Vec::new(),
            out: HaOutcome::default(),
            pending_failover: None,
            opts: HaOptions::default(),
        };
        for i in 0..NODES {
            sim.commit(Command::RegisterNode { name: name(i), api_addr: format!("{}:8006", name(i)) });
            let facts =
                NodeFacts { arch: "x86_64".into(), emulates: Default::default(), cpus: 4, mem_mib: 4096 };
            sim.commit(Command::ReportNodeFacts { name: name(i), facts });
        }
        let spec = VmSpec { memory_mib: 128, cores: 1, sockets: 1, ..Default::default() };
        sim.commit(Command::CreateGuest {
            vmid: VMID,
            name: "ha".into(),
            node: name(0),
            config: GuestConfig::Qemu(spec),
            pool: None,
        });
        sim.commit(Command::SetHaResource {
            sid: format!("vm:{VMID}"),
            create: true,
            state: RequestedState::Started,
            max_restart: 1,
            max_relocate: 1,
            failback: true,
            comment: String::new(),
        });
        let t = sim.hosts[0].local(0);
        sim.table = Some(LeaseTable::new(1, t));
        sim
    }

    fn trace(&mut self, line: String) {
        self.out.trace.push(format!("{:>6} {line}", self.now));
    }

    /// Appends to the committed log (the leader reached a majority).
    fn commit(&mut self, cmd: Command) -> bool {
        let req = Request { ts_ms: self.now, cmd, actor: None, id: None };
        let index = self.log.len() as u64 + 1;
        if self.committed.apply(index, &req).is_err() {
            return false;
        }
        self.log.push(req);
        true
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        let ok = |i: usize| self.hosts[i].alive && self.now >= self.hosts[i].partitioned_until;
        a == b || (ok(a) && ok(b))
    }

    /// The leader can act: its daemon works and it reaches a majority.
    fn leader_quorate(&self) -> Option<usize> {
        let l = self.leader?;
        if !self.hosts[l].works() || self.now < self.electing_until {
            return None;
        }
        let reach = (0..NODES).filter(|&j| self.reachable(l, j) && self.hosts[j].alive).count();
        (reach * 2 > NODES).then_some(l)
    }

    /// A message over the transport: QUIC retransmits a lost packet, so a loss (10%) is a
    /// late delivery, not a lost message.
    fn send(&mut self, msg: Msg) {
        let at = self.now + self.delay();
        self.msgs.push((at, msg));
    }

    fn delay(&mut self) -> u64 {
        let base = self.rng.gen_range(DELAY_MS.0..=DELAY_MS.1);
        if self.rng.gen_range(0..10) == 0 {
            base + self.rng.gen_range(RETRANSMIT_MS.0..=RETRANSMIT_MS.1)
        } else {
            base
        }
    }

    fn elect(&mut self) {
        // A leader that lost its majority (crashed, hung, cut off) is replaced by the
        // lowest working node of a majority, after an election.
        if self.leader_quorate().is_some() || self.now < self.electing_until {
            return;
        }
        let candidates: Vec<usize> = (0..NODES)
            .filter(|&i| {
                self.hosts[i].works()
                    && (0..NODES).filter(|&j| self.reachable(i, j) && self.hosts[j].alive).count() * 2 > NODES
            })
            .collect();
        let Some(&next) = candidates.first() else { return };
        if Some(next) == self.leader && self.hosts[next].works() {
            return;
        }
        self.term += 1;
        self.leader = Some(next);
        self.electing_until = self.now + self.rng.gen_range(ELECTION_MS.0..=ELECTION_MS.1);
        let takeover = self.hosts[next].local(self.electing_until);
        self.table = Some(LeaseTable::new(self.term, takeover));
        // The new leader's manager ticks on its own clock.
        self.next_manager = 0;
        self.trace(format!("leader {} (term {})", name(next), self.term));
    }

    fn deliver(&mut self) {
        let due: Vec<Msg> = {
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.msgs).into_iter().partition(|(at, _)| *at <= self.now);
            self.msgs = rest;
            due.into_iter().map(|(_, m)| m).collect()
        };
        for m in due {
            match m {
                Msg::Renew { from, sent } => {
                    // Granted only by a leader that still reaches a majority (its heartbeat
                    // round), after the request arrived.
                    let Some(l) = self.leader_quorate() else { continue };
                    if !self.reachable(l, from) {
                        continue;
                    }
                    let at = self.hosts[l].local(self.now);
                    let live = self.table.as_ref().map(|t| t.liveness(&name(from), at, &self.opts));
                    if self.cfg.bug != HaBug::GrantWhileFencing
                        && live.is_some_and(|lv| manager::withhold_lease(&self.committed, &name(from), lv))
                    {
                        continue;
                    }
                    if let Some(t) = self.table.as_mut() {
                        t.grant(&name(from), at);
                    }
                    let index = self.log.len() as u64;
                    self.send(Msg::Grant { to: from, sent, index });
                }
                Msg::Grant { to, sent, index } => {
                    // A grant of a deposed leader still counts: it was made while that leader
                    // held a majority, and its successor waits a full lease plus the margin.
                    let h = &mut self.hosts[to];
                    if !h.works() || self.now < h.partitioned_until {
                        continue;
                    }
                    let lease = NodeLease { sent_ms: sent, lease_ms: self.opts.lease_ms, grant_index: index };
                    if h.lease.is_none_or(|l| l.sent_ms <= sent) {
                        h.lease = Some(lease);
                        h.fence_deadline = lease.deadline_ms();
                    }
                }
            }
        }
    }

    fn hosts_step(&mut self) {
        let sid = format!("vm:{VMID}");
        for i in 0..NODES {
            let now_local = self.hosts[i].local(self.now);
            let real = self.now;
            let cut = real < self.hosts[i].partitioned_until;
            let h = &mut self.hosts[i];
            if !h.alive {
                continue;
            }
            // The fence: the guest dies when the lease ends unfed.
            if h.qemu.is_some() && now_local >= h.fence_deadline {
                h.qemu = None;
                self.out.trace.push(format!("{real:>6} fence of {} killed the guest", name(i)));
            }
            match h.daemon {
                Daemon::Dead { until } | Daemon::Hung { until } if real < until => continue,
                Daemon::Dead { .. } => {
                    h.daemon = Daemon::Up;
                    h.lease = None;
                    h.applied = 0;
                    h.state = ClusterState::default();
                }
                Daemon::Hung { .. } => h.daemon = Daemon::Up,
                Daemon::Up => {}
            }
            // Apply the log, a little behind.
            if !cut {
                let lag = (real % (APPLY_LAG_MS.1 - APPLY_LAG_MS.0)) + APPLY_LAG_MS.0;
                let upto = self.log.iter().take_while(|r| r.ts_ms + lag <= real).count();
                while h.applied < upto {
                    let index = h.applied as u64 + 1;
                    let _ = h.state.apply(index, &self.log[h.applied]);
                    h.applied += 1;
                }
            }
            // Renew every quarter lease.
            if now_local >= h.next_renew {
                h.next_renew = now_local + self.opts.lease_ms / 4;
                let sent = now_local;
                if !cut {
                    self.send(Msg::Renew { from: i, sent });
                }
            }
            let h = &mut self.hosts[i];
            // The fleet: start the guest if this node owns it, under a lease that allows it
            // (the fence refuses otherwise).
            let owns = h.state.guests.get(&VMID).is_some_and(|g| g.node == name(i) && g.desired.is_running());
            let ha = h.state.ha_resources.contains_key(&sid)
                && (self.cfg.bug == HaBug::GrantWhileFencing || manager::may_start(&h.state, &sid));
            if owns && ha && h.qemu.is_none() {
                if let Some(l) = h.lease {
                    if l.allows_start(now_local, h.applied as u64, 500) && now_local + 500 < h.fence_deadline
                    {
                        h.qemu = Some(real);
                        self.out.trace.push(format!("{real:>6} {} started the guest", name(i)));
                    }
                }
            }
        }
    }

    fn manager_step(&mut self) {
        let Some(l) = self.leader_quorate() else { return };
        let local = self.hosts[l].local(self.now);
        if local < self.next_manager {
            return;
        }
        self.next_manager = local + 200;
        let Some(table) = self.table.clone() else { return };
        let mut opts = self.opts;
        let mut table = table;
        match self.cfg.bug {
            HaBug::SkipMargin => opts.margin_ms = 0,
            HaBug::NoTakeoverWait => table.since_ms = 0,
            HaBug::None | HaBug::GrantWhileFencing => {}
        }
        // The leader plans on its own applied state (here: the committed one).
        let steps = manager::plan(&self.committed, &|n| table.liveness(n, local, &opts));
        for s in steps {
            let what = format!("{:?}", s.cmd).chars().take(90).collect::<String>();
            if self.commit(s.cmd) {
                self.trace(format!("manager: {what}"));
            }
        }
    }

    fn faults(&mut self) {
        if self.now < 3_000
            || self.now + 15_000 > self.cfg.sim_secs * 1000
            || self.rng.gen_range(0..4_000) != 0
        {
            return;
        }
        let owner = self.committed.guests.get(&VMID).map(|g| g.node.clone()).unwrap_or_default();
        // Half the faults hit the guest's host.
        let victim = if self.rng.gen_bool(0.5) {
            (0..NODES).find(|&i| name(i) == owner).unwrap_or(0)
        } else {
            self.rng.gen_range(0..NODES)
        };
        if (0..NODES).any(|i| !self.hosts[i].works() || self.now < self.hosts[i].partitioned_until) {
            return; // one fault at a time keeps a majority
        }
        let kind = self.rng.gen_range(0..4);
        let dur = self.rng.gen_range(1_000..10_000);
        let h = &mut self.hosts[victim];
        let what = match kind {
            0 => {
                h.alive = false;
                h.qemu = None;
                h.powered_on_at = self.now + dur;
                "crash (host death)"
            }
            1 => {
                h.daemon = Daemon::Dead { until: self.now + dur };
                "kill -9 of the daemon"
            }
            2 => {
                h.daemon = Daemon::Hung { until: self.now + dur };
                "SIGSTOP of the daemon"
            }
            _ => {
                h.partitioned_until = self.now + dur;
                "partition"
            }
        };
        let hit_owner = name(victim) == owner && self.hosts[victim].qemu.is_some();
        if hit_owner && self.pending_failover.is_none() {
            self.pending_failover = Some(self.now);
        }
        self.trace(format!("fault: {what} of {} for {dur} ms", name(victim)));
    }

    fn recover_hosts(&mut self) {
        for i in 0..NODES {
            let h = &mut self.hosts[i];
            if !h.alive && self.now >= h.powered_on_at {
                h.alive = true;
                h.daemon = Daemon::Up;
                h.lease = None;
                h.fence_deadline = 0;
                h.applied = 0;
                h.state = ClusterState::default();
            }
        }
    }

    fn check(&mut self) {
        let running: Vec<usize> =
            (0..NODES).filter(|&i| self.hosts[i].alive && self.hosts[i].qemu.is_some()).collect();
        if running.len() > 1 {
            let v = format!(
                "at {} ms the guest runs on {:?}",
                self.now,
                running.iter().map(|&i| name(i)).collect::<Vec<_>>()
            );
            if self.out.violations.len() < 5 {
                self.out.violations.push(v);
            }
        }
        // Running again: a QEMU spawned after the fault has reached QMP `running`
        // (BOOT_MS after its spawn). A guest whose QEMU outlived the fault (a daemon back
        // within the lease) did not fail over.
        if let Some(at) = self.pending_failover {
            let again = running
                .iter()
                .any(|&i| self.hosts[i].qemu.is_some_and(|t| t > at && self.now >= t + BOOT_MS));
            let survived = running.iter().any(|&i| {
                let h = &self.hosts[i];
                h.qemu.is_some_and(|t| t <= at) && h.works() && self.now >= h.partitioned_until
            });
            if again {
                self.out.failovers_ms.push(self.now - at);
                self.pending_failover = None;
            } else if survived {
                self.pending_failover = None;
            }
        }
        if let Some(at) = self.pending_failover {
            if self.now - at > LIVENESS_BOUND_MS && self.out.violations.len() < 5 {
                self.out.violations.push(format!(
                    "the guest did not run again within {LIVENESS_BOUND_MS} ms of the fault at {at} ms"
                ));
                self.pending_failover = None;
            }
        }
    }
}

/// One seeded run.
pub fn run(cfg: HaSimConfig) -> HaOutcome {
    let end = cfg.sim_secs * 1000;
    let mut sim = Sim::new(cfg);
    while sim.now < end {
        sim.recover_hosts();
        sim.elect();
        sim.deliver();
        sim.hosts_step();
        sim.manager_step();
        sim.faults();
        sim.check();
        sim.now += STEP_MS;
    }
    // Every fault has healed by the end: the guest must be running.
    let running = (0..NODES).filter(|&i| sim.hosts[i].alive && sim.hosts[i].qemu.is_some()).count();
    if running != 1 {
        sim.out.violations.push(format!("at the end the guest runs on {running} hosts"));
    }
    sim.out
}
