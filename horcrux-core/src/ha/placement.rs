//! Where an HA resource should run: a pure function of the nodes, what already runs on
//! them, and the rules, following Proxmox's `select_service_node` (filters in its order,
//! then `basic` or `static` scoring), plus what Proxmox does not check: free memory,
//! storages the guest needs, and its CPU architecture. Every decision carries its
//! explanation, one line per node left out and one for the choice.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: the maps here are keyed by short node and resource names, looked up hundreds of
/// times per decision, and SipHash (DoS-resistant, which names from the replicated state
/// need not be) was a tenth of a decision's cost.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fnv>>;

use super::rules::{Rule, RuleKind};

/// How candidate nodes are scored (cluster option `crs.ha`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crs {
    /// HA resources per node.
    Basic,
    /// Configured CPU and memory as fractions of each node's capacity, ranked by TOPSIS over
    /// the cluster's resulting load (as Proxmox's static scheduler).
    Static,
}

/// What the caller is choosing for (Proxmox's `node_preference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// Keep the current node when the rules allow it (a started resource, a restart).
    Stay,
    /// The best-scored node (recovery after a fence, rebalance on start).
    BestScore,
    /// The next node after the current one, leaving out nodes it failed on (relocation
    /// after a failed start).
    TryNext,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub online: bool,
    pub maintenance: bool,
    pub cpus: u32,
    pub mem_mib: u64,
    /// `uname -m`.
    pub arch: String,
    /// Architectures it can emulate (the `qemu-system-*` binaries it has).
    pub emulates: BTreeSet<String>,
    pub storages: BTreeSet<String>,
}

/// A resource that takes room on a node: HA resources and other running guests.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub sid: String,
    /// Where it runs, and where it is moving to (it counts on both).
    pub node: String,
    pub target: Option<String>,
    pub cpus: f64,
    pub mem_mib: u64,
    /// An HA resource (the `basic` score counts these).
    pub ha: bool,
}

/// The resource being placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub sid: String,
    pub current: Option<String>,
    pub failback: bool,
    pub preference: Preference,
    pub failed_nodes: Vec<String>,
    /// The node it was moved off for maintenance: it goes back there when allowed.
    pub maintenance_node: Option<String>,
    pub cpus: f64,
    pub mem_mib: u64,
    pub arch: String,
    /// The `qemu-system-*` suffix that runs it (`ppc64` for `ppc64le`).
    pub emulator: String,
    pub emulation_allowed: bool,
    pub storages: BTreeSet<String>,
}

impl Ask {
    /// Whether `n` runs the guest without emulation (its `uname -m` is the guest's
    /// architecture, or the one its emulator is for).
    pub fn native_on(&self, n: &NodeView) -> bool {
        n.arch == self.arch || n.arch == self.emulator
    }

    /// Natively, or emulated where the guest allows it and the node has the emulator.
    pub fn runs_on(&self, n: &NodeView) -> bool {
        self.native_on(n) || (self.emulation_allowed && n.emulates.contains(&self.emulator))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub node: Option<String>,
    pub explanation: Vec<String>,
}

/// The rules, indexed by resource.
#[derive(Debug, Default)]
pub struct Compiled {
    /// sid -> (rule id, node priorities, strict).
    node_affinity: HashMap<String, (String, BTreeMap<String, u32>, bool)>,
    /// sid -> the other resources kept on its node, with the rule that says so.
    together: HashMap<String, Vec<(String, String)>>,
    /// sid -> the resources kept off its node, with the rule.
    apart: HashMap<String, Vec<(String, String)>>,
}

impl Compiled {
    /// Compiles the enabled rules (already checked by `rules::check_feasibility`).
    /// Positive rules that share resources join transitively, and a resource kept apart
    /// from one member of such a group is kept apart from all of them.
    pub fn new(rules: &[Rule]) -> Self {
        let mut c = Compiled::default();
        let enabled: Vec<&Rule> = rules.iter().filter(|r| !r.disable).collect();
        for r in &enabled {
            if let RuleKind::NodeAffinity { nodes, strict } = &r.kind {
                for sid in &r.resources {
                    c.node_affinity.insert(sid.clone(), (r.rule.clone(), nodes.clone(), *strict));
                }
            }
        }
        let groups = super::rules::positive_groups(&enabled);
        let mut group_of: HashMap<&str, usize> = HashMap::default();
        for (i, (ids, res)) in groups.iter().enumerate() {
            let name = ids.join("+");
            for sid in res {
                group_of.insert(sid, i);
                let others = res.iter().filter(|o| *o != sid).map(|o| (o.clone(), name.clone()));
                c.together.entry(sid.clone()).or_default().extend(others);
            }
        }
        let members = |sid: &str| -> Vec<String> {
            match group_of.get(sid) {
                Some(&i) => groups[i].1.iter().cloned().collect(),
                None => vec![sid.to_string()],
            }
        };
        for r in enabled.iter().filter(|r| matches!(r.kind, RuleKind::ResourceAffinity { positive: false })) {
            for a in &r.resources {
                for b in r.resources.iter().filter(|b| *b != a) {
                    for x in members(a) {
                        for y in members(b) {
                            c.apart.entry(x.clone()).or_default().push((y, r.rule.clone()));
                        }
                    }
                }
            }
        }
        c
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    cpu: f64,
    mem: f64,
    ha: u32,
}

/// What runs where, kept up to date as resources are placed, so that a decision costs
/// work in the number of nodes, not of resources.
#[derive(Debug, Default)]
pub struct Usage {
    load: HashMap<String, Load>,
    placed: HashMap<String, Placed>,
}

impl Usage {
    pub fn new(placed: impl IntoIterator<Item = Placed>) -> Self {
        let mut u = Usage::default();
        for p in placed {
            u.add(p);
        }
        u
    }

