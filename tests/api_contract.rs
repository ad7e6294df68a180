//! The API's contract for bad input, authentication and conflicts, on a real daemon.

mod common;

use common::*;
use serde_json::{json, Value};

fn vm(vmid: Value, name: &str, memory: Value) -> Value {
    json!({"vmid": vmid, "name": name, "memory_mib": memory, "cores": 1, "disks": []})
}

#[test]
fn bad_input_is_refused_with_the_field_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();

    // Public and protected routes.
    let (code, v) = api.get_public("/version").unwrap();
    assert_eq!(code, 200);
    assert!(v["version"].is_string());
    for path in ["/vms", "/vms/101", "/tasks", "/cluster/nextid", "/nodes", "/storage"] {
        assert_eq!(api.get_public(path).unwrap().0, 401, "{path} without a token");
    }
    assert_eq!(d.client().with_token("wrong").get("/vms").0, 401);
    let token_mode = std::fs::metadata(tmp.path().join("admin.token")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&token_mode.permissions()) & 0o777, 0o600);

    let cases = [
        (vm(json!(5), "t1", json!(256)), "vmid"),
        (vm(json!(101), "has space", json!(256)), "name"),
        (vm(json!(101), "t1", json!(0)), "memory_mib"),
        (vm(json!(101), "t1", json!("lots")), "memory_mib"),
        (
            json!({"vmid": 101, "name": "t1", "memory_mib": 256, "disks": [{"storage": "nope", "size_mib": 8}]}),
            "disks[0].storage",
        ),
        (
            json!({"vmid": 101, "name": "t1", "memory_mib": 256, "disks": [{"storage": "local", "size_mib": 0}]}),
            "disks[0].size_mib",
        ),
        (
            json!({"vmid": 101, "name": "t1", "memory_mib": 256, "boot": {"kernel": "/no/such/kernel"}}),
            "boot.kernel",
        ),
        (json!({"vmid": 101, "name": "t1", "memory_mib": 256, "colour": "red"}), "colour"),
        (json!({"vmid": 101, "memory_mib": 256}), "name"),
    ];
    for (body, field) in cases {
        let (code, resp) = api.post("/vms", &body);
        assert_eq!(code, 400, "{body} -> {resp}");
        assert_eq!(resp["field"], field, "{body} -> {resp}");
        assert!(resp["error"].as_str().unwrap().contains(field), "{resp}");
    }
    assert_eq!(api.get("/vms").1.as_array().unwrap().len(), 0, "a refused request created something");
    assert!(!tmp.path().join("storage/local/images/101").exists());

    // A valid VM, then a duplicate (409) that must not touch the original's disk.
    let ok =
        json!({"vmid": 101, "name": "t1", "memory_mib": 256, "disks": [{"storage": "local", "size_mib": 8}]});
    assert_eq!(api.post("/vms", &ok).0, 200);
    let disk = tmp.path().join("storage/local/images/101/vm-101-disk-0.qcow2");
    let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let (code, resp) = api.post("/vms", &ok);
    assert_eq!(code, 409, "{resp}");
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), before);
    assert_eq!(api.get("/cluster/nextid").1["vmid"], 100);

    for path in ["/vms/999", "/vms/999/start"] {
        let code = if path.ends_with("start") { api.post(path, &json!({})).0 } else { api.get(path).0 };
        assert_eq!(code, 404, "{path}");
    }
    let (code, resp) = api.get("/vms/abc");
    assert_eq!((code, resp["field"].as_str()), (400, Some("vmid")));
    assert_eq!(api.get("/tasks/UPID:nope").0, 404);
}

