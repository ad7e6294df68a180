//! Multi-process cluster: three `horcrux` processes on 127.0.0.1 form a cluster with join
//! tokens, replicate writes, fail over when the leader is killed, catch up after a restart,
//! admit a fourth node by snapshot after log compaction, refuse bad tokens, and refuse
//! writes (503) without quorum without losing acknowledged ones.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn three_nodes_replicate_fail_over_catch_up_and_admit_by_snapshot() {
    let t_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = form_cluster(tmp.path(), &["n1", "n2", "n3"]);
    let admin = nodes[0].dir.clone();
    let s = status(&nodes[0].api(&admin));
    assert_eq!(s["leader"], "n1");
    assert_eq!(s["quorate"], true);
    assert_eq!((s["votes"].as_u64(), s["expected_votes"].as_u64()), (Some(3), Some(3)));

    eprintln!("[{:?}] The first nodes admin toke", t_start.elapsed());
    // The first node's admin token works on every node; a write on one is read on the others.
    assert_eq!(create_vm(&nodes[1].api(&admin), 201), 200);
    for n in &nodes {
        assert_eq!(vmids(&n.api(&admin)), vec![201], "on {}", n.name);
    }
    // A guest of n1's, to be seen while n1 is dead.
    assert_eq!(create_vm(&nodes[0].api(&admin), 203), 200);

    eprintln!("[{:?}] Kill the leader:", t_start.elapsed());
    // Kill the leader: a new one is elected within 3 s and writes continue. A write sent to
    // a follower at once moves to the new leader as soon as it is known, instead of waiting
    // out the 4 s the forward to the dead leader would take.
    let follower = nodes[2].api(&admin);
    nodes[0].kill();
    let t0 = Instant::now();
    let (code, body) = follower.post("/pools", &json!({"poolid": "during-failover"}));
    let write = t0.elapsed();
    assert_eq!(code, 200, "{body}");
    eprintln!("write sent to a follower right after the leader's kill: accepted after {write:?}");
    assert!(write < Duration::from_secs(3), "the write waited {write:?} (the forward timeout is 4 s)");
    let survivor = nodes[1].api(&admin);
    eventually("a new leader", Duration::from_secs(10), || {
        let s = status(&survivor);
        s["leader"].is_string() && s["leader"] != "n1"
    });
    let failover = t0.elapsed();
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}");
    assert_eq!(create_vm(&nodes[2].api(&admin), 202), 200);
    // As Proxmox shows a dead member: offline in /nodes and cluster/resources, its guests'
    // status unknown (nobody observes them).
    eventually("n1 shown offline", Duration::from_secs(15), || {
        let (_, nodes_list) = survivor.get("/api2/json/nodes");
        nodes_list["data"].as_array().unwrap().iter().any(|n| n["node"] == "n1" && n["status"] == "offline")
    });
    let (_, res) = survivor.get("/api2/json/cluster/resources");
    let entries = res["data"].as_array().unwrap();
    let n1 = entries.iter().find(|e| e["id"] == "node/n1").expect("n1 is listed");
    assert_eq!(n1["status"], "offline", "{n1}");
    let on_n1: Vec<&Value> = entries.iter().filter(|e| e["type"] == "qemu" && e["node"] == "n1").collect();
    assert!(!on_n1.is_empty() && on_n1.iter().all(|e| e["status"] == "unknown"), "{on_n1:?}");
    assert!(entries.iter().any(|e| e["id"] == "node/n2" && e["status"] == "online"), "{res}");

    eprintln!("[{:?}] The killed node restarts", t_start.elapsed());
    // The killed node restarts from its log and catches up, even with its commit point lost
    // (it is written without fsync, so a power loss can take it): start-up then must not
    // act on its lagging copy of the state (it once re-proposed the local storage and
    // stalled, and could have replaced the cluster's admin token).
    forget_commit_point(&nodes[0].dir.join("raft"));
    let admin_token = std::fs::read_to_string(admin.join("admin.token")).unwrap();
    nodes[0].start(None);
    eventually("n1 caught up", Duration::from_secs(20), || {
        try_vmids(&nodes[0].api(&admin)) == Ok(vec![201, 202, 203])
    });
    assert_eq!(std::fs::read_to_string(admin.join("admin.token")).unwrap(), admin_token, "token kept");
    assert_eq!(nodes[2].api(&admin).get("/vms").0, 200, "the admin token still works cluster-wide");

    eprintln!("[{:?}] Enough writes to snapshot", t_start.elapsed());
    // Enough writes to snapshot and compact the log, then a 4th node joins by snapshot.
    for vmid in 300..330 {
        assert_eq!(create_vm(&nodes[1].api(&admin), vmid), 200);
    }
    let leader_api = nodes[1].api(&admin);
    eventually("log compacted on the leader", Duration::from_secs(20), || {
        let s = status(&leader_api);
        s["local"]["purged"].as_u64().unwrap_or(0) > 10
    });
    let mut n4 = Node::new(tmp.path(), "n4");
    n4.start(Some(&token(&nodes[2].api(&admin), 600)));
    let n4_api = n4.api(&admin);
    eventually("n4 has every VM", Duration::from_secs(20), || {
        try_vmids(&n4_api).is_ok_and(|v| v.len() == 33)
    });
    let s4 = status(&n4_api);
    assert!(s4["local"]["snapshot"].as_u64().is_some(), "n4 should have installed a snapshot: {s4}");
    // Four members keep three voters (odd): n4 stays a learner until a fifth arrives.
    let s4 = status(&n4_api);
    assert_eq!(s4["expected_votes"], 3, "{s4}");
    nodes.push(n4);

    eprintln!("[{:?}] Tokens: reused", t_start.elapsed());
    // Tokens: reused, expired and revoked ones are refused and the node exits non-zero.
    let used = token(&nodes[1].api(&admin), 600);
    let mut n5 = Node::new(tmp.path(), "n5");
    n5.start(Some(&used));
    n5.kill();
    let log = Node::new(tmp.path(), "n6").join_refused(&used);
    assert!(log.contains("already used"), "{log}");
    let short = token(&nodes[1].api(&admin), 1);
    std::thread::sleep(Duration::from_millis(1500));
    let log = Node::new(tmp.path(), "n7").join_refused(&short);
    assert!(log.contains("expired"), "{log}");
    let revoked = token(&nodes[1].api(&admin), 600);
    let id = horcrux_raft::join::JoinTokenData::decode(&revoked).unwrap().id;
    assert_eq!(nodes[1].api(&admin).delete(&format!("/cluster/tokens/{id}")).0, 200);
    let log = Node::new(tmp.path(), "n8").join_refused(&revoked);
    assert!(log.contains("revoked"), "{log}");

    eprintln!("[{:?}] A token whose CA fingerprin", t_start.elapsed());
    // A token whose CA fingerprint does not match the cluster's is refused at the TLS layer.
    let mut forged = horcrux_raft::join::JoinTokenData::decode(&token(&nodes[1].api(&admin), 600)).unwrap();
    forged.ca_fingerprint = "00".repeat(32);
    let log = Node::new(tmp.path(), "n9").join_refused(&forged.encode());
    assert!(log.contains("fingerprint") || log.contains("CA"), "{log}");

    // Node removal: refused while the node owns guests; the dead n5 can be removed.
    let api = nodes[2].api(&admin);
    let (code, body) = api.delete("/cluster/nodes/n2");
    assert_eq!(code, 409, "{body}");
    let (code, body) = api.delete("/cluster/nodes/n5");
    assert_eq!(code, 200, "{body}");
    let s = status(&api);
    assert!(s["nodes"].as_array().unwrap().iter().all(|n| n["name"] != "n5"), "{s}");
    assert_eq!(s["quorate"], true);
    assert_eq!(api.delete("/cluster/nodes/nope").0, 409);

    // Graceful leave through the CLI, pointed at n4 with the first node's token file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args(["cluster", "leave", "--api", &format!("https://127.0.0.1:{}", nodes[3].port), "--token-file"])
        .arg(admin.join("admin.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = status(&api);
    assert!(s["nodes"].as_array().unwrap().iter().all(|n| n["name"] != "n4"), "{s}");
}

#[test]
fn quorum_loss_answers_503_and_recovers_without_losing_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = form_cluster(tmp.path(), &["q1", "q2", "q3"]);
    let admin = nodes[0].dir.clone();
    let mut acknowledged = Vec::new();
    for vmid in 100..110 {
        assert_eq!(create_vm(&nodes[(vmid % 3) as usize].api(&admin), vmid), 200);
        acknowledged.push(vmid);
    }
    // Two of three down (the leader among them).
    nodes[0].kill();
    nodes[1].kill();
    let api = nodes[2].api(&admin);
    let t0 = Instant::now();
    let (code, body) = api.post("/vms", &json!({"vmid": 500, "name": "v500", "memory_mib": 64}));
    let took = t0.elapsed();
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("quorum"), "{body}");
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    let s = status(&api);
    assert_eq!(s["quorate"], false, "{s}");

    // One comes back: writes succeed again, and nothing acknowledged was lost.
    nodes[1].start(None);
    let api = nodes[2].api(&admin);
    eventually("writes accepted again", Duration::from_secs(30), || create_vm(&api, 600) == 200);
    acknowledged.push(600);
    let got = vmids(&api);
    for vmid in &acknowledged {
        assert!(got.contains(vmid), "acknowledged VM {vmid} lost: {got:?}");
    }
    assert!(!got.contains(&500) || got.len() == acknowledged.len() + 1);
}

