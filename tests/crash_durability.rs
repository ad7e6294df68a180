//! Every write the API acknowledged is still there after `kill -9` of the daemon.

mod common;

use common::*;
use serde_json::json;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut acknowledged = Vec::new();
    for round in 0..3u32 {
        let mut d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
        let api = d.client();
        let (_, list) = api.get("/vms");
        let mut present: Vec<u64> =
            list.as_array().unwrap().iter().map(|v| v["vmid"].as_u64().unwrap()).collect();
        present.sort();
        assert_eq!(present, acknowledged, "round {round}: acknowledged writes lost or phantom writes found");
        for i in 0..20u64 {
            let vmid = 100 + u64::from(round) * 100 + i;
            let (code, body) =
                api.post("/vms", &json!({"vmid": vmid, "name": format!("v{vmid}"), "memory_mib": 64}));
            assert_eq!(code, 200, "{body}");
            acknowledged.push(vmid);
        }
        // Kill at once after the last acknowledgement: no graceful flush.
        d.kill9();
    }
    let d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
    let (_, list) = d.client().get("/vms");
    assert_eq!(list.as_array().unwrap().len(), acknowledged.len());
    // The admin token survived too: the same file still authenticates.
    assert_eq!(d.client().get("/vms").0, 200);
}

/// A node whose last commit point was not on disk (it is written without fsync; a power
/// loss can take it) restarts with a state that lags its log. It must still come up, keep
/// its admin token and storage (deciding on the committed state, not on the lagging copy),
/// and catch up.
#[test]
fn a_restart_with_a_stale_commit_point_keeps_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
    let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    for vmid in 100..110u64 {
        let (code, body) =
            d.client().post("/vms", &json!({"vmid": vmid, "name": format!("v{vmid}"), "memory_mib": 64}));
        assert_eq!(code, 200, "{body}");
    }
    d.kill9();
    forget_commit_point(&tmp.path().join("raft"));
    let d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
    assert_eq!(std::fs::read_to_string(tmp.path().join("admin.token")).unwrap(), token, "token kept");
    let (code, list) = d.client().get("/vms");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 10);
    let (_, pools) = d.client().get("/storage");
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
}

/// A data dir written by the last release before format 1, whose every record was JSON
/// (`tests/data/format0-datadir.tar.gz`, made by that release's binary: see
/// `tests/data/README.md`), is upgraded in place when it is opened: its guests, users,
/// passwords, tokens, ACLs, pools and groups (some only in its snapshot, some only in the
/// log after it) are all there, it takes writes, and it restarts in the new format.
#[test]
fn a_format_0_data_dir_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format0-datadir.tar.gz");
    let untar = std::process::Command::new("tar").args(["xzf", fixture, "-C"]).arg(tmp.path()).status();
    assert!(untar.unwrap().success(), "tar xzf {fixture}");
    let dir = tmp.path().join("data");
    let port = free_port();
    let cluster = format!("127.0.0.1:{}", free_port());
    let args = ["--cluster-listen".to_string(), cluster];
    let start = || Daemon::spawn_ready(serve_command(&dir, port, "fx1", &args, &[]), &dir, port);

    let mut d = start();
    assert!(d.log().contains("upgraded the data dir from format 0 (JSON) to format 1"), "{}", d.log());
    let check = |d: &Daemon| {
        let api = d.client();
        let (code, vms) = api.get("/api2/json/cluster/resources?type=vm");
        assert_eq!(code, 200, "{vms}");
        let mut names: Vec<(u64, String)> = vms["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["vmid"].as_u64().unwrap(), v["name"].as_str().unwrap().to_string()))
            .collect();
        names.sort();
        assert_eq!(&names[..2], &[(100, "fixture-vm".into()), (101, "fixture-two".into())]);
        // Written after the snapshot: replayed from the upgraded log.
        let (_, conf) = api.get("/api2/json/nodes/fx1/qemu/101/config");
        assert_eq!(conf["data"]["description"], "after-snapshot", "{conf}");
        let (_, groups) = api.get("/api2/json/access/groups");
        assert_eq!(groups["data"].as_array().unwrap().len(), 12, "{groups}");
        let (_, pool) = api.get("/api2/json/pools/fixpool");
        assert_eq!(pool["data"]["members"][0]["vmid"], 100, "{pool}");
        let login = json!({"username": "alice@pve", "password": "fixture-pass-1"});
        assert_eq!(api.raw("POST", "/api2/json/access/ticket", &[], &login).0, 200, "alice's password");
        let token =
            "PVEAPIToken=alice@pve!t1=c3fbff04f2fec798472390b612fd31ee94eea0e0ef55bca61660d22a49bde4f1";
        let (code, acl, _) = api.raw(
            "GET",
            "/api2/json/access/permissions?path=/vms/100",
            &[("Authorization", token)],
            &json!({}),
        );
        assert_eq!(code, 200, "alice's token authenticates: {acl}");
        assert!(acl["data"]["/vms/100"]["VM.PowerMgmt"].is_number(), "her ACL: {acl}");
        names.len()
    };
    assert_eq!(check(&d), 2);
    let (code, body) =
        d.client().post("/vms", &json!({"vmid": 102, "name": "after-upgrade", "memory_mib": 64}));
    assert_eq!(code, 200, "{body}");
    d.terminate();

    // Every record is in the new format now, and a restart upgrades nothing.
    {
        let db = horcrux_raft::open_db(&dir.join("raft")).unwrap();
        for family in ["log", "meta", "sm"] {
            for item in db.iterator_cf(db.cf_handle(family).unwrap(), rocksdb::IteratorMode::Start) {
                let (k, v) = item.unwrap();
                assert_eq!(v[0], horcrux_raft::codec::FORMAT, "{family}/{k:?} in format {}", v[0]);
            }
        }
    }
    let d = start();
    assert_eq!(d.log().matches("upgraded the data dir").count(), 1);
    assert_eq!(check(&d), 3);
}
