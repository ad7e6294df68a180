//! Placement decisions and their explanations: filters, rules, scores, architectures.

use super::super::rules::{parse_nodes, parse_resources};
use super::*;

fn node(name: &str, mem_mib: u64) -> NodeView {
    NodeView {
        name: name.into(),
        online: true,
        maintenance: false,
        cpus: 4,
        mem_mib,
        arch: "x86_64".into(),
        emulates: BTreeSet::from(["aarch64".to_string()]),
        storages: BTreeSet::from(["local".to_string()]),
    }
}

fn ask(sid: &str) -> Ask {
    Ask {
        sid: sid.into(),
        current: None,
        failback: true,
        preference: Preference::BestScore,
        failed_nodes: vec![],
        maintenance_node: None,
        cpus: 1.0,
        mem_mib: 1024,
        arch: "x86_64".into(),
        emulator: "x86_64".into(),
        emulation_allowed: true,
        storages: BTreeSet::new(),
        local_storages: BTreeSet::new(),
    }
}

fn placed(sid: &str, node: &str, mem_mib: u64) -> Placed {
    Placed { sid: sid.into(), node: node.into(), target: None, cpus: 1.0, mem_mib, ha: true }
}

fn rule(id: &str, res: &str, kind: RuleKind) -> Rule {
    Rule {
        rule: id.into(),
        kind,
        resources: parse_resources("resources", res).unwrap(),
        disable: false,
        comment: String::new(),
    }
}

fn na(id: &str, res: &str, nodes: &str, strict: bool) -> Rule {
    rule(id, res, RuleKind::NodeAffinity { nodes: parse_nodes("nodes", nodes).unwrap(), strict })
}

#[test]
fn every_node_left_out_is_explained_and_the_choice_scored() {
    let mut nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 1536), node("h4", 8192)];
    nodes[3].online = false;
    let placed = [placed("vm:200", "h1", 1024), placed("vm:201", "h3", 1024)];
    let rules = Compiled::new(&[na("na1", "vm:100", "h1,h3", true)]);
    let d = select_node(&ask("vm:100"), &nodes, &Usage::new(placed.clone()), &rules, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h1"));
    assert_eq!(
        d.explanation,
        [
            "h3: 512 MiB free, needs 1024 MiB",
            "h4: offline",
            "strict node-affinity rule na1 excludes h2",
            "chose h1, HA resources on it 1.00",
        ]
    );
    // Without the rule, basic scoring picks the emptiest node.
    let d = select_node(&ask("vm:100"), &nodes, &Usage::new(placed.clone()), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h2"));
    assert!(d.explanation.last().unwrap().starts_with("chose h2, HA resources on it 0.00 (next: h1 1.00)"));
}

#[test]
fn priorities_fall_back_to_lower_groups_and_unlisted_nodes_when_not_strict() {
    let mut nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 8192)];
    let rules = Compiled::new(&[na("na1", "vm:100", "h1:2,h2:1", false)]);
    let d = select_node(&ask("vm:100"), &nodes, &Usage::default(), &rules, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h1"));
    assert!(d
        .explanation
        .contains(&"node-affinity rule na1 prefers priority 2 over h2 (1); unlisted h3".to_string()));
    nodes[0].online = false;
    nodes[1].online = false;
    let d = select_node(&ask("vm:100"), &nodes, &Usage::default(), &rules, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h3"), "{:?}", d.explanation);
    // Strict: nowhere to go.
    let strict = Compiled::new(&[na("na1", "vm:100", "h1:2,h2:1", true)]);
    let d = select_node(&ask("vm:100"), &nodes, &Usage::default(), &strict, Crs::Basic);
    assert_eq!(d.node, None);
    assert_eq!(d.explanation.last().unwrap(), "no node can run vm:100");
}

#[test]
fn resources_are_kept_together_and_apart_transitively() {
    let nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 8192)];
    let rules = Compiled::new(&[
        rule("t1", "vm:100,vm:101", RuleKind::ResourceAffinity { positive: true }),
        rule("t2", "vm:101,vm:102", RuleKind::ResourceAffinity { positive: true }),
        rule("a1", "vm:102,vm:103", RuleKind::ResourceAffinity { positive: false }),
    ]);
    // vm:102 runs on h2: vm:100 joins it through t1 + t2.
    let d =
        select_node(&ask("vm:100"), &nodes, &Usage::new([placed("vm:102", "h2", 512)]), &rules, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h2"), "{:?}", d.explanation);
    // vm:103 on h1 and h3 free: vm:100 (grouped with vm:102) avoids h1.
    let d =
        select_node(&ask("vm:100"), &nodes, &Usage::new([placed("vm:103", "h1", 512)]), &rules, Crs::Basic);
    assert!(d
        .explanation
        .contains(&"h1: negative resource-affinity rule a1 keeps it apart from vm:103".to_string()));
    assert_ne!(d.node.as_deref(), Some("h1"));
}

