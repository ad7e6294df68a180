//! proxmoxer (the Python client from PyPI, installed by `scripts/lab.sh` into
//! `.lab/venv`) drives Horcrux's `/api2/json` unchanged: token and password login, nodes,
//! nextid, create, start, task polling, status/current, stop, delete.

mod common;

use common::{free_port, Daemon};
use serde_json::json;

#[test]
fn proxmoxer_works_unchanged() {
    let py = common::lab_tool("HORCRUX_PYTHON", "python");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[]);
    let admin = d.client();
    assert_eq!(admin.post("/access/users", &json!({"userid": "pxuser@pve"})).0, 200);
    let pw = json!({"userid": "pxuser@pve", "password": "proxmoxer pw"});
    assert_eq!(admin.request("PUT", "/access/password", Some(admin.token()), &pw).0, 200);
    let acl = json!({"path": "/", "role": "Administrator", "user": "pxuser@pve"});
    assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    let out = std::process::Command::new(&py)
        .arg(format!("{}/tests/clients/proxmoxer_flow.py", env!("CARGO_MANIFEST_DIR")))
        .args(["127.0.0.1", &port.to_string(), admin.token(), "pxuser@pve", "proxmoxer pw"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("proxmoxer: OK"), "{text}\n--- daemon log:\n{}", d.log());
}
