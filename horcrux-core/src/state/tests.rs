use super::*;
use crate::storage::StorageKind;

fn req(cmd: Command) -> Request {
    Request { ts_ms: 1_000, cmd, actor: None, id: None }
}

fn spec(vmid: u32, disks: usize) -> VmSpec {
    VmSpec {
        memory_mib: 256,
        cores: 1,
        disks: (0..disks)
            .map(|i| DiskSpec {
                storage: "local".into(),
                size_mib: 64,
                volume: Some(ids::volume_id("local", vmid, i)),
                slot: None,
                format: None,
            })
            .collect(),
        boot: Some(KernelBoot {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.gz".into()),
            cmdline: "console=ttyS0".into(),
        }),
        ..Default::default()
    }
}

fn create(vmid: u32, s: VmSpec) -> Command {
    Command::CreateGuest {
        vmid,
        name: "t1".into(),
        node: "n1".into(),
        config: GuestConfig::Qemu(s),
        pool: None,
    }
}

/// A state with node `n1` and storage `local`, built through `apply` itself.
fn base() -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(1, &req(Command::RegisterNode { name: "n1".into(), api_addr: "127.0.0.1:8006".into() })).unwrap();
    s.apply(
        2,
        &req(Command::AddStorage {
            id: "local".into(),
            kind: StorageKind::Dir { path: "/var/lib/h".into() },
        }),
    )
    .unwrap();
    s
}

/// Applies a command that must be refused and checks that nothing changed.
fn refused(s: &mut ClusterState, cmd: Command) -> ApplyError {
    let before = s.clone();
    let e = s.apply(99, &req(cmd)).unwrap_err();
    assert_eq!(*s, before, "a refused command changed state");
    e
}