/// An aarch64 guest: native nodes first, emulation where allowed and the node has the
/// emulator, never where the guest forbids it; a ppc64le guest needs `qemu-system-ppc64`.
#[test]
fn native_nodes_are_preferred_and_emulation_needs_the_emulator_and_consent() {
    let mut nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 8192)];
    nodes[1].emulates.clear();
    nodes[2].arch = "aarch64".into();
    let mut a = ask("vm:100");
    a.arch = "aarch64".into();
    a.emulator = "aarch64".into();
    let none = Compiled::new(&[]);
    let d = select_node(&a, &nodes, &Usage::default(), &none, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h3"), "{:?}", d.explanation);
    assert_eq!(d.explanation[0], "h2: x86_64 node without qemu-system-aarch64");
    assert_eq!(d.explanation[1], "h1: would emulate aarch64; other nodes run it natively");
    // The native node gone: h1 emulates it.
    nodes[2].online = false;
    let d = select_node(&a, &nodes, &Usage::default(), &none, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h1"), "{:?}", d.explanation);
    // Forbidden emulation: nothing can run it.
    a.emulation_allowed = false;
    let d = select_node(&a, &nodes, &Usage::default(), &none, Crs::Basic);
    assert_eq!(d.node, None);
    assert!(d.explanation.contains(&"h1: x86_64 node; the guest is aarch64 and forbids emulation".into()));
    // The emulator, not the architecture's name, is what a node must have.
    let mut p = ask("vm:101");
    p.arch = "ppc64le".into();
    p.emulator = "ppc64".into();
    nodes[0].emulates = BTreeSet::from(["ppc64".to_string()]);
    let d = select_node(&p, &nodes, &Usage::default(), &none, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h1"), "{:?}", d.explanation);
}

#[test]
fn storage_architecture_and_failures_exclude_nodes() {
    let mut nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 8192)];
    nodes[1].storages.insert("shared".into());
    nodes[2].storages.insert("shared".into());
    nodes[2].arch = "aarch64".into();
    nodes[2].emulates.clear();
    let mut a = ask("vm:100");
    a.storages.insert("shared".into());
    let d = select_node(&a, &nodes, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h2"));
    assert_eq!(d.explanation[0], "h1: does not reach storage 'shared'");
    assert_eq!(d.explanation[1], "h3: aarch64 node without qemu-system-x86_64");
    // A failed start on h2 leaves nothing when relocating.
    a.preference = Preference::TryNext;
    a.current = Some("h2".into());
    a.failed_nodes = vec!["h2".into()];
    let d = select_node(&a, &nodes, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node, None, "{:?}", d.explanation);
}

#[test]
fn without_failback_a_resource_stays_and_maintenance_returns_it() {
    let nodes = vec![node("h1", 8192), node("h2", 8192)];
    let rules = Compiled::new(&[na("na1", "vm:100", "h1:2,h2:1", false)]);
    let mut a = ask("vm:100");
    a.preference = Preference::Stay;
    a.current = Some("h2".into());
    a.failback = false;
    assert_eq!(select_node(&a, &nodes, &Usage::default(), &rules, Crs::Basic).node.as_deref(), Some("h2"));
    a.failback = true;
    assert_eq!(select_node(&a, &nodes, &Usage::default(), &rules, Crs::Basic).node.as_deref(), Some("h1"));
    let mut b = ask("vm:100");
    b.maintenance_node = Some("h2".into());
    let d = select_node(&b, &nodes, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h2"));
}

#[test]
fn static_scoring_prefers_the_node_whose_load_stays_lowest() {
    let mut nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 16384)];
    nodes[2].cpus = 16;
    let placed = [placed("vm:200", "h1", 4096), placed("vm:201", "h2", 1024)];
    let d =
        select_node(&ask("vm:100"), &nodes, &Usage::new(placed.clone()), &Compiled::new(&[]), Crs::Static);
    assert_eq!(d.node.as_deref(), Some("h3"), "{:?}", d.explanation);
    assert!(d.explanation[0].starts_with("chose h3, static load score 0.00"), "{:?}", d.explanation);
    // Equal rows cost the same, and ties go by name.
    let same = vec![node("h2", 8192), node("h1", 8192)];
    let d = select_node(&ask("vm:100"), &same, &Usage::default(), &Compiled::new(&[]), Crs::Static);
    assert_eq!(d.node.as_deref(), Some("h1"));
}

