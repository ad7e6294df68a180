//! The QEMU driver: launches `qemu-system-x86_64` from an argument vector (never a shell),
//! in its own process group with a pidfile so guests outlive the daemon, and controls it
//! over QMP. After a daemon restart it adopts still-running guests through pidfile + QMP.
//! QEMU runs confined: as a user of its own per guest (uid `base + vmid`, no groups) when the
//! daemon is root, handed descriptors for exactly its own disks, serial log, boot files,
//! taps and QMP socket (see `fds.rs`), so it can open nothing else; under a seccomp sandbox
//! (no spawning, no privilege changes, no obsolete syscalls, no resource-control calls); and
//! with no listener of its own at all: QMP is a socket the daemon bound in its run directory
//! (0700, root's), VNC has no socket (a console is a socket pair handed over QMP).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use crate::hypervisor::{
    BoxFuture, DiskSource, DriverError, GuestLaunch, Hotplug, Hypervisor, ObservedPower, ShutdownOutcome,
};
use crate::qmp::QmpClient;

mod console;
mod drive;
mod fds;
pub mod hotplug;
mod mirror;
pub(crate) use fds::install as install_fds;
pub use fds::{open_tap, FdLayout};

/// Guest `vmid`'s QEMU runs as uid and gid `DEFAULT_GUEST_UID_BASE + vmid` (above any
/// subordinate-id range containers use; no account needs to exist).
pub const DEFAULT_GUEST_UID_BASE: u32 = 3_000_000_000;
/// Set in each QEMU's environment to its QMP socket path: how a restarted daemon knows a
/// process is that guest's QEMU (a recycled pid is not).
const GUEST_ENV: &str = "HORCRUX_QMP";

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
    run_dir: PathBuf,
    log_dir: PathBuf,
    accel: Accel,
    monitors: Mutex<HashMap<u32, Arc<QmpClient>>>,
    /// The QEMU process of each guest this driver started or adopted.
    procs: Mutex<HashMap<u32, Proc>>,
    /// Serialises launches (a start checks, then creates, the guest's sockets).
    launch_lock: tokio::sync::Mutex<()>,
    /// Serialises QMP connects: QEMU serves one client at a time, so a second connection
    /// made concurrently (status poll, exit watcher and a stop racing after adoption) gets
    /// no greeting and everything sent on it waits out the timeouts.
    connect_lock: tokio::sync::Mutex<()>,
    /// QEMU runs as `base + vmid`; `None`: as the daemon's user.
    guest_uid_base: Option<u32>,
    /// Starts HA guests (`GuestLaunch::ha_until_ms`); `None`: this node cannot run them.
    fence: Option<crate::fence::FenceClient>,
}

/// A QEMU just started: the daemon's child, or the fence's (an HA guest).
enum Launched {
    Child(tokio::process::Child),
    Fenced(i32),
}

impl Launched {
    fn pid(&self) -> Option<i32> {
        match self {
            Launched::Child(c) => c.id().map(|p| p as i32),
            Launched::Fenced(p) => Some(*p),
        }
    }

    /// `Some(why)` once the process has exited.
    fn exited(&mut self, start: Option<Proc>) -> Result<Option<String>, std::io::Error> {
        match self {
            Launched::Child(c) => Ok(c.try_wait()?.map(|s| format!("QEMU exited with {s}"))),
            Launched::Fenced(_) => Ok(start.is_none_or(|p| !p.running()).then(|| "QEMU exited".to_string())),
        }
    }

    fn kill(&mut self) {
        match self {
            Launched::Child(c) => drop(c.start_kill()),
            // SAFETY: kill(2) of the pid the fence reported for this start.
            Launched::Fenced(p) => drop(unsafe { libc::kill(*p, libc::SIGKILL) }),
        }
    }
}

/// Proxmox's tap names: `tap{vmid}i{index}` (at most 15 characters for a 9-digit VMID).
pub fn tap_name(vmid: u32, index: u8) -> String {
    format!("tap{vmid}i{index}")
}