fn invalid_field(e: ApplyError) -> String {
    match e {
        ApplyError::Invalid(v) => v.field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn register_node_validation() {
    let mut s = ClusterState::default();
    let e = refused(&mut s, Command::RegisterNode { name: "bad name".into(), api_addr: "a".into() });
    assert_eq!(invalid_field(e), "node");
    let e = refused(&mut s, Command::RegisterNode { name: "n1".into(), api_addr: String::new() });
    assert_eq!(invalid_field(e), "api_addr");
    s.apply(5, &req(Command::RegisterNode { name: "n1".into(), api_addr: "x:1".into() })).unwrap();
    assert_eq!(s.nodes["n1"].revision, 5);
}

#[test]
fn add_storage_validation() {
    let mut s = base();
    let e = refused(
        &mut s,
        Command::AddStorage { id: "2bad".into(), kind: StorageKind::Dir { path: "/x".into() } },
    );
    assert_eq!(invalid_field(e), "storage");
    let e = refused(
        &mut s,
        Command::AddStorage { id: "other".into(), kind: StorageKind::Dir { path: "rel".into() } },
    );
    assert_eq!(invalid_field(e), "path");
    let e = refused(
        &mut s,
        Command::AddStorage { id: "local".into(), kind: StorageKind::Dir { path: "/y".into() } },
    );
    assert!(matches!(e, ApplyError::Conflict { .. }));
}

#[test]
fn storages_are_created_updated_and_deleted_only_when_no_disk_is_on_them() {
    let mut s = base();
    let p = |kv: &[(&str, &str)]| {
        crate::storage::StoragePool::from_params(
            &kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )
        .unwrap()
    };
    let nfs =
        p(&[("storage", "nfs1"), ("type", "nfs"), ("server", "10.1.1.1"), ("export", "/e"), ("nodes", "n1")]);
    s.apply(3, &req(Command::CreateStorage { pool: nfs.clone() })).unwrap();
    assert_eq!(s.storage["nfs1"].revision, 3);
    assert!(s.storage["nfs1"].shared());
    assert!(matches!(
        refused(&mut s, Command::CreateStorage { pool: nfs.clone() }),
        ApplyError::Conflict { .. }
    ));
    // A config the type cannot have is refused by field, even when built by hand.
    let mut bad = nfs.config.clone();
    bad.shared = false;
    let e = refused(&mut s, Command::UpdateStorage { id: "nfs1".into(), config: bad });
    assert_eq!(invalid_field(e), "shared");
    let mut off = nfs.config.clone();
    off.disable = true;
    s.apply(4, &req(Command::UpdateStorage { id: "nfs1".into(), config: off })).unwrap();
    assert!(s.storage["nfs1"].config.disable);
    assert_eq!(s.storages_on("n1").count(), 2);
    assert_eq!(s.storages_on("n2").count(), 1);
    // A guest's disk on it keeps it.
    let mut g = spec(100, 1);
    g.disks[0].storage = "nfs1".into();
    g.disks[0].volume = Some("nfs1:100/vm-100-disk-0.qcow2".into());
    s.apply(5, &req(create(100, g))).unwrap();
    assert!(matches!(
        refused(&mut s, Command::DeleteStorage { id: "nfs1".into() }),
        ApplyError::Conflict { .. }
    ));
    s.apply(6, &req(Command::DeleteGuest { vmid: 100, expected_revision: None })).unwrap();
    s.apply(7, &req(Command::DeleteStorage { id: "nfs1".into() })).unwrap();
    assert!(!s.storage.contains_key("nfs1"));
    assert!(matches!(
        refused(&mut s, Command::DeleteStorage { id: "nfs1".into() }),
        ApplyError::NotFound { .. }
    ));
}

#[test]
fn set_api_token_validation() {
    let mut s = base();
    let good_hash = "a".repeat(64);
    let e = refused(
        &mut s,
        Command::SetApiToken {
            id: "root@pam!admin".into(),
            secret_sha256: "XYZ".into(),
            privsep: false,
            expire: 0,
        },
    );
    assert_eq!(invalid_field(e), "secret_sha256");
    let e = refused(
        &mut s,
        Command::SetApiToken {
            id: "root".into(),
            secret_sha256: good_hash.clone(),
            privsep: false,
            expire: 0,
        },
    );
    assert_eq!(invalid_field(e), "id");
    s.apply(
        3,
        &req(Command::SetApiToken {
            id: "root@pam!admin".into(),
            secret_sha256: good_hash,
            privsep: false,
            expire: 0,
        }),
    )
    .unwrap();
    assert!(s.api_tokens.contains_key("root@pam!admin"));
}

#[test]
fn create_guest_validation() {
    let mut s = base();
    let e = refused(&mut s, create(5, spec(5, 0)));
    assert_eq!(invalid_field(e), "vmid");
    let mut bad = spec(101, 0);
    bad.memory_mib = 0;
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "memory_mib");
    let mut bad = spec(101, 0);
    bad.cores = 0;
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "cores");
    let e = refused(
        &mut s,
        Command::CreateGuest {
            vmid: 101,
            name: "has space".into(),
            node: "n1".into(),
            config: GuestConfig::Qemu(spec(101, 0)),
            pool: None,
        },
    );
    assert_eq!(invalid_field(e), "name");
    let e = refused(
        &mut s,
        Command::CreateGuest {
            vmid: 101,
            name: "t1".into(),
            node: "nope".into(),
            config: GuestConfig::Qemu(spec(101, 0)),
            pool: None,
        },
    );
    assert_eq!(invalid_field(e), "node");
    let mut bad = spec(101, 1);
    bad.disks[0].storage = "nfs".into();
    bad.disks[0].volume = Some(ids::volume_id("nfs", 101, 0));
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "disks[0].storage");
    let mut bad = spec(101, 1);
    bad.disks[0].size_mib = 0;
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "disks[0].size_mib");
    let mut bad = spec(101, 1);
    bad.disks[0].volume = None;
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "disks[0].volume");
    // A volume of another guest cannot be claimed.
    assert_eq!(invalid_field(refused(&mut s, create(101, spec(102, 1)))), "disks[0].volume");
    let mut bad = spec(101, 0);
    bad.boot.as_mut().unwrap().kernel = "vmlinuz".into();
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "boot.kernel");
    let mut bad = spec(101, 0);
    bad.boot.as_mut().unwrap().initrd = Some("initrd".into());
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "boot.initrd");
    let mut bad = spec(101, 0);
    bad.boot.as_mut().unwrap().cmdline = "a\nb".into();
    assert_eq!(invalid_field(refused(&mut s, create(101, bad))), "boot.cmdline");

    let ok = s.apply(10, &req(create(101, spec(101, 2)))).unwrap();
    assert_eq!(ok.revision, 10);
    let g = &s.guests[&101];
    assert_eq!(g.created_ms, 1_000);
    assert_eq!(g.desired, DesiredPower::Stopped { graceful_timeout_s: None });
    assert!(matches!(refused(&mut s, create(101, spec(101, 0))), ApplyError::Conflict { .. }));
}

