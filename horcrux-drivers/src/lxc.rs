//! LXC system containers, the way Proxmox's `pct` runs them, through liblxc's tools
//! (`lxc-start`, `lxc-stop`, `lxc-info`, `lxc-wait`, `lxc-attach`, `lxc-freeze`), each run
//! from an argument vector. A container lives in `LXCPATH/VMID/`: its `config` (written
//! from a [`CtSpec`] here, never by hand) and its console log; its root file system is a
//! directory the storage layer mounted (a subvolume, a dataset, a loop-mounted image).
//!
//! Unprivileged containers (Proxmox's default) map the container's ids 0..65536 onto the
//! host's 100000..165536: root inside is uid 100000 outside. liblxc writes the mapping with
//! `newuidmap`, which needs `root:100000:65536` in `/etc/subuid` and `/etc/subgid` (as
//! Proxmox's packages install); a template's files are extracted and then shifted into
//! that range.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hypervisor::DriverError;
use crate::storage::Runner;

/// The first host uid/gid of an unprivileged container's range, and its size.
pub const UNPRIVILEGED_BASE: u32 = 100_000;
pub const ID_RANGE: u32 = 65_536;

/// A container's network interface: a veth pair whose host end joins `bridge` (none:
/// the interface exists inside only, unconnected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtNet {
    pub index: u8,
    /// The name inside (`eth0`).
    pub name: String,
    pub bridge: Option<String>,
    pub hwaddr: Option<String>,
    pub mtu: Option<u16>,
}

/// Proxmox's `features` this driver applies (`keyctl` and `mknod` need seccomp
/// notification rules it does not write yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub nesting: bool,
    pub fuse: bool,
}

/// What the config of one container says.
#[derive(Debug, Clone, PartialEq)]
pub struct CtSpec {
    pub vmid: u32,
    pub hostname: String,
    pub memory_mib: u64,
    pub swap_mib: u64,
    /// CPUs it may use (`cores`: a cpuset of that many); `None`: all.
    pub cores: Option<u32>,
    /// CPU time limit in CPUs (`cpulimit`, 0 or none: unlimited).
    pub cpulimit: Option<f64>,
    /// Relative CPU weight (`cpuunits`).
    pub cpuunits: Option<u32>,
    pub unprivileged: bool,
    pub features: Features,
    pub nets: Vec<CtNet>,
    /// The mounted root file system.
    pub rootfs: PathBuf,
}

/// What `lxc-info -s` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Aborting,
    Freezing,
    Frozen,
    Thawed,
}

impl CtState {
    pub fn parse(s: &str) -> Option<CtState> {
        Some(match s.trim() {
            "STOPPED" => CtState::Stopped,
            "STARTING" => CtState::Starting,
            "RUNNING" => CtState::Running,
            "STOPPING" => CtState::Stopping,
            "ABORTING" => CtState::Aborting,
            "FREEZING" => CtState::Freezing,
            "FROZEN" => CtState::Frozen,
            "THAWED" => CtState::Thawed,
            _ => return None,
        })
    }
}

/// Which cgroup hierarchy holds the controllers: the keys of the config differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1 (or the hybrid layout): `lxc.cgroup.*`.
    V1,
    /// The unified hierarchy: `lxc.cgroup2.*`.
    V2,
}

impl Cgroups {
    /// This host's: v2 when the memory controller is in the unified hierarchy.
    pub fn detect() -> Cgroups {
        let unified = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        if unified.split_whitespace().any(|c| c == "memory") {
            Cgroups::V2
        } else {
            Cgroups::V1
        }
    }
}

pub struct LxcDriver {
    lxcpath: PathBuf,
    cgroups: Cgroups,
    runner: Box<dyn Runner>,
}

/// The liblxc programs, by absolute path (no `PATH` lookup for a root daemon).
fn tool(name: &str) -> String {
    format!("/usr/bin/{name}")
}

