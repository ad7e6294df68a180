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
    {
        // Forget the commit point, as a power loss may.
        let db = horcrux_raft::open_db(&tmp.path().join("raft")).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"committed", b"null").unwrap();
        db.flush_wal(true).unwrap();
    }
    let d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
    assert_eq!(std::fs::read_to_string(tmp.path().join("admin.token")).unwrap(), token, "token kept");
    let (code, list) = d.client().get("/vms");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 10);
    let (_, pools) = d.client().get("/storage");
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
}