#[test]
fn update_guest_is_compare_and_set() {
    let mut s = base();
    s.apply(10, &req(create(101, spec(101, 0)))).unwrap();
    let mut bigger = spec(101, 0);
    bigger.memory_mib = 512;
    let upd = |rev, name: &str, sp: VmSpec| Command::UpdateGuest {
        vmid: 101,
        expected_revision: rev,
        name: name.into(),
        config: GuestConfig::Qemu(sp),
    };
    assert!(matches!(refused(&mut s, upd(Some(9), "t1", bigger.clone())), ApplyError::Conflict { .. }));
    assert_eq!(invalid_field(refused(&mut s, upd(Some(10), "a b", bigger.clone()))), "name");
    let mut bad = bigger.clone();
    bad.memory_mib = 1;
    assert_eq!(invalid_field(refused(&mut s, upd(Some(10), "t1", bad))), "memory_mib");
    let e = refused(
        &mut s,
        Command::UpdateGuest {
            vmid: 404,
            expected_revision: None,
            name: "x".into(),
            config: GuestConfig::Qemu(spec(404, 0)),
        },
    );
    assert!(matches!(e, ApplyError::NotFound { .. }));
    s.apply(11, &req(upd(Some(10), "t2", bigger))).unwrap();
    assert_eq!(s.guests[&101].name, "t2");
    assert_eq!(s.guests[&101].vm_spec().memory_mib, 512);
    assert_eq!(s.guests[&101].revision, 11);
}

#[test]
fn desired_power_and_delete() {
    let mut s = base();
    s.apply(10, &req(create(101, spec(101, 0)))).unwrap();
    let set = |rev, desired| Command::SetDesiredPower { vmid: 101, expected_revision: rev, desired };
    assert!(matches!(refused(&mut s, set(Some(3), DesiredPower::Running)), ApplyError::Conflict { .. }));
    let e = refused(
        &mut s,
        Command::SetDesiredPower { vmid: 7777, expected_revision: None, desired: DesiredPower::Running },
    );
    assert!(matches!(e, ApplyError::NotFound { .. }));
    s.apply(11, &req(set(Some(10), DesiredPower::Running))).unwrap();
    // A guest meant to run cannot be deleted.
    let e = refused(&mut s, Command::DeleteGuest { vmid: 101, expected_revision: None });
    assert!(matches!(e, ApplyError::Conflict { .. }));
    s.apply(12, &req(set(None, DesiredPower::Stopped { graceful_timeout_s: Some(60) }))).unwrap();
    let e = refused(&mut s, Command::DeleteGuest { vmid: 101, expected_revision: Some(11) });
    assert!(matches!(e, ApplyError::Conflict { .. }));
    let e = refused(&mut s, Command::DeleteGuest { vmid: 555, expected_revision: None });
    assert!(matches!(e, ApplyError::NotFound { .. }));
    s.apply(13, &req(Command::DeleteGuest { vmid: 101, expected_revision: Some(12) })).unwrap();
    assert!(s.guests.is_empty());
}

#[test]
fn next_vmid_fills_the_lowest_gap() {
    let mut s = base();
    assert_eq!(s.next_vmid(), Some(100));
    for (i, vmid) in [100, 101, 103].into_iter().enumerate() {
        s.apply(10 + i as u64, &req(create(vmid, spec(vmid, 0)))).unwrap();
    }
    assert_eq!(s.next_vmid(), Some(102));
}

#[test]
fn apply_is_deterministic() {
    let cmds = [
        create(101, spec(101, 1)),
        create(102, spec(102, 0)),
        Command::DeleteGuest { vmid: 102, expected_revision: None },
    ];
    let run = || {
        let mut s = base();
        let results: Vec<_> =
            cmds.iter().enumerate().map(|(i, c)| s.apply(10 + i as u64, &req(c.clone()))).collect();
        (s, results)
    };
    assert_eq!(run(), run());
    let json = serde_json::to_string(&run().0).unwrap();
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, run().0);
}