/// The static score's incremental sums and maxima equal a recomputation over every node.
#[test]
fn static_rows_match_a_full_recomputation() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for _ in 0..50 {
        let nodes: Vec<NodeView> = (0..1 + next(8))
            .map(|i| {
                let mut n = node(&format!("h{i}"), 1024 * (1 + next(16)));
                n.cpus = 1 + next(32) as u32;
                n.online = next(5) > 0;
                n
            })
            .collect();
        let usage = Usage::new((0..next(20)).map(|i| Placed {
            sid: format!("vm:{}", 200 + i),
            node: format!("h{}", next(nodes.len() as u64)),
            target: None,
            cpus: next(4) as f64,
            mem_mib: next(4096),
            ha: true,
        }));
        let a = ask("vm:100");
        let none = Compiled::new(&[]);
        let placer = Placer::new(&nodes, &none, usage);
        let load = Loads { base: &placer.load, own: None };
        // Candidates are online (select leaves the others out first).
        let online: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].online).collect();
        let cands = online.clone();
        let got = score::score(&a, &cands, &nodes, &load, &online, Crs::Static);
        let k = online.len().max(1) as f64;
        let rows: Vec<[f64; 4]> = cands
            .iter()
            .map(|&cand| {
                let f: Vec<(f64, f64)> = online
                    .iter()
                    .map(|&i| {
                        let (n, l) = (&nodes[i], load.get(i));
                        let (c, m) = if i == cand { (a.cpus, a.mem_mib as f64) } else { (0.0, 0.0) };
                        ((l.cpu + c) / f64::from(n.cpus), (l.mem + m) / n.mem_mib as f64)
                    })
                    .collect();
                let rms =
                    |g: &dyn Fn(&(f64, f64)) -> f64| (f.iter().map(|x| g(x).powi(2)).sum::<f64>() / k).sqrt();
                let max = |g: &dyn Fn(&(f64, f64)) -> f64| f.iter().map(g).fold(0.0, f64::max);
                [1.0 + rms(&|x| x.0), 1.0 + max(&|x| x.0), 1.0 + rms(&|x| x.1), 1.0 + max(&|x| x.1)]
            })
            .collect();
        let want = score::topsis_costs(&rows, [1.0, 2.0, 5.0, 10.0]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }
}

/// A guest whose disks are on node-local storage can only run where its volumes are.
#[test]
fn node_local_disks_pin_a_guest_to_its_node() {
    let nodes = vec![node("h1", 8192), node("h2", 8192), node("h3", 8192)];
    let mut a = ask("vm:100");
    a.local_storages.insert("local".into());
    a.current = Some("h2".into());
    let d = select_node(&a, &nodes, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h2"), "{:?}", d.explanation);
    assert_eq!(d.explanation[0], "h1: its disks are on node-local storage 'local' of another node");
    // Its node failed: nowhere to go.
    let mut down = nodes.clone();
    down[1].online = false;
    let d = select_node(&a, &down, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node, None, "{:?}", d.explanation);
    // A storage no node has excludes every node, by name.
    let mut b = ask("vm:101");
    b.storages.insert("nfs1".into());
    let d = select_node(&b, &nodes, &Usage::default(), &Compiled::new(&[]), Crs::Basic);
    assert_eq!(d.node, None);
    assert_eq!(d.explanation[0], "h1: does not reach storage 'nfs1'");
}

/// With many nodes, one rule's line names the first eight and counts the rest.
#[test]
fn long_node_lists_are_shortened() {
    let nodes: Vec<NodeView> = (0..20).map(|i| node(&format!("h{i:02}"), 8192)).collect();
    let rules = Compiled::new(&[na("na1", "vm:100", "h00", true)]);
    let d = select_node(&ask("vm:100"), &nodes, &Usage::default(), &rules, Crs::Basic);
    assert_eq!(d.node.as_deref(), Some("h00"));
    assert_eq!(
        d.explanation[0],
        "strict node-affinity rule na1 excludes h01, h02, h03, h04, h05, h06, h07, h08 and 11 more"
    );
}

/// Placing resources one by one through a placer decides as a placer built afresh over
/// the same placements (the incremental loads are the recomputed ones), and replacing or
/// removing a placement takes its old share away.
#[test]
fn an_incremental_placer_decides_as_a_fresh_one() {
    let nodes: Vec<NodeView> = (0..6).map(|i| node(&format!("h{i}"), 4096 * (1 + i as u64 % 3))).collect();
    let rules = Compiled::new(&[
        na("na1", "vm:100,vm:101", "h1:2,h2", false),
        rule("t1", "vm:102,vm:103", RuleKind::ResourceAffinity { positive: true }),
        rule("a1", "vm:104,vm:105", RuleKind::ResourceAffinity { positive: false }),
    ]);
    for crs in [Crs::Basic, Crs::Static] {
        let mut placer = Placer::new(&nodes, &rules, Usage::default());
        let mut all = Vec::new();
        for i in 0..40u32 {
            let mut a = ask(&format!("vm:{}", 100 + i % 12));
            a.mem_mib = 256 * u64::from(1 + i % 5);
            let d = placer.select(&a, crs);
            let fresh = Placer::new(&nodes, &rules, Usage::new(all.iter().cloned())).select(&a, crs);
            assert_eq!(d, fresh, "step {i}");
            if let Some(n) = d.node {
                let p = Placed {
                    sid: a.sid.clone(),
                    node: n,
                    target: None,
                    cpus: 1.0,
                    mem_mib: a.mem_mib,
                    ha: true,
                };
                all.retain(|q: &Placed| q.sid != p.sid);
                all.push(p.clone());
                placer.place(p);
            }
            if i % 7 == 6 {
                let gone = all.remove(0);
                placer.remove(&gone.sid);
            }
        }
        let fresh = Placer::new(&nodes, &rules, Usage::new(all.iter().cloned()));
        for (a, b) in placer.load.iter().zip(&fresh.load) {
            assert!((a.mem - b.mem).abs() < 1e-6 && (a.cpu - b.cpu).abs() < 1e-9 && a.ha == b.ha);
        }
    }
}