/// The HTTPS listener bounds slow and greedy clients: a request whose headers trickle in
/// one byte at a time is dropped after the header timeout (while other clients are served),
/// and one address holds at most `MAX_CONNS_PER_ADDR` (256) connections (a new one evicts
/// the oldest).
#[test]
fn slow_and_greedy_clients_are_cut_off() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[("HORCRUX_HEADER_TIMEOUT_S", "2")]);
    let api = d.client();
    let mut loris = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl (Debian openssl) must be installed: scripts/deps.sh installs it");
    let mut stdin = loris.stdin.take().unwrap();
    let start = Instant::now();
    let request = b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut dropped_after = None;
    for b in request {
        // One byte a second, as a slow-loris client sends them.
        std::thread::sleep(Duration::from_millis(1000));
        if loris.try_wait().unwrap().is_some() || stdin.write_all(&[*b]).and_then(|_| stdin.flush()).is_err()
        {
            dropped_after = Some(start.elapsed());
            break;
        }
        // Meanwhile everyone else is served.
        assert_eq!(api.get_public("/version").unwrap().0, 200);
    }
    let _ = loris.kill();
    let _ = loris.wait();
    let after = dropped_after.expect("the trickling client was never dropped");
    assert!(after < Duration::from_secs(8), "dropped only after {after:?}");

    // Idle connections from one address fill its share; the next one is still served and
    // evicts the oldest; however many more arrive, the address never holds more than its
    // share open.
    use std::io::Read;
    let cap = horcrux_http::MAX_CONNS_PER_ADDR;
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut idle: Vec<std::net::TcpStream> = (0..cap).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let served = Api::new(&format!("https://127.0.0.1:{port}"), tmp.path()).get_public("/version");
    assert_eq!(served.unwrap().0, 200, "connection {} was refused", cap + 1);
    // Closed by the server: EOF or reset; open: nothing to read yet.
    let closed = |s: &std::net::TcpStream| {
        s.set_nonblocking(true).unwrap();
        !matches!((&*s).read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    eventually("the oldest connection is evicted", Duration::from_secs(5), || closed(&idle[0]));
    idle.extend((0..cap / 2).map(|_| connect()));
    std::thread::sleep(Duration::from_millis(500));
    let open = idle.iter().filter(|s| !closed(s)).count();
    assert!(open <= cap, "{open} connections from one address are open (share {cap})");
    assert!(open >= cap - 2, "newer connections were closed instead of older ones: {open} open");
    assert!(!closed(idle.last().unwrap()), "the newest connection was closed");
    drop(idle);
    eventually("connections freed", Duration::from_secs(5), || {
        Api::new(&format!("https://127.0.0.1:{port}"), tmp.path())
            .get_public("/version")
            .is_ok_and(|r| r.0 == 200)
    });
}

/// Every error answer arrives over HTTP/2 too, with a body the handler never read (hyper
/// resets a stream whose request body is dropped unread, and curl then reports "Stream
/// error in the HTTP/2 framing layer" instead of the answer).
#[test]
fn error_answers_arrive_over_http2_with_unread_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[]);
    let admin = d.client();
    assert_eq!(admin.post("/access/users", &serde_json::json!({"userid": "nobody@pve"})).0, 200);
    let (_, t) = admin.post("/access/users/nobody@pve/token/t", &serde_json::json!({"privsep": false}));
    let weak = t["value"].as_str().unwrap().to_string();
    let big = tmp.path().join("big.json");
    std::fs::write(&big, format!("{{\"a\":\"{}\"}}", "x".repeat(1 << 20))).unwrap();
    let cases = [
        ("POST", "/api/v1/nope", Some(admin.token().to_string()), 404),
        ("POST", "/api/v1/version", Some(admin.token().to_string()), 405),
        // Proxmox answers a path it does not serve with 501, another method with 405 here.
        ("POST", "/api2/json/nope", Some(admin.token().to_string()), 501),
        ("PATCH", "/api2/json/version", Some(admin.token().to_string()), 405),
        ("POST", "/api2/json/nodes", Some(admin.token().to_string()), 405),
        ("POST", "/api/v1/vms", None, 401),
        ("POST", "/api/v1/vms", Some(weak.clone()), 403),
        ("PUT", "/api/v1/access/acl", Some(weak), 403),
        ("POST", "/api/v1/vms", Some(admin.token().to_string()), 400),
        ("POST", "/api/v1/vms/100/start", Some(admin.token().to_string()), 404),
    ];
    for round in 0..3 {
        for (method, path, token, want) in &cases {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sk", "--http2", "-X", method, "-H", "Content-Type: application/json"])
                .arg("--data-binary")
                .arg(format!("@{}", big.display()))
                .args(["-w", "\n%{http_code} %{http_version}"]);
            if let Some(t) = token {
                cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
            }
            let out = cmd
                .arg(format!("https://127.0.0.1:{port}{path}"))
                .output()
                .expect("curl must be installed: scripts/deps.sh installs it");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "round {round}: {method} {path}: curl exit {:?}: {text}",
                out.status.code()
            );
            let (body, status) = text.rsplit_once('\n').unwrap();
            assert_eq!(status, format!("{want} 2"), "round {round}: {method} {path}: {text}");
            let json: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body}"));
            assert!(
                json.get("error").is_some() || json.get("errors").is_some() || json.get("data").is_some(),
                "{method} {path}: {body}"
            );
        }
    }
}

/// A start-up error after the store opened (here `DATA_DIR/log` is a file, so the QEMU log
/// directory cannot be made) ends the daemon with a clear error and exit status 1, after
/// stopping Raft: it used to drop the store under the running Raft thread and segfault.
#[test]
fn a_startup_error_exits_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("log"), "not a directory").unwrap();
    let out = serve_command(tmp.path(), free_port(), "n1", &[], &[]).status().unwrap();
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap();
    assert_eq!(out.signal(), None, "the daemon died of a signal: {log}");
    assert_eq!(out.code(), Some(1), "{log}");
    assert!(log.contains("log"), "the error names the path: {log}");
}

