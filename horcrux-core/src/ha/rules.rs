//! HA rules as Proxmox VE 9 has them (`/etc/pve/ha/rules.cfg`): `node-affinity` (which
//! nodes a resource may or prefers to run on, with priorities) and `resource-affinity`
//! (resources kept together or apart). Parsing of their Proxmox syntax, and the
//! feasibility checks Proxmox makes when a rule is created or changed, each answered with
//! the rule and the field it is about.
//!
//! Where Horcrux differs on purpose: a malformed resource or node entry is refused with
//! its field named (Proxmox drops it silently); positive rules that share a resource are
//! grouped transitively (Proxmox joins each rule to the first group it overlaps and never
//! merges groups, so the outcome depends on the order of rule ids); `disable 0` means
//! enabled (Proxmox counts a rule with any `disable` value as disabled).

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::ValidationError;

/// `node-affinity` or `resource-affinity`, with what each type adds.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RuleKind {
    /// Nodes with their priority (higher first; unlisted 0). `strict`: only these nodes;
    /// otherwise a preference, and any other node when none of them is online.
    NodeAffinity { nodes: BTreeMap<String, u32>, strict: bool },
    /// `positive`: the resources run on one node; `negative`: each on a different node.
    ResourceAffinity { positive: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// The rule id: a letter, then letters, digits, `-` or `_` (at least two characters).
    pub rule: String,
    pub kind: RuleKind,
    /// HA resource ids such as `vm:100`, `ct:101`.
    pub resources: BTreeSet<String>,
    pub disable: bool,
    pub comment: String,
}
crate::evolving!(Rule { rule, kind, resources, disable, comment });

impl Rule {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            RuleKind::NodeAffinity { .. } => "node-affinity",
            RuleKind::ResourceAffinity { .. } => "resource-affinity",
        }
    }

    fn is_node_affinity(&self) -> bool {
        matches!(self.kind, RuleKind::NodeAffinity { .. })
    }

    fn affinity(&self) -> Option<bool> {
        match self.kind {
            RuleKind::ResourceAffinity { positive } => Some(positive),
            RuleKind::NodeAffinity { .. } => None,
        }
    }

    fn node_set(&self) -> BTreeSet<&str> {
        match &self.kind {
            RuleKind::NodeAffinity { nodes, .. } => nodes.keys().map(String::as_str).collect(),
            RuleKind::ResourceAffinity { .. } => BTreeSet::new(),
        }
    }

    fn priorities(&self) -> BTreeSet<u32> {
        match &self.kind {
            RuleKind::NodeAffinity { nodes, .. } => nodes.values().copied().collect(),
            RuleKind::ResourceAffinity { .. } => BTreeSet::new(),
        }
    }

    fn shares(&self, other: &BTreeSet<String>) -> usize {
        self.resources.intersection(other).count()
    }
}

/// A rule id as Proxmox's `pve-configid`.
pub fn validate_rule_id(field: &str, id: &str) -> Result<(), ValidationError> {
    let mut b = id.bytes();
    let ok = id.len() >= 2
        && id.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{id:?} is not a rule id (a letter, then letters, digits, '-' or '_')"),
        ))
    }
}

