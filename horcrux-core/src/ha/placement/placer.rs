//! The decision itself, over nodes indexed once: node names, architectures and storages
//! become small integers and each node's load sits at its position, so filtering and
//! scoring a hundred nodes compares integers, not strings.

use std::fmt::Write;

use super::score::{score, Cost};
use super::{Ask, Compiled, Crs, Decision, HashMap, Load, Loads, NodeView, Placed, Preference, Usage};

/// A node × name bit matrix (which storages a node reaches, which architectures it
/// emulates).
#[derive(Debug)]
struct Bits {
    words: usize,
    v: Vec<u64>,
}

impl Bits {
    fn new(rows: usize, cols: usize) -> Self {
        let words = cols.div_ceil(64).max(1);
        Bits { words, v: vec![0; rows * words] }
    }
    fn set(&mut self, row: usize, col: usize) {
        self.v[row * self.words + col / 64] |= 1 << (col % 64);
    }
    fn has(&self, row: usize, col: usize) -> bool {
        self.v[row * self.words + col / 64] & (1 << (col % 64)) != 0
    }
}

/// Interns names to dense ids.
fn intern<'a>(ids: &mut HashMap<&'a str, usize>, name: &'a str) -> usize {
    let next = ids.len();
    *ids.entry(name).or_insert(next)
}

/// Nodes, rules and what runs where, indexed for many decisions. Placing a resource
/// ([`Placer::place`]) updates the loads the next decision sees.
#[derive(Debug)]
pub struct Placer<'a> {
    nodes: &'a [NodeView],
    rules: &'a Compiled,
    index: HashMap<&'a str, usize>,
    /// Each node's position among the nodes sorted by name (ties go by name).
    rank: Vec<u32>,
    /// Per node-affinity rule (as `Compiled::affinity`): (node, priority) of the nodes it
    /// lists that exist.
    prios: Vec<Vec<(usize, u32)>>,
    archs: HashMap<&'a str, usize>,
    node_arch: Vec<usize>,
    emulates: Bits,
    storage_ids: HashMap<&'a str, usize>,
    storages: Bits,
    online: Vec<usize>,
    usage: Usage,
    pub(super) load: Vec<Load>,
}

/// A node's position and the resource-affinity rule that puts it there.
type Marked<'r> = (usize, &'r str, &'r str);

impl<'a> Placer<'a> {
    pub fn new(nodes: &'a [NodeView], rules: &'a Compiled, usage: Usage) -> Self {
        let mut index = HashMap::default();
        for (i, n) in nodes.iter().enumerate() {
            index.entry(n.name.as_str()).or_insert(i);
        }
        let mut by_name: Vec<usize> = (0..nodes.len()).collect();
        by_name.sort_by(|a, b| nodes[*a].name.cmp(&nodes[*b].name));
        let mut rank = vec![0u32; nodes.len()];
        for (r, i) in by_name.into_iter().enumerate() {
            rank[i] = r as u32;
        }
        let prios = rules
            .affinity
            .iter()
            .map(|(_, prio, _)| {
                prio.iter().filter_map(|(n, p)| Some((*index.get(n.as_str())?, *p))).collect()
            })
            .collect();
        let mut archs = HashMap::default();
        let node_arch: Vec<usize> = nodes.iter().map(|n| intern(&mut archs, &n.arch)).collect();
        for n in nodes {
            for e in &n.emulates {
                intern(&mut archs, e);
            }
        }
        let mut emulates = Bits::new(nodes.len(), archs.len());
        let mut storage_ids = HashMap::default();
        for n in nodes {
            for s in &n.storages {
                intern(&mut storage_ids, s);
            }
        }
        let mut storages = Bits::new(nodes.len(), storage_ids.len());
        for (i, n) in nodes.iter().enumerate() {
            for e in &n.emulates {
                emulates.set(i, archs[e.as_str()]);
            }
            for s in &n.storages {
                storages.set(i, storage_ids[s.as_str()]);
            }
        }
        let online = (0..nodes.len()).filter(|&i| nodes[i].online).collect();
        let mut p = Placer {
            nodes,
            rules,
            index,
            rank,
            prios,
            archs,
            node_arch,
            emulates,
            storage_ids,
            storages,
            online,
            usage: Usage::default(),
            load: vec![Load::default(); nodes.len()],
        };
        for placed in usage.placed.into_values() {
            p.place(placed);
        }
        p
    }

