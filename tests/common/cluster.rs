//! Several `horcrux` processes on 127.0.0.1 forming one cluster (the cluster and HA tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub qport: u16,
    pub daemon: Option<Daemon>,
    /// Extra environment for `horcrux serve`.
    pub env: Vec<(String, String)>,
}

/// Cluster tests snapshot (and compact the log) every this many entries.
pub const SNAPSHOT_EVERY: &str = "20";

impl Node {
    pub fn new(root: &Path, name: &str) -> Self {
        Node {
            name: name.into(),
            dir: root.join(name),
            port: free_port(),
            qport: free_udp_port(),
            daemon: None,
            env: vec![("HORCRUX_SNAPSHOT_LOGS".into(), SNAPSHOT_EVERY.into())],
        }
    }

    pub fn args(&self, join: Option<&str>) -> Vec<String> {
        let mut a = vec!["--cluster-listen".to_string(), format!("127.0.0.1:{}", self.qport)];
        if let Some(t) = join {
            a.push("--join".into());
            a.push(t.into());
        }
        a
    }

    pub fn start(&mut self, join: Option<&str>) {
        let cmd = serve_command(
            &self.dir,
            self.port,
            &self.name,
            &self.args(join),
            &self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
        );
        self.daemon = Some(Daemon::spawn_ready(cmd, &self.dir, self.port));
    }

    /// Starts a joining node that must be refused: returns its exit status and log.
    pub fn join_refused(&self, token: &str) -> String {
        let out = serve_command(&self.dir, self.port, &self.name, &self.args(Some(token)), &[])
            .status()
            .expect("horcrux serve runs");
        assert!(!out.success(), "a refused join must exit non-zero");
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap()
    }

    pub fn api(&self, admin: &Path) -> Api {
        let token = std::fs::read_to_string(admin.join("admin.token")).unwrap();
        Api::new(&format!("https://127.0.0.1:{}", self.port), &self.dir).with_token(token.trim())
    }

    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn token(api: &Api, ttl_s: u64) -> String {
    let (code, body) = api.post("/cluster/tokens", &json!({ "ttl_s": ttl_s }));
    assert_eq!(code, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

pub fn status(api: &Api) -> Value {
    let (code, s) = api.get("/cluster/status");
    assert_eq!(code, 200, "{s}");
    s
}

pub fn voters_online(s: &Value) -> usize {
    s["nodes"].as_array().unwrap().iter().filter(|n| n["voter"] == true && n["online"] == true).count()
}

pub fn create_vm(api: &Api, vmid: u64) -> u16 {
    api.post("/vms", &json!({"vmid": vmid, "name": format!("v{vmid}"), "memory_mib": 64})).0
}

pub fn vmids(api: &Api) -> Vec<u64> {
    try_vmids(api).unwrap_or_else(|e| panic!("{e}"))
}

/// The VMIDs a node lists, or its error (a node still catching up may answer 503).
pub fn try_vmids(api: &Api) -> Result<Vec<u64>, String> {
    let (code, list) = api.get("/vms");
    if code != 200 {
        return Err(format!("{code}: {list}"));
    }
    let mut v: Vec<u64> = list.as_array().unwrap().iter().map(|v| v["vmid"].as_u64().unwrap()).collect();
    v.sort();
    Ok(v)
}

pub fn form_cluster(root: &Path, names: &[&str]) -> Vec<Node> {
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(root, n)).collect();
    nodes[0].start(None);
    let admin = nodes[0].dir.clone();
    for i in 1..nodes.len() {
        let t = token(&nodes[0].api(&admin), 600);
        nodes[i].start(Some(&t));
    }
    let api = nodes[0].api(&admin);
    eventually("all voters online", Duration::from_secs(30), || voters_online(&status(&api)) == names.len());
    nodes
}
