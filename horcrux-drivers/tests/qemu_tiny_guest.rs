//! The QEMU driver against real QEMU (TCG) booting the tiny guest built by
//! `scripts/tiny-guest.sh` (set HORCRUX_TINY_GUEST to its directory).

use std::path::PathBuf;
use std::time::Duration;

use horcrux_core::{KernelBoot, VmSpec};
use horcrux_drivers::{
    Accel, DirStorage, GuestLaunch, Hypervisor, ObservedPower, QemuDriver, ShutdownOutcome, VolumeStore,
};

fn tiny_guest() -> PathBuf {
    let dir = std::env::var_os("HORCRUX_TINY_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.lab/tiny-guest"));
    assert!(dir.join("vmlinuz").exists(), "no tiny guest in {}: run scripts/tiny-guest.sh", dir.display());
    dir
}

fn launch(vmid: u32, cmdline: &str, disk: PathBuf) -> GuestLaunch {
    let g = tiny_guest();
    GuestLaunch {
        vmid,
        name: format!("tiny{vmid}"),
        spec: VmSpec {
            memory_mib: 256,
            cores: 1,
            disks: vec![],
            boot: Some(KernelBoot {
                kernel: g.join("vmlinuz").display().to_string(),
                initrd: Some(g.join("initrd.gz").display().to_string()),
                cmdline: cmdline.into(),
            }),
            ..Default::default()
        },
        disks: vec![horcrux_drivers::DiskSource::File(disk)],
        cdroms: vec![],
        ha_until_ms: None,
        arch: Default::default(),
        loadvm: None,
    }
}

async fn wait_for_serial(driver: &QemuDriver, vmid: u32, marker: &str) {
    let log = driver.serial_log(vmid);
    for _ in 0..1200 {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(marker)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{marker} not seen in {} within 120 s", log.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_adopts_shuts_down_and_notices_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = DirStorage::new("local", tmp.path().join("storage"));
    let disk = storage.path(&storage.alloc(901, 0, 16).await.unwrap()).unwrap();
    let run = tmp.path().join("run");
    let logs = tmp.path().join("log");
    let driver = QemuDriver::new(run.clone(), logs.clone(), Accel::Tcg).unwrap();

    let l = launch(901, "console=ttyS0 stayup", disk.clone());
    driver.start(&l).await.unwrap();
    assert_eq!(driver.status(901).await.unwrap(), ObservedPower::Running);
    wait_for_serial(&driver, 901, "GUEST-BOOTED").await;
    // Starting a running guest does not launch a second QEMU.
    driver.start(&l).await.unwrap();
    let pid = std::fs::read_to_string(run.join("901.pid")).unwrap();
    // Confined: a seccomp filter, no listening socket of its own (TCP or unix); VNC answers
    // RFB on a socket pair handed over QMP.
    let pid_n: i32 = pid.trim().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid_n}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "no seccomp filter: {status}");
    assert_eq!(tcp_listeners_of(pid_n), Vec::<String>::new());
    assert!(!run.join("901.vnc").exists());
    let mut vnc = driver.vnc_connect(901).await.unwrap();
    let mut banner = [0u8; 12];
    std::io::Read::read_exact(&mut vnc, &mut banner).unwrap();
    assert!(banner.starts_with(b"RFB 003."), "{banner:?}");
    drop(vnc);
    // Its own user (uid = base + vmid, no groups), which may open no file but its own: it
    // was handed its disk; another guest's disk, root's secrets and the daemon's run
    // directory are refused when QEMU itself tries to open them.
    let owner = horcrux_drivers::qemu::DEFAULT_GUEST_UID_BASE + 901;
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uids, format!("Uid:\t{owner}\t{owner}\t{owner}\t{owner}"));
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap().trim().to_string();
    assert_eq!(groups, "Groups:");
    let other = storage.path(&storage.alloc(911, 0, 16).await.unwrap()).unwrap();
    let open_dir = tmp.path().join("shared");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exposed = open_dir.join("other.qcow2");
    std::fs::copy(&other, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let qmp = driver.qmp(901).await.unwrap();
    for (n, target) in
        [exposed.display().to_string(), "/etc/shadow".into(), other.display().to_string()].iter().enumerate()
    {
        let args = serde_json::json!({
            "driver": "file", "node-name": format!("intruder{n}"), "filename": target, "read-only": true,
        });
        let e = qmp.execute("blockdev-add", Some(args)).await.unwrap_err().to_string();
        assert!(e.contains("Permission denied"), "QEMU opened {target}: {e}");
    }
    // (QEMU serves one QMP client at a time: the next driver's turn.)
    drop(qmp);

    // A fresh driver (as after a daemon restart) adopts the same process.
    drop(driver);
    let driver = QemuDriver::new(run.clone(), logs, Accel::Tcg).unwrap();
    assert_eq!(driver.status(901).await.unwrap(), ObservedPower::Running);
    assert_eq!(std::fs::read_to_string(run.join("901.pid")).unwrap(), pid);
    // The restarted driver also lists it among the guests running on this host.
    assert_eq!(driver.running_guests().await.unwrap(), vec![901]);

    // The busybox guest ignores ACPI power-off: shutdown falls back to a hard stop.
    let outcome = driver.shutdown(901, Duration::from_secs(2)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert_eq!(driver.status(901).await.unwrap(), ObservedPower::Stopped);
    assert!(driver.running_guests().await.unwrap().is_empty());
    // Gone, or a zombie waiting for an init that does not reap (as in some containers).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "QEMU still alive: {stat}");

    // A guest that powers itself off is noticed.
    driver.start(&launch(901, "console=ttyS0", disk)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), driver.wait_exit(901)).await.expect("QEMU exit noticed");
    assert_eq!(driver.status(901).await.unwrap(), ObservedPower::Stopped);
    driver.stop(901).await.unwrap();
}