impl LxcDriver {
    pub fn new(lxcpath: impl Into<PathBuf>, cgroups: Cgroups, runner: Box<dyn Runner>) -> LxcDriver {
        LxcDriver { lxcpath: lxcpath.into(), cgroups, runner }
    }

    pub fn dir(&self, vmid: u32) -> PathBuf {
        self.lxcpath.join(vmid.to_string())
    }

    pub fn console_log(&self, vmid: u32) -> PathBuf {
        self.dir(vmid).join("console.log")
    }

    /// The liblxc configuration for `spec` (a pure function of it and the cgroup layout).
    pub fn config(&self, spec: &CtSpec) -> String {
        let mut c = vec![
            format!("lxc.uts.name = {}", spec.hostname),
            format!("lxc.rootfs.path = dir:{}", spec.rootfs.display()),
            "lxc.init.cmd = /sbin/init".to_string(),
            // AppArmor is not what confines containers on these hosts (see docs/containers.md).
            "lxc.apparmor.profile = unconfined".to_string(),
            "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed".to_string(),
            "lxc.autodev = 1".to_string(),
            format!("lxc.console.logfile = {}", self.console_log(spec.vmid).display()),
            "lxc.console.size = auto".to_string(),
            "lxc.tty.max = 2".to_string(),
            "lxc.pty.max = 64".to_string(),
            "lxc.signal.halt = SIGPWR".to_string(),
            "lxc.cap.drop = sys_time sys_module sys_rawio mac_admin mac_override".to_string(),
        ];
        if spec.unprivileged {
            c.push(format!("lxc.idmap = u 0 {UNPRIVILEGED_BASE} {ID_RANGE}"));
            c.push(format!("lxc.idmap = g 0 {UNPRIVILEGED_BASE} {ID_RANGE}"));
        }
        let (memory, swap, cpus, quota, shares) = match self.cgroups {
            Cgroups::V1 => (
                "lxc.cgroup.memory.limit_in_bytes",
                "lxc.cgroup.memory.memsw.limit_in_bytes",
                "lxc.cgroup.cpuset.cpus",
                "lxc.cgroup.cpu.cfs_quota_us",
                "lxc.cgroup.cpu.shares",
            ),
            Cgroups::V2 => (
                "lxc.cgroup2.memory.max",
                "lxc.cgroup2.memory.swap.max",
                "lxc.cgroup2.cpuset.cpus",
                "lxc.cgroup2.cpu.max",
                "lxc.cgroup2.cpu.weight",
            ),
        };
        let mem = spec.memory_mib * 1024 * 1024;
        c.push(format!("{memory} = {mem}"));
        // v1 limits memory plus swap together; v2 limits swap alone.
        let swap_bytes = spec.swap_mib * 1024 * 1024;
        match self.cgroups {
            Cgroups::V1
                if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() =>
            {
                c.push(format!("{swap} = {}", mem + swap_bytes))
            }
            Cgroups::V1 => {}
            Cgroups::V2 => c.push(format!("{swap} = {swap_bytes}")),
        }
        if let Some(n) = spec.cores.filter(|n| *n > 0) {
            c.push(format!("{cpus} = 0-{}", n - 1));
        }
        if let Some(l) = spec.cpulimit.filter(|l| *l > 0.0) {
            let period = 100_000u64;
            let q = (l * period as f64) as u64;
            match self.cgroups {
                Cgroups::V1 => {
                    c.push(format!("{quota} = {q}"));
                    c.push(format!("lxc.cgroup.cpu.cfs_period_us = {period}"));
                }
                Cgroups::V2 => c.push(format!("{quota} = {q} {period}")),
            }
        }
        if let Some(u) = spec.cpuunits {
            c.push(format!("{shares} = {u}"));
        }
        if spec.features.fuse {
            c.push("lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0".into());
        }
        if spec.features.nesting {
            c.push("lxc.mount.auto = proc:rw sys:rw cgroup:rw".into());
        }
        if spec.nets.is_empty() {
            c.push("lxc.net.0.type = empty".into());
        }
        for (i, n) in spec.nets.iter().enumerate() {
            let p = format!("lxc.net.{i}");
            match &n.bridge {
                Some(b) => {
                    c.push(format!("{p}.type = veth"));
                    c.push(format!("{p}.link = {b}"));
                    c.push(format!("{p}.veth.pair = veth{}i{}", spec.vmid, n.index));
                }
                None => c.push(format!("{p}.type = empty")),
            }
            c.push(format!("{p}.name = {}", n.name));
            c.push(format!("{p}.flags = up"));
            if let Some(h) = &n.hwaddr {
                c.push(format!("{p}.hwaddr = {h}"));
            }
            if let Some(m) = n.mtu {
                c.push(format!("{p}.mtu = {m}"));
            }
        }
        c.join("\n") + "\n"
    }