#[test]
fn cluster_ca_is_set_once() {
    let mut s = base();
    let bad = Command::SetClusterCa { cert_pem: "x".into(), key_pem: "y".into(), fingerprint: String::new() };
    assert_eq!(invalid_field(refused(&mut s, bad)), "cluster_ca");
    let ca = Command::SetClusterCa {
        cert_pem: "-----BEGIN CERTIFICATE-----".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        fingerprint: String::new(),
    };
    s.apply(3, &req(ca.clone())).unwrap();
    assert!(matches!(refused(&mut s, ca), ApplyError::Conflict { .. }));
    assert!(!format!("{:?}", s.cluster_ca).contains("PRIVATE"), "the key must not appear in debug output");
}

#[test]
fn a_ca_roll_ends_only_when_every_member_confirmed_a_certificate_from_the_new_ca() {
    let (old, new) = ("a".repeat(64), "b".repeat(64));
    let pem = |n: &str| format!("-----BEGIN CERTIFICATE-----{n}");
    let key = || "-----BEGIN PRIVATE KEY-----".to_string();
    let mut s = base();
    let set = Command::SetClusterCa { cert_pem: pem("old"), key_pem: key(), fingerprint: old.clone() };
    s.apply(3, &req(set)).unwrap();
    let member = |id: u64, fp: char, ca: &str, keep_previous| Command::SetMemberCert {
        node_id: id,
        name: format!("n{id}"),
        fingerprint: fp.to_string().repeat(64),
        keep_previous,
        ca: ca.to_string(),
    };
    s.apply(4, &req(member(1, '1', &old, false))).unwrap();
    s.apply(5, &req(member(2, '2', &old, false))).unwrap();
    assert!(matches!(refused(&mut s, Command::FinishCaRotation), ApplyError::Conflict { .. }));
    let rotate = Command::RotateClusterCa { cert_pem: pem("new"), key_pem: key(), fingerprint: new.clone() };
    s.apply(6, &req(rotate.clone())).unwrap();
    let ca = s.cluster_ca.clone().unwrap();
    assert_eq!(
        ca.trusted_pems(),
        vec![pem("new").as_str(), pem("old").as_str()],
        "both trusted while rolling"
    );
    assert!(matches!(refused(&mut s, rotate), ApplyError::Conflict { .. }), "one roll at a time");
    // n1 renewed (the leader recorded it, keeping the old one) and confirmed; n2 only renewed.
    s.apply(7, &req(member(1, '3', &new, true))).unwrap();
    assert_eq!(s.member_by_fingerprint(&"1".repeat(64)), Some(1), "the old certificate still works");
    s.apply(8, &req(member(1, '3', &new, false))).unwrap();
    assert_eq!(s.member_by_fingerprint(&"1".repeat(64)), None, "confirmed: the old one is gone");
    s.apply(9, &req(member(2, '4', &new, true))).unwrap();
    let ApplyError::Conflict { message } = refused(&mut s, Command::FinishCaRotation) else { panic!() };
    assert!(message.contains("n2") && !message.contains("n1"), "{message}");
    s.apply(10, &req(member(2, '4', &new, false))).unwrap();
    s.apply(11, &req(Command::FinishCaRotation)).unwrap();
    assert_eq!(s.cluster_ca.as_ref().unwrap().trusted_pems(), vec![pem("new").as_str()]);
    assert!(matches!(refused(&mut s, Command::FinishCaRotation), ApplyError::Conflict { .. }));
}

