//! The HA manager's decisions, as a pure function: from the replicated state and what the
//! leader's lease table says of each node, the transitions to commit next (Proxmox's CRM
//! `next_state_*`, with leases in place of its watchdog-backed locks). The leader runs it
//! on every tick and proposes what it returns; each transition is compare-and-set on the
//! resource's revision, so a stale plan is refused, not applied twice.

use std::collections::{BTreeMap, BTreeSet};

use super::lease::Liveness;
use super::placement::{self, Ask, Compiled, Decision, NodeView, Placed, Placer, Preference, Usage};
use super::resources::{vm_sid, vmid_of, HaOptions, HaResource, RequestedState, ServiceState};
use crate::command::Command;
use crate::model::Guest;
use crate::state::ClusterState;

/// One transition to propose, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub sid: String,
    pub cmd: Command,
    /// For the task log: the placement explanation, or the reason for the transition.
    pub explanation: Vec<String>,
}

/// Shared storages (every node they exist on sees the same volumes), enabled, with the
/// nodes they exist on (`None`: every node). A `dir` storage not marked `shared` is a
/// directory on each node holding different volumes: a guest's disk there pins it.
fn shared_storages(state: &ClusterState) -> BTreeMap<String, Option<BTreeSet<String>>> {
    state
        .storage
        .values()
        .filter(|p| p.shared() && !p.config.disable)
        .map(|p| (p.id.clone(), (!p.config.nodes.is_empty()).then(|| p.config.nodes.clone())))
        .collect()
}

/// Every node as placement sees it: a node reaches the shared storages; a guest's
/// node-local volumes are only on its own node (`Ask::local_storages`).
pub fn node_views(state: &ClusterState, live: &dyn Fn(&str) -> Liveness) -> Vec<NodeView> {
    let shared = shared_storages(state);
    state
        .nodes
        .values()
        .map(|n| NodeView {
            name: n.name.clone(),
            online: matches!(live(&n.name), Liveness::Online { .. }),
            maintenance: false,
            cpus: n.facts.cpus.max(1),
            mem_mib: if n.facts.mem_mib == 0 { u64::MAX / 4 } else { n.facts.mem_mib },
            arch: if n.facts.arch.is_empty() { "x86_64".into() } else { n.facts.arch.clone() },
            emulates: n.facts.emulates.clone(),
            storages: shared
                .iter()
                .filter(|(_, on)| on.as_ref().is_none_or(|on| on.contains(&n.name)))
                .map(|(id, _)| id.clone())
                .collect(),
        })
        .collect()
}

/// What runs where: every guest meant to run counts on its node (and an HA resource moving
/// also on its target).
pub fn usage(state: &ClusterState) -> Usage {
    Usage::new(state.guests.values().filter(|g| g.desired.is_running()).map(|g| {
        let sid = vm_sid(g.vmid);
        let res = state.ha_resources.get(&sid);
        let spec = g.vm_spec();
        Placed {
            sid,
            node: g.node.clone(),
            target: res.and_then(|r| r.target.clone()),
            cpus: f64::from(spec.cores * spec.sockets.max(1)),
            mem_mib: spec.memory_mib,
            ha: res.is_some(),
        }
    }))
}

/// The placement question for a resource's guest.
pub fn ask(state: &ClusterState, res: &HaResource, g: &Guest, preference: Preference) -> Ask {
    let spec = g.vm_spec();
    let shared = shared_storages(state);
    let (storages, local_storages) =
        spec.disks.iter().map(|d| d.storage.clone()).partition(|s: &String| shared.contains_key(s));
    let arch = crate::arch::resolve(&state.architectures, "arch", spec.arch.as_deref()).unwrap_or_default();
    Ask {
        sid: res.sid.clone(),
        current: Some(g.node.clone()),
        failback: res.failback,
        preference,
        failed_nodes: res.failed_nodes.clone(),
        maintenance_node: None,
        cpus: f64::from(spec.cores * spec.sockets.max(1)),
        mem_mib: spec.memory_mib,
        emulator: arch.emulator().to_string(),
        arch: arch.name,
        emulation_allowed: spec.emulation.is_allowed(),
        storages,
        local_storages,
    }
}

/// What one round of decisions shares: the node views, the compiled rules and the loads,
/// built once (not per resource).
pub struct Round {
    nodes: Vec<NodeView>,
    rules: Compiled,
    crs: placement::Crs,
}

impl Round {
    pub fn new(state: &ClusterState, live: &dyn Fn(&str) -> Liveness) -> Self {
        let rules: Vec<_> = state.ha_rules.values().cloned().collect();
        Round {
            nodes: node_views(state, live),
            rules: Compiled::new(&rules),
            crs: HaOptions::from_options(&state.options).crs,
        }
    }