    /// Records `placed` (replacing an earlier record of the same resource).
    pub fn place(&mut self, placed: Placed) {
        self.count(&placed, 1.0);
        if let Some(old) = self.usage.add(placed) {
            self.count(&old, -1.0);
        }
    }

    pub fn remove(&mut self, sid: &str) {
        if let Some(old) = self.usage.remove(sid) {
            self.count(&old, -1.0);
        }
    }

    /// Adds (`sign` 1) or takes away (-1) `p`'s share on its nodes (a node not in the list
    /// holds nothing placement could use).
    fn count(&mut self, p: &Placed, sign: f64) {
        for n in p.nodes() {
            if let Some(&i) = self.index.get(n) {
                self.load[i].add(p, sign);
            }
        }
    }

    fn at(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn name(&self, i: usize) -> &'a str {
        &self.nodes[i].name
    }

    /// Node names for an explanation line: all of them when few, else the first eight and
    /// how many more (with a hundred nodes, the full list buries the reasons that matter).
    fn names(&self, nodes: impl Iterator<Item = usize>) -> String {
        const SHOWN: usize = 8;
        let mut out = String::new();
        let mut more = 0;
        for (k, i) in nodes.enumerate() {
            if k >= SHOWN {
                more += 1;
                continue;
            }
            if k > 0 {
                out.push_str(", ");
            }
            out.push_str(self.name(i));
        }
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
        out
    }

    /// Chooses a node for `ask`; see the module documentation.
    pub fn select(&self, ask: &Ask, crs: Crs) -> Decision {
        let nodes = self.nodes;
        let mut why = Vec::with_capacity(8);
        // Every node's load without the resource's own share.
        let own = self.usage.placed.get(&ask.sid).map(|p| {
            let mut at = [usize::MAX; 2];
            for (k, n) in p.nodes().enumerate() {
                at[k] = self.at(n).unwrap_or(usize::MAX);
            }
            (p, at)
        });
        let load = Loads { base: &self.load, own };
        let current = ask.current.as_deref().and_then(|c| self.at(c));
        let arch = self.archs.get(ask.arch.as_str()).copied();
        let emulator = self.archs.get(ask.emulator.as_str()).copied();
        let native = |i: usize| Some(self.node_arch[i]) == arch || Some(self.node_arch[i]) == emulator;
        let emulates = |i: usize| emulator.is_some_and(|e| self.emulates.has(i, e));
        let needs: Vec<(&str, Option<usize>)> =
            ask.storages.iter().map(|s| (s.as_str(), self.storage_ids.get(s.as_str()).copied())).collect();
        let local = ask.local_storages.iter().next();

        // Nodes that can hold it at all.
        let mut candidates: Vec<usize> = Vec::with_capacity(nodes.len());
        let mut emulating = 0usize;
        for (i, n) in nodes.iter().enumerate() {
            let name = &n.name;
            let reason = if !n.online {
                Some(format!("{name}: offline"))
            } else if n.maintenance {
                Some(format!("{name}: in maintenance"))
            } else if let Some((s, _)) =
                needs.iter().find(|(_, id)| !id.is_some_and(|id| self.storages.has(i, id)))
            {
                Some(format!("{name}: does not reach storage '{s}'"))
            } else if let Some(s) = local.filter(|_| current != Some(i)) {
                Some(format!("{name}: its disks are on node-local storage '{s}' of another node"))
            } else if !(native(i) || ask.emulation_allowed && emulates(i)) {
                Some(if ask.emulation_allowed {
                    format!("{name}: {} node without qemu-system-{}", n.arch, ask.emulator)
                } else {
                    format!("{name}: {} node; the guest is {} and forbids emulation", n.arch, ask.arch)
                })
            } else {
                let free = (n.mem_mib as f64 - load.get(i).mem).max(0.0) as u64;
                (free < ask.mem_mib).then(|| format!("{name}: {free} MiB free, needs {} MiB", ask.mem_mib))
            };
            match reason {
                Some(r) => why.push(r),
                None => {
                    emulating += usize::from(!native(i));
                    candidates.push(i)
                }
            }
        }

        // Node affinity: the highest-priority group of the allowed nodes.
        let Some(&rule_at) = self.rules.node_affinity.get(&ask.sid) else {
            let cur_allowed = current.is_some_and(|c| candidates.contains(&c));
            return self.choose(ask, crs, candidates, cur_allowed, emulating > 0, &load, why);
        };
        let (rule, _, strict) = &self.rules.affinity[rule_at];
        // Each candidate's priority (-1: not listed).
        let mut prio = vec![-1i64; nodes.len()];
        for &(i, p) in &self.prios[rule_at] {
            prio[i] = i64::from(p);
        }
        if *strict {
            if candidates.iter().any(|&i| prio[i] < 0) {
                let out = self.names(candidates.iter().copied().filter(|&i| prio[i] < 0));
                why.push(format!("strict node-affinity rule {rule} excludes {out}"));
            }
            candidates.retain(|&i| prio[i] >= 0);
        }
        // (None left: a strict rule excluded every candidate.)
        let Some(best) = candidates.iter().map(|&i| prio[i]).max() else {
            return self.choose(ask, crs, Vec::new(), false, false, &load, why);
        };
        let lower: Vec<usize> =
            candidates.iter().copied().filter(|&i| (0..best).contains(&prio[i])).collect();
        let unlisted = best >= 0 && candidates.iter().any(|&i| prio[i] < 0);
        if !lower.is_empty() || unlisted {
            let mut line = format!("node-affinity rule {rule} prefers priority {best} over ");
            for (k, &i) in lower.iter().enumerate() {
                if k == 8 {
                    let _ = write!(line, " and {} more", lower.len() - 8);
                    break;
                }
                let _ = write!(line, "{}{} ({})", if k > 0 { ", " } else { "" }, self.name(i), prio[i]);
            }
            if unlisted {
                if !lower.is_empty() {
                    line.push_str("; ");
                }
                line.push_str("unlisted ");
                line.push_str(&self.names(candidates.iter().copied().filter(|&i| prio[i] < 0)));
            }
            why.push(line);
        }
        let cur_allowed = current.is_some_and(|c| candidates.contains(&c));
        candidates.retain(|&i| prio[i] == best);
        self.choose(ask, crs, candidates, cur_allowed, emulating > 0, &load, why)
    }