    /// Records `p` (replacing an earlier record of the same resource).
    pub fn add(&mut self, p: Placed) {
        self.remove(&p.sid);
        for node in p.nodes() {
            let l = self.load.entry(node.to_string()).or_default();
            l.cpu += p.cpus;
            l.mem += p.mem_mib as f64;
            l.ha += u32::from(p.ha);
        }
        self.placed.insert(p.sid.clone(), p);
    }

    pub fn remove(&mut self, sid: &str) {
        let Some(p) = self.placed.remove(sid) else { return };
        for node in p.nodes() {
            if let Some(l) = self.load.get_mut(node) {
                l.cpu -= p.cpus;
                l.mem -= p.mem_mib as f64;
                l.ha -= u32::from(p.ha);
            }
        }
    }

    /// The load on `node` without `own`'s share (the resource being placed).
    fn without(&self, node: &str, own: Option<&Placed>) -> Load {
        let mut l = self.load.get(node).copied().unwrap_or_default();
        if let Some(p) = own.filter(|p| p.nodes().any(|n| n == node)) {
            l.cpu -= p.cpus;
            l.mem -= p.mem_mib as f64;
            l.ha -= u32::from(p.ha);
        }
        l
    }

    /// Where `sid` counts: its node, and its migration target.
    fn nodes_of(&self, sid: &str) -> Vec<&str> {
        self.placed.get(sid).map(|p| p.nodes().collect()).unwrap_or_default()
    }
}

/// Each node's load, in the order of the node list (a decision looks loads up by node
/// hundreds of times; hashing node names was most of its cost).
struct Loads<'a> {
    nodes: &'a [NodeView],
    v: Vec<Load>,
}

impl Loads<'_> {
    /// `n`'s load; `n` is an element of the node list, so its position is its offset in it.
    fn of(&self, n: &NodeView) -> Load {
        let at =
            (n as *const NodeView as usize - self.nodes.as_ptr() as usize) / std::mem::size_of::<NodeView>();
        debug_assert!(std::ptr::eq(&self.nodes[at], n));
        self.v[at]
    }
}

impl Placed {
    fn nodes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.node.as_str()).chain(self.target.as_deref())
    }
}

