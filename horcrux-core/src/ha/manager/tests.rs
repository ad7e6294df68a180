//! The manager's decisions through `apply`: a failed node's guest is fenced then recovered
//! elsewhere, an unknown node's is left alone, failed starts relocate then end in `error`,
//! which only `disabled` leaves, and user requests and rules are checked as Proxmox does.

use std::collections::BTreeMap;

use super::*;
use crate::command::{ApplyError, Request};
use crate::ha::rules::{parse_nodes, parse_resources, Rule, RuleKind};
use crate::model::*;

fn apply(s: &mut ClusterState, cmd: Command) -> Result<u64, ApplyError> {
    let index = s
        .guests
        .values()
        .map(|g| g.revision)
        .chain(s.ha_resources.values().map(|r| r.revision))
        .max()
        .unwrap_or(10)
        + 1;
    s.apply(index, &Request { ts_ms: 1_000, cmd, actor: None, id: None }).map(|ok| ok.revision)
}

fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for n in ["a", "b", "c"] {
        apply(&mut s, Command::RegisterNode { name: n.into(), api_addr: format!("{n}:8006") }).unwrap();
        let facts = NodeFacts { arch: "x86_64".into(), emulates: Default::default(), cpus: 4, mem_mib: 4096 };
        apply(&mut s, Command::ReportNodeFacts { name: n.into(), facts }).unwrap();
    }
    create_guest(&mut s, 100, "a", 256);
    apply(&mut s, add("vm:100", RequestedState::Started)).unwrap();
    s
}

fn create_guest(s: &mut ClusterState, vmid: u32, node: &str, memory_mib: u64) {
    let spec = VmSpec { memory_mib, cores: 1, sockets: 1, ..Default::default() };
    let cmd = Command::CreateGuest {
        vmid,
        name: "g".into(),
        node: node.into(),
        config: GuestConfig::Qemu(spec),
        pool: None,
    };
    apply(s, cmd).unwrap();
}

fn add(sid: &str, state: RequestedState) -> Command {
    Command::SetHaResource {
        sid: sid.into(),
        create: true,
        state,
        max_restart: 1,
        max_relocate: 1,
        failback: true,
        comment: String::new(),
    }
}

fn online(_: &str) -> Liveness {
    Liveness::Online { remaining_ms: 3_000 }
}

/// Applies every planned step; returns their explanations.
fn run(s: &mut ClusterState, live: &dyn Fn(&str) -> Liveness) -> Vec<String> {
    let steps = plan(s, live);
    let mut out = Vec::new();
    for st in steps {
        apply(s, st.cmd).unwrap();
        out.extend(st.explanation);
    }
    out
}

fn res(s: &ClusterState) -> &HaResource {
    &s.ha_resources["vm:100"]
}

#[test]
fn a_requested_start_starts_the_guest_where_it_is() {
    let mut s = cluster();
    assert_eq!(res(&s).service, ServiceState::Stopped);
    let why = run(&mut s, &online);
    assert_eq!(why, vec!["requested started; starting on a"]);
    assert!(s.guests[&100].desired.is_running());
    assert_eq!(res(&s).service, ServiceState::Started);
    assert!(plan(&s, &online).is_empty(), "nothing more to do");
}

#[test]
fn a_failed_node_is_fenced_then_recovered_and_an_unknown_one_left_alone() {
    let mut s = cluster();
    run(&mut s, &online);
    let unknown = |n: &str| if n == "a" { Liveness::Unknown } else { online(n) };
    assert!(plan(&s, &unknown).is_empty(), "a node that may still hold its lease keeps its guests");
    let failed = |n: &str| if n == "a" { Liveness::Failed } else { online(n) };
    let why = run(&mut s, &failed);
    assert!(why[0].contains("node a failed"), "{why:?}");
    assert_eq!(res(&s).service, ServiceState::Fence);
    assert_eq!(s.guests[&100].node, "a", "not moved before it is fenced");
    let why = run(&mut s, &failed);
    assert_eq!(res(&s).service, ServiceState::Started);
    assert_eq!(s.guests[&100].node, "b", "{why:?}");
    assert!(s.guests[&100].desired.is_running());
    assert!(why.iter().any(|l| l.starts_with("a: offline")), "{why:?}");
    assert!(why.iter().any(|l| l.starts_with("chose b")), "{why:?}");
    assert!(plan(&s, &failed).is_empty());
}