    /// Writes the container's config (0600: it names host paths).
    pub fn write_config(&self, spec: &CtSpec) -> Result<(), DriverError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.dir(spec.vmid);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("config.tmp");
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(self.config(spec).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, dir.join("config"))?;
        Ok(())
    }

    fn args(&self, vmid: u32, rest: &[&str]) -> Vec<String> {
        let mut a =
            vec!["-n".to_string(), vmid.to_string(), "-P".to_string(), self.lxcpath.display().to_string()];
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    }

    /// Starts the container in the background; returns once it runs.
    pub async fn start(&self, vmid: u32) -> Result<(), DriverError> {
        let log = self.dir(vmid).join("lxc.log");
        let log = log.display().to_string();
        self.runner.run(&tool("lxc-start"), &self.args(vmid, &["-d", "-o", &log, "-l", "INFO"])).await?;
        Ok(())
    }

    /// Stops it: cleanly (SIGPWR to its init) within `timeout`, then killed; at once when
    /// `timeout` is `None`.
    pub async fn stop(&self, vmid: u32, timeout: Option<Duration>) -> Result<(), DriverError> {
        let t;
        let rest: Vec<&str> = match timeout {
            Some(d) => {
                t = d.as_secs().max(1).to_string();
                vec!["-t", &t]
            }
            None => vec!["-k"],
        };
        match self.runner.run(&tool("lxc-stop"), &self.args(vmid, &rest)).await {
            Ok(_) => Ok(()),
            // Stopping a stopped container is a no-op.
            Err(DriverError::Command { message, .. }) if message.contains("is not running") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn state(&self, vmid: u32) -> Result<CtState, DriverError> {
        let out = self.runner.run(&tool("lxc-info"), &self.args(vmid, &["-s", "-H"])).await?;
        CtState::parse(&out)
            .ok_or_else(|| DriverError::Invalid(format!("lxc-info answered {:?}", out.trim())))
    }

    /// The container's init process on the host.
    pub async fn pid(&self, vmid: u32) -> Option<u32> {
        let out = self.runner.run(&tool("lxc-info"), &self.args(vmid, &["-p", "-H"])).await.ok()?;
        out.trim().parse().ok()
    }

    /// Waits (without polling: lxc-wait follows the container's state) until it is in
    /// `state`, or `timeout` passed.
    pub async fn wait(&self, vmid: u32, state: &str, timeout: Duration) -> Result<(), DriverError> {
        let t = timeout.as_secs().max(1).to_string();
        self.runner.run(&tool("lxc-wait"), &self.args(vmid, &["-s", state, "-t", &t])).await.map(|_| ())
    }

    /// Suspends (`true`) or resumes its processes (the freezer).
    pub async fn set_frozen(&self, vmid: u32, frozen: bool) -> Result<(), DriverError> {
        let program = if frozen { "lxc-freeze" } else { "lxc-unfreeze" };
        self.runner.run(&tool(program), &self.args(vmid, &[])).await.map(|_| ())
    }

    /// Runs `argv` inside the running container, with a clean environment; its output.
    pub async fn attach(&self, vmid: u32, argv: &[&str]) -> Result<String, DriverError> {
        let mut rest = vec!["--clear-env", "--"];
        rest.extend(argv);
        self.runner.run(&tool("lxc-attach"), &self.args(vmid, &rest)).await
    }
}

/// A container's root file system in an image file (Proxmox's `rootfs` on a `dir` or
/// `nfs` storage: a raw image with ext4, loop-mounted while the container runs).
pub struct ImageRootfs<'a> {
    runner: &'a dyn Runner,
}