/// Chooses a node for `ask`; see the module documentation.
pub fn select_node(ask: &Ask, nodes: &[NodeView], usage: &Usage, rules: &Compiled, crs: Crs) -> Decision {
    let mut why = Vec::new();
    let own = usage.placed.get(&ask.sid);
    let load = Loads { nodes, v: nodes.iter().map(|n| usage.without(&n.name, own)).collect() };

    // Nodes that can hold it at all.
    let mut candidates: Vec<&NodeView> = Vec::with_capacity(nodes.len());
    let mut emulating = 0usize;
    for n in nodes {
        let name = &n.name;
        let reason = if !n.online {
            Some(format!("{name}: offline"))
        } else if n.maintenance {
            Some(format!("{name}: in maintenance"))
        } else if let Some(s) = ask.storages.iter().find(|s| !n.storages.contains(*s)) {
            Some(format!("{name}: does not reach storage '{s}'"))
        } else if !ask.runs_on(n) {
            Some(if ask.emulation_allowed {
                format!("{name}: {} node without qemu-system-{}", n.arch, ask.emulator)
            } else {
                format!("{name}: {} node; the guest is {} and forbids emulation", n.arch, ask.arch)
            })
        } else {
            let free = (n.mem_mib as f64 - load.of(n).mem).max(0.0) as u64;
            (free < ask.mem_mib).then(|| format!("{name}: {free} MiB free, needs {} MiB", ask.mem_mib))
        };
        match reason {
            Some(r) => why.push(r),
            None => {
                emulating += usize::from(!ask.native_on(n));
                candidates.push(n)
            }
        }
    }

    // Node affinity: the highest-priority group of the allowed nodes.
    // (The nodes one rule leaves out are named on one line: with many nodes, a line per
    // node would bury the reasons that matter.)
    let current = ask.current.as_deref();
    let pri: Vec<&NodeView> = candidates;
    if let Some((rule, prio, strict)) = rules.node_affinity.get(&ask.sid) {
        // Each candidate's priority, looked up once (-1: not listed).
        let mut ranked: Vec<(&NodeView, i64)> =
            pri.iter().map(|n| (*n, prio.get(&n.name).map(|p| i64::from(*p)).unwrap_or(-1))).collect();
        if *strict {
            let out: Vec<&str> =
                ranked.iter().filter(|(_, r)| *r < 0).map(|(n, _)| n.name.as_str()).collect();
            if !out.is_empty() {
                why.push(format!("strict node-affinity rule {rule} excludes {}", out.join(", ")));
            }
            ranked.retain(|(_, r)| *r >= 0);
        }
        // (None left: a strict rule excluded every candidate.)
        let Some(best) = ranked.iter().map(|(_, r)| *r).max() else {
            return choose(ask, nodes, usage, rules, crs, Vec::new(), false, false, &load, why);
        };
        let listed: Vec<String> = ranked
            .iter()
            .filter(|(_, r)| (0..best).contains(r))
            .map(|(n, r)| format!("{} ({r})", n.name))
            .collect();
        let unlisted: Vec<&str> =
            ranked.iter().filter(|(_, r)| *r < 0 && best >= 0).map(|(n, _)| n.name.as_str()).collect();
        if !listed.is_empty() || !unlisted.is_empty() {
            let mut line = format!("node-affinity rule {rule} prefers priority {best} over ");
            line.push_str(&listed.join(", "));
            if !unlisted.is_empty() {
                if !listed.is_empty() {
                    line.push_str("; ");
                }
                line.push_str("unlisted ");
                line.push_str(&unlisted.join(", "));
            }
            why.push(line);
        }
        let cur_allowed = current.is_some_and(|c| ranked.iter().any(|(n, _)| n.name == c));
        let pri: Vec<&NodeView> = ranked.into_iter().filter(|(_, r)| *r == best).map(|(n, _)| n).collect();
        return choose(ask, nodes, usage, rules, crs, pri, cur_allowed, emulating > 0, &load, why);
    }
    let cur_allowed = current.is_some_and(|c| pri.iter().any(|n| n.name == c));
    choose(ask, nodes, usage, rules, crs, pri, cur_allowed, emulating > 0, &load, why)
}

fn names<'a>(nodes: impl Iterator<Item = &'a &'a NodeView>) -> String {
    let v: Vec<&str> = nodes.map(|n| n.name.as_str()).collect();
    v.join(", ")
}