#[test]
fn recovery_waits_for_a_node_that_can_take_the_guest() {
    let mut s = cluster();
    run(&mut s, &online);
    let only_a = |n: &str| if n == "a" { Liveness::Failed } else { Liveness::Unknown };
    run(&mut s, &only_a);
    let why = run(&mut s, &only_a);
    assert_eq!(res(&s).service, ServiceState::Recovery, "{why:?}");
    assert!(why.iter().any(|l| l.contains("no node can run vm:100")), "{why:?}");
    assert!(plan(&s, &only_a).is_empty(), "stays in recovery without a candidate");
    let b_back = |n: &str| if n == "b" { online(n) } else { Liveness::Failed };
    run(&mut s, &b_back);
    assert_eq!((s.guests[&100].node.as_str(), res(&s).service), ("b", ServiceState::Started));
}

#[test]
fn failed_starts_relocate_then_end_in_error_which_only_disabled_leaves() {
    let mut s = cluster();
    run(&mut s, &online);
    let fail = |s: &mut ClusterState| {
        let node = s.guests[&100].node.clone();
        apply(s, Command::HaStartFailed { sid: "vm:100".into(), node }).unwrap();
    };
    // max_restart 1: the first failure is retried on a.
    fail(&mut s);
    assert!(plan(&s, &online).is_empty());
    fail(&mut s);
    let why = run(&mut s, &online);
    assert_eq!(s.guests[&100].node, "b", "{why:?}");
    assert_eq!(res(&s).failed_nodes, vec!["a".to_string()]);
    assert_eq!(res(&s).restarts, 0);
    fail(&mut s);
    fail(&mut s);
    let why = run(&mut s, &online);
    assert_eq!(res(&s).service, ServiceState::Error, "{why:?}");
    assert!(!s.guests[&100].desired.is_running());
    assert!(why[0].contains("max_relocate 1 reached"), "{why:?}");
    // `stopped` does not leave error; `disabled` does, and a start then starts it.
    let set = |state| Command::SetHaResource {
        sid: "vm:100".into(),
        create: false,
        state,
        max_restart: 1,
        max_relocate: 1,
        failback: true,
        comment: String::new(),
    };
    apply(&mut s, set(RequestedState::Stopped)).unwrap();
    assert!(plan(&s, &online).is_empty());
    apply(&mut s, set(RequestedState::Disabled)).unwrap();
    run(&mut s, &online);
    assert_eq!(res(&s).service, ServiceState::Stopped);
    assert!(res(&s).failed_nodes.is_empty());
    apply(&mut s, set(RequestedState::Started)).unwrap();
    run(&mut s, &online);
    assert_eq!(res(&s).service, ServiceState::Started);
}

#[test]
fn a_stale_transition_is_refused() {
    let mut s = cluster();
    let steps = plan(&s, &online);
    apply(&mut s, add("vm:100", RequestedState::Started)).unwrap_err();
    let set = Command::SetHaResource {
        sid: "vm:100".into(),
        create: false,
        state: RequestedState::Stopped,
        max_restart: 1,
        max_relocate: 1,
        failback: true,
        comment: String::new(),
    };
    apply(&mut s, set).unwrap();
    let e = apply(&mut s, steps[0].cmd.clone()).unwrap_err();
    assert!(e.to_string().contains("changed"), "{e}");
}

