//! The QEMU driver: launches `qemu-system-x86_64` from an argument vector (never a shell),
//! in its own process group with a pidfile so guests outlive the daemon, and controls it
//! over QMP. After a daemon restart it adopts still-running guests through pidfile + QMP.
//! QEMU runs confined: a seccomp sandbox (no spawning, no privilege changes, no obsolete
//! syscalls, no resource-control calls) and no TCP listener at all: QMP and VNC are unix
//! sockets in the run directory (0700, root's).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use crate::hypervisor::{BoxFuture, DriverError, GuestLaunch, Hypervisor, ObservedPower, ShutdownOutcome};
use crate::qmp::QmpClient;

/// How long `quit` may take before the process is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long a QEMU may take from exec to answering on its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// QEMU's seccomp sandbox, as libvirt sets it. `spawn=deny` is why QEMU is not started
/// with `-daemonize` (which forks).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when it can boot a guest on this host, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("accel must be auto, kvm or tcg, not {s:?}")),
        }
    }
}

/// A process identified by pid and start time, so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

/// State letter and start time (clock ticks since boot) of a process, from /proc.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl Proc {
    fn of(pid: i32) -> Option<Self> {
        proc_stat(pid).map(|(_, start)| Proc { pid, start })
    }

    /// Still there and not yet a zombie. QEMU deletes its pidfile as it starts to exit, and
    /// an exiting process can linger in the D state while it releases memory and files: only
    /// this says when it is really gone (and its disk locks with it).
    fn running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start && state != 'Z' && state != 'X')
    }
}

pub struct QemuDriver {
    binary: PathBuf,
    run_dir: PathBuf,
    log_dir: PathBuf,
    accel: Accel,
    monitors: Mutex<HashMap<u32, Arc<QmpClient>>>,
    /// The QEMU process of each guest this driver started or adopted.
    procs: Mutex<HashMap<u32, Proc>>,
    /// Serialises launches (a start checks, then creates, the guest's sockets).
    launch_lock: tokio::sync::Mutex<()>,
}

/// QEMU option values separate sub-options with ',': a literal comma is written twice.
/// Proxmox's tap names: `tap{vmid}i{index}` (at most 15 characters for a 9-digit VMID).
pub fn tap_name(vmid: u32, index: u8) -> String {
    format!("tap{vmid}i{index}")
}

