//! Simulated hosts: an in-memory hypervisor per node whose slowness and failures come from
//! the seed. All hosts share one registry of which node runs which guest, so the checker
//! sees a guest running on two nodes the moment it happens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_drivers::{
    BoxFuture, DriverError, GuestLaunch, Hypervisor, ObservedPower, ShutdownOutcome, VolumeStore,
};
use horcrux_raft::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct HostsInner {
    /// vmid -> the nodes whose host runs it.
    pub running: BTreeMap<u32, BTreeSet<NodeId>>,
    /// Safety violations seen by the hosts (a guest on two nodes at once).
    pub violations: Vec<String>,
    pub rng: StdRng,
    /// Driver faults on (off once the run heals).
    pub faults: bool,
    /// Injected bug: a host keeps reporting a guest killed under it as running.
    pub stale_status: bool,
    /// Guests killed under a host (QEMU died, host crashed) that the host still reports
    /// (only with `stale_status`).
    pub ghosts: BTreeSet<(NodeId, u32)>,
    pub events: Vec<String>,
    /// node -> the disk volumes its storage holds.
    pub volumes: BTreeMap<NodeId, BTreeSet<String>>,
}

#[derive(Clone)]
pub struct Hosts(pub Arc<Mutex<HostsInner>>);

impl Hosts {
    pub fn new(seed: u64, faults: bool) -> Self {
        Self(Arc::new(Mutex::new(HostsInner {
            running: BTreeMap::new(),
            violations: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x4057),
            faults,
            stale_status: false,
            ghosts: BTreeSet::new(),
            events: Vec::new(),
            volumes: BTreeMap::new(),
        })))
    }

    /// What the host reports: its running guests, plus ghosts under the stale-status bug.
    pub fn reports_running(&self, node: NodeId, vmid: u32) -> bool {
        let h = self.0.lock().unwrap();
        h.running.get(&vmid).is_some_and(|n| n.contains(&node)) || h.ghosts.contains(&(node, vmid))
    }

    /// The guest's process dies on `node` (QEMU crashed, or the host lost power).
    pub fn kill(&self, node: NodeId, vmid: u32) -> bool {
        let mut h = self.0.lock().unwrap();
        let killed = h.running.get_mut(&vmid).is_some_and(|n| n.remove(&node));
        if killed && h.stale_status {
            h.ghosts.insert((node, vmid));
        }
        killed
    }

    /// A power loss of `node`: every guest on it dies. Returns the guests killed.
    pub fn power_off(&self, node: NodeId) -> Vec<u32> {
        let vmids: Vec<u32> = {
            let h = self.0.lock().unwrap();
            h.running.iter().filter(|(_, n)| n.contains(&node)).map(|(v, _)| *v).collect()
        };
        vmids.into_iter().filter(|v| self.kill(node, *v)).collect()
    }

    /// Every (vmid, node) that runs now.
    pub fn placements(&self) -> BTreeMap<u32, BTreeSet<NodeId>> {
        self.0
            .lock()
            .unwrap()
            .running
            .iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(v, n)| (*v, n.clone()))
            .collect()
    }

    /// Node `node`'s directory storage, in memory.
    pub fn volume_store(&self, node: NodeId) -> Arc<dyn VolumeStore> {
        Arc::new(SimVolumes { node, hosts: self.clone() })
    }

    pub fn has_volume(&self, node: NodeId, volid: &str) -> bool {
        self.0.lock().unwrap().volumes.get(&node).is_some_and(|v| v.contains(volid))
    }

    pub fn hypervisor(&self, node: NodeId) -> Arc<dyn Hypervisor> {
        Arc::new(SimHypervisor { node, hosts: self.clone() })
    }

    /// A random delay (a slow QEMU or disk) and whether this operation fails.
    fn roll(&self, fail_per_mille: u32) -> (Duration, bool) {
        let mut h = self.0.lock().unwrap();
        if !h.faults {
            return (Duration::from_millis(5), false);
        }
        let slow = if h.rng.gen_bool(0.1) { h.rng.gen_range(200..2000) } else { h.rng.gen_range(1..50) };
        (Duration::from_millis(slow), h.rng.gen_range(0..1000) < fail_per_mille)
    }
}

struct SimHypervisor {
    node: NodeId,
    hosts: Hosts,
}