#[test]
fn user_power_requests_become_ha_requests_and_moves_stop_first() {
    let mut s = cluster();
    run(&mut s, &online);
    apply(
        &mut s,
        Command::SetDesiredPower {
            vmid: 100,
            expected_revision: None,
            desired: DesiredPower::Stopped { graceful_timeout_s: None },
        },
    )
    .unwrap();
    assert_eq!(res(&s).state, RequestedState::Stopped);
    assert!(plan(&s, &online).is_empty(), "the manager does not restart what the user stopped");
    apply(
        &mut s,
        Command::SetDesiredPower { vmid: 100, expected_revision: None, desired: DesiredPower::Running },
    )
    .unwrap();
    assert_eq!(res(&s).state, RequestedState::Started);
    apply(&mut s, Command::HaMove { sid: "vm:100".into(), node: "c".into(), live: false }).unwrap();
    assert_eq!(res(&s).service, ServiceState::Relocate);
    assert!(!s.guests[&100].desired.is_running(), "stopped before it moves");
    assert!(plan(&s, &online).is_empty(), "the owner completes the move");
    let c_gone = |n: &str| if n == "c" { Liveness::Unknown } else { online(n) };
    let why = run(&mut s, &c_gone);
    assert!(why[0].contains("not online; cancelled"), "{why:?}");
    assert_eq!((res(&s).service, s.guests[&100].node.as_str()), (ServiceState::Started, "a"));
    let e = apply(&mut s, Command::DeleteGuest { vmid: 100, expected_revision: None }).unwrap_err();
    assert!(e.to_string().contains("remove it from HA"), "{e}");
}

fn na(id: &str, res: &str, nodes: &str) -> Rule {
    Rule {
        rule: id.into(),
        kind: RuleKind::NodeAffinity { nodes: parse_nodes("nodes", nodes).unwrap(), strict: true },
        resources: parse_resources("resources", res).unwrap(),
        disable: false,
        comment: String::new(),
    }
}

#[test]
fn rules_are_checked_against_the_others_and_name_the_conflict() {
    let mut s = cluster();
    apply(&mut s, Command::SetHaRule { create: true, rule: na("na1", "vm:100", "b:2,c") }).unwrap();
    let e = apply(&mut s, Command::SetHaRule { create: true, rule: na("na1", "vm:100", "b") }).unwrap_err();
    assert_eq!(e.to_string(), "HA rule 'na1' already defined");
    let e = apply(&mut s, Command::SetHaRule { create: true, rule: na("na2", "vm:100,vm:101", "a") })
        .unwrap_err();
    let ApplyError::Invalid(v) = &e else { panic!("{e:?}") };
    assert_eq!(v.field, "resources");
    assert!(v.message.contains("Rule 'na2' is invalid") && v.message.contains("na1"), "{v:?}");
    assert_eq!(s.ha_rules.len(), 1);
    // The strict rule drives recovery: a fails, b (priority 2) is chosen over c.
    run(&mut s, &online);
    let failed = |n: &str| if n == "a" { Liveness::Failed } else { online(n) };
    run(&mut s, &failed);
    let why = run(&mut s, &failed);
    assert_eq!(s.guests[&100].node, "b", "{why:?}");
    // Removing the resource takes it out of the rules (and an emptied rule with it).
    apply(&mut s, Command::DeleteHaResource { sid: "vm:100".into() }).unwrap();
    assert!(s.ha_rules.is_empty());
}

