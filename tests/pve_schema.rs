//! `/api2/json` against Proxmox VE's own schema: the operations a live daemon serves are
//! found by probing every operation of Proxmox's `apidata.json` (`tests/data/pve-apidata.json`)
//! (`scripts/pve-served-routes.py`), an OpenAPI document is generated from apidata for
//! exactly those (`scripts/pve-openapi.py`), and schemathesis runs it: no 5xx, every
//! answer matches Proxmox's return schema (in `{"data": ...}`), and a refused parameter is
//! named in `errors`. New compat routes are covered the day they land.

mod common;

use common::{free_port, Daemon};

/// Proxmox's schema: a copy of `../shared/proxmox-api/apidata.json` (PVE 9.1's API viewer
/// data) kept in the repository, so a clean clone checks against it on its own.
fn apidata() -> std::path::PathBuf {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/pve-apidata.json");
    assert!(p.exists(), "{} missing", p.display());
    p
}

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn api2_json_conforms_to_proxmox_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(&tmp.path().join("hx"), port, &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let base = format!("https://127.0.0.1:{port}/api2/json");

    let probe = std::process::Command::new(common::lab_tool("HORCRUX_PYTHON", "python"))
        .arg(script("pve-served-routes.py"))
        .arg(apidata())
        .arg(&base)
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(probe.status.success(), "{}{}", routes, String::from_utf8_lossy(&probe.stderr));
    // The probe finds what is served, and nothing it must not (a sample of each).
    for served in [
        "GET /nodes/{node}/qemu",
        "POST /nodes/{node}/qemu/{vmid}/status/reset",
        "PUT /access/acl",
        "GET /cluster/ha/status/current",
        "POST /cluster/ha/rules",
    ] {
        assert!(routes.lines().any(|l| l == served), "{served} not found served:\n{routes}");
    }
    for unserved in ["GET /nodes/{node}/lxc", "GET /cluster/ha/groups"] {
        assert!(!routes.lines().any(|l| l == unserved), "{unserved} reported served:\n{routes}");
    }
    let count = routes.lines().count();
    assert!(count >= 50, "only {count} operations found:\n{routes}");
    let routes_file = tmp.path().join("routes.txt");
    std::fs::write(&routes_file, &routes).unwrap();

    let doc = std::process::Command::new(common::lab_tool("HORCRUX_PYTHON", "python"))
        .arg(script("pve-openapi.py"))
        .args(["--example", "node=n1", "--example", "storage=local"])
        // Proxmox answers the id as a string ("100"), and clients parse it as one.
        .args(["--perl-scalar", "GET /cluster/nextid"])
        .arg(apidata())
        .arg(&routes_file)
        .output()
        .unwrap();
    assert!(doc.status.success(), "{}", String::from_utf8_lossy(&doc.stderr));
    let schema = tmp.path().join("pve-openapi.json");
    std::fs::write(&schema, &doc.stdout).unwrap();

    let (passed, text) = common::schemathesis(tmp.path(), &schema, &base, api.token(), "20261202");
    assert!(passed, "{text}\n--- daemon log:\n{}", d.log());
    assert!(
        text.contains(&format!("Tested: {count}")),
        "not every served operation was tested ({count}):\n{text}"
    );
}