impl<'a> ImageRootfs<'a> {
    pub fn new(runner: &'a dyn Runner) -> Self {
        ImageRootfs { runner }
    }

    /// Puts an ext4 file system on the (allocated, sparse) raw image; an unprivileged
    /// container's is owned by its mapped root from the start.
    pub async fn format(&self, image: &Path, unprivileged: bool) -> Result<(), DriverError> {
        self.runner.run("/usr/sbin/mkfs.ext4", &mkfs_argv(image, unprivileged)).await.map(|_| ())
    }

    /// Mounts the image on `target` through a loop device.
    pub async fn mount(&self, image: &Path, target: &Path) -> Result<(), DriverError> {
        std::fs::create_dir_all(target)?;
        let args = vec![
            "-o".to_string(),
            "loop,nodev".to_string(),
            image.display().to_string(),
            target.display().to_string(),
        ];
        self.runner.run("/usr/bin/mount", &args).await.map(|_| ())
    }

    /// Unmounts it (the loop device goes with it: mount set it up with autoclear).
    pub async fn unmount(&self, target: &Path) -> Result<(), DriverError> {
        self.runner.run("/usr/bin/umount", &[target.display().to_string()]).await.map(|_| ())
    }
}

/// `mkfs.ext4`'s argv for a container image.
pub fn mkfs_argv(image: &Path, unprivileged: bool) -> Vec<String> {
    let mut a = vec!["-q".to_string(), "-F".to_string()];
    if unprivileged {
        a.extend(["-E".to_string(), format!("root_owner={UNPRIVILEGED_BASE}:{UNPRIVILEGED_BASE}")]);
    }
    a.push(image.display().to_string());
    a
}

/// The `tar` argv that extracts template `tarball` into `rootfs` (compression from its
/// name: `.tar.gz`, `.tar.xz`, `.tar.zst`), keeping numeric owners and permissions.
pub fn extract_argv(tarball: &Path, rootfs: &Path) -> Result<Vec<String>, DriverError> {
    let name = tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let filter = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        "--gzip"
    } else if name.ends_with(".tar.xz") {
        "--xz"
    } else if name.ends_with(".tar.zst") {
        "--zstd"
    } else {
        return Err(DriverError::Invalid(format!("{name}: a template is a .tar.gz, .tar.xz or .tar.zst")));
    };
    Ok(vec![
        "-x".into(),
        filter.into(),
        "--numeric-owner".into(),
        "--preserve-permissions".into(),
        "--xattrs".into(),
        "-f".into(),
        tarball.display().to_string(),
        "-C".into(),
        rootfs.display().to_string(),
    ])
}