/// The steps after node affinity: resource affinity, failures, maintenance, then scores.
#[allow(clippy::too_many_arguments)]
fn choose(
    ask: &Ask,
    nodes: &[NodeView],
    usage: &Usage,
    rules: &Compiled,
    crs: Crs,
    mut pri: Vec<&NodeView>,
    cur_allowed: bool,
    some_emulate: bool,
    load: &Loads,
    mut why: Vec<String>,
) -> Decision {
    if pri.is_empty() {
        why.push(format!("no node can run {}", ask.sid));
        return Decision { node: None, explanation: why };
    }
    // Nodes of the guest's own architecture before the ones that would emulate it.
    if some_emulate && pri.iter().any(|n| ask.native_on(n)) {
        let emulating = names(pri.iter().filter(|n| !ask.native_on(n)));
        if !emulating.is_empty() {
            why.push(format!("{emulating}: would emulate {}; other nodes run it natively", ask.arch));
        }
        pri.retain(|n| ask.native_on(n));
    }

    // Resource affinity.
    let mut together: BTreeMap<&str, (u32, &str)> = BTreeMap::new();
    for (other, rule) in rules.together.get(&ask.sid).into_iter().flatten() {
        // A partner counts where it is going, else where it is.
        if let Some(n) = usage.nodes_of(other).last().copied() {
            let e = together.entry(n).or_insert((0, rule));
            e.0 += 1;
        }
    }
    let mut separate: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (other, rule) in rules.apart.get(&ask.sid).into_iter().flatten() {
        for n in usage.nodes_of(other) {
            separate.entry(n).or_insert((other, rule));
        }
    }
    let current = ask.current.as_deref();
    if let Some(cur) = current {
        let keeps = together.contains_key(cur) || !separate.contains_key(cur);
        if ask.preference == Preference::Stay && !ask.failback && cur_allowed && keeps {
            why.push(format!("stays on {cur}: allowed, and failback is off"));
            return Decision { node: Some(cur.to_string()), explanation: why };
        }
    }
    if ask.preference == Preference::TryNext {
        for n in pri.iter().filter(|n| ask.failed_nodes.contains(&n.name)) {
            why.push(format!("{}: {} failed to start there", n.name, ask.sid));
        }
        pri.retain(|n| !ask.failed_nodes.contains(&n.name));
    }
    for n in pri.iter() {
        if let Some((other, rule)) = separate.get(n.name.as_str()) {
            why.push(format!(
                "{}: negative resource-affinity rule {rule} keeps it apart from {other}",
                n.name
            ));
        }
    }
    pri.retain(|n| !separate.contains_key(n.name.as_str()));
    if let Some(most) = pri.iter().filter_map(|n| together.get(n.name.as_str()).map(|t| t.0)).max() {
        for n in pri.iter().filter(|n| together.get(n.name.as_str()).map(|t| t.0) != Some(most)) {
            let (_, rule) = together.values().next().copied().unwrap_or((0, ""));
            why.push(format!(
                "{}: positive resource-affinity rule {rule} keeps it with its partners",
                n.name
            ));
        }
        pri.retain(|n| together.get(n.name.as_str()).map(|t| t.0) == Some(most));
    }
    if pri.is_empty() {
        why.push(format!("no node can run {}", ask.sid));
        return Decision { node: None, explanation: why };
    }
    if let Some(m) = ask.maintenance_node.as_deref().filter(|m| pri.iter().any(|n| n.name == *m)) {
        why.push(format!("back to {m}, which it left for maintenance"));
        return Decision { node: Some(m.to_string()), explanation: why };
    }
    if let Some(cur) =
        current.filter(|c| ask.preference == Preference::Stay && pri.iter().any(|n| n.name == *c))
    {
        why.push(format!("stays on {cur}: among the preferred nodes"));
        return Decision { node: Some(cur.to_string()), explanation: why };
    }

    // Score: lower is better; ties by name. Only the best four (the choice and the
    // runners-up an operator compares it with) and, when relocating, the one ranked right
    // after the current node are needed: found in one pass, without sorting every node.
    let costs = score(ask, &pri, nodes, load, crs);
    let ranked: Vec<(f64, &str)> =
        pri.iter().map(|n| n.name.as_str()).zip(costs).map(|(n, c)| (c, n)).collect();
    let before = |a: &(f64, &str), b: &(f64, &str)| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)).is_lt();
    let mut top: Vec<(f64, &str)> = Vec::with_capacity(5);
    for r in &ranked {
        if top.len() < 4 || before(r, &top[3]) {
            let at = top.iter().position(|t| before(r, t)).unwrap_or(top.len());
            top.insert(at, *r);
            top.truncate(4);
        }
    }
    let after_current = match (ask.preference, current) {
        (Preference::TryNext, Some(cur)) => ranked.iter().find(|r| r.1 == cur).and_then(|c| {
            ranked.iter().filter(|r| before(c, r)).fold(None, |best: Option<(f64, &str)>, r| match best {
                Some(b) if !before(r, &b) => Some(b),
                _ => Some(*r),
            })
        }),
        _ => None,
    };
    let (cost, chosen) = after_current.unwrap_or(top[0]);
    // The runners-up, best first (three at most).
    let others: Vec<String> =
        top.iter().filter(|r| r.1 != chosen).take(3).map(|(c, n)| format!("{n} {}", Cost(*c))).collect();
    let kind = match crs {
        Crs::Basic => "HA resources on it",
        Crs::Static => "static load score",
    };
    let mut line = format!("chose {chosen}, {kind} {}", Cost(cost));
    if !others.is_empty() {
        line.push_str(&format!(" (next: {})", others.join(", ")));
    }
    why.push(line);
    Decision { node: Some(chosen.to_string()), explanation: why }
}