    pub fn placer(&self, state: &ClusterState) -> Placer<'_> {
        Placer::new(&self.nodes, &self.rules, usage(state))
    }
}

/// Where the resource would go now with `preference` (what `GET .../placement` answers).
pub fn decide(
    state: &ClusterState,
    sid: &str,
    preference: Preference,
    live: &dyn Fn(&str) -> Liveness,
) -> Option<Decision> {
    let round = Round::new(state, live);
    decide_in(state, &round, &round.placer(state), sid, preference)
}

fn decide_in(
    state: &ClusterState,
    round: &Round,
    placer: &Placer,
    sid: &str,
    preference: Preference,
) -> Option<Decision> {
    let res = state.ha_resources.get(sid)?;
    let g = state.guests.get(&vmid_of(sid)?)?;
    Some(placer.select(&ask(state, res, g, preference), round.crs))
}

fn transition(res: &HaResource, service: ServiceState) -> Command {
    Command::HaTransition {
        sid: res.sid.clone(),
        expected_revision: res.revision,
        service,
        node: None,
        run: None,
        failed_nodes: res.failed_nodes.clone(),
        target: None,
    }
}

/// Moves the resource to `target` as a relocation: stopped on its node, then moved and
/// started there by the owner once its process is gone (`service` becomes `relocate`).
fn move_to(res: &HaResource, target: String) -> Command {
    with(transition(res, ServiceState::Relocate), |_, run, _, t| {
        *run = Some(false);
        *t = Some(target);
    })
}

fn rebalanced(mut why: Vec<String>) -> Vec<String> {
    why.push("ha-rebalance-on-start: starting it on the best-scored node".into());
    why
}

fn with(
    mut cmd: Command,
    f: impl FnOnce(&mut Option<String>, &mut Option<bool>, &mut Vec<String>, &mut Option<String>),
) -> Command {
    if let Command::HaTransition { node, run, failed_nodes, target, .. } = &mut cmd {
        f(node, run, failed_nodes, target);
    }
    cmd
}

/// Whether the leader must refuse `node` a lease for now: the node has been declared
/// failed and still owns HA resources the manager has not fenced yet. Granting first would
/// let the node start a guest from a state that predates its fencing while the manager
/// recovers it elsewhere; once the fence transitions are committed, a grant carries their
/// index and the node, having applied them, starts nothing (`may_start`).
pub fn withhold_lease(state: &ClusterState, node: &str, liveness: Liveness) -> bool {
    liveness == Liveness::Failed
        && state.ha_resources.values().any(|r| {
            r.state != RequestedState::Ignored
                && !matches!(
                    r.service,
                    ServiceState::Fence
                        | ServiceState::Recovery
                        | ServiceState::Stopped
                        | ServiceState::Error
                )
                && vmid_of(&r.sid).and_then(|v| state.guests.get(&v)).is_some_and(|g| g.node == node)
        })
}

/// Whether the owner may start the guest of HA resource `sid` (besides holding a lease):
/// only while the manager has it `started` (never once it is being fenced or recovered).
pub fn may_start(state: &ClusterState, sid: &str) -> bool {
    state.ha_resources.get(sid).is_some_and(|r| r.service == ServiceState::Started)
}

/// The transitions to commit next; see the module documentation.
pub fn plan(state: &ClusterState, live: &dyn Fn(&str) -> Liveness) -> Vec<Step> {
    let mut steps = Vec::new();
    // One voluntary move (failback, rebalance) per round: each is decided on a state where
    // the others have not moved yet, and two partners of a positive rule on different
    // nodes would otherwise swap places forever.
    let mut may_move = !state.ha_resources.values().any(|r| matches!(r.service, ServiceState::Relocate));
    if state.ha_resources.is_empty() {
        return steps;
    }
    let round = Round::new(state, live);
    let placer = round.placer(state);
    let at = Decider { state, round: &round, placer: &placer };
    for res in state.ha_resources.values() {
        if res.state == RequestedState::Ignored {
            continue;
        }
        let Some(g) = vmid_of(&res.sid).and_then(|v| state.guests.get(&v)) else { continue };
        if let Some(step) = next(&at, res, g, live, may_move) {
            if res.service != ServiceState::Relocate
                && matches!(step.cmd, Command::HaTransition { service: ServiceState::Relocate, .. })
            {
                may_move = false;
            }
            steps.push(step);
        }
    }
    steps
}