/// An HA resource id: `vm:VMID` or `ct:VMID`.
pub fn validate_sid(field: &str, sid: &str) -> Result<(), ValidationError> {
    let ok = match sid.split_once(':') {
        Some(("vm" | "ct", id)) => {
            id.parse::<u64>().is_ok_and(|v| crate::ids::validate_vmid(field, v).is_ok())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{sid:?} is not an HA resource id (vm:VMID or ct:VMID)")))
    }
}

/// `resources` as Proxmox writes it: ids separated by `,`, `;` or white space.
pub fn parse_resources(field: &str, s: &str) -> Result<BTreeSet<String>, ValidationError> {
    let mut out = BTreeSet::new();
    for sid in s.split(|c: char| c == ',' || c == ';' || c.is_whitespace()).filter(|p| !p.is_empty()) {
        validate_sid(field, sid)?;
        out.insert(sid.to_string());
    }
    if out.is_empty() {
        return Err(ValidationError::new(field, "no resources were specified"));
    }
    Ok(out)
}

pub fn format_resources(r: &BTreeSet<String>) -> String {
    r.iter().cloned().collect::<Vec<_>>().join(",")
}

/// `nodes` as Proxmox writes it: `node[:priority]`, comma-separated (priority 0 if none).
pub fn parse_nodes(field: &str, s: &str) -> Result<BTreeMap<String, u32>, ValidationError> {
    let mut out = BTreeMap::new();
    for entry in s.split(|c: char| c == ',' || c == ';' || c.is_whitespace()).filter(|p| !p.is_empty()) {
        let (node, prio) = match entry.split_once(':') {
            Some((n, p)) => {
                let p = p.parse::<u32>().map_err(|_| {
                    ValidationError::new(field, format!("{entry:?}: the priority must be a number"))
                })?;
                (n, p)
            }
            None => (entry, 0),
        };
        crate::ids::validate_dns_label(field, node)?;
        if out.insert(node.to_string(), prio).is_some() {
            return Err(ValidationError::new(field, format!("node {node:?} is listed twice")));
        }
    }
    if out.is_empty() {
        return Err(ValidationError::new(field, "no nodes were specified"));
    }
    Ok(out)
}

/// As Proxmox writes it back: sorted by node, `:0` left out.
pub fn format_nodes(nodes: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> =
        nodes.iter().map(|(n, p)| if *p == 0 { n.clone() } else { format!("{n}:{p}") }).collect();
    parts.join(",")
}

/// What is wrong with each rule: rule id -> (field, message) pairs. Empty: all feasible.
pub type Problems = BTreeMap<String, Vec<(String, String)>>;

fn report(p: &mut Problems, rule: &str, field: &str, msg: &str) {
    let list = p.entry(rule.to_string()).or_default();
    let entry = (field.to_string(), msg.to_string());
    if !list.contains(&entry) {
        list.push(entry);
    }
}

/// The groups of positive resource-affinity rules that share resources, transitively: each
/// group's rule ids and the union of their resources.
pub(crate) fn positive_groups<'a>(rules: &[&'a Rule]) -> Vec<(Vec<&'a str>, BTreeSet<String>)> {
    let mut groups: Vec<(Vec<&str>, BTreeSet<String>)> = Vec::new();
    for r in rules.iter().filter(|r| r.affinity() == Some(true)) {
        let mut merged = (vec![r.rule.as_str()], r.resources.clone());
        groups.retain(|(ids, res)| {
            if res.is_disjoint(&merged.1) {
                return true;
            }
            merged.0.extend(ids.iter().copied());
            merged.1.extend(res.iter().cloned());
            false
        });
        groups.push(merged);
    }
    for g in &mut groups {
        g.0.sort_unstable();
    }
    groups.sort();
    groups
}

