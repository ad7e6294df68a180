//! `horcrux quorumtool -s` against the real `corosync-quorumtool -s` (Debian's corosync),
//! field by field, on a 1-node ring and a 3-node ring with the same node names and ids:
//! all up, one down, two down. Corosync runs in network namespaces this test creates.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// Network namespaces, a bridge and corosync processes, removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    bridge: Option<String>,
    corosync: BTreeMap<u32, Child>,
}

impl Lab {
    fn new(prefix: &str) -> Self {
        Lab { prefix: prefix.into(), namespaces: vec![], bridge: None, corosync: BTreeMap::new() }
    }

    fn ns(&self, nodeid: u32) -> String {
        format!("{}{nodeid}", self.prefix)
    }

    /// One namespace per node on a bridge, node i at 10.77.<net>.i (or loopback only).
    fn namespaces(&mut self, ids: &[u32], net: Option<u8>) {
        if let Some(net) = net {
            let br = format!("{}br", self.prefix);
            let _ = Command::new("ip").args(["link", "del", &br]).stderr(Stdio::null()).status();
            run(&["ip", "link", "add", &br, "type", "bridge"]);
            run(&["ip", "link", "set", &br, "up"]);
            self.bridge = Some(br);
            let _ = net;
        }
        for &i in ids {
            let ns = self.ns(i);
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            run(&["ip", "netns", "add", &ns]);
            self.namespaces.push(ns.clone());
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            if let (Some(net), Some(br)) = (net, self.bridge.clone()) {
                let veth = format!("{}v{i}", self.prefix);
                run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
                run(&["ip", "link", "set", &veth, "master", &br, "up"]);
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("10.77.{net}.{i}/24"),
                    "dev",
                    "eth0",
                ]);
                run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            }
        }
    }

    fn start_corosync(&mut self, nodeid: u32, conf: &Path) {
        // Corosync refuses to start twice on one host (a lock in /run): each instance gets
        // its own /run in a private mount namespace. Test-only plumbing, hence the shell.
        let script = format!("mount -t tmpfs tmpfs /run && exec corosync -f -c '{}'", conf.display());
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(nodeid),
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.corosync.insert(nodeid, child);
    }

    fn stop_corosync(&mut self, nodeid: u32) {
        if let Some(mut c) = self.corosync.remove(&nodeid) {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn quorumtool(&self, nodeid: u32) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(nodeid), "corosync-quorumtool", "-s"])
            .output()
            .ok()?;
        // corosync-quorumtool exits non-zero when not quorate; its output is still the status.
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("Membership information").then_some(text)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let ids: Vec<u32> = self.corosync.keys().copied().collect();
        for id in ids {
            self.stop_corosync(id);
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if let Some(br) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", br]).status();
        }
    }
}

/// A corosync.conf for `nodes` (nodeid, name, ring0_addr) that this corosync accepts.
fn corosync_conf(dir: &Path, nodes: &[(u32, &str, String)], file: &str) -> PathBuf {
    let mut s = String::from(
        "totem {\n  version: 2\n  cluster_name: probe\n  transport: knet\n  crypto_cipher: none\n  crypto_hash: none\n  interface {\n    linknumber: 0\n  }\n}\nnodelist {\n",
    );
    for (id, name, addr) in nodes {
        s.push_str(&format!("  node {{\n    ring0_addr: {addr}\n    name: {name}\n    nodeid: {id}\n  }}\n"));
    }
    s.push_str("}\nquorum {\n  provider: corosync_votequorum\n}\n");
    s.push_str(&format!(
        "logging {{\n  to_logfile: yes\n  logfile: {}\n  to_syslog: no\n  to_stderr: no\n}}\n",
        dir.join(format!("{file}.log")).display()
    ));
    let p = dir.join(file);
    std::fs::write(&p, s).unwrap();
    p
}