/// One round's inputs, for `next`.
struct Decider<'a> {
    state: &'a ClusterState,
    round: &'a Round,
    placer: &'a Placer<'a>,
}

impl Decider<'_> {
    fn decide(&self, sid: &str, preference: Preference) -> Option<Decision> {
        decide_in(self.state, self.round, self.placer, sid, preference)
    }
}

fn next(
    at: &Decider,
    res: &HaResource,
    g: &Guest,
    live: &dyn Fn(&str) -> Liveness,
    may_move: bool,
) -> Option<Step> {
    use ServiceState as S;
    let state = at.state;
    let step = |cmd: Command, why: Vec<String>| Some(Step { sid: res.sid.clone(), cmd, explanation: why });
    let wants_run = res.state == RequestedState::Started;
    let node_live = live(&g.node);

    // A failed node's resources are fenced (its fence has stopped them), then recovered.
    if node_live == Liveness::Failed && !matches!(res.service, S::Fence | S::Recovery | S::Error) {
        let why = format!("node {} failed: its lease and the margin have passed", g.node);
        return step(transition(res, S::Fence), vec![why]);
    }
    if matches!(res.service, S::Fence | S::Recovery) {
        let d = at.decide(&res.sid, Preference::BestScore)?;
        return match d.node.clone() {
            Some(target) => {
                let service = if wants_run { S::Started } else { S::Stopped };
                let cmd = with(transition(res, service), |node, run, _, _| {
                    *node = Some(target);
                    *run = Some(wants_run);
                });
                step(cmd, d.explanation)
            }
            None if res.service == S::Fence => step(transition(res, S::Recovery), d.explanation),
            None => None,
        };
    }
    // The owner may be hung or cut off: leave its resources until it is online or failed.
    let Liveness::Online { .. } = node_live else { return None };

    match (res.state, res.service) {
        (_, S::Relocate | S::Migrate) => {
            // The owner completes a move once the guest is stopped; a target that went away
            // cancels it.
            let gone = res.target.as_deref().is_none_or(|t| !matches!(live(t), Liveness::Online { .. }));
            if gone {
                let why =
                    format!("move target {} is not online; cancelled", res.target.as_deref().unwrap_or("?"));
                let cmd = with(transition(res, S::Started), |_, run, _, _| *run = Some(wants_run));
                return step(cmd, vec![why]);
            }
            None
        }
        (RequestedState::Started, S::Error) => None,
        (RequestedState::Started, _) if res.restarts > res.max_restart => {
            // Failed to start `max_restart + 1` times here: relocate, or give up.
            let mut failed = res.failed_nodes.clone();
            failed.push(g.node.clone());
            if failed.len() as u32 > res.max_relocate {
                let why = format!(
                    "failed to start on {}; max_relocate {} reached",
                    failed.join(", "),
                    res.max_relocate
                );
                let cmd = with(transition(res, S::Error), |_, run, f, _| {
                    *run = Some(false);
                    *f = failed;
                });
                return step(cmd, vec![why]);
            }
            let mut r = res.clone();
            r.failed_nodes = failed.clone();
            let d = at.placer.select(&ask(state, &r, g, Preference::TryNext), at.round.crs);
            let cmd = match d.node.clone() {
                Some(target) => with(transition(res, S::Started), |node, run, f, _| {
                    *node = Some(target);
                    *run = Some(true);
                    *f = failed;
                }),
                None => with(transition(res, S::Error), |_, run, f, _| {
                    *run = Some(false);
                    *f = failed;
                }),
            };
            step(cmd, d.explanation)
        }
        (RequestedState::Started, s) => {
            if s != S::Started || !g.desired.is_running() {
                // `ha-rebalance-on-start`: a resource being started goes to the best-scored
                // node first (stopped where it is, moved by its owner once it is gone).
                let rebalance = HaOptions::from_options(&state.options).rebalance_on_start;
                if rebalance && may_move && s == S::Stopped {
                    if let Some(d) = at.decide(&res.sid, Preference::BestScore) {
                        if let Some(t) = d.node.clone().filter(|t| *t != g.node) {
                            return step(move_to(res, t), rebalanced(d.explanation));
                        }
                    }
                }
                let cmd = with(transition(res, S::Started), |_, run, _, _| *run = Some(true));
                return step(cmd, vec![format!("requested started; starting on {}", g.node)]);
            }
            // Failback: a started resource goes back where the rules (and its architecture)
            // prefer, once such a node is online again, if it may (`failback`).
            if res.failback && may_move {
                let d = at.decide(&res.sid, Preference::Stay)?;
                if let Some(t) = d.node.clone().filter(|t| *t != g.node) {
                    let mut why = d.explanation;
                    why.push(format!("failback: moving from {} to {t}", g.node));
                    return step(move_to(res, t), why);
                }
            }
            None
        }
        (RequestedState::Stopped, S::Error) => None,
        (RequestedState::Stopped | RequestedState::Disabled, s) => {
            if s != S::Stopped || g.desired.is_running() {
                let cmd = with(transition(res, S::Stopped), |_, run, f, _| {
                    *run = Some(false);
                    if res.state == RequestedState::Disabled {
                        f.clear();
                    }
                });
                return step(cmd, vec![format!("requested {}; stopping", res.state.as_str())]);
            }
            None
        }
        (RequestedState::Ignored, _) => None,
    }
}

