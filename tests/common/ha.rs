//! HA helpers shared by the failover tests and the failover benchmark: the HA tiny guest,
//! a sampler of every process that must never see two copies of it, and waiting for a
//! failover.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cluster::Node;
use super::{eventually, tiny_guest, Api};

pub const VMID: u32 = 301;

/// Live (not zombie) QEMU processes of guest `vmid` started by daemons under `root`: pid
/// and the node directory whose QMP socket their environment names.
pub fn qemus(root: &Path, vmid: u32) -> Vec<(i32, String)> {
    let want = format!("/run/qemu/{vmid}.qmp");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next().unwrap_or('?')).unwrap_or('?');
        if state == 'Z' || state == 'X' {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        for var in env.split(|b| *b == 0) {
            let Some(path) = var.strip_prefix(b"HORCRUX_QMP=") else { continue };
            let path = String::from_utf8_lossy(path);
            if let Some(rest) = path.strip_prefix(&format!("{}/", root.display())) {
                if rest.ends_with(&want) {
                    out.push((pid, rest.split('/').next().unwrap_or_default().to_string()));
                }
            }
        }
    }
    out
}

/// Looks at every process each 100 ms; remembers the most copies of the guest seen at once.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, u64, Vec<String>)>>,
}

impl Sampler {
    pub fn start(root: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, root) = (stop.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            let (mut most, mut samples, mut doubles) = (0usize, 0u64, Vec::new());
            while !s.load(Ordering::SeqCst) {
                let q = qemus(&root, VMID);
                if q.len() > 1 {
                    doubles.push(format!("{q:?}"));
                }
                most = most.max(q.len());
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, samples, doubles)
        });
        Sampler { stop, thread: Some(thread) }
    }

    /// Stops it; asserts it never saw two copies.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (most, samples, doubles) = self.thread.take().unwrap().join().unwrap();
        assert!(most <= 1, "two QEMUs of guest {VMID} at once: {doubles:?}");
        samples
    }
}

pub fn boot() -> Value {
    let g = tiny_guest();
    json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"})
}

/// Where the guest runs (QMP `running`) according to `api`, if it does.
pub fn running_on(api: &Api) -> Option<String> {
    let (code, vm) = api.get(&format!("/vms/{VMID}"));
    (code == 200 && vm["qmpstatus"] == "running").then(|| vm["node"].as_str().unwrap_or_default().to_string())
}

/// Creates the HA guest on the first node and waits until HA runs it there.
pub fn ha_guest(nodes: &[Node], admin: &Path) {
    let api = nodes[0].api(admin);
    let (code, body) =
        api.post("/vms", &json!({"vmid": VMID, "name": "ha", "memory_mib": 128, "boot": boot()}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.post(
        "/cluster/ha/resources",
        &json!({"sid": format!("vm:{VMID}"), "state": "started", "max_restart": 1, "max_relocate": 1, "failback": true, "comment": ""}),
    );
    assert_eq!(code, 200, "{body}");
    eventually("HA starts the guest", Duration::from_secs(30), || running_on(&api).is_some());
    assert_eq!(running_on(&api).as_deref(), Some(nodes[0].name.as_str()));
    // The QEMU is the fence's child, not the daemon's.
    let q = qemus(nodes[0].dir.parent().unwrap(), VMID);
    assert_eq!(q.len(), 1, "{q:?}");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", q[0].0)).unwrap();
    let ppid: i32 = stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap();
    let parent = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    let parent: Vec<String> =
        parent.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(parent.iter().any(|a| a == "fence"), "QEMU's parent is {parent:?}");
}

/// Waits until the guest runs (QMP `running`) on a node other than `failed`: the time since
/// `t0` and that node. The new QEMU is found among the processes, then its own node (which
/// answers locally) is asked; a node that would forward to the failed owner is not.
pub fn wait_failover(nodes: &[Node], admin: &Path, failed: usize, t0: Instant) -> (Duration, usize) {
    let root = nodes[0].dir.parent().unwrap();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let q = qemus(root, VMID);
        if let Some((_, on)) = q.iter().find(|(_, n)| *n != nodes[failed].name) {
            let at = nodes.iter().position(|m| m.name == *on).unwrap();
            if running_on(&nodes[at].api(admin)).as_deref() == Some(on.as_str()) {
                return (t0.elapsed(), at);
            }
        }
        assert!(Instant::now() < deadline, "no failover within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every node answers the guest's current node and status.
pub fn all_agree(nodes: &[Node], admin: &Path, on: usize) {
    for n in nodes {
        let api = n.api(admin);
        eventually(
            &format!("{} shows the guest on {}", n.name, nodes[on].name),
            Duration::from_secs(15),
            || running_on(&api).as_deref() == Some(nodes[on].name.as_str()),
        );
    }
}

pub fn owner(nodes: &[Node], admin: &Path) -> usize {
    let on = running_on(&nodes[0].api(admin)).or_else(|| running_on(&nodes[1].api(admin))).unwrap();
    nodes.iter().position(|n| n.name == on).unwrap()
}