/// `label -> value` for every `Label: value` line, plus the membership rows.
fn fields(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut rows = Vec::new();
    let mut in_members = false;
    for line in text.lines() {
        if line.starts_with("    Nodeid") {
            in_members = true;
            continue;
        }
        if in_members {
            if !line.trim().is_empty() {
                rows.push(line.to_string());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            map.insert(k.to_string(), v.to_string());
        }
    }
    (map, rows)
}

/// Compares two quorumtool outputs field by field: Date and the Ring ID counter differ by
/// nature (time of the call, ring generation), so only their format is compared.
fn compare(ours: &str, theirs: &str) -> Result<(), String> {
    let (a, ra) = fields(ours);
    let (b, rb) = fields(theirs);
    if a.keys().collect::<Vec<_>>() != b.keys().collect::<Vec<_>>() {
        return Err(format!("different fields:\n{ours}\nvs\n{theirs}"));
    }
    for (k, v) in &a {
        let w = &b[k];
        match k.as_str() {
            "Date" if v.len() != w.len() => return Err(format!("Date format differs: {v:?} vs {w:?}")),
            "Date" => {}
            "Ring ID" => {
                let ok = |s: &str| {
                    let (n, c) = s.trim().split_once('.').unwrap_or(("", ""));
                    n.parse::<u32>().is_ok() && u64::from_str_radix(c, 16).is_ok()
                };
                if !ok(v) || !ok(w) {
                    return Err(format!("Ring ID format: {v:?} vs {w:?}"));
                }
            }
            _ if v != w => return Err(format!("{k}: ours {v:?}, corosync {w:?}\n{ours}\nvs\n{theirs}")),
            _ => {}
        }
    }
    if ra != rb {
        return Err(format!("membership rows differ: {ra:?} vs {rb:?}"));
    }
    // The whole layout (line count, blank lines, headers) must match too.
    if ours.lines().count() != theirs.lines().count() {
        return Err(format!("line count differs:\n{ours}\nvs\n{theirs}"));
    }
    Ok(())
}

fn horcrux_quorumtool(node: &Path, port: u16, admin: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args(["quorumtool", "-s", "--api", &format!("https://127.0.0.1:{port}"), "--token-file"])
        .arg(admin.join("admin.token"))
        .env("HORCRUX_TOKEN_FILE", admin.join("admin.token"))
        .current_dir(node)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until both sides agree (each reacts to a node going down at its own pace).
fn converge(what: &str, ours: impl Fn() -> String, theirs: impl Fn() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(t) = theirs() {
            match compare(&ours(), &t) {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: horcrux quorumtool never matched corosync-quorumtool: {last}");
}

struct HNode {
    dir: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
}

fn start_horcrux(root: &Path, name: &str, join: Option<&str>) -> HNode {
    let dir = root.join(name);
    let port = free_port();
    let qport = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = vec!["--cluster-listen".to_string(), format!("127.0.0.1:{qport}")];
    if let Some(t) = join {
        args.push("--join".into());
        args.push(t.into());
    }
    let d = Daemon::spawn_ready(serve_command(&dir, port, name, &args, &[]), &dir, port);
    HNode { dir, port, daemon: Some(d) }
}

fn import(api: &Api, conf: &Path) {
    let (code, body) =
        api.post("/cluster/corosync", &json!({ "config": std::fs::read_to_string(conf).unwrap() }));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn one_node_ring_matches_corosync() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("hxq1n");
    lab.namespaces(&[1], None);
    let conf = corosync_conf(tmp.path(), &[(1, "node1", "127.0.0.1".into())], "c1.conf");
    lab.start_corosync(1, &conf);
    let h = start_horcrux(tmp.path(), "node1", None);
    import(&h.daemon.as_ref().unwrap().client(), &conf);
    converge("1 node", || horcrux_quorumtool(&h.dir, h.port, &h.dir), || lab.quorumtool(1));
}

#[test]
fn three_node_ring_matches_corosync_as_nodes_go_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("hxq3n");
    lab.namespaces(&[1, 2, 3], Some(1));
    let nodes: Vec<(u32, &str, String)> =
        (1..=3).map(|i| (i, ["node1", "node2", "node3"][i as usize - 1], format!("10.77.1.{i}"))).collect();
    let conf = corosync_conf(tmp.path(), &nodes, "c3.conf");
    for i in 1..=3 {
        lab.start_corosync(i, &conf);
    }
    let mut h1 = start_horcrux(tmp.path(), "node1", None);
    let admin = h1.dir.clone();
    let api1 = h1.daemon.as_ref().unwrap().client();
    let t2 = api1.post("/cluster/tokens", &json!({}));
    let mut h2 = start_horcrux(tmp.path(), "node2", t2.1["token"].as_str());
    let t3 = api1.post("/cluster/tokens", &json!({}));
    let mut h3 = start_horcrux(tmp.path(), "node3", t3.1["token"].as_str());
    import(&api1, &conf);
    let ours = || horcrux_quorumtool(&admin, h1.port, &admin);
    converge("3 nodes, all up", ours, || lab.quorumtool(1));

    lab.stop_corosync(3);
    h3.daemon.take().unwrap().kill9();
    converge("3 nodes, node3 down", ours, || lab.quorumtool(1));

    lab.stop_corosync(2);
    h2.daemon.take().unwrap().kill9();
    converge("3 nodes, node2 and node3 down", ours, || lab.quorumtool(1));
    h1.daemon.take();
}

/// The shim describes the Raft cluster as it is: a healthy one-node cluster that imported a
/// three-node, two-link corosync.conf is quorate with one expected vote (Raft needs no
/// other node), names itself as the import does, and keeps every link's addresses.
#[test]
fn an_imported_bigger_nodelist_does_not_invent_a_quorum_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let h = start_horcrux(tmp.path(), "node1", None);
    let api = h.daemon.as_ref().unwrap().client();
    let conf = "totem {\n cluster_name: pve\n interface {\n  linknumber: 0\n }\n interface {\n  linknumber: 1\n }\n}\n\
        nodelist {\n node {\n  name: node1\n  nodeid: 7\n  ring0_addr: 10.0.0.1\n  ring1_addr: 192.168.9.1\n }\n\
         node {\n  name: node2\n  nodeid: 8\n  ring0_addr: 10.0.0.2\n  ring1_addr: 192.168.9.2\n }\n\
         node {\n  name: node3\n  nodeid: 9\n  ring0_addr: 10.0.0.3\n  ring1_addr: 192.168.9.3\n }\n}\n\
        quorum {\n provider: corosync_votequorum\n}\n";
    let path = tmp.path().join("two-link.conf");
    std::fs::write(&path, conf).unwrap();
    import(&api, &path);
    let out = horcrux_quorumtool(&h.dir, h.port, &h.dir);
    let (f, members) = fields(&out);
    let f = |k: &str| f[k].trim().to_string();
    assert_eq!(f("Quorate"), "Yes", "{out}");
    assert_eq!(
        (f("Expected votes"), f("Total votes"), f("Quorum")),
        ("1".into(), "1".into(), "1".into()),
        "{out}"
    );
    assert!(!out.contains("Activity blocked"), "{out}");
    assert_eq!(f("Node ID"), "7", "the import's node id for node1: {out}");
    let members: Vec<String> =
        members.iter().map(|m| m.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(members, ["7 1 node1 (local)"], "{out}");
    // Writes succeed, as the view says.
    assert_eq!(api.post("/pools", &json!({"poolid": "p1"})).0, 200);
    let (_, c) = api.get("/cluster/corosync");
    let links: Vec<Vec<String>> = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| format!("{}={}", l["link"], l["addr"].as_str().unwrap()))
                .collect()
        })
        .collect();
    assert_eq!(links[1], ["0=10.0.0.2", "1=192.168.9.2"], "{c}");
}
