//! Where an HA resource should run: a pure function of the nodes, what already runs on
//! them, and the rules, following Proxmox's `select_service_node` (filters in its order,
//! then `basic` or `static` scoring), plus what Proxmox does not check: free memory,
//! storages the guest needs, and its CPU architecture. Every decision carries its
//! explanation, one line per node left out and one for the choice.
//!
//! A [`Placer`] indexes the nodes, rules and loads once (per manager round, or once for a
//! benchmark's whole run) so that each decision costs work in the number of nodes with no
//! name hashing or string comparison per node; [`select_node`] is the one-off form.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasherDefault, Hasher};

mod placer;
mod score;

pub use placer::Placer;

/// FNV-1a: the maps here are keyed by short node and resource names, and SipHash
/// (DoS-resistant, which names from the replicated state need not be) was a tenth of a
/// decision's cost.
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
    /// Shared storages its disks are on: a node must reach each.
    pub storages: BTreeSet<String>,
    /// Node-local storages its disks are on: their volumes exist only on `current`, which
    /// is then the only node it can run on.
    pub local_storages: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub node: Option<String>,
    pub explanation: Vec<String>,
}

/// The rules, indexed by resource.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Each node-affinity rule: id, node priorities, strict.
    affinity: Vec<(String, BTreeMap<String, u32>, bool)>,
    /// sid -> its node-affinity rule (an index into `affinity`).
    node_affinity: HashMap<String, usize>,
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
                let at = c.affinity.len();
                c.affinity.push((r.rule.clone(), nodes.clone(), *strict));
                for sid in &r.resources {
                    c.node_affinity.insert(sid.clone(), at);
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

/// What a node carries: configured CPUs and memory of what runs (or is moving) there, and
/// how many of those are HA resources.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    cpu: f64,
    mem: f64,
    ha: u32,
}

impl Load {
    fn add(&mut self, p: &Placed, sign: f64) {
        self.cpu += sign * p.cpus;
        self.mem += sign * p.mem_mib as f64;
        if p.ha {
            self.ha = if sign > 0.0 { self.ha + 1 } else { self.ha.saturating_sub(1) };
        }
    }
}

/// Every node's load as a decision sees it: without the share of the resource being
/// placed (on at most two nodes), taken off on the fly rather than in a copy of the list.
#[derive(Clone, Copy)]
struct Loads<'a> {
    base: &'a [Load],
    own: Option<(&'a Placed, [usize; 2])>,
}

impl Loads<'_> {
    fn get(&self, i: usize) -> Load {
        let mut l = self.base[i];
        if let Some((p, at)) = self.own {
            if at.contains(&i) {
                l.add(p, -1.0);
            }
        }
        l
    }
}

/// What runs where (one record per resource).
#[derive(Debug, Clone, Default)]
pub struct Usage {
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

    /// Records `p`, replacing an earlier record of the same resource; returns that one.
    pub fn add(&mut self, p: Placed) -> Option<Placed> {
        self.placed.insert(p.sid.clone(), p)
    }

    pub fn remove(&mut self, sid: &str) -> Option<Placed> {
        self.placed.remove(sid)
    }
}

impl Placed {
    /// Where it counts: its node, and its migration target.
    fn nodes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.node.as_str()).chain(self.target.as_deref())
    }
}

/// Chooses a node for `ask` (a one-off decision: a [`Placer`] makes many).
pub fn select_node(ask: &Ask, nodes: &[NodeView], usage: &Usage, rules: &Compiled, crs: Crs) -> Decision {
    Placer::new(nodes, rules, usage.clone()).select(ask, crs)
}

#[cfg(test)]
mod tests;
