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
        disk_paths: vec![disk],
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
    // Confined: a seccomp filter, no TCP listener; VNC answers RFB on its unix socket.
    let pid_n: i32 = pid.trim().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid_n}/status")).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "no seccomp filter: {status}");
    assert_eq!(tcp_listeners_of(pid_n), Vec::<String>::new());
    let mut vnc = std::os::unix::net::UnixStream::connect(run.join("901.vnc")).unwrap();
    let mut banner = [0u8; 12];
    std::io::Read::read_exact(&mut vnc, &mut banner).unwrap();
    assert!(banner.starts_with(b"RFB 003."), "{banner:?}");
    drop(vnc);

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
    // No TCP listener: VNC on a unix socket beside QMP; confined by seccomp.
    assert!(after("-vnc").starts_with("unix:") && after("-vnc").ends_with("r,,un/903.vnc"), "{argv:?}");
    assert_eq!(after("-sandbox"), "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    assert!(after("-qmp").contains("r,,un/903.qmp,server=on,wait=off"), "commas escaped: {argv:?}");
    assert!(after("-drive").starts_with("file=/d/x,,y.qcow2,if=none"));
    assert_eq!(after("-append"), "console=ttyS0 a,b");
    assert!(!argv.contains(&"-daemonize".to_string()), "-daemonize forks, which the sandbox forbids");
    assert!(after("-serial").ends_with("903.serial.log"));
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
    assert!(argv.contains("user,id=net1"), "{argv}");
    driver.stop(904).await.unwrap();
    // QEMU removes the tap it created.
    for _ in 0..50 {
        if !std::path::Path::new("/sys/class/net/tap904i0").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!std::path::Path::new("/sys/class/net/tap904i0").exists());
}