/// Proxmox's feasibility checks over the enabled rules, given the cluster's nodes.
pub fn check_feasibility(rules: &[Rule], cluster_nodes: &BTreeSet<String>) -> Problems {
    let enabled: Vec<&Rule> = rules.iter().filter(|r| !r.disable).collect();
    let node_aff: Vec<&Rule> = enabled.iter().copied().filter(|r| r.is_node_affinity()).collect();
    let res_aff: Vec<&Rule> = enabled.iter().copied().filter(|r| !r.is_node_affinity()).collect();
    let mut p = Problems::new();

    // 1. A resource is in at most one node-affinity rule.
    for (i, a) in node_aff.iter().enumerate() {
        for b in node_aff.iter().skip(i + 1) {
            for sid in a.resources.intersection(&b.resources) {
                let msg = format!("resource '{sid}' is already used in another node affinity rule");
                report(&mut p, &a.rule, "resources", &msg);
                report(&mut p, &b.rule, "resources", &msg);
            }
        }
    }
    for r in &res_aff {
        // 2. A resource-affinity rule relates at least two resources.
        if r.resources.len() < 2 {
            report(&mut p, &r.rule, "resources", "rule is ineffective as there are less than two resources");
        }
        // 3. A negative rule cannot spread more resources than the cluster has nodes.
        if r.affinity() == Some(false) && r.resources.len() > cluster_nodes.len() {
            report(&mut p, &r.rule, "resources", "rule defines more resources than available nodes");
        }
    }
    // 4. Resources kept together (transitively) cannot also be kept apart.
    let groups = positive_groups(&res_aff);
    for neg in res_aff.iter().filter(|r| r.affinity() == Some(false)) {
        for (ids, res) in &groups {
            if neg.shares(res) >= 2 {
                for id in ids {
                    let msg = "rule shares two or more resources with a negative resource affinity rule";
                    report(&mut p, id, "resources", msg);
                }
                let msg = "rule shares two or more resources with a positive resource affinity rule";
                report(&mut p, &neg.rule, "resources", msg);
            }
        }
    }
    // 5. Resources in a resource-affinity rule are not in node-affinity rules with several
    // priorities.
    for r in &res_aff {
        for na in node_aff.iter().filter(|na| na.priorities().len() > 1 && na.shares(&r.resources) > 0) {
            report(
                &mut p,
                &r.rule,
                "resources",
                "resources are in node affinity rules with multiple priorities",
            );
            let msg = "resources are in a resource affinity rule and cannot be in a node affinity rule with multiple priorities";
            report(&mut p, &na.rule, "resources", msg);
        }
    }
    // 6. A group of resources kept together is in at most one node-affinity rule.
    for (ids, res) in &groups {
        let overlapping: Vec<&&Rule> = node_aff.iter().filter(|na| na.shares(res) > 0).collect();
        if overlapping.len() > 1 {
            for id in ids {
                report(&mut p, id, "resources", "resources are in multiple node affinity rules");
            }
            for na in overlapping {
                let msg = "at least one resource is in a positive resource affinity rule and there are other resources in at least one other node affinity rule already";
                report(&mut p, &na.rule, "resources", msg);
            }
        }
    }
    // 7. Resources kept apart have at least as many nodes as resources in the node-affinity
    // rules that restrict them.
    for neg in res_aff.iter().filter(|r| r.affinity() == Some(false)) {
        let overlapping: Vec<&&Rule> = node_aff.iter().filter(|na| na.shares(&neg.resources) > 0).collect();
        if overlapping.is_empty() {
            continue;
        }
        let nodes: BTreeSet<&str> = overlapping.iter().flat_map(|na| na.node_set()).collect();
        let restricted: BTreeSet<&String> =
            overlapping.iter().flat_map(|na| na.resources.intersection(&neg.resources)).collect();
        if nodes.len() < restricted.len() {
            report(
                &mut p,
                &neg.rule,
                "resources",
                "two or more resources are restricted to less nodes than available to the resources",
            );
            for na in overlapping {
                let msg = "at least one resource is in a negative resource affinity rule and this rule would restrict these to less nodes than available to the resources";
                report(&mut p, &na.rule, "resources", msg);
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn na(id: &str, res: &str, nodes: &str, strict: bool) -> Rule {
        Rule {
            rule: id.into(),
            kind: RuleKind::NodeAffinity { nodes: parse_nodes("nodes", nodes).unwrap(), strict },
            resources: parse_resources("resources", res).unwrap(),
            disable: false,
            comment: String::new(),
        }
    }

    fn ra(id: &str, res: &str, positive: bool) -> Rule {
        Rule {
            rule: id.into(),
            kind: RuleKind::ResourceAffinity { positive },
            resources: parse_resources("resources", res).unwrap(),
            disable: false,
            comment: String::new(),
        }
    }

    fn nodes(n: usize) -> BTreeSet<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn messages(p: &Problems, rule: &str) -> Vec<String> {
        p.get(rule).map(|v| v.iter().map(|(_, m)| m.clone()).collect()).unwrap_or_default()
    }

    #[test]
    fn syntax_round_trips_and_bad_entries_name_their_field() {
        let n = parse_nodes("nodes", "h2,h1:2 h3:0").unwrap();
        assert_eq!(format_nodes(&n), "h1:2,h2,h3");
        let r = parse_resources("resources", "vm:101;ct:100, vm:100").unwrap();
        assert_eq!(format_resources(&r), "ct:100,vm:100,vm:101");
        for bad in ["vm:1", "lxc:100", "vm:abc", ""] {
            let e = parse_resources("resources", bad).unwrap_err();
            assert_eq!(e.field, "resources", "{bad}");
        }
        assert_eq!(parse_nodes("nodes", "h1:x").unwrap_err().field, "nodes");
        assert!(parse_nodes("nodes", "h1,h1:2").unwrap_err().message.contains("twice"));
        assert!(validate_rule_id("rule", "a").is_err() && validate_rule_id("rule", "1ab").is_err());
        validate_rule_id("rule", "na-1_x").unwrap();
    }

    #[test]
    fn a_resource_is_in_one_node_affinity_rule() {
        let p = check_feasibility(
            &[na("a", "vm:100,vm:101", "h1", false), na("b", "vm:101", "h2", true)],
            &nodes(3),
        );
        let msg = "resource 'vm:101' is already used in another node affinity rule";
        assert_eq!(messages(&p, "a"), [msg]);
        assert_eq!(messages(&p, "b"), [msg]);
        // A disabled rule takes part in no check.
        let mut b = na("b", "vm:101", "h2", true);
        b.disable = true;
        assert!(check_feasibility(&[na("a", "vm:100,vm:101", "h1", false), b], &nodes(3)).is_empty());
    }

    #[test]
    fn resource_affinity_needs_two_resources_and_enough_nodes_to_keep_apart() {
        let p = check_feasibility(&[ra("one", "vm:100", true)], &nodes(3));
        assert_eq!(messages(&p, "one"), ["rule is ineffective as there are less than two resources"]);
        let p = check_feasibility(&[ra("apart", "vm:100,vm:101,vm:102", false)], &nodes(2));
        assert_eq!(messages(&p, "apart"), ["rule defines more resources than available nodes"]);
        assert!(check_feasibility(&[ra("apart", "vm:100,vm:101,vm:102", false)], &nodes(3)).is_empty());
    }

    #[test]
    fn together_and_apart_cannot_share_two_resources_even_through_a_chain() {
        // p1 and p2 join through vm:101; the negative rule names vm:100 and vm:102.
        let rules = [
            ra("p1", "vm:100,vm:101", true),
            ra("p2", "vm:101,vm:102", true),
            ra("n", "vm:100,vm:102", false),
        ];
        let p = check_feasibility(&rules, &nodes(3));
        assert_eq!(
            messages(&p, "p1"),
            ["rule shares two or more resources with a negative resource affinity rule"]
        );
        assert_eq!(messages(&p, "p2"), messages(&p, "p1"));
        assert_eq!(
            messages(&p, "n"),
            ["rule shares two or more resources with a positive resource affinity rule"]
        );
        // Sharing one resource is fine.
        let ok = [ra("p1", "vm:100,vm:101", true), ra("n", "vm:101,vm:103", false)];
        assert!(check_feasibility(&ok, &nodes(3)).is_empty());
    }

    #[test]
    fn resource_affinity_and_node_affinity_priorities() {
        let rules = [na("prio", "vm:100", "h1:2,h2:1", false), ra("t", "vm:100,vm:101", true)];
        let p = check_feasibility(&rules, &nodes(3));
        assert_eq!(messages(&p, "t"), ["resources are in node affinity rules with multiple priorities"]);
        assert_eq!(messages(&p, "prio").len(), 1);
        // One priority is fine.
        let rules = [na("flat", "vm:100", "h1,h2", false), ra("t", "vm:100,vm:101", true)];
        assert!(check_feasibility(&rules, &nodes(3)).is_empty());
    }

    #[test]
    fn a_group_kept_together_is_in_one_node_affinity_rule() {
        let rules =
            [na("a", "vm:100", "h1", true), na("b", "vm:101", "h2", true), ra("t", "vm:100,vm:101", true)];
        let p = check_feasibility(&rules, &nodes(3));
        assert_eq!(messages(&p, "t"), ["resources are in multiple node affinity rules"]);
        assert!(messages(&p, "a")[0].starts_with("at least one resource is in a positive"));
        assert!(messages(&p, "b")[0].starts_with("at least one resource is in a positive"));
    }

    #[test]
    fn resources_kept_apart_need_as_many_nodes_as_their_node_affinity_allows() {
        let rules = [na("a", "vm:100,vm:101", "h1", false), ra("n", "vm:100,vm:101", false)];
        let p = check_feasibility(&rules, &nodes(3));
        assert_eq!(
            messages(&p, "n"),
            ["two or more resources are restricted to less nodes than available to the resources"]
        );
        assert!(messages(&p, "a")[0].starts_with("at least one resource is in a negative"));
        let rules = [na("a", "vm:100,vm:101", "h1,h2", false), ra("n", "vm:100,vm:101", false)];
        assert!(check_feasibility(&rules, &nodes(3)).is_empty());
    }
}