#[test]
fn join_tokens_are_single_use_and_expire() {
    let mut s = base();
    let h = "b".repeat(64);
    let at = |ts_ms, cmd| Request { ts_ms, cmd, actor: None, id: None };
    let create = |id: &str, expires_ms| Command::CreateJoinToken {
        id: id.into(),
        secret_sha256: h.clone(),
        expires_ms,
    };
    let consume = |id: &str, secret: &str, node: &str| Command::ConsumeJoinToken {
        id: id.into(),
        secret_sha256: secret.into(),
        node: node.into(),
    };
    assert_eq!(invalid_field(s.apply(3, &at(1_000, create("t1", 500))).unwrap_err()), "ttl_s");
    assert_eq!(invalid_field(s.apply(3, &at(1_000, create("bad id", 5_000))).unwrap_err()), "id");
    s.apply(3, &at(1_000, create("t1", 5_000))).unwrap();
    s.apply(4, &at(1_000, create("t2", 2_000))).unwrap();
    s.apply(5, &at(1_000, create("t3", 9_000))).unwrap();
    let conflict = |e: ApplyError, why: &str| match e {
        ApplyError::Conflict { message } => assert!(message.contains(why), "{message} lacks {why}"),
        other => panic!("{other:?}"),
    };
    conflict(s.apply(6, &at(1_500, consume("nope", &h, "n2"))).unwrap_err(), "unknown");
    conflict(s.apply(6, &at(1_500, consume("t1", &"c".repeat(64), "n2"))).unwrap_err(), "wrong secret");
    conflict(s.apply(6, &at(1_500, consume("t1", &h, "n1"))).unwrap_err(), "already a member");
    s.apply(6, &at(1_500, consume("t1", &h, "n2"))).unwrap();
    assert_eq!(s.join_tokens["t1"].node_id, Some(2));
    assert_eq!(s.next_node_id, 3);
    conflict(s.apply(7, &at(1_600, consume("t1", &h, "n3"))).unwrap_err(), "already used");
    conflict(s.apply(7, &at(2_000, consume("t2", &h, "n3"))).unwrap_err(), "expired");
    s.apply(8, &at(2_000, Command::RevokeJoinToken { id: "t3".into() })).unwrap();
    conflict(s.apply(9, &at(2_100, consume("t3", &h, "n3"))).unwrap_err(), "revoked");
    let e = s.apply(9, &at(2_100, Command::RevokeJoinToken { id: "zz".into() })).unwrap_err();
    assert!(matches!(e, ApplyError::NotFound { .. }));
}

#[test]
fn remove_node_refuses_while_it_owns_guests() {
    let mut s = base();
    s.apply(10, &req(create(101, spec(101, 0)))).unwrap();
    let rm = || Command::RemoveNode { name: "n1".into() };
    assert!(matches!(refused(&mut s, rm()), ApplyError::Conflict { .. }));
    assert!(matches!(
        refused(&mut s, Command::RemoveNode { name: "zz".into() }),
        ApplyError::NotFound { .. }
    ));
    s.apply(11, &req(Command::DeleteGuest { vmid: 101, expected_revision: None })).unwrap();
    s.apply(12, &req(rm())).unwrap();
    assert!(s.nodes.is_empty());
}

#[test]
fn cluster_options_validate_key_and_size() {
    let mut s = base();
    let set = |k: &str, v: String| Command::SetClusterOption { key: k.into(), value: v };
    assert_eq!(invalid_field(refused(&mut s, set("bad key", "x".into()))), "key");
    assert_eq!(invalid_field(refused(&mut s, set("k", "x".repeat(65 * 1024)))), "value");
    s.apply(3, &req(set("keyboard", "de".into()))).unwrap();
    assert_eq!(s.options["keyboard"], "de");
    s.apply(4, &req(set("keyboard", String::new()))).unwrap();
    assert!(s.options.is_empty());
}

#[test]
fn offline_migration_moves_only_stopped_diskless_guests() {
    let mut s = base();
    s.apply(3, &req(Command::RegisterNode { name: "n2".into(), api_addr: "127.0.0.1:8007".into() })).unwrap();
    s.apply(10, &req(create(101, spec(101, 0)))).unwrap();
    s.apply(11, &req(create(102, spec(102, 1)))).unwrap();
    let mig = |vmid, rev, target: &str| Command::MigrateGuest {
        vmid,
        expected_revision: rev,
        target: target.into(),
    };
    assert_eq!(invalid_field(refused(&mut s, mig(101, None, "nope"))), "target");
    assert_eq!(invalid_field(refused(&mut s, mig(101, None, "n1"))), "target");
    assert!(matches!(refused(&mut s, mig(101, Some(9), "n2")), ApplyError::Conflict { .. }));
    assert!(matches!(refused(&mut s, mig(555, None, "n2")), ApplyError::NotFound { .. }));
    // Local disks cannot follow yet.
    assert!(matches!(refused(&mut s, mig(102, None, "n2")), ApplyError::Conflict { .. }));
    s.apply(
        12,
        &req(Command::SetDesiredPower { vmid: 101, expected_revision: None, desired: DesiredPower::Running }),
    )
    .unwrap();
    // A guest meant to run stays where it is.
    assert!(matches!(refused(&mut s, mig(101, None, "n2")), ApplyError::Conflict { .. }));
    s.apply(
        13,
        &req(Command::SetDesiredPower {
            vmid: 101,
            expected_revision: None,
            desired: DesiredPower::Stopped { graceful_timeout_s: None },
        }),
    )
    .unwrap();
    s.apply(14, &req(mig(101, Some(13), "n2"))).unwrap();
    assert_eq!(s.guests[&101].node, "n2");
    assert_eq!(s.guests[&101].revision, 14);
}