    /// The steps after node affinity: resource affinity, failures, maintenance, then scores.
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        ask: &Ask,
        crs: Crs,
        mut pri: Vec<usize>,
        cur_allowed: bool,
        some_emulate: bool,
        load: &Loads,
        mut why: Vec<String>,
    ) -> Decision {
        let nowhere = |mut why: Vec<String>| {
            why.push(format!("no node can run {}", ask.sid));
            Decision { node: None, explanation: why }
        };
        if pri.is_empty() {
            return nowhere(why);
        }
        // Nodes of the guest's own architecture before the ones that would emulate it.
        let native = |i: usize| {
            let a = &self.nodes[i].arch;
            *a == ask.arch || *a == ask.emulator
        };
        if some_emulate && pri.iter().any(|&i| native(i)) {
            if pri.iter().any(|&i| !native(i)) {
                let emulating = self.names(pri.iter().copied().filter(|&i| !native(i)));
                why.push(format!("{emulating}: would emulate {}; other nodes run it natively", ask.arch));
            }
            pri.retain(|&i| native(i));
        }

        // Resource affinity: where the partners are (a partner counts where it is going,
        // else where it is), and the nodes kept off.
        let mut together: Vec<(usize, u32, &str)> = Vec::new();
        for (other, rule) in self.rules.together.get(&ask.sid).into_iter().flatten() {
            let Some(p) = self.usage.placed.get(other) else { continue };
            let Some(i) = p.nodes().last().and_then(|n| self.at(n)) else { continue };
            match together.iter_mut().find(|t| t.0 == i) {
                Some(t) => t.1 += 1,
                None => together.push((i, 1, rule)),
            }
        }
        let mut separate: Vec<Marked> = Vec::new();
        for (other, rule) in self.rules.apart.get(&ask.sid).into_iter().flatten() {
            let Some(p) = self.usage.placed.get(other) else { continue };
            for i in p.nodes().filter_map(|n| self.at(n)) {
                if !separate.iter().any(|s| s.0 == i) {
                    separate.push((i, other, rule));
                }
            }
        }
        let count_on = |i: usize| together.iter().find(|t| t.0 == i).map(|t| t.1);
        let apart_on = |i: usize| separate.iter().find(|s| s.0 == i);
        let current = ask.current.as_deref();
        let cur = current.and_then(|c| self.at(c));
        if let (Some(c), Some(ci)) = (current, cur) {
            let keeps = count_on(ci).is_some() || apart_on(ci).is_none();
            if ask.preference == Preference::Stay && !ask.failback && cur_allowed && keeps {
                why.push(format!("stays on {c}: allowed, and failback is off"));
                return Decision { node: Some(c.to_string()), explanation: why };
            }
        }
        if ask.preference == Preference::TryNext {
            let failed: Vec<usize> = ask.failed_nodes.iter().filter_map(|n| self.at(n)).collect();
            for &i in pri.iter().filter(|i| failed.contains(i)) {
                why.push(format!("{}: {} failed to start there", self.name(i), ask.sid));
            }
            pri.retain(|i| !failed.contains(i));
        }
        for &i in &pri {
            if let Some((_, other, rule)) = apart_on(i) {
                why.push(format!(
                    "{}: negative resource-affinity rule {rule} keeps it apart from {other}",
                    self.name(i)
                ));
            }
        }
        pri.retain(|&i| apart_on(i).is_none());
        if let Some(most) = pri.iter().filter_map(|&i| count_on(i)).max() {
            let rule = together.first().map(|t| t.2).unwrap_or("");
            for &i in pri.iter().filter(|&&i| count_on(i) != Some(most)) {
                why.push(format!(
                    "{}: positive resource-affinity rule {rule} keeps it with its partners",
                    self.name(i)
                ));
            }
            pri.retain(|&i| count_on(i) == Some(most));
        }
        if pri.is_empty() {
            return nowhere(why);
        }
        if let Some(m) = ask.maintenance_node.as_deref().and_then(|m| self.at(m)).filter(|m| pri.contains(m))
        {
            why.push(format!("back to {}, which it left for maintenance", self.name(m)));
            return Decision { node: Some(self.name(m).to_string()), explanation: why };
        }
        if let Some(c) = cur.filter(|c| ask.preference == Preference::Stay && pri.contains(c)) {
            why.push(format!("stays on {}: among the preferred nodes", self.name(c)));
            return Decision { node: Some(self.name(c).to_string()), explanation: why };
        }

        // Score: lower is better; ties by name. Only the best four (the choice and the
        // runners-up an operator compares it with) and, when relocating, the one ranked
        // right after the current node are needed: found in one pass, without sorting.
        let costs = score(ask, &pri, self.nodes, load, &self.online, crs);
        let ranked = || costs.iter().copied().zip(pri.iter().copied());
        let before = |a: &(f64, usize), b: &(f64, usize)| {
            a.0.total_cmp(&b.0).then_with(|| self.rank[a.1].cmp(&self.rank[b.1])).is_lt()
        };
        let mut top: Vec<(f64, usize)> = Vec::with_capacity(5);
        for r in ranked() {
            if top.len() < 4 || before(&r, &top[3]) {
                let at = top.iter().position(|t| before(&r, t)).unwrap_or(top.len());
                top.insert(at, r);
                top.truncate(4);
            }
        }
        let after_current = match (ask.preference, cur) {
            (Preference::TryNext, Some(ci)) => ranked().find(|r| r.1 == ci).and_then(|c| {
                ranked().filter(|r| before(&c, r)).fold(None, |best: Option<(f64, usize)>, r| match best {
                    Some(b) if !before(&r, &b) => Some(b),
                    _ => Some(r),
                })
            }),
            _ => None,
        };
        let (cost, chosen) = after_current.unwrap_or(top[0]);
        let kind = match crs {
            Crs::Basic => "HA resources on it",
            Crs::Static => "static load score",
        };
        // (Written into one string, which cannot fail: a `format!` per piece was a fifth
        // of a decision.)
        let mut line = String::with_capacity(96);
        let _ = write!(line, "chose {}, {kind} {}", self.name(chosen), Cost(cost));
        // The runners-up, best first (three at most).
        for (k, (c, i)) in top.iter().filter(|r| r.1 != chosen).take(3).enumerate() {
            let _ = write!(line, "{}{} {}", if k == 0 { " (next: " } else { ", " }, self.name(*i), Cost(*c));
        }
        if top.iter().any(|r| r.1 != chosen) {
            line.push(')');
        }
        why.push(line);
        Decision { node: Some(self.name(chosen).to_string()), explanation: why }
    }
}