/// `/api2/json` parameters: a parameter a route does not honour is refused with an
/// `errors` entry naming it (never ignored), booleans mean what they say in every spelling
/// (`privsep=false` made a privileged token, `delete=false` deleted an ACL entry), and a
/// protected guest can't be deleted.
#[test]
fn proxmox_parameters_are_honoured_or_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let d = common::Daemon::start(tmp.path(), port, &[]);
    let api = d.client();
    let t = Some(api.token());
    let (code, v) = api.request("GET", "/api2/json/access/users?bogus=1", t, &json!(null));
    assert_eq!(code, 400, "{v}");
    assert!(v["errors"]["bogus"].is_string(), "{v}");
    let (code, v) = api.request("POST", "/api2/json/nodes/n1/qemu", t, &json!({"vmid": 100, "skiplock": 1}));
    assert_eq!((code, v["errors"]["skiplock"].is_string()), (400, true), "{v}");
    let (code, v) = api.request("GET", "/api2/json/nodes/n1/qemu/100/config?snapshot=s1", t, &json!(null));
    assert_eq!((code, v["errors"]["snapshot"].is_string()), (400, true), "{v}");

    // Booleans: false is false.
    assert_eq!(api.post("/access/users", &json!({"userid": "b@pve"})).0, 200);
    let (code, v) =
        api.request("POST", "/api2/json/access/users/b@pve/token/t1", t, &json!({"privsep": false}));
    assert_eq!(code, 200, "{v}");
    let (_, tok) = api.request("GET", "/api2/json/access/users/b@pve/token/t1", t, &json!(null));
    assert_eq!(tok["data"]["privsep"], 0, "{tok}");
    let acl =
        json!({"path": "/vms", "roles": "PVEAuditor", "users": "b@pve", "delete": false, "propagate": false});
    assert_eq!(api.request("PUT", "/api2/json/access/acl", t, &acl).0, 200);
    let (_, list) = api.request("GET", "/api2/json/access/acl", t, &json!(null));
    let entry = list["data"].as_array().unwrap().iter().find(|e| e["ugid"] == "b@pve").cloned();
    assert_eq!(entry.as_ref().map(|e| e["propagate"].clone()), Some(json!(0)), "{list}");
    let (code, v) = api.request(
        "PUT",
        "/api2/json/access/acl",
        t,
        &json!({"path": "/", "roles": "PVEAuditor", "users": "b@pve", "propagate": "maybe"}),
    );
    assert_eq!((code, v["errors"]["propagate"].is_string()), (400, true), "{v}");

    // Whose permissions (Telmate asks `userid=&path=/`): the caller's, or anyone's for an
    // auditor of /access; b@pve holds PVEAuditor on /vms only.
    let (code, v) = api.request("GET", "/api2/json/access/permissions?userid=&path=/", t, &json!(null));
    assert_eq!((code, v["data"]["/"]["Sys.Audit"].clone()), (200, json!(1)), "{v}");
    let (code, v) =
        api.request("GET", "/api2/json/access/permissions?userid=b@pve&path=/vms", t, &json!(null));
    assert_eq!((code, v["data"]["/vms"]["VM.Audit"].clone()), (200, json!(1)), "{v}");
    assert!(v["data"]["/vms"].get("VM.Allocate").is_none(), "{v}");
    let (_, tok) = api.request("POST", "/api2/json/access/users/b@pve/token/t2", t, &json!({"privsep": 0}));
    let secret = tok["data"]["value"].as_str().unwrap_or_default().to_string();
    let b = d.client().with_token(&secret);
    let (code, v) = b.request(
        "GET",
        "/api2/json/access/permissions?userid=root@pam&path=/",
        Some(b.token()),
        &json!(null),
    );
    assert_eq!(code, 403, "{v}");

    // Protection: stored as 1, answered as a number, and it blocks the delete.
    let (code, v) = api.request(
        "POST",
        "/api2/json/nodes/n1/qemu",
        t,
        &json!({"vmid": 101, "memory": 64, "protection": true}),
    );
    assert_eq!(code, 200, "{v}");
    api.wait_task(v["data"].as_str().unwrap());
    let (_, cfg) = api.request("GET", "/api2/json/nodes/n1/qemu/101/config", t, &json!(null));
    assert_eq!(cfg["data"]["protection"], 1, "{cfg}");
    let (code, v) = api.request("DELETE", "/api2/json/nodes/n1/qemu/101", t, &json!(null));
    assert_eq!((code, v["errors"]["protection"].is_string()), (400, true), "{v}");
    let (code, v) = api.request("PUT", "/api2/json/nodes/n1/qemu/101/config", t, &json!({"bios": "floppy"}));
    assert!(code == 400 && v["errors"]["bios"].is_string(), "{code} {v}");
    let (code, v) = api.request("PUT", "/api2/json/nodes/n1/qemu/101/config", t, &json!({"protection": 0}));
    assert_eq!(code, 200, "{v}");
    let (code, v) = api.request("DELETE", "/api2/json/nodes/n1/qemu/101", t, &json!(null));
    assert_eq!(code, 200, "{v}");
}
