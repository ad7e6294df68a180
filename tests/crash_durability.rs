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