/// Shifts every file's owner under `rootfs` into the unprivileged range (uid + 100000),
/// without following links. Files already in the range are left as they are.
pub fn shift_ownership(rootfs: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::MetadataExt;
    let shift = |id: u32| if id >= UNPRIVILEGED_BASE { id } else { id + UNPRIVILEGED_BASE };
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        // Permission bits are kept: lchown clears set-id bits, so they are put back.
        std::os::unix::fs::lchown(&p, Some(shift(m.uid())), Some(shift(m.gid())))?;
        if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777))?;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::common::Recorder;

    fn spec() -> CtSpec {
        CtSpec {
            vmid: 200,
            hostname: "ct1".into(),
            memory_mib: 512,
            swap_mib: 256,
            cores: Some(2),
            cpulimit: Some(1.5),
            cpuunits: Some(1024),
            unprivileged: true,
            features: Features { fuse: true, ..Default::default() },
            nets: vec![CtNet {
                index: 0,
                name: "eth0".into(),
                bridge: Some("vmbr0".into()),
                hwaddr: Some("BC:24:11:00:00:01".into()),
                mtu: Some(1400),
            }],
            rootfs: "/srv/ct/200".into(),
        }
    }

    #[test]
    fn the_config_says_what_the_spec_does() {
        let d = LxcDriver::new("/run/hx/lxc", Cgroups::V2, Box::new(Recorder::default()));
        let c = d.config(&spec());
        for line in [
            "lxc.uts.name = ct1",
            "lxc.rootfs.path = dir:/srv/ct/200",
            "lxc.idmap = u 0 100000 65536",
            "lxc.idmap = g 0 100000 65536",
            "lxc.cgroup2.memory.max = 536870912",
            "lxc.cgroup2.memory.swap.max = 268435456",
            "lxc.cgroup2.cpuset.cpus = 0-1",
            "lxc.cgroup2.cpu.max = 150000 100000",
            "lxc.cgroup2.cpu.weight = 1024",
            "lxc.net.0.type = veth",
            "lxc.net.0.link = vmbr0",
            "lxc.net.0.veth.pair = veth200i0",
            "lxc.net.0.name = eth0",
            "lxc.net.0.hwaddr = BC:24:11:00:00:01",
            "lxc.net.0.mtu = 1400",
            "lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0",
            "lxc.console.logfile = /run/hx/lxc/200/console.log",
        ] {
            assert!(c.lines().any(|l| l == line), "{line:?} in\n{c}");
        }
        let v1 = LxcDriver::new("/run/hx/lxc", Cgroups::V1, Box::new(Recorder::default())).config(&spec());
        assert!(v1.contains("lxc.cgroup.memory.limit_in_bytes = 536870912\n"), "{v1}");
        assert!(v1.contains("lxc.cgroup.cpu.cfs_quota_us = 150000\n"), "{v1}");
        let mut privileged = spec();
        privileged.unprivileged = false;
        privileged.nets.clear();
        let c = d.config(&privileged);
        assert!(!c.contains("lxc.idmap") && c.contains("lxc.net.0.type = empty"), "{c}");
    }

    #[test]
    fn images_are_formatted_for_their_mapped_root() {
        assert_eq!(
            mkfs_argv(Path::new("/s/vm-200-disk-0.raw"), true),
            ["-q", "-F", "-E", "root_owner=100000:100000", "/s/vm-200-disk-0.raw"]
        );
        assert_eq!(mkfs_argv(Path::new("/i"), false), ["-q", "-F", "/i"]);
    }

    #[test]
    fn templates_extract_by_their_compression() {
        let argv = extract_argv(Path::new("/t/debian-12.tar.zst"), Path::new("/r")).unwrap();
        assert_eq!(argv[..2], ["-x".to_string(), "--zstd".to_string()]);
        assert!(argv.ends_with(&["-f".into(), "/t/debian-12.tar.zst".into(), "-C".into(), "/r".into()]));
        assert_eq!(extract_argv(Path::new("a.tar.gz"), Path::new("/r")).unwrap()[1], "--gzip");
        assert_eq!(extract_argv(Path::new("a.tar.xz"), Path::new("/r")).unwrap()[1], "--xz");
        assert!(extract_argv(Path::new("a.zip"), Path::new("/r")).is_err());
    }

    #[tokio::test]
    async fn the_tools_get_the_container_and_its_path() {
        let r = Recorder::default();
        r.reply(&["/usr/bin/lxc-info"], Ok("RUNNING\n"));
        r.reply(&["/usr/bin/lxc-stop"], Err("c1 is not running"));
        let d = LxcDriver::new("/run/hx/lxc", Cgroups::V1, Box::new(r));
        assert_eq!(d.state(7).await.unwrap(), CtState::Running);
        d.stop(7, Some(Duration::from_secs(30))).await.expect("stopping a stopped container is a no-op");
    }
}