/// A request with an id committed twice (a retry after an unknown outcome, a duplicated
/// message) is applied once and answers its first result again, refusals included; results
/// are kept for the client's last `SESSION_WINDOW` requests and for an hour of its time.
#[test]
fn a_request_committed_twice_is_applied_once() {
    use crate::state::{SESSION_TTL_MS, SESSION_WINDOW};
    let mut s = base();
    let with_id = |seq: u64, ts_ms: u64, cmd: Command| Request {
        ts_ms,
        cmd,
        actor: None,
        id: Some(crate::RequestId { client: 7, seq }),
    };
    let create = with_id(1, 1_000, Command::CreatePool { poolid: "p".into(), comment: String::new() });
    let first = s.apply(10, &create).unwrap();
    let after_first = s.clone();
    assert_eq!(s.apply(11, &create), Ok(first.clone()), "the retry answers the first result");
    assert_eq!(s, after_first, "and changes nothing");
    // The same command under a new id is a new request: refused, as it should be.
    let again = with_id(2, 1_000, Command::CreatePool { poolid: "p".into(), comment: String::new() });
    let refusal = s.apply(12, &again).unwrap_err();
    assert!(matches!(refusal, ApplyError::Conflict { .. }), "{refusal:?}");
    assert_eq!(s.apply(13, &again), Err(refusal), "a refusal is answered again too");
    // Without an id nothing is remembered.
    let plain = req(Command::CreatePool { poolid: "q".into(), comment: String::new() });
    s.apply(14, &plain).unwrap();
    assert!(matches!(s.apply(15, &plain), Err(ApplyError::Conflict { .. })));
    // The window: the oldest results go; a request older than the window is refused.
    for seq in 3..3 + SESSION_WINDOW as u64 {
        let cmd = Command::SetClusterOption { key: format!("k{seq}"), value: "v".into() };
        s.apply(100 + seq, &with_id(seq, 1_000, cmd)).unwrap();
    }
    assert_eq!(s.sessions[&7].results.len(), SESSION_WINDOW);
    let e = s.apply(5_000, &create).unwrap_err();
    assert!(e.to_string().contains("too old"), "{e}");
    // An hour without a request from client 7: forgotten when another client's request applies.
    let other = Request {
        ts_ms: 1_000 + SESSION_TTL_MS,
        cmd: Command::SetClusterOption { key: "late".into(), value: "v".into() },
        actor: None,
        id: Some(crate::RequestId { client: 8, seq: 1 }),
    };
    s.apply(5_001, &other).unwrap();
    assert!(!s.sessions.contains_key(&7) && s.sessions.contains_key(&8));
}

