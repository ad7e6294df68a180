//! schemathesis (PyPI, installed by `scripts/lab.sh` into `.lab/venv`) fuzzes the native
//! API from its own OpenAPI document (`GET /api/v1/openapi.json`) against a live daemon:
//! generated, boundary and stateful (create, then act on what was created) requests must
//! never get a 5xx, and every answer must match the schema documented for it.

mod common;

use common::{free_port, Daemon};

#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(&tmp.path().join("hx"), port, &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let (code, doc) = api.get("/openapi.json");
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.0.3");
    let schema = tmp.path().join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    let url = format!("https://127.0.0.1:{port}/api/v1");
    let (passed, text) = common::schemathesis(tmp.path(), &schema, &url, api.token(), "20261127");
    assert!(passed, "{text}\n--- daemon log:\n{}", d.log());
    assert!(text.contains("passed"), "{text}");
    // Every operation was exercised.
    let ops = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum::<usize>();
    assert!(text.contains(&format!("Tested: {ops}")), "not every operation was tested ({ops}):\n{text}");
}