/// Puts tap `tap` on `bridge` and brings it up.
async fn bridge_tap(tap: &str, bridge: &str) -> Result<(), DriverError> {
    let out = Command::new("ip")
        .args(["link", "set", "dev", tap, "master", bridge, "up"])
        .output()
        .await
        .map_err(|e| DriverError::Command { program: "ip".into(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(DriverError::Command {
            program: "ip".into(),
            message: format!("{tap} -> {bridge}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

/// Puts each bridged card's tap on its bridge and brings it up; applies `link_down`.
async fn attach_taps(launch: &GuestLaunch, qmp: &QmpClient) -> Result<(), DriverError> {
    for n in &launch.spec.nets {
        if let Some(bridge) = &n.bridge {
            bridge_tap(&tap_name(launch.vmid, n.index), bridge).await?;
        }
        if n.link_down {
            let args = serde_json::json!({ "name": format!("net{}", n.index), "up": false });
            qmp.execute("set_link", Some(args)).await?;
        }
    }
    Ok(())
}

impl QemuDriver {
    /// `accel` must already be resolved (see [`crate::qemu::resolve_accel`]).
    pub fn new(run_dir: PathBuf, log_dir: PathBuf, accel: Accel) -> Result<Self, DriverError> {
        fn at(p: &Path) -> impl Fn(std::io::Error) -> DriverError + '_ {
            move |e| DriverError::Io(format!("{}: {e}", p.display()))
        }
        std::fs::create_dir_all(&run_dir).map_err(at(&run_dir))?;
        // The QMP sockets in it are for this daemon alone.
        std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(at(&run_dir))?;
        std::fs::create_dir_all(&log_dir).map_err(at(&log_dir))?;
        Ok(Self {
            run_dir,
            log_dir,
            accel,
            monitors: Mutex::default(),
            procs: Mutex::default(),
            launch_lock: tokio::sync::Mutex::new(()),
            connect_lock: tokio::sync::Mutex::new(()),
            // SAFETY: geteuid has no preconditions.
            guest_uid_base: (unsafe { libc::geteuid() } == 0).then_some(DEFAULT_GUEST_UID_BASE),
            fence: None,
        })
    }

    /// HA guests are started by this node's fence.
    pub fn with_fence(mut self, fence: crate::fence::FenceClient) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The guest's QEMU binary as an absolute path, found on `PATH` (the fence execs it
    /// without a search; an architecture names a binary, never a path).
    fn binary_path(launch: &GuestLaunch) -> Result<PathBuf, DriverError> {
        let binary = &launch.arch.qemu_binary;
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path).map(|d| d.join(binary)).find(|p| p.is_file()).ok_or_else(|| {
            DriverError::Invalid(format!(
                "{binary} is not installed on this node (guest architecture {})",
                launch.arch.name
            ))
        })
    }

    /// KVM only for a guest of the host's own architecture; any other runs under TCG.
    fn accel_for(&self, launch: &GuestLaunch) -> Accel {
        if launch.arch.emulator() == crate::host::machine() {
            self.accel
        } else {
            Accel::Tcg
        }
    }

    /// Runs each guest's QEMU as `base + vmid` (`None`: as the daemon's own user). Only a
    /// root daemon can change users; otherwise QEMU runs as the daemon's user.
    pub fn with_guest_uid_base(mut self, base: Option<u32>) -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if base.is_some() && !root {
            tracing::warn!("not root: QEMU runs as the daemon's user, not a user of its own per guest");
        }
        self.guest_uid_base = base.filter(|_| root);
        self
    }

    /// The uid and gid guest `vmid`'s QEMU runs as, if not the daemon's.
    pub fn guest_owner(&self, vmid: u32) -> Option<(u32, u32)> {
        let uid = self.guest_uid_base?.checked_add(vmid)?;
        Some((uid, uid))
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

    /// What QEMU printed on stderr at its last start.
    fn stderr_path(&self, vmid: u32) -> PathBuf {
        self.log_dir.join(format!("{vmid}.qemu.log"))
    }

    /// The full argument vector for one guest (without the program name). Files, sockets and
    /// taps are descriptors numbered by `FdLayout::of(launch)`.
    pub fn argv(&self, launch: &GuestLaunch) -> Vec<OsString> {
        let spec = &launch.spec;
        let fds = FdLayout::of(launch);
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", launch.name),
            "-accel".into(),
            if self.accel_for(launch) == Accel::Kvm { "kvm" } else { "tcg" }.into(),
            "-nodefaults".into(),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            format!("{},sockets={},cores={}", spec.cores * spec.sockets, spec.sockets, spec.cores),
        ];
        if let Some(m) = &launch.arch.machine {
            a.extend(["-machine".into(), m.clone()]);
        }
        if let Some(c) = &launch.arch.cpu {
            a.extend(["-cpu".into(), c.clone()]);
        }
        if launch.arch.has_vga() {
            a.extend(["-device".into(), "VGA".into()]);
        }
        a.extend([
            "-vnc".into(),
            "none".into(),
            "-sandbox".into(),
            SANDBOX.into(),
            "-chardev".into(),
            format!("socket,id=qmp,fd={},server=on,wait=off", fds::QMP_FD),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            // Output goes to the log whether or not a console is connected.
            "-chardev".into(),
            format!(
                "socket,id=serial0,fd={},server=on,wait=off,logfile={}",
                fds.serial_socket,
                fds::proc_fd(fds.serial)
            ),
            "-serial".into(),
            "chardev:serial0".into(),
        ]);
        let slots = spec.disk_slots();
        let on_bus =
            |bus: &str| slots.iter().chain(spec.cdroms.iter().map(|c| &c.slot)).any(|s| s.starts_with(bus));
        if on_bus("scsi") {
            a.extend(["-device".into(), "virtio-scsi-pci,id=scsihw0".into()]);
        }
        if on_bus("sata") {
            a.extend(["-device".into(), "ahci,id=ahci0".into()]);
        }
        for (i, disk_fds) in fds.disks.iter().enumerate() {
            let slot = slots.get(i).cloned().unwrap_or_else(|| format!("virtio{i}"));
            let Some(disk) = launch.disks.get(i) else { continue };
            a.extend(drive::drive_args(&slot, i + 1, disk, disk_fds, ""));
            a.push("-device".into());
            let n: u32 = slot.trim_start_matches(char::is_alphabetic).parse().unwrap_or(0);
            a.push(match slot.trim_end_matches(|c: char| c.is_ascii_digit()) {
                "scsi" => format!("scsi-hd,bus=scsihw0.0,scsi-id={n},drive=drive-{slot},id={slot}"),
                "sata" => format!("ide-hd,bus=ahci0.{n},drive=drive-{slot},id={slot}"),
                "ide" => format!("ide-hd,bus=ide.{},unit={},drive=drive-{slot},id={slot}", n / 2, n % 2),
                _ => format!("virtio-blk-pci,drive=drive-{slot},id={slot}"),
            });
        }
        for (j, (cd, cd_fds)) in spec.cdroms.iter().zip(&fds.cdroms).enumerate() {
            let slot = &cd.slot;
            match launch.cdroms.get(j).and_then(Option::as_ref) {
                Some(iso) => a.extend(drive::drive_args(slot, 101 + j, iso, cd_fds, drive::CDROM)),
                None => a.extend(["-drive".into(), format!("if=none,id=drive-{slot},media=cdrom")]),
            }
            let n: u32 = slot.trim_start_matches(char::is_alphabetic).parse().unwrap_or(0);
            a.push("-device".into());
            a.push(match slot.trim_end_matches(|c: char| c.is_ascii_digit()) {
                "scsi" => format!("scsi-cd,bus=scsihw0.0,scsi-id={n},drive=drive-{slot},id={slot}"),
                "sata" => format!("ide-cd,bus=ahci0.{n},drive=drive-{slot},id={slot}"),
                _ => format!("ide-cd,bus=ide.{},unit={},drive=drive-{slot},id={slot}", n / 2, n % 2),
            });
        }
        if spec.nets.is_empty() {
            a.extend(["-nic".into(), "none".into()]);
        }
        for n in &spec.nets {
            let id = format!("net{}", n.index);
            a.push("-netdev".into());
            a.push(match fds.tap(n.index) {
                // The daemon made the tap and hands it over; `attach_taps` bridges it.
                Some(fd) => format!("tap,id={id},fd={fd}"),
                None => format!("user,id={id}"),
            });
            let device = match n.model.as_str() {
                "virtio" => "virtio-net-pci",
                other => other,
            };
            a.push("-device".into());
            a.push(format!("{device},netdev={id},mac={},id={id}", n.macaddr));
        }
        if let Some(tag) = &launch.loadvm {
            // RAM, devices and disks as the snapshot saved them (its name was checked when
            // it was taken: letters, digits, '-', '_').
            a.push("-loadvm".into());
            a.push(tag.into());
        }
        if let (Some(boot), Some(kernel)) = (&spec.boot, fds.kernel) {
            a.push("-kernel".into());
            a.push(fds::proc_fd(kernel));
            if let Some(initrd) = fds.initrd {
                a.push("-initrd".into());
                a.push(fds::proc_fd(initrd));
            }
            if !boot.cmdline.is_empty() {
                a.push("-append".into());
                a.push(boot.cmdline.clone());
            }
        }
        a.into_iter().map(OsString::from).collect()
    }

    /// The pid of the guest's QEMU if it is alive and really ours (its environment names
    /// our QMP socket, so a recycled pid is never mistaken for the guest).
    fn live_pid(&self, vmid: u32) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path(vmid)).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the parenthesised command name; 'Z' is a zombie.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        if state == 'Z' || state == 'X' {
            return None;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let marker = format!("{GUEST_ENV}={}", self.qmp_path(vmid).display());
        environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()).then_some(pid)
    }

    /// The QMP connection of a running guest (QEMU serves one at a time: this one).
    pub async fn qmp(&self, vmid: u32) -> Result<Arc<QmpClient>, DriverError> {
        self.monitor(vmid).await?.ok_or_else(|| DriverError::Invalid(format!("guest {vmid} is not running")))
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
        let _one_at_a_time = self.connect_lock.lock().await;
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
        for p in launch.disks.iter().filter_map(|d| match d {
            DiskSource::File(p) => Some(p),
            DiskSource::Net(_) => None,
        }) {
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
        for p in [self.qmp_path(vmid), self.pid_path(vmid), self.serial_path(vmid)] {
            let _ = std::fs::remove_file(p);
        }
        let stderr = std::fs::File::create(self.stderr_path(vmid))?;
        let binary = Self::binary_path(launch)?;
        let spawn_error = |e: std::io::Error| DriverError::Command {
            program: launch.arch.qemu_binary.clone(),
            message: e.to_string(),
        };
        let owner = self.guest_owner(vmid);
        let qmp_listener = std::os::unix::net::UnixListener::bind(self.qmp_path(vmid))?;
        let serial_listener = std::os::unix::net::UnixListener::bind(self.serial_path(vmid))?;
        let layout = FdLayout::of(launch);
        let handed = fds::open_all(
            launch,
            &layout,
            qmp_listener.into(),
            serial_listener.into(),
            &self.serial_log(vmid),
            owner,
        )?;
        let plan = fds::plan(&handed);
        // With KVM, the guest's user needs /dev/kvm's group.
        let groups: Vec<libc::gid_t> = match (owner, self.accel) {
            (Some(_), Accel::Kvm) => std::fs::metadata("/dev/kvm")
                .map(|m| vec![std::os::unix::fs::MetadataExt::gid(&m)])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut child = match launch.ha_until_ms {
            Some(until) => {
                let fence = self.fence.as_ref().ok_or_else(|| {
                    DriverError::Invalid(format!("guest {vmid} is HA, and this node runs no fence"))
                })?;
                let mut raw: Vec<i32> = plan.iter().map(|(src, _)| *src).collect();
                let mut targets: Vec<i32> = plan.iter().map(|(_, dst)| *dst).collect();
                raw.push(std::os::fd::AsRawFd::as_raw_fd(&stderr));
                targets.push(2);
                let req = crate::fence::FenceRequest::Spawn {
                    vmid,
                    program: binary.display().to_string(),
                    args: self.argv(launch).iter().map(|a| a.to_string_lossy().into_owned()).collect(),
                    env: vec![(GUEST_ENV.to_string(), self.qmp_path(vmid).display().to_string())],
                    fds: targets,
                    owner,
                    groups: groups.clone(),
                    valid_until_ms: until,
                };
                let reply = fence.call(&req, &raw);
                drop(handed);
                Launched::Fenced(reply?.pid)
            }
            None => {
                // Its own process group: a signal to the daemon's group (Ctrl-C) leaves guests
                // alone. Dropping the handle does not kill it; tokio reaps it when it exits.
                let mut cmd = Command::new(&binary);
                cmd.args(self.argv(launch))
                    .env(GUEST_ENV, self.qmp_path(vmid))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .process_group(0);
                // SAFETY: the hook only calls dup2/fcntl/setgroups/setgid/setuid on data
                // prepared before the fork (async-signal-safe, no allocation).
                unsafe {
                    cmd.pre_exec(move || fds::install(&plan, owner, &groups));
                }
                let spawned = cmd.spawn();
                // The daemon's copies: QEMU holds its own now (and a tap must vanish with QEMU).
                drop(handed);
                Launched::Child(spawned.map_err(spawn_error)?)
            }
        };
        let started = child.pid().and_then(Proc::of);
        if let Some(pid) = child.pid() {
            let pid_file = self.pid_path(vmid);
            let tmp = pid_file.with_extension("pid.new");
            std::fs::write(&tmp, format!("{pid}\n")).and_then(|_| std::fs::rename(&tmp, &pid_file))?;
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let qmp = loop {
            if let Some(status) = child.exited(started).map_err(spawn_error)? {
                let err = std::fs::read_to_string(self.stderr_path(vmid)).unwrap_or_default();
                let err = if err.trim().is_empty() { status } else { err.trim().to_string() };
                return Err(DriverError::Command { program: launch.arch.qemu_binary.clone(), message: err });
            }
            {
                // A status poll may have connected first (the one connection QEMU serves).
                let _one_at_a_time = self.connect_lock.lock().await;
                if let Some(c) = self.cached_monitor(vmid) {
                    break c;
                }
                if let Ok(c) = QmpClient::connect(&self.qmp_path(vmid)).await {
                    self.monitors.lock().unwrap_or_else(|p| p.into_inner()).insert(vmid, c.clone());
                    break c;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                child.kill();
                return Err(DriverError::Io(format!(
                    "QEMU of guest {vmid} did not answer on QMP in {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(pid) = child.pid() {
            self.remember_proc(vmid, pid);
        }
        if let Err(e) = attach_taps(launch, &qmp).await {
            let _ = self.stop_inner(vmid).await;
            return Err(e);
        }
        self.save_running_spec(vmid, &launch.spec);
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
        let _ = std::fs::remove_file(self.serial_path(vmid));
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

    fn qmp<'a>(
        &'a self,
        vmid: u32,
        command: &'a str,
        arguments: Option<serde_json::Value>,
    ) -> BoxFuture<'a, Result<serde_json::Value, DriverError>> {
        Box::pin(async move {
            let qmp = self
                .monitor(vmid)
                .await?
                .ok_or_else(|| DriverError::Invalid(format!("guest {vmid} is not running")))?;
            Ok(qmp.execute(command, arguments).await?)
        })
    }

    fn hotplug<'a>(&'a self, vmid: u32, change: Hotplug<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.hotplug_inner(vmid, change))
    }

    fn running_spec(&self, vmid: u32) -> Option<horcrux_core::VmSpec> {
        let bytes = std::fs::read(self.running_spec_path(vmid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn mirror_disk<'a>(
        &'a self,
        vmid: u32,
        slot: &'a str,
        target: &'a DiskSource,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let qmp = self.qmp(vmid).await?;
            mirror::mirror(&qmp, slot, target, progress).await
        })
    }

    fn reset(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let qmp = self
                .monitor(vmid)
                .await?
                .ok_or_else(|| DriverError::Invalid(format!("guest {vmid} is not running")))?;
            qmp.execute("system_reset", None).await?;
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

    fn console(
        &self,
        vmid: u32,
        kind: crate::hypervisor::ConsoleKind,
    ) -> BoxFuture<'_, Result<std::os::unix::net::UnixStream, DriverError>> {
        Box::pin(self.console_connect(vmid, kind))
    }

    fn pid(&self, vmid: u32) -> Option<u32> {
        self.live_pid(vmid).and_then(|p| u32::try_from(p).ok())
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