/// The TCP sockets process `pid` listens on (from /proc/net/tcp{,6} and its fds).
fn tcp_listeners_of(pid: i32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                out.push(f[1].to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn missing_disk_is_refused_before_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let driver = QemuDriver::new(tmp.path().join("run"), tmp.path().join("log"), Accel::Tcg).unwrap();
    let e = driver.start(&launch(902, "", tmp.path().join("nope.qcow2"))).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(driver.status(902).await.unwrap(), ObservedPower::Stopped);
}

#[tokio::test]
async fn argv_has_the_contracted_options() {
    let tmp = tempfile::tempdir().unwrap();
    let driver = QemuDriver::new(tmp.path().join("r,un"), tmp.path().join("log"), Accel::Tcg).unwrap();
    let argv: Vec<String> = driver
        .argv(&launch(903, "console=ttyS0 a,b", PathBuf::from("/d/x,y.qcow2")))
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect();
    let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("-accel"), "tcg");
    assert_eq!(after("-name"), "tiny903,debug-threads=on");
    // No listener of QEMU's own: VNC without a socket; QMP on the descriptor the daemon
    // bound; confined by seccomp.
    assert_eq!(after("-vnc"), "none");
    assert_eq!(after("-sandbox"), "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    assert_eq!(after("-chardev"), "socket,id=qmp,fd=3,server=on,wait=off");
    assert_eq!(after("-mon"), "chardev=qmp,mode=control");
    // No path at all: the disk is fd set 1 (read-write 4, read-only 5), the serial log fd
    // 6, the serial console's listening socket (bound by the daemon) 7, the kernel and
    // initrd 8 and 9.
    let add_fds: Vec<&String> = argv.windows(2).filter(|w| w[0] == "-add-fd").map(|w| &w[1]).collect();
    assert_eq!(add_fds, ["fd=4,set=1", "fd=5,set=1"]);
    assert_eq!(after("-drive"), "file=/dev/fdset/1,if=none,id=drive-virtio0,format=qcow2,file.locking=off");
    let chardevs: Vec<&String> = argv.windows(2).filter(|w| w[0] == "-chardev").map(|w| &w[1]).collect();
    assert_eq!(chardevs[1], "socket,id=serial0,fd=7,server=on,wait=off,logfile=/proc/self/fd/6");
    assert_eq!(after("-serial"), "chardev:serial0");
    assert_eq!((after("-kernel"), after("-initrd")), ("/proc/self/fd/8".into(), "/proc/self/fd/9".into()));
    assert_eq!(after("-append"), "console=ttyS0 a,b");
    assert!(!argv.contains(&"-daemonize".to_string()), "-daemonize forks, which the sandbox forbids");
    assert!(!argv.iter().any(|a| a.contains("/d/x") || a.contains("r,un")), "no path reaches QEMU: {argv:?}");
}

/// Removes the test bridge however the test ends.
struct Bridge(&'static str);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_join_a_real_bridge_and_disks_sit_on_their_bus() {
    use horcrux_core::vmconfig::NetSpec;
    let tmp = tempfile::tempdir().unwrap();
    let storage = DirStorage::new("local", tmp.path().join("storage"));
    let disk = storage.path(&storage.alloc(904, 0, 16).await.unwrap()).unwrap();
    let driver = QemuDriver::new(tmp.path().join("run"), tmp.path().join("log"), Accel::Tcg).unwrap();
    let mut l = launch(904, "console=ttyS0 stayup", disk);
    l.spec.disks = vec![horcrux_core::DiskSpec {
        storage: "local".into(),
        size_mib: 16,
        volume: None,
        slot: Some("scsi2".into()),
        format: None,
    }];
    l.spec.sockets = 2;
    let net = |index: u8, bridge: Option<&str>| NetSpec {
        index,
        model: "virtio".into(),
        macaddr: format!("BC:24:11:00:09:0{index}"),
        bridge: bridge.map(String::from),
        tag: None,
        firewall: false,
        link_down: index == 1,
    };
    l.spec.nets = vec![net(0, Some("hxbr904")), net(1, None)];

    // Proxmox's refusal when the bridge is missing, before anything is launched.
    let e = driver.start(&l).await.unwrap_err();
    assert!(e.to_string().contains("bridge 'hxbr904' does not exist"), "{e}");
    assert_eq!(driver.status(904).await.unwrap(), ObservedPower::Stopped);

    let ok =
        std::process::Command::new("ip").args(["link", "add", "hxbr904", "type", "bridge"]).status().unwrap();
    assert!(ok.success());
    let _bridge = Bridge("hxbr904");
    driver.start(&l).await.unwrap();
    let master = std::fs::read_link("/sys/class/net/tap904i0/master").unwrap();
    assert!(master.ends_with("hxbr904"), "{}", master.display());
    let argv = std::fs::read_to_string(format!(
        "/proc/{}/cmdline",
        std::fs::read_to_string(tmp.path().join("run/904.pid")).unwrap().trim()
    ))
    .unwrap()
    .replace('\0', " ");
    assert!(argv.contains("-smp 2,sockets=2,cores=1"), "{argv}");
    assert!(argv.contains("scsi-hd,bus=scsihw0.0,scsi-id=2,drive=drive-scsi2,id=scsi2"), "{argv}");
    assert!(argv.contains("virtio-net-pci,netdev=net0,mac=BC:24:11:00:09:00,id=net0"), "{argv}");
    // The daemon made the tap and handed it over: QEMU needs no network privilege.
    assert!(argv.contains("-netdev tap,id=net0,fd="), "{argv}");
    assert!(argv.contains("user,id=net1"), "{argv}");
    driver.stop(904).await.unwrap();
    // The tap goes with the last descriptor to it, QEMU's.
    for _ in 0..50 {
        if !std::path::Path::new("/sys/class/net/tap904i0").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!std::path::Path::new("/sys/class/net/tap904i0").exists());
}

/// After a daemon restart several callers reach an adopted guest at once (the status poll,
/// the exit watcher, a stop): QEMU serves one QMP client at a time, so a second connection
/// made in the race never gets its greeting and whatever used it hung until timeouts (a
/// stop took 75 s). Fifty restarts, each with the three racing: every stop ends promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_after_adoption_never_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = DirStorage::new("local", tmp.path().join("storage"));
    let disk = storage.path(&storage.alloc(905, 0, 16).await.unwrap()).unwrap();
    let (run, logs) = (tmp.path().join("run"), tmp.path().join("log"));
    let l = launch(905, "console=ttyS0 stayup", disk);
    for round in 0..50 {
        let first = QemuDriver::new(run.clone(), logs.clone(), Accel::Tcg).unwrap();
        first.start(&l).await.unwrap();
        drop(first);
        // The restarted daemon's driver.
        let driver = std::sync::Arc::new(QemuDriver::new(run.clone(), logs.clone(), Accel::Tcg).unwrap());
        let (a, b) = (driver.clone(), driver.clone());
        let status = tokio::spawn(async move { a.status(905).await });
        let watcher = tokio::spawn(async move { b.wait_exit(905).await });
        let t0 = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(15), driver.stop(905))
            .await
            .unwrap_or_else(|_| panic!("round {round}: stop after adoption hung"))
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(12), "round {round}: stop took {:?}", t0.elapsed());
        let _ = status.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the exit watcher missed the exit"))
            .unwrap();
        assert_eq!(driver.status(905).await.unwrap(), ObservedPower::Stopped);
    }
}