/// Puts each bridged card's tap on its bridge and brings it up; applies `link_down`.
async fn attach_taps(launch: &GuestLaunch, qmp: &QmpClient) -> Result<(), DriverError> {
    for n in &launch.spec.nets {
        if let Some(bridge) = &n.bridge {
            let tap = tap_name(launch.vmid, n.index);
            let out = Command::new("ip")
                .args(["link", "set", "dev", &tap, "master", bridge, "up"])
                .output()
                .await
                .map_err(|e| DriverError::Command { program: "ip".into(), message: e.to_string() })?;
            if !out.status.success() {
                return Err(DriverError::Command {
                    program: "ip".into(),
                    message: format!("{tap} -> {bridge}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                });
            }
        }
        if n.link_down {
            let args = serde_json::json!({ "name": format!("net{}", n.index), "up": false });
            qmp.execute("set_link", Some(args)).await?;
        }
    }
    Ok(())
}

fn opt_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl QemuDriver {
    /// `accel` must already be resolved (see [`crate::qemu::resolve_accel`]).
    pub fn new(run_dir: PathBuf, log_dir: PathBuf, accel: Accel) -> Result<Self, DriverError> {
        std::fs::create_dir_all(&run_dir)?;
        // The sockets in it (QMP, VNC) are for this daemon alone.
        std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        std::fs::create_dir_all(&log_dir)?;
        Ok(Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            run_dir,
            log_dir,
            accel,
            monitors: Mutex::default(),
            procs: Mutex::default(),
            launch_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn qmp_path(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(format!("{vmid}.qmp"))
    }

    fn pid_path(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(format!("{vmid}.pid"))
    }

    /// The guest's VNC server (RFB on a unix socket; the console proxy connects to it).
    pub fn vnc_path(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(format!("{vmid}.vnc"))
    }

    /// What QEMU printed on stderr at its last start.
    fn stderr_path(&self, vmid: u32) -> PathBuf {
        self.log_dir.join(format!("{vmid}.qemu.log"))
    }

    /// The full argument vector for one guest (without the program name).
    pub fn argv(&self, launch: &GuestLaunch) -> Vec<OsString> {
        let spec = &launch.spec;
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", launch.name),
            "-accel".into(),
            if self.accel == Accel::Kvm { "kvm" } else { "tcg" }.into(),
            "-nodefaults".into(),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            format!("{},sockets={},cores={}", spec.cores * spec.sockets, spec.sockets, spec.cores),
            "-device".into(),
            "VGA".into(),
            "-vnc".into(),
            format!("unix:{}", opt_escape(&self.vnc_path(launch.vmid))),
            "-sandbox".into(),
            SANDBOX.into(),
            "-serial".into(),
            format!("file:{}", self.serial_log(launch.vmid).display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt_escape(&self.qmp_path(launch.vmid))),
            "-pidfile".into(),
            self.pid_path(launch.vmid).display().to_string(),
        ];
        let slots = spec.disk_slots();
        let on_bus = |bus: &str| slots.iter().any(|s| s.starts_with(bus));
        if on_bus("scsi") {
            a.extend(["-device".into(), "virtio-scsi-pci,id=scsihw0".into()]);
        }
        if on_bus("sata") {
            a.extend(["-device".into(), "ahci,id=ahci0".into()]);
        }
        for (i, path) in launch.disk_paths.iter().enumerate() {
            let slot = slots.get(i).cloned().unwrap_or_else(|| format!("virtio{i}"));
            a.push("-drive".into());
            a.push(format!("file={},if=none,id=drive-{slot},format=qcow2", opt_escape(path)));
            a.push("-device".into());
            let n: u32 = slot.trim_start_matches(char::is_alphabetic).parse().unwrap_or(0);
            a.push(match slot.trim_end_matches(|c: char| c.is_ascii_digit()) {
                "scsi" => format!("scsi-hd,bus=scsihw0.0,scsi-id={n},drive=drive-{slot},id={slot}"),
                "sata" => format!("ide-hd,bus=ahci0.{n},drive=drive-{slot},id={slot}"),
                "ide" => format!("ide-hd,bus=ide.{},unit={},drive=drive-{slot},id={slot}", n / 2, n % 2),
                _ => format!("virtio-blk-pci,drive=drive-{slot},id={slot}"),
            });
        }
        if spec.nets.is_empty() {
            a.extend(["-nic".into(), "none".into()]);
        }
        for n in &spec.nets {
            let id = format!("net{}", n.index);
            a.push("-netdev".into());
            a.push(match &n.bridge {
                // QEMU creates the tap (we run as root); `attach_taps` puts it on the bridge.
                Some(_) => {
                    format!("tap,id={id},ifname={},script=no,downscript=no", tap_name(launch.vmid, n.index))
                }
                None => format!("user,id={id}"),
            });
            let device = match n.model.as_str() {
                "virtio" => "virtio-net-pci",
                other => other,
            };
            a.push("-device".into());
            a.push(format!("{device},netdev={id},mac={},id={id}", n.macaddr));
        }
        if let Some(boot) = &spec.boot {
            a.push("-kernel".into());
            a.push(boot.kernel.clone());
            if let Some(initrd) = &boot.initrd {
                a.push("-initrd".into());
                a.push(initrd.clone());
            }
            if !boot.cmdline.is_empty() {
                a.push("-append".into());
                a.push(boot.cmdline.clone());
            }
        }
        a.into_iter().map(OsString::from).collect()
    }

    /// The pid of the guest's QEMU if it is alive and really ours (its command line names
    /// our QMP socket, so a recycled pid is never mistaken for the guest).
    fn live_pid(&self, vmid: u32) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path(vmid)).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the parenthesised command name; 'Z' is a zombie.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        if state == 'Z' || state == 'X' {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let qmp = opt_escape(&self.qmp_path(vmid));
        cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&qmp)).then_some(pid)
    }

    fn cached_monitor(&self, vmid: u32) -> Option<Arc<QmpClient>> {
        let mut m = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&vmid) {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => {
                m.remove(&vmid);
                None
            }
            None => None,
        }
    }

    /// The QMP connection of a running guest: the one we hold, or a new one to a QEMU left
    /// running by an earlier daemon (adoption).
    async fn monitor(&self, vmid: u32) -> Result<Option<Arc<QmpClient>>, DriverError> {
        if let Some(c) = self.cached_monitor(vmid) {
            return Ok(Some(c));
        }
        let Some(pid) = self.live_pid(vmid) else { return Ok(None) };
        let client = QmpClient::connect(&self.qmp_path(vmid)).await?;
        self.remember_proc(vmid, pid);
        tracing::info!(vmid, pid, "adopted running QEMU");
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).insert(vmid, client.clone());
        Ok(Some(client))
    }

    async fn status_inner(&self, vmid: u32) -> Result<ObservedPower, DriverError> {
        let Some(qmp) = self.monitor(vmid).await? else { return Ok(ObservedPower::Stopped) };
        match qmp.query_status().await {
            Ok(s) if s == "running" => Ok(ObservedPower::Running),
            Ok(_) => Ok(ObservedPower::Paused),
            Err(crate::qmp::QmpError::Closed) => Ok(ObservedPower::Stopped),
            Err(e) => Err(e.into()),
        }
    }

    async fn start_inner(&self, launch: &GuestLaunch) -> Result<(), DriverError> {
        let _guard = self.launch_lock.lock().await;
        if self.status_inner(launch.vmid).await? != ObservedPower::Stopped {
            return Ok(());
        }
        for p in &launch.disk_paths {
            if !p.exists() {
                return Err(DriverError::Invalid(format!("disk {} does not exist", p.display())));
            }
        }
        for n in &launch.spec.nets {
            if let Some(b) = &n.bridge {
                if !Path::new("/sys/class/net").join(b).join("bridge").exists() {
                    return Err(DriverError::Invalid(format!("net{}: bridge '{b}' does not exist", n.index)));
                }
            }
        }
        let vmid = launch.vmid;
        for p in [self.qmp_path(vmid), self.pid_path(vmid), self.vnc_path(vmid)] {
            let _ = std::fs::remove_file(p);
        }
        let stderr = std::fs::File::create(self.stderr_path(vmid))?;
        let spawn_error = |e: std::io::Error| DriverError::Command {
            program: self.binary.display().to_string(),
            message: e.to_string(),
        };
        // Its own process group: a signal to the daemon's group (Ctrl-C) leaves guests alone.
        // Dropping the handle does not kill it; tokio reaps it when it exits.
        let mut child = Command::new(&self.binary)
            .args(self.argv(launch))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let qmp = loop {
            if let Some(status) = child.try_wait().map_err(spawn_error)? {
                let err = std::fs::read_to_string(self.stderr_path(vmid)).unwrap_or_default();
                let err = if err.trim().is_empty() {
                    format!("QEMU exited with {status}")
                } else {
                    err.trim().to_string()
                };
                return Err(DriverError::Command { program: "qemu-system-x86_64".into(), message: err });
            }
            if self.qmp_path(vmid).exists() {
                if let Ok(c) = QmpClient::connect(&self.qmp_path(vmid)).await {
                    break c;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(DriverError::Io(format!(
                    "QEMU of guest {vmid} did not answer on QMP in {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(pid) = child.id() {
            self.remember_proc(vmid, pid as i32);
        }
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).insert(vmid, qmp.clone());
        if let Err(e) = attach_taps(launch, &qmp).await {
            let _ = self.stop_inner(vmid).await;
            return Err(e);
        }
        tracing::info!(vmid, "QEMU started");
        Ok(())
    }

    fn remember_proc(&self, vmid: u32, pid: i32) {
        if let Some(p) = Proc::of(pid) {
            self.procs.lock().unwrap_or_else(|p| p.into_inner()).insert(vmid, p);
        }
    }

    fn known_proc(&self, vmid: u32) -> Option<Proc> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).get(&vmid).copied()
    }

    /// Whether the guest's QEMU still exists: by pidfile, or by the process we know.
    fn alive(&self, vmid: u32) -> bool {
        self.live_pid(vmid).is_some() || self.known_proc(vmid).is_some_and(|p| p.running())
    }

    async fn wait_pid_gone(&self, vmid: u32, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.alive(vmid) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    fn cleanup(&self, vmid: u32) {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).remove(&vmid);
        self.procs.lock().unwrap_or_else(|p| p.into_inner()).remove(&vmid);
        let _ = std::fs::remove_file(self.qmp_path(vmid));
        let _ = std::fs::remove_file(self.pid_path(vmid));
    }

    async fn stop_inner(&self, vmid: u32) -> Result<(), DriverError> {
        if let Ok(Some(qmp)) = self.monitor(vmid).await {
            // `quit` may close the socket before replying; either way the process is going.
            let _ = qmp.execute("quit", None).await;
        }
        if !self.wait_pid_gone(vmid, QUIT_GRACE).await {
            let pid = self.live_pid(vmid).or(self.known_proc(vmid).filter(|p| p.running()).map(|p| p.pid));
            if let Some(pid) = pid {
                tracing::warn!(vmid, pid, "QEMU ignored quit; killing it");
                // SAFETY: plain kill(2) on a pid verified above to be this guest's QEMU.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if !self.wait_pid_gone(vmid, QUIT_GRACE).await {
                return Err(DriverError::Io(format!("QEMU of guest {vmid} survived SIGKILL")));
            }
        }
        self.cleanup(vmid);
        Ok(())
    }

    async fn shutdown_inner(&self, vmid: u32, timeout: Duration) -> Result<ShutdownOutcome, DriverError> {
        let Some(qmp) = self.monitor(vmid).await? else { return Ok(ShutdownOutcome::Graceful) };
        qmp.execute("system_powerdown", None).await?;
        if tokio::time::timeout(timeout, qmp.wait_closed()).await.is_ok()
            && self.wait_pid_gone(vmid, QUIT_GRACE).await
        {
            self.cleanup(vmid);
            return Ok(ShutdownOutcome::Graceful);
        }
        tracing::info!(vmid, ?timeout, "guest did not power off in time; stopping it");
        self.stop_inner(vmid).await?;
        Ok(ShutdownOutcome::Forced)
    }
}

impl Hypervisor for QemuDriver {
    fn set_paused(&self, vmid: u32, paused: bool) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let qmp = self
                .monitor(vmid)
                .await?
                .ok_or_else(|| DriverError::Invalid(format!("guest {vmid} is not running")))?;
            qmp.execute(if paused { "stop" } else { "cont" }, None).await?;
            Ok(())
        })
    }

    fn start<'a>(&'a self, launch: &'a GuestLaunch) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.start_inner(launch))
    }

    fn status(&self, vmid: u32) -> BoxFuture<'_, Result<ObservedPower, DriverError>> {
        Box::pin(self.status_inner(vmid))
    }

    fn stop(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(vmid))
    }

    fn shutdown(&self, vmid: u32, timeout: Duration) -> BoxFuture<'_, Result<ShutdownOutcome, DriverError>> {
        Box::pin(self.shutdown_inner(vmid, timeout))
    }

    fn wait_exit(&self, vmid: u32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(Some(qmp)) = self.monitor(vmid).await {
                qmp.wait_closed().await;
            }
            while self.alive(vmid) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.cleanup(vmid);
        })
    }

    fn serial_log(&self, vmid: u32) -> PathBuf {
        self.log_dir.join(format!("{vmid}.serial.log"))
    }

    fn running_guests(&self) -> BoxFuture<'_, Result<Vec<u32>, DriverError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&self.run_dir)? {
                let name = entry?.file_name();
                let vmid = name.to_str().and_then(|n| n.strip_suffix(".pid")).and_then(|v| v.parse().ok());
                if let Some(vmid) = vmid.filter(|v| self.alive(*v)) {
                    out.push(vmid);
                }
            }
            out.sort_unstable();
            Ok(out)
        })
    }
}

/// Resolves `Auto`: KVM only if `/dev/kvm` opens read-write and a probe guest really runs
/// under it (on some nested hosts KVM initialises but cannot boot a kernel).
pub async fn resolve_accel(requested: Accel) -> Accel {
    match requested {
        Accel::Kvm | Accel::Tcg => requested,
        Accel::Auto => {
            if crate::kvm_probe::kvm_boots().await {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    }
}
