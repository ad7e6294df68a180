//! The HA API's contract on a real daemon: resources and rules through `/api/v1` and the
//! CLI, bad input refused with the field named and nothing left behind, Proxmox's
//! feasibility checks naming the conflicting rule, the caller's rights over the guests a
//! change concerns (not only the route's privilege), placement explanations, admission
//! control, and the HA cluster options' bounds.

mod common;

use common::*;
use serde_json::{json, Value};

fn vm(api: &Api, vmid: u32) {
    let (code, body) = api.post("/vms", &json!({"vmid": vmid, "name": format!("h{vmid}"), "memory_mib": 64}));
    assert_eq!(code, 200, "{body}");
}

fn cli(d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args(args)
        .args(["--api", &format!("https://127.0.0.1:{}", d.port), "--token-file"])
        .arg(d.dir.join("admin.token"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn ha_resources_and_rules_are_checked_authorized_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let admin = d.client();
    vm(&admin, 200);
    vm(&admin, 201);

    // Bad input names its field; nothing is created.
    let cases = [
        (json!({"sid": "vm:999"}), "sid"),
        (json!({"sid": "vm:1"}), "sid"),
        (json!({"sid": "ct:200"}), "sid"),
        (json!({"sid": "vm:200", "state": "on"}), "state"),
        (json!({"sid": "vm:200", "max_restart": 11}), "max_restart"),
        (json!({"sid": "vm:200", "colour": "red"}), "colour"),
        (json!({"sid": "vm:200", "type": "ct"}), "type"),
    ];
    for (body, field) in cases {
        let (code, resp) = admin.post("/cluster/ha/resources", &body);
        assert_eq!((code, resp["field"].as_str()), (400, Some(field)), "{body} -> {resp}");
    }
    assert_eq!(admin.get("/cluster/ha/resources").1, json!([]));

    // The contract's body; a bare VMID is accepted as Proxmox does.
    let (code, body) = admin.post(
        "/cluster/ha/resources",
        &json!({"sid": "vm:200", "state": "stopped", "max_restart": 1, "max_relocate": 1, "failback": true, "comment": ""}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(admin.post("/cluster/ha/resources", &json!({"sid": "200"})).0, 409, "already defined");
    let (_, r) = admin.get("/cluster/ha/resources/vm:200");
    assert_eq!(
        (r["state"].as_str(), r["service"].as_str(), r["node"].as_str()),
        (Some("stopped"), Some("stopped"), Some("n1"))
    );
    let digest = r["digest"].as_str().unwrap().to_string();
    let put = |b: Value| admin.request("PUT", "/cluster/ha/resources/vm:200", Some(admin.token()), &b);
    assert_eq!(put(json!({"comment": "web", "digest": digest})).0, 200);
    assert_eq!(put(json!({"comment": "x", "digest": digest})).1["field"], "digest", "stale digest");
    assert_eq!(put(json!({"delete": ["comment"], "max_relocate": 3})).0, 200);
    let (_, r) = admin.get("/cluster/ha/resources/vm:200");
    assert_eq!((r["comment"].as_str(), r["max_relocate"].as_u64()), (Some(""), Some(3)));
    assert_eq!(admin.delete("/vms/200").0, 409, "an HA guest is removed from HA first");

    // Rules: the contract's fields, Proxmox's checks, the conflicting rule named.
    let (code, body) = admin.post(
        "/cluster/ha/rules",
        &json!({"rule": "na1", "type": "node-affinity", "resources": "vm:200", "nodes": "n1:2", "strict": true}),
    );
    assert_eq!(code, 200, "{body}");
    let (code, e) = admin.post(
        "/cluster/ha/rules",
        &json!({"rule": "na2", "type": "node-affinity", "resources": "vm:200,vm:201", "nodes": "n1"}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("resources")), "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("Rule 'na2' is invalid") && msg.contains("na1"), "{msg}");
    let (code, e) = admin.post(
        "/cluster/ha/rules",
        &json!({"rule": "ra1", "type": "resource-affinity", "resources": "vm:200", "affinity": "negative"}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("resources")), "one resource: {e}");
    for (body, field) in [
        (json!({"rule": "1x", "type": "node-affinity", "resources": "vm:200", "nodes": "n1"}), "rule"),
        (json!({"rule": "nb", "type": "node-affinity", "resources": "vm:200"}), "nodes"),
        (json!({"rule": "nb", "type": "node-affinity", "resources": "vm:x", "nodes": "n1"}), "resources"),
        (json!({"rule": "nb", "type": "colour-affinity", "resources": "vm:200"}), "type"),
        (
            json!({"rule": "nb", "type": "resource-affinity", "resources": "vm:200,vm:201", "nodes": "n1"}),
            "nodes",
        ),
    ] {
        let (code, resp) = admin.post("/cluster/ha/rules", &body);
        assert_eq!((code, resp["field"].as_str()), (400, Some(field)), "{body} -> {resp}");
    }
    let (_, rules) = admin.get("/cluster/ha/rules");
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    assert_eq!(rules[0]["nodes"], "n1:2");

    // Placement explains the choice.
    let (code, p) = admin.get("/cluster/ha/placement?sid=vm:200");
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["node"], "n1");
    assert!(!p["explanation"].as_array().unwrap().is_empty(), "{p}");
    let (_, st) = admin.get("/cluster/ha/status");
    assert_eq!((st["quorate"].as_bool(), st["manager"]["node"].as_str()), (Some(true), Some("n1")), "{st}");
    assert_eq!(st["nodes"][0]["state"], "online", "{st}");
    assert!(st["nodes"][0]["lease_remaining_ms"].as_u64().unwrap() > 0, "{st}");

    // A caller with the routes' privileges (Sys.Console, Sys.Audit on /) but rights on guest
    // 200 only cannot make 201 HA, change or remove it, nor put it in a rule.
    let role = json!({"roleid": "HaOperator", "privs": "Sys.Console,Sys.Audit"});
    assert_eq!(admin.post("/access/roles", &role).0, 200);
    assert_eq!(admin.post("/access/users", &json!({"userid": "ops@pve"})).0, 200);
    let (_, t) = admin.post("/access/users/ops@pve/token/t", &json!({"privsep": false}));
    let ops = t["value"].as_str().unwrap().to_string();
    for acl in [
        json!({"path": "/", "role": "HaOperator", "user": "ops@pve", "propagate": false}),
        json!({"path": "/vms/200", "role": "PVEVMAdmin", "user": "ops@pve"}),
    ] {
        assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    }
    let as_ops = |m: &str, p: &str, b: Value| admin.request(m, p, Some(&ops), &b);
    let (code, e) = as_ops("POST", "/cluster/ha/resources", json!({"sid": "vm:201"}));
    assert_eq!(code, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("/vms/201"), "{e}");
    assert_eq!(admin.get("/cluster/ha/resources").1.as_array().unwrap().len(), 1, "nothing created");
    let (code, e) = as_ops(
        "POST",
        "/cluster/ha/rules",
        json!({"rule": "ra2", "type": "resource-affinity", "resources": "vm:200,vm:201", "affinity": "positive"}),
    );
    assert_eq!(code, 403, "a rule over a guest it has no rights on: {e}");
    assert_eq!(as_ops("PUT", "/cluster/ha/resources/vm:200", json!({"comment": "mine"})).0, 200);
    assert_eq!(as_ops("GET", "/cluster/ha/status", json!({})).0, 200);
    // Without the route's privilege at all.
    assert_eq!(admin.post("/access/users", &json!({"userid": "nobody@pve"})).0, 200);
    let (_, t) = admin.post("/access/users/nobody@pve/token/t", &json!({"privsep": false}));
    let nobody = t["value"].as_str().unwrap().to_string();
    assert_eq!(admin.request("GET", "/cluster/ha/resources", Some(&nobody), &json!({})).0, 403);
    assert_eq!(
        admin.request("POST", "/cluster/ha/resources", Some(&nobody), &json!({"sid": "vm:200"})).0,
        403
    );

    // Admission control: a one-node cluster cannot survive losing a node.
    let opt = |k: &str, v: &str| {
        admin.request("PUT", &format!("/cluster/options/{k}"), Some(admin.token()), &json!({"value": v}))
    };
    assert_eq!(opt("ha.tolerate", "1").0, 200);
    let (code, e) = admin.post("/cluster/ha/resources", &json!({"sid": "vm:201", "state": "started"}));
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("ha.tolerate=1"), "{e}");
    // A plain start is admitted the same way (one node cannot lose one), natively and
    // through /api2/json, and nothing is left started.
    let (code, e) = admin.post("/vms/201/start", &json!({}));
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("admission control (ha.tolerate=1)"), "{e}");
    let (code, e) = admin.post("/api2/json/nodes/n1/qemu/201/status/start", &json!({}));
    assert_eq!(code, 409, "{e}");
    assert_eq!(admin.get("/vms/201").1["desired"]["state"], "stopped");
    assert_eq!(opt("ha.tolerate", "").0, 200);
    // The margin must cover the lease's drift; bad values name the option.
    assert_eq!(opt("ha.lease", "60").0, 200);
    let (code, e) = opt("ha.margin", "1");
    assert_eq!((code, e["field"].as_str()), (400, Some("ha.margin")), "{e}");
    assert_eq!(opt("ha.lease", "0.1").1["field"], "ha.lease");
    assert_eq!(opt("crs", "ha=fancy").1["field"], "crs");
    assert_eq!(opt("ha.lease", "").0, 200);

    // The CLI.
    let (ok, out) = cli(&d, &["ha", "add", "vm:201", "--state", "stopped"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &d,
        &[
            "ha",
            "rule",
            "add",
            "ra3",
            "--type",
            "resource-affinity",
            "--resources",
            "vm:200,vm:201",
            "--affinity",
            "positive",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&d, &["ha", "status"]);
    assert!(
        ok && out.contains("service vm:201 (n1, stopped; requested stopped)") && out.contains("master n1"),
        "{out}"
    );
    // Starting or stopping an HA guest the Proxmox way asks the manager (`hastart`,
    // `hastop`), which would otherwise undo a power change made behind its back; a caller
    // without rights on the guest is refused before anything is asked.
    let (code, e) = as_ops("POST", "/api2/json/nodes/n1/qemu/201/status/start", json!({}));
    assert_eq!(code, 403, "{e}");
    assert_eq!(admin.get("/cluster/ha/resources/vm:201").1["state"], "stopped");
    for (path, kind, state) in [("start", "hastart", "started"), ("stop", "hastop", "stopped")] {
        let (code, upid) = admin.post(&format!("/api2/json/nodes/n1/qemu/201/status/{path}"), &json!({}));
        assert_eq!(code, 200, "{upid}");
        let upid = upid["data"].as_str().unwrap().to_string();
        assert!(upid.contains(&format!(":{kind}:201:")), "{upid}");
        assert_eq!(admin.get("/cluster/ha/resources/vm:201").1["state"], state);
        let (_, log) = admin.get(&format!("/api2/json/nodes/n1/tasks/{upid}/log"));
        assert!(log.to_string().contains(&format!("Requesting HA {path} for VM 201")), "{log}");
    }
    // Proxmox's status/current tells an HA guest: managed, with its requested state.
    let (_, cur) = admin.get("/api2/json/nodes/n1/qemu/201/status/current");
    assert_eq!(
        (cur["data"]["ha"]["managed"].as_u64(), cur["data"]["ha"]["state"].as_str()),
        (Some(1), Some("stopped")),
        "{cur}"
    );
    // The failover history (its content is tested with the manager, in horcrux-core).
    let (code, h) = admin.get("/cluster/ha/history");
    assert!(code == 200 && h.is_array(), "{h}");
    assert_eq!(admin.request("GET", "/cluster/ha/history", Some(&nobody), &json!(null)).0, 403);
    // 200 and 201 are kept together, and 200 is already in na1: a second node-affinity
    // rule for the pair is refused.
    let (ok, out) = cli(
        &d,
        &[
            "ha",
            "rule",
            "add",
            "na9",
            "--type",
            "node-affinity",
            "--resources",
            "vm:201",
            "--nodes",
            "n1",
            "--strict",
        ],
    );
    assert!(!ok && out.contains("400") && out.contains("Rule 'na9' is invalid"), "{out}");
    let (ok, out) = cli(&d, &["ha", "remove", "vm:201"]);
    assert!(ok, "{out}");
    let (_, rules) = admin.get("/cluster/ha/rules");
    let ids: Vec<&str> = rules.as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["na1", "ra3"]);
    assert_eq!(rules[1]["resources"], "vm:200", "the removed resource left its rules");
    let (ok, out) = cli(&d, &["ha", "remove", "vm:201"]);
    assert!(!ok && out.contains("404"), "{out}");
}