#[test]
fn admission_control_refuses_what_could_not_survive_the_loss_of_n_nodes() {
    let mut s = cluster();
    // Each node has 4096 MiB; 100 (256 MiB) fits anywhere.
    assert_eq!(check_tolerance(&s, "vm:100", 1), Ok(()));
    assert!(check_tolerance(&s, "vm:100", 3).unwrap_err().contains("cannot lose 3"));
    for (vmid, node, mem) in [(101, "b", 3000), (102, "c", 3000), (103, "a", 2000)] {
        create_guest(&mut s, vmid, node, mem);
        apply(
            &mut s,
            Command::SetDesiredPower { vmid, expected_revision: None, desired: DesiredPower::Running },
        )
        .unwrap();
    }
    // 103 (2000 MiB) on a: if a fails, b and c have 1096 MiB free each.
    let e = check_tolerance(&s, "vm:103", 1).unwrap_err();
    assert!(e.contains("losing a would leave vm:103 (2000 MiB) without a node"), "{e}");
    assert_eq!(check_tolerance(&s, "vm:101", 0), Ok(()), "n = 0 loses nothing");
    // A plain start: 103 is not HA, but its 2000 MiB on a leave 100 (HA, 256 MiB) room on
    // b or c if a fails; started as HA it would need a node itself.
    assert_eq!(check_start(&s, 103, 1), Ok(()));
    apply(&mut s, add("vm:103", RequestedState::Stopped)).unwrap();
    let e = check_start(&s, 103, 1).unwrap_err();
    assert!(e.contains("vm:103 (2000 MiB)"), "{e}");
    let _ = BTreeMap::<u8, u8>::new();
}

/// Completes a move as the owner does once the guest's process is gone.
fn complete_move(s: &mut ClusterState, sid: &str) {
    let r = s.ha_resources[sid].clone();
    assert_eq!(r.service, ServiceState::Relocate, "{r:?}");
    let cmd = Command::HaTransition {
        sid: sid.into(),
        expected_revision: r.revision,
        service: ServiceState::Started,
        node: r.target.clone(),
        run: Some(true),
        failed_nodes: r.failed_nodes.clone(),
        target: None,
    };
    apply(s, cmd).unwrap();
}

#[test]
fn failback_brings_a_recovered_guest_back_to_its_preferred_node() {
    for failback in [true, false] {
        let mut s = cluster();
        let mut rule = na("na1", "vm:100", "a:2,b:1");
        rule.kind = RuleKind::NodeAffinity { nodes: parse_nodes("nodes", "a:2,b:1").unwrap(), strict: false };
        apply(&mut s, Command::SetHaRule { create: true, rule }).unwrap();
        if !failback {
            let r = res(&s).clone();
            let cmd = Command::SetHaResource {
                sid: r.sid,
                create: false,
                state: r.state,
                max_restart: 1,
                max_relocate: 1,
                failback: false,
                comment: String::new(),
            };
            apply(&mut s, cmd).unwrap();
        }
        run(&mut s, &online);
        let failed = |n: &str| if n == "a" { Liveness::Failed } else { online(n) };
        run(&mut s, &failed);
        run(&mut s, &failed);
        assert_eq!((s.guests[&100].node.as_str(), res(&s).service), ("b", ServiceState::Started));
        // The failover history: fenced on a, recovered to b, in commit order.
        let h: Vec<(ServiceState, ServiceState, &str, &str)> = s
            .ha_history
            .iter()
            .filter(|e| e.sid == "vm:100")
            .map(|e| (e.from, e.to, e.from_node.as_str(), e.node.as_str()))
            .collect();
        assert!(h.contains(&(ServiceState::Started, ServiceState::Fence, "a", "a")), "{h:?}");
        assert!(h.iter().any(|e| e.2 == "a" && e.3 == "b"), "the move to b: {h:?}");
        assert!(s.ha_history.iter().zip(s.ha_history.iter().skip(1)).all(|(x, y)| x.index < y.index));
        // a is back.
        let why = run(&mut s, &online);
        if !failback {
            assert!(why.is_empty(), "failback off: it stays on b: {why:?}");
            assert_eq!(s.guests[&100].node, "b");
            continue;
        }
        assert_eq!(res(&s).service, ServiceState::Relocate, "{why:?}");
        assert_eq!(res(&s).target.as_deref(), Some("a"));
        assert!(!s.guests[&100].desired.is_running(), "stopped on b before it moves");
        assert!(why.iter().any(|l| l == "failback: moving from b to a"), "{why:?}");
        assert!(why.iter().any(|l| l.contains("node-affinity rule na1 prefers priority 2")), "{why:?}");
        complete_move(&mut s, "vm:100");
        assert_eq!((s.guests[&100].node.as_str(), res(&s).service), ("a", ServiceState::Started));
        assert!(s.guests[&100].desired.is_running());
        assert!(plan(&s, &online).is_empty(), "settled on a");
    }
}