impl Hypervisor for SimHypervisor {
    fn start<'a>(&'a self, launch: &'a GuestLaunch) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (delay, fail) = self.hosts.roll(50);
            tokio::time::sleep(delay).await;
            if fail {
                return Err(DriverError::Command {
                    program: "qemu-system-x86_64".into(),
                    message: "simulated start failure".into(),
                });
            }
            let mut h = self.hosts.0.lock().unwrap();
            h.ghosts.remove(&(self.node, launch.vmid));
            let on = h.running.entry(launch.vmid).or_default();
            if on.insert(self.node) {
                let others: Vec<NodeId> = on.iter().copied().filter(|n| *n != self.node).collect();
                if !others.is_empty() {
                    let v = format!(
                        "guest {} started on n{} while it runs on {}",
                        launch.vmid,
                        self.node,
                        others.iter().map(|n| format!("n{n}")).collect::<Vec<_>>().join(", ")
                    );
                    h.violations.push(v);
                }
                h.events.push(format!("host n{}: guest {} started", self.node, launch.vmid));
            }
            Ok(())
        })
    }

    fn status(&self, vmid: u32) -> BoxFuture<'_, Result<ObservedPower, DriverError>> {
        Box::pin(async move {
            let runs = self.hosts.reports_running(self.node, vmid);
            Ok(if runs { ObservedPower::Running } else { ObservedPower::Stopped })
        })
    }

    fn stop(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let (delay, fail) = self.hosts.roll(20);
            tokio::time::sleep(delay).await;
            if fail {
                return Err(DriverError::Io("simulated: QMP socket timed out".into()));
            }
            let mut h = self.hosts.0.lock().unwrap();
            h.ghosts.remove(&(self.node, vmid));
            if h.running.get_mut(&vmid).is_some_and(|n| n.remove(&self.node)) {
                h.events.push(format!("host n{}: guest {vmid} stopped", self.node));
            }
            Ok(())
        })
    }

    fn shutdown(&self, vmid: u32, _timeout: Duration) -> BoxFuture<'_, Result<ShutdownOutcome, DriverError>> {
        Box::pin(async move {
            self.stop(vmid).await?;
            Ok(ShutdownOutcome::Graceful)
        })
    }

    fn wait_exit(&self, vmid: u32) -> BoxFuture<'_, ()> {
        // Polled, like the QEMU driver's pid check (waiters on one tokio `watch` would wake
        // in a random order and make runs of one seed differ).
        Box::pin(async move {
            while self.hosts.reports_running(self.node, vmid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn serial_log(&self, vmid: u32) -> PathBuf {
        PathBuf::from(format!("/dev/null/sim-{vmid}"))
    }

    fn running_guests(&self) -> BoxFuture<'_, Result<Vec<u32>, DriverError>> {
        Box::pin(async move {
            let h = self.hosts.0.lock().unwrap();
            let mut out: Vec<u32> =
                h.running.iter().filter(|(_, on)| on.contains(&self.node)).map(|(v, _)| *v).collect();
            out.extend(h.ghosts.iter().filter(|(n, _)| *n == self.node).map(|(_, v)| *v));
            out.sort_unstable();
            out.dedup();
            Ok(out)
        })
    }
}

struct SimVolumes {
    node: NodeId,
    hosts: Hosts,
}

impl VolumeStore for SimVolumes {
    fn list(&self) -> BoxFuture<'_, Result<Vec<horcrux_drivers::VolumeInfo>, DriverError>> {
        let h = self.hosts.0.lock().unwrap();
        let vols = h.volumes.get(&self.node).cloned().unwrap_or_default();
        let list = vols
            .into_iter()
            .map(|volid| {
                let vmid = volid.split([':', '/']).nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                horcrux_drivers::VolumeInfo {
                    volid,
                    vmid,
                    format: "qcow2".into(),
                    content: "images".into(),
                    ..Default::default()
                }
            })
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn alloc(&self, vmid: u32, index: usize, _size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(async move {
            let (delay, fail) = self.hosts.roll(30);
            tokio::time::sleep(delay).await;
            if fail {
                return Err(DriverError::Command {
                    program: "qemu-img".into(),
                    message: "simulated: no space".into(),
                });
            }
            let volid = horcrux_core::ids::volume_id("local", vmid, index);
            let mut h = self.hosts.0.lock().unwrap();
            if !h.volumes.entry(self.node).or_default().insert(volid.clone()) {
                return Err(DriverError::Invalid(format!("{volid} already exists")));
            }
            Ok(volid)
        })
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        if self.hosts.has_volume(self.node, volid) {
            Ok(PathBuf::from(format!("/sim/n{}/{volid}", self.node)))
        } else {
            Err(DriverError::Invalid(format!("volume {volid} does not exist on n{}", self.node)))
        }
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            if let Some(v) = self.hosts.0.lock().unwrap().volumes.get_mut(&self.node) {
                v.remove(volid);
            }
            Ok(())
        })
    }
}