#[test]
fn snapshots_form_a_tree_and_rollback_restores_the_config() {
    let mut s = base();
    s.apply(3, &req(create(100, spec(100, 1)))).unwrap();
    let snap = |name: &str, vmstate: bool, s: &ClusterState| crate::snapshot::Snapshot {
        name: name.into(),
        description: String::new(),
        snaptime: 1,
        vmstate,
        parent: None,
        spec: s.guests[&100].vm_spec().clone(),
    };
    let first = snap("first", false, &s);
    s.apply(4, &req(Command::CreateSnapshot { vmid: 100, snapshot: first.clone() })).unwrap();
    let e = refused(&mut s, Command::CreateSnapshot { vmid: 100, snapshot: first });
    assert!(matches!(e, ApplyError::Conflict { .. }));
    for bad in ["current", "x", "1abc", &"a".repeat(41)] {
        let snapshot = snap(bad, false, &s);
        let e = refused(&mut s, Command::CreateSnapshot { vmid: 100, snapshot });
        assert_eq!(invalid_field(e), "snapname", "{bad}");
    }
    // The config changes, a second snapshot (with RAM) grows from the first.
    let mut bigger = s.guests[&100].vm_spec().clone();
    bigger.memory_mib = 512;
    s.apply(
        5,
        &req(Command::UpdateGuest {
            vmid: 100,
            expected_revision: None,
            name: "t1".into(),
            config: GuestConfig::Qemu(bigger),
        }),
    )
    .unwrap();
    s.apply(6, &req(Command::CreateSnapshot { vmid: 100, snapshot: snap("second", true, &s) })).unwrap();
    let g = &s.guests[&100];
    assert_eq!(
        (g.snapshots["second"].parent.as_deref(), g.parent.as_deref()),
        (Some("first"), Some("second"))
    );
    // Back to the first: its config, and nothing to resume.
    s.apply(7, &req(Command::RollbackSnapshot { vmid: 100, name: "first".into(), expected_revision: None }))
        .unwrap();
    let g = &s.guests[&100];
    assert_eq!(
        (g.vm_spec().memory_mib, g.parent.as_deref(), g.resume.as_deref()),
        (256, Some("first"), None)
    );
    s.apply(8, &req(Command::RollbackSnapshot { vmid: 100, name: "second".into(), expected_revision: None }))
        .unwrap();
    assert_eq!(s.guests[&100].resume.as_deref(), Some("second"));
    s.apply(9, &req(Command::ClearResume { vmid: 100, tag: "second".into() })).unwrap();
    assert_eq!(s.guests[&100].resume, None);
    // Deleting the first re-parents the second onto the root.
    s.apply(10, &req(Command::DeleteSnapshot { vmid: 100, name: "first".into() })).unwrap();
    assert_eq!(s.guests[&100].snapshots["second"].parent, None);
    let e = refused(&mut s, Command::DeleteSnapshot { vmid: 100, name: "first".into() });
    assert!(matches!(e, ApplyError::NotFound { .. }));
    s.apply(
        11,
        &req(Command::SetDesiredPower { vmid: 100, expected_revision: None, desired: DesiredPower::Running }),
    )
    .unwrap();
    let e = refused(
        &mut s,
        Command::RollbackSnapshot { vmid: 100, name: "second".into(), expected_revision: None },
    );
    assert!(matches!(e, ApplyError::Conflict { .. }), "a running guest is stopped first");
}

#[test]
fn a_disk_is_reassigned_in_one_entry_or_not_at_all() {
    let mut s = base();
    s.apply(3, &req(create(100, spec(100, 1)))).unwrap();
    s.apply(4, &req(create(101, spec(101, 0)))).unwrap();
    let mut to = spec(101, 0);
    to.disks.push(DiskSpec {
        storage: "local".into(),
        size_mib: 64,
        volume: Some(ids::volume_id("local", 101, 0)),
        slot: Some("scsi0".into()),
        format: None,
    });
    let cmd = |from_revision, to_config: VmSpec| Command::ReassignDisk {
        from: 100,
        from_revision,
        from_config: GuestConfig::Qemu(spec(100, 0)),
        to: 101,
        to_revision: 4,
        to_config: GuestConfig::Qemu(to_config),
    };
    // A stale revision, or a target config naming a volume that is not its own: nothing
    // changes on either guest.
    assert!(matches!(refused(&mut s, cmd(2, to.clone())), ApplyError::Conflict { .. }));
    let mut wrong = to.clone();
    wrong.disks[0].volume = Some(ids::volume_id("local", 100, 0));
    refused(&mut s, cmd(3, wrong));
    s.apply(5, &req(cmd(3, to))).unwrap();
    assert!(s.guests[&100].vm_spec().disks.is_empty());
    assert_eq!(s.guests[&101].vm_spec().disks[0].slot.as_deref(), Some("scsi0"));
    assert_eq!((s.guests[&100].revision, s.guests[&101].revision), (5, 5));
}