#[test]
fn rebalance_on_start_starts_a_resource_on_the_best_scored_node() {
    let mut s = cluster();
    // Another HA guest already runs on a.
    create_guest(&mut s, 101, "a", 256);
    apply(&mut s, add("vm:101", RequestedState::Started)).unwrap();
    apply(
        &mut s,
        Command::SetHaResource {
            sid: "vm:100".into(),
            create: false,
            state: RequestedState::Stopped,
            max_restart: 1,
            max_relocate: 1,
            failback: true,
            comment: String::new(),
        },
    )
    .unwrap();
    run(&mut s, &online);
    assert_eq!(s.ha_resources["vm:101"].service, ServiceState::Started);
    apply(
        &mut s,
        Command::SetClusterOption { key: "crs".into(), value: "ha=basic,ha-rebalance-on-start=1".into() },
    )
    .unwrap();
    // `ha-manager set vm:100 --state started`: moved to the best-scored node, started there.
    apply(
        &mut s,
        Command::SetHaResource {
            sid: "vm:100".into(),
            create: false,
            state: RequestedState::Started,
            max_restart: 1,
            max_relocate: 1,
            failback: true,
            comment: String::new(),
        },
    )
    .unwrap();
    let why = run(&mut s, &online);
    assert_eq!(res(&s).service, ServiceState::Relocate, "{why:?}");
    assert_eq!(res(&s).target.as_deref(), Some("b"), "{why:?}");
    assert!(why.iter().any(|l| l.starts_with("chose b, HA resources on it 0.00")), "{why:?}");
    assert!(why.last().unwrap().contains("ha-rebalance-on-start"), "{why:?}");
    complete_move(&mut s, "vm:100");
    assert_eq!((s.guests[&100].node.as_str(), res(&s).service), ("b", ServiceState::Started));
    assert!(plan(&s, &online).is_empty());
}

#[test]
fn a_disk_on_shared_storage_recovers_where_the_storage_exists_and_a_local_one_pins() {
    let mut s = cluster();
    let pool = |kv: &[(&str, &str)]| {
        let p = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Command::CreateStorage { pool: crate::storage::StoragePool::from_params(&p).unwrap() }
    };
    apply(&mut s, pool(&[("storage", "local"), ("type", "dir"), ("path", "/d")])).unwrap();
    let nfs =
        [("storage", "nfs1"), ("type", "nfs"), ("server", "10.0.0.1"), ("export", "/e"), ("nodes", "a,c")];
    apply(&mut s, pool(&nfs)).unwrap();
    for (vmid, storage) in [(101, "local"), (102, "nfs1")] {
        let disk = DiskSpec {
            storage: storage.into(),
            size_mib: 64,
            volume: Some(crate::ids::volume_id(storage, vmid, 0)),
            slot: None,
            format: None,
        };
        let spec = VmSpec { memory_mib: 128, cores: 1, sockets: 1, disks: vec![disk], ..Default::default() };
        let cmd = Command::CreateGuest {
            vmid,
            name: "g".into(),
            node: "a".into(),
            config: GuestConfig::Qemu(spec),
            pool: None,
        };
        apply(&mut s, cmd).unwrap();
        apply(&mut s, add(&format!("vm:{vmid}"), RequestedState::Started)).unwrap();
    }
    run(&mut s, &online);
    let failed = |n: &str| if n == "a" { Liveness::Failed } else { online(n) };
    run(&mut s, &failed);
    let why = run(&mut s, &failed);
    assert_eq!(s.guests[&102].node, "c", "b does not have nfs1: {why:?}");
    assert_eq!(s.ha_resources["vm:102"].service, ServiceState::Started);
    assert_eq!(s.guests[&101].node, "a", "its disk is on a's local directory");
    assert_eq!(s.ha_resources["vm:101"].service, ServiceState::Recovery);
}