#[test]
fn any_node_acts_on_any_guest_by_forwarding_to_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = form_cluster(tmp.path(), &["f1", "f2", "f3"]);
    let admin = nodes[0].dir.clone();
    let (a1, a2, a3) = (nodes[0].api(&admin), nodes[1].api(&admin), nodes[2].api(&admin));
    let g = tiny_guest();
    // Created through f2: f2 owns it and runs it.
    let (code, body) = a2.post(
        "/vms",
        &json!({"vmid": 700, "name": "fwd", "memory_mib": 128, "disks": [{"storage": "local", "size_mib": 8}],
                "boot": {"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"}}),
    );
    assert_eq!(code, 200, "{body}");
    // Started through f1; the task runs on f2 and is polled through f3.
    let (code, body) = a1.post("/vms/700/start", &json!({}));
    assert_eq!(code, 200, "{body}");
    let upid = body["upid"].as_str().unwrap().to_string();
    assert!(upid.starts_with("UPID:f2:"), "the owner runs the task: {upid}");
    assert_eq!(a3.wait_task(&upid), "OK");
    let (_, vm) = a1.get("/vms/700");
    assert_eq!(
        (vm["node"].as_str(), vm["status"].as_str(), vm["qmpstatus"].as_str()),
        (Some("f2"), Some("running"), Some("running"))
    );
    assert!(nodes[1].dir.join("run/qemu/700.pid").exists(), "QEMU runs on the owner");
    assert!(!nodes[0].dir.join("run/qemu/700.pid").exists());
    consoles_are_relayed_from_any_node(&nodes, &a1, &a3);
    let (code, _) = a3.delete("/vms/700");
    assert_eq!(code, 409, "running guest must not be deleted through another node either");
    let (code, body) = a3.post("/vms/700/migrate", &json!({"target": "f3"}));
    assert_eq!(code, 409, "a running guest is not migrated offline: {body}");
    let (_, body) = a3.post("/vms/700/stop", &json!({}));
    assert_eq!(a1.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (code, body) = a1.post("/vms/700/migrate", &json!({"target": "f3"}));
    assert_eq!(code, 409, "local disks cannot move yet: {body}");
    assert_eq!(a1.post("/vms/700/migrate", &json!({"target": ""})).0, 400);

    // Offline migration of a diskless guest, asked of f1: f2 (the owner) checks that its
    // QEMU is gone and commits the move; f3 then runs it.
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, body) =
        a2.post("/vms", &json!({"vmid": 701, "name": "mover", "memory_mib": 128, "boot": boot}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = a1.post("/vms/701/migrate", &json!({"target": "f3"}));
    assert_eq!(code, 200, "{body}");
    assert!(body["upid"].as_str().unwrap().starts_with("UPID:f2:"), "the source node migrates: {body}");
    let (code, body) = a1.post("/vms/701/start", &json!({}));
    assert_eq!(code, 200, "{body}");
    let upid = body["upid"].as_str().unwrap().to_string();
    assert!(upid.starts_with("UPID:f3:"), "the new owner starts it: {upid}");
    assert_eq!(a2.wait_task(&upid), "OK");
    assert!(nodes[2].dir.join("run/qemu/701.pid").exists(), "QEMU runs on the new owner");
    assert!(!nodes[1].dir.join("run/qemu/701.pid").exists());
    let (_, body) = a2.post("/vms/701/stop", &json!({}));
    assert_eq!(a1.wait_task(body["upid"].as_str().unwrap()), "OK");
    assert_eq!(a1.delete("/vms/701").0, 200);
    // The `local` pool's path is replicated (here all nodes share one host, so one path).
    let (_, pools) = a1.get("/storage");
    let images = PathBuf::from(pools[0]["path"].as_str().unwrap()).join("images/700");
    assert!(images.join("vm-700-disk-0.qcow2").exists());
    let (code, body) = a1.delete("/vms/700");
    assert_eq!(code, 200, "{body}");
    assert!(!images.exists(), "the owner removed the disk");
    assert_eq!(a3.get("/vms/700").0, 404);
    // Creating for another member: through f1, for f3 (as Proxmox clients address the node).
    let (code, body) = a1.post("/vms?node=f3", &json!({"vmid": 702, "name": "remote", "memory_mib": 64}));
    assert_eq!(code, 200, "{body}");
    assert!(body["upid"].as_str().unwrap().starts_with("UPID:f3:"), "{body}");
    assert_eq!(a2.get("/vms/702").1["node"], "f3");
    let (code, body) = a1.post("/vms?node=nowhere", &json!({"vmid": 703, "name": "x", "memory_mib": 64}));
    assert_eq!((code, body["field"].as_str()), (400, Some("node")), "{body}");
    assert_eq!(a1.delete("/vms/702").0, 200);
    // Proxmox's migrate through the compatibility API, addressed to any member.
    assert_eq!(a2.post("/vms", &json!({"vmid": 704, "name": "pxmove", "memory_mib": 64})).0, 200);
    let auth = format!("PVEAPIToken=root@pam!admin={}", a1.token());
    let (code, body, _) = a1.raw(
        "POST",
        "/api2/json/nodes/f2/qemu/704/migrate",
        &[("Authorization", &auth)],
        &json!({"target": "f3", "online": 0}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body["data"].as_str().unwrap().starts_with("UPID:f2:"), "{body}");
    assert_eq!(a1.wait_task(body["data"].as_str().unwrap()), "OK");
    assert_eq!(a1.get("/vms/704").1["node"], "f3");
    let (code, body, _) = a1.raw(
        "POST",
        "/api2/json/nodes/f3/qemu/704/migrate",
        &[("Authorization", &auth)],
        &json!({"target": "f1", "online": 1}),
    );
    assert_eq!((code, body["errors"]["online"].is_string()), (400, true), "{body}");
    assert_eq!(a1.delete("/vms/704").0, 200);
    // Each member's audit log is readable through any member.
    let (code, log) = a1.get("/access/audit?node=f2&limit=1000");
    assert_eq!(code, 200, "{log}");
    let created_on_f2 = |e: &Value| e["action"] == "POST /api/v1/vms" && e["status"] == 200;
    assert!(log.as_array().unwrap().iter().any(created_on_f2), "f2 logged the create it served: {log}");
    let (_, own) = a1.get("/access/audit?limit=1000");
    assert_ne!(own, log, "f1's own log is another one");
    // A write forwarded to its owner is audited there too, marked as forwarded.
    let forwarded = |e: &Value| e["action"] == "POST /api/v1/vms" && e["detail"] == "forwarded";
    let (_, f3_log) = a1.get("/access/audit?node=f3&limit=1000");
    assert!(f3_log.as_array().unwrap().iter().any(forwarded), "f3 audited the create it executed: {f3_log}");

    uploads_stream_to_their_node(&nodes, &a1);

    // Failed logins count on every member: guessing at f1 is throttled at f2 as well.
    assert_eq!(a1.post("/access/users", &json!({"userid": "gus@pve"})).0, 200);
    let pw = json!({"userid": "gus@pve", "password": "the real password"});
    assert_eq!(a1.request("PUT", "/access/password", Some(a1.token()), &pw).0, 200);
    let login = |api: &Api, pw: &str| {
        api.raw("POST", "/access/ticket", &[], &json!({"username": "gus@pve", "password": pw})).0
    };
    for _ in 0..5 {
        assert_eq!(login(&a1, "guess"), 401);
    }
    eventually("f2 counts f1's failures", Duration::from_secs(5), || login(&a2, "the real password") == 429);
    // (The failures reach each member on its own, best effort: f3's may come a little later.)
    eventually("f3 counts f1's failures", Duration::from_secs(5), || login(&a3, "the real password") == 429);

    // `horcrux cluster rotate-ca` rolls the CA and waits until every member renewed.
    let old_ca = std::fs::read_to_string(admin.join("ssl/ca.pem")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args([
            "cluster",
            "rotate-ca",
            "--timeout",
            "60s",
            "--api",
            &format!("https://127.0.0.1:{}", nodes[0].port),
        ])
        .arg("--token-file")
        .arg(admin.join("admin.token"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done"), "{stdout}");
    // Every node's HTTPS certificate comes from the new CA, and clients are told to trust
    // only it: a client that trusts each node's ca.pem reaches the node and, through it, the
    // others over the cluster transport.
    eventually("HTTPS certificates from the new CA", Duration::from_secs(30), || {
        nodes.iter().all(|n| {
            let ca = std::fs::read_to_string(n.dir.join("ssl/ca.pem")).unwrap();
            ca != old_ca
                && ca.matches("BEGIN CERTIFICATE").count() == 1
                && n.api(&admin).get_public("/version").is_ok()
        })
    });
    let a1 = nodes[0].api(&admin);
    let (_, ca) = a1.get("/cluster/ca");
    assert_eq!(ca["rotating"], false, "{ca}");
    assert_eq!(ca["members"].as_array().unwrap().len(), 3, "{ca}");
    assert!(ca["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["current_ca"] == true && m["confirmed"] == true));
    assert_eq!(a1.get("/access/audit?node=f3&limit=1").0, 200, "forwarding works after the roll");
    assert_eq!(a1.post("/vms?node=f2", &json!({"vmid": 705, "name": "after-roll", "memory_mib": 64})).0, 200);
    assert_eq!(nodes[2].api(&admin).delete("/vms/705").0, 200);
}

#[test]
fn voters_are_capped_at_five_and_further_nodes_stay_learners() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(tmp.path(), n)).collect();
    nodes[0].start(None);
    let admin = nodes[0].dir.clone();
    let api = nodes[0].api(&admin);
    for (i, node) in nodes.iter_mut().enumerate().skip(1) {
        let t = token(&api, 600);
        node.start(Some(&t));
        // Join one at a time; voters stay odd: 1, 1, 3, 3, 5, 5.
        let expected_voters = [1, 1, 3, 3, 5, 5][i];
        eventually("promotion", Duration::from_secs(30), || voters_online(&status(&api)) == expected_voters);
    }
    eventually("six members online", Duration::from_secs(20), || {
        status(&api)["nodes"].as_array().unwrap().iter().filter(|n| n["online"] == true).count() == 6
    });
    let s = status(&api);
    let learners: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["voter"] == false)
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(learners.len(), 1, "{s}");
    assert_eq!(s["expected_votes"], 5);
    // The learner replicates and serves reads.
    assert_eq!(create_vm(&api, 900), 200);
    let learner = nodes.iter().find(|n| n.name == learners[0]).unwrap();
    assert_eq!(try_vmids(&learner.api(&admin)), Ok(vec![900]));
}

/// A node that dies after it was admitted and saved its identity, but before the leader's
/// first entries reached it, resumes as a member when it restarts: it never initialises a
/// cluster of its own (which would be a rogue one answering writes alone).
#[test]
fn a_crash_during_a_join_resumes_the_join() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::new(tmp.path(), "j1");
    n1.start(None);
    let admin = n1.dir.clone();
    let api1 = n1.api(&admin);
    let mut n2 = Node::new(tmp.path(), "j2");
    let t = token(&api1, 600);
    let crashed = serve_command(
        &n2.dir,
        n2.port,
        &n2.name,
        &n2.args(Some(&t)),
        &[("HORCRUX_TEST_CRASH_AFTER_JOIN", "1")],
    )
    .status()
    .unwrap();
    assert_eq!(
        crashed.code(),
        Some(70),
        "the test hook did not fire: {}",
        std::fs::read_to_string(n2.dir.join("daemon.log")).unwrap()
    );
    // Restarted as before (the token is spent; the saved identity is used).
    n2.start(Some(&t));
    let api2 = n2.api(&admin);
    eventually("j2 follows j1", Duration::from_secs(20), || {
        let s = status(&api2);
        s["leader"] == "j1" && s["nodes"].as_array().unwrap().len() == 2
    });
    assert_eq!(api2.post("/pools", &json!({"poolid": "from-j2"})).0, 200);
    eventually("j1 has j2's write", Duration::from_secs(5), || {
        api1.get("/pools").1.as_array().unwrap().iter().any(|p| p["poolid"] == "from-j2")
    });
    assert_eq!(status(&api1)["nodes"].as_array().unwrap().len(), 2);
}

/// A node that ran standalone becomes a one-node cluster when it is restarted with a
/// cluster address, keeping its guests, and others join it.
#[test]
fn a_standalone_node_becomes_a_cluster_others_join() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s1 = Node::new(tmp.path(), "s1");
    let alone = serve_command(&s1.dir, s1.port, &s1.name, &[], &[]);
    let mut d = Daemon::spawn_ready(alone, &s1.dir, s1.port);
    let admin = s1.dir.clone();
    assert_eq!(create_vm(&s1.api(&admin), 501), 200);
    let (code, body) = s1.api(&admin).post("/cluster/tokens", &json!({}));
    assert_eq!(code, 409, "a standalone node has no transport to join: {body}");
    d.terminate();
    s1.start(None);
    let api1 = s1.api(&admin);
    assert_eq!(vmids(&api1), vec![501], "the guest was kept");
    let mut s2 = Node::new(tmp.path(), "s2");
    s2.start(Some(&token(&api1, 600)));
    eventually("both voters online", Duration::from_secs(30), || {
        voters_online(&status(&api1)) == 1 && status(&api1)["nodes"].as_array().unwrap().len() == 2
    });
    let api2 = s2.api(&admin);
    assert_eq!(vmids(&api2), vec![501], "the joined node sees the standalone node's guest");
    assert_eq!(create_vm(&api2, 502), 200);
    assert_eq!(vmids(&api1), vec![501, 502]);
    // It stays a cluster member across restarts.
    s1.kill();
    s1.start(None);
    eventually("s1 back", Duration::from_secs(20), || try_vmids(&s1.api(&admin)) == Ok(vec![501, 502]));
}

/// Uploads addressed to another member travel there as they arrive (streamed over the
/// cluster transport, not held whole by the node the client talks to): a binary file
/// larger than any forwarded request body, through the native route and through Proxmox's
/// multipart one; one cut off mid-way leaves nothing on the target.
/// Guest 700 runs on f2: its serial console is opened through f1 and its VNC console
/// through f3, each relayed over the cluster transport; a ticket spent stays spent.
fn consoles_are_relayed_from_any_node(nodes: &[Node], a1: &Api, a3: &Api) {
    use common::ws::WsClient;
    eventually("guest 700 boots", Duration::from_secs(60), || {
        a1.get_text("/vms/700/serial").contains("GUEST-BOOTED")
    });
    let auth = format!("PVEAPIToken=root@pam!admin={}", a1.token());
    let (code, t, _) = a1.raw(
        "POST",
        "/api2/json/nodes/f2/qemu/700/termproxy",
        &[("Authorization", &auth)],
        &json!({"serial": "serial0"}),
    );
    assert_eq!(code, 200, "{t}");
    let t = &t["data"];
    assert!(t["upid"].as_str().unwrap().starts_with("UPID:f2:"), "the owner issued it: {t}");
    let path = format!(
        "/api2/json/nodes/f2/qemu/700/vncwebsocket?port={}&vncticket={}",
        t["port"],
        t["ticket"].as_str().unwrap().replace(':', "%3A")
    );
    let mut ws = WsClient::connect(nodes[0].port, &nodes[0].dir, &path, &[("Authorization", &auth)]).unwrap();
    ws.send_text(&format!("{}:{}\n", t["user"].as_str().unwrap(), t["ticket"].as_str().unwrap()));
    ws.recv_until("OK", Duration::from_secs(10));
    ws.recv_until("GUEST-BOOTED", Duration::from_secs(10));
    drop(ws);
    let again = WsClient::connect(nodes[2].port, &nodes[2].dir, &path, &[("Authorization", &auth)]);
    assert_eq!(again.err().map(|r| r.0), Some(403), "spent, whichever node it is presented to");
    let (code, v) = a3.post("/vms/700/vncproxy", &json!({}));
    assert_eq!(code, 200, "{v}");
    let path = format!(
        "/api/v1/vms/700/vncwebsocket?port={}&vncticket={}",
        v["port"],
        v["ticket"].as_str().unwrap().replace(':', "%3A")
    );
    let bearer = format!("Bearer {}", a3.token());
    let mut ws =
        WsClient::connect(nodes[2].port, &nodes[2].dir, &path, &[("Authorization", &bearer)]).unwrap();
    let mut buf = Vec::new();
    assert_eq!(ws.read_bytes(12, &mut buf), b"RFB 003.008\n", "f2's QEMU, through f3");
}

fn uploads_stream_to_their_node(nodes: &[Node], a1: &Api) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (_, pools) = a1.get("/storage");
    let iso_dir = PathBuf::from(pools[0]["path"].as_str().unwrap()).join("template/iso");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.iso");
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let sha = {
        let out = Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    };
    let base = format!("https://127.0.0.1:{}", nodes[0].port);
    let curl = |args: &[&str]| {
        let mut c = Command::new("curl");
        c.args(["-sk", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", a1.token())]);
        c.args(args);
        c
    };
    let out = curl(&["-X", "POST", "-H", "Content-Type: application/octet-stream", "-T"])
        .arg(&file)
        .arg(format!(
            "{base}/api/v1/storage/local/upload?node=f3&content=iso&filename=fwd.iso&checksum={sha}&checksum-algorithm=sha256"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("\"upid\":\"UPID:f3:"), "f3 stored it: {text}");
    assert!(std::fs::read(iso_dir.join("fwd.iso")).unwrap() == data, "the whole file, byte for byte");

    let auth = format!("Authorization: PVEAPIToken=root@pam!admin={}", a1.token());
    let out = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", "-H", &auth, "-F", "content=iso", "-F"])
        .arg(format!("filename=@{};filename=pve.iso", file.display()))
        .arg(format!("{base}/api2/json/nodes/f2/storage/local/upload"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n200") && text.contains("UPID:f2:"), "f2 stored it: {text}");
    assert!(std::fs::read(iso_dir.join("pve.iso")).unwrap() == data);

    // Cut off: a quarter of the file, then the client dies; the target keeps nothing.
    let mut cut = curl(&["-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/octet-stream"])
        .args([
            "-T",
            "-",
            &format!("{base}/api/v1/storage/local/upload?node=f3&content=iso&filename=cut.iso"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = cut.stdin.take().unwrap();
    stdin.write_all(&data[..10 << 20]).unwrap();
    stdin.flush().unwrap();
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&iso_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    eventually("the forwarded upload is being written", Duration::from_secs(20), || {
        names().iter().any(|n| n.starts_with(".cut.iso.partial-"))
    });
    cut.kill().unwrap();
    let _ = cut.wait();
    drop(stdin);
    eventually("the cut upload left nothing", Duration::from_secs(20), || names() == ["fwd.iso", "pve.iso"]);
    for name in ["fwd.iso", "pve.iso"] {
        assert_eq!(a1.delete(&format!("/storage/local/content/local:iso%2F{name}")).0, 200, "{name}");
    }
}