/// Admission control (`ha.tolerate = n`): whether every started HA guest (with `sid`
/// counted as started too) could run again after any `n` nodes fail, each failed node's
/// HA guests placed, largest first, on the surviving node with the most free memory (memory
/// is reserved: every guest meant to run counts). A guest whose disks are on node-local
/// storage cannot survive its node. `Err` says which loss would strand which guest.
pub fn check_tolerance(state: &ClusterState, sid: &str, n: u32) -> Result<(), String> {
    tolerance(state, sid, true, n)
}

/// Admission control for a plain start of guest `vmid`: an HA guest is checked as a started
/// HA resource; any other guest reserves its memory on its node, and the HA guests must
/// still fit around it.
pub fn check_start(state: &ClusterState, vmid: u32, n: u32) -> Result<(), String> {
    let sid = vm_sid(vmid);
    let ha = state.ha_resources.get(&sid).is_some_and(|r| r.state != RequestedState::Ignored);
    tolerance(state, &sid, ha, n)
}

fn tolerance(state: &ClusterState, sid: &str, sid_is_ha: bool, n: u32) -> Result<(), String> {
    let nodes: Vec<&str> = state.nodes.keys().map(String::as_str).collect();
    if n as usize >= nodes.len() {
        return Err(format!(
            "the cluster has {} nodes; it cannot lose {n} and still run guests",
            nodes.len()
        ));
    }
    // (sid, node, memory, movable) of every HA guest that is to run.
    let ha: Vec<(String, &str, u64, bool)> = state
        .guests
        .values()
        .filter_map(|g| {
            let gsid = vm_sid(g.vmid);
            let r = state.ha_resources.get(&gsid);
            let started = (gsid == sid && sid_is_ha) || r.is_some_and(|r| r.state == RequestedState::Started);
            started.then(|| (gsid, g.node.as_str(), g.vm_spec().memory_mib, g.vm_spec().disks.is_empty()))
        })
        .collect();
    let used = |node: &str| -> u64 {
        state
            .guests
            .values()
            .filter(|g| g.node == node && (g.desired.is_running() || vm_sid(g.vmid) == sid))
            .map(|g| g.vm_spec().memory_mib)
            .sum()
    };
    let capacity = |node: &str| state.nodes.get(node).map(|i| i.facts.mem_mib).unwrap_or(0);
    let mut failed: Vec<usize> = (0..n as usize).collect();
    loop {
        let lost: Vec<&str> = failed.iter().map(|&i| nodes[i]).collect();
        let mut free: Vec<(&str, u64)> = nodes
            .iter()
            .filter(|x| !lost.contains(x))
            .map(|x| (*x, capacity(x).saturating_sub(used(x))))
            .collect();
        let mut moving: Vec<&(String, &str, u64, bool)> = ha.iter().filter(|g| lost.contains(&g.1)).collect();
        moving.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        for (gsid, node, mem, movable) in moving {
            if !movable {
                return Err(format!(
                    "losing {} would strand {gsid}: its disks are on node-local storage on {node}",
                    lost.join(", ")
                ));
            }
            free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            match free.first_mut() {
                Some(best) if best.1 >= *mem => best.1 -= mem,
                best => {
                    return Err(format!(
                        "losing {} would leave {gsid} ({mem} MiB) without a node: at most {} MiB free on {}",
                        lost.join(", "),
                        best.as_ref().map(|b| b.1).unwrap_or(0),
                        best.map(|b| b.0).unwrap_or("none")
                    ))
                }
            }
        }
        // The next combination of `n` failed nodes.
        let mut i = failed.len();
        loop {
            if i == 0 {
                return Ok(());
            }
            i -= 1;
            if failed[i] < nodes.len() - (failed.len() - i) {
                failed[i] += 1;
                for j in i + 1..failed.len() {
                    failed[j] = failed[j - 1] + 1;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