/// A cost with two decimals, formatted through integers (`{:.2}` of an `f64` took a
/// twentieth of a decision).
struct Cost(f64);

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hundredths = (self.0 * 100.0).round();
        if !hundredths.is_finite() || hundredths.abs() >= 1e15 {
            return write!(f, "{:.2}", self.0);
        }
        let h = hundredths as i64;
        let sign = if h < 0 { "-" } else { "" };
        write!(f, "{sign}{}.{:02}", h.unsigned_abs() / 100, h.unsigned_abs() % 100)
    }
}

/// One cost per candidate (lower is better).
fn score(ask: &Ask, cands: &[&NodeView], nodes: &[NodeView], load: &Loads, crs: Crs) -> Vec<f64> {
    match crs {
        Crs::Basic => cands.iter().map(|n| f64::from(load.of(n).ha)).collect(),
        Crs::Static => {
            // The cluster's load if the resource started on each candidate: RMS and max of
            // CPU and memory use as fractions of capacity over the online nodes.
            let online: Vec<&NodeView> = nodes.iter().filter(|n| n.online).collect();
            let frac = |n: &NodeView, extra: bool| {
                let l = load.of(n);
                let (c, m) = if extra { (ask.cpus, ask.mem_mib as f64) } else { (0.0, 0.0) };
                ((l.cpu + c) / f64::from(n.cpus.max(1)), (l.mem + m) / (n.mem_mib.max(1) as f64))
            };
            let base: Vec<(f64, f64)> = online.iter().map(|n| frac(n, false)).collect();
            let k = online.len().max(1) as f64;
            let (sc, sm): (f64, f64) = base.iter().fold((0.0, 0.0), |(a, b), (c, m)| (a + c * c, b + m * m));
            // The two largest of each, so that the maximum without one node is at hand.
            let top2 = |f: &dyn Fn(&(f64, f64)) -> f64| {
                base.iter()
                    .map(f)
                    .fold((0.0f64, 0.0f64), |(a, b), x| if x > a { (x, a) } else { (a, b.max(x)) })
            };
            let (c1, c2) = top2(&|p| p.0);
            let (m1, m2) = top2(&|p| p.1);
            let rows: Vec<[f64; 4]> = cands
                .iter()
                .map(|cand| {
                    let (c, m) = frac(cand, true);
                    let (c0, m0) = frac(cand, false);
                    let rest_c = if c0 == c1 { c2 } else { c1 };
                    let rest_m = if m0 == m1 { m2 } else { m1 };
                    let sc = sc - c0 * c0 + c * c;
                    let sm = sm - m0 * m0 + m * m;
                    [
                        1.0 + (sc.max(0.0) / k).sqrt(),
                        1.0 + rest_c.max(c),
                        1.0 + (sm.max(0.0) / k).sqrt(),
                        1.0 + rest_m.max(m),
                    ]
                })
                .collect();
            topsis_costs(&rows, [1.0, 2.0, 5.0, 10.0])
        }
    }
}

/// TOPSIS over criteria that are all to be minimised: each column normalised by its L2
/// norm and weighted; a row's closeness is its distance to the worst values over the sum
/// of its distances to the best and the worst. Returned as costs, 1 - closeness.
fn topsis_costs(rows: &[[f64; 4]], weights: [f64; 4]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let norms: Vec<f64> =
        (0..4).map(|j| rows.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt().max(f64::MIN_POSITIVE)).collect();
    let v: Vec<[f64; 4]> =
        rows.iter().map(|r| std::array::from_fn(|j| r[j] / norms[j] * weights[j] / total)).collect();
    let best: [f64; 4] = std::array::from_fn(|j| v.iter().map(|r| r[j]).fold(f64::INFINITY, f64::min));
    let worst: [f64; 4] = std::array::from_fn(|j| v.iter().map(|r| r[j]).fold(f64::NEG_INFINITY, f64::max));
    let dist = |r: &[f64; 4], p: &[f64; 4]| (0..4).map(|j| (r[j] - p[j]).powi(2)).sum::<f64>().sqrt();
    v.iter()
        .map(|r| {
            let (b, w) = (dist(r, &best), dist(r, &worst));
            if b + w == 0.0 {
                0.0
            } else {
                1.0 - w / (b + w)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
