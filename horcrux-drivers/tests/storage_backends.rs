//! The storage backends against the real tools on this machine (as root; scripts/deps.sh
//! installs them): btrfs on a loop file, zfs-fuse datasets, snapshots and clones, and the
//! report of a real LVM volume group whose logical volume exists in metadata only (no
//! device mapper here), an NFS export served by nfs-ganesha and an iSCSI target served by
//! tgtd with CHAP, and a one-host Ceph cluster with cephx (each also boots the tiny guest
//! from a disk on it, through QEMU's own NFS, iSCSI and RBD clients). What cannot run here (zvols, LV data) is checked by argv in the
//! backends' unit tests. A missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use horcrux_drivers::storage::{
    common::SystemRunner, BtrfsStorage, IscsiStorage, LvmStorage, NfsStorage, RbdStorage, VolumeStore,
    ZfsPoolStorage,
};
use horcrux_drivers::{Accel, DiskSource, GuestLaunch, Hypervisor, QemuDriver};

#[path = "lab/netstore.rs"]
mod netstore;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/deps.sh)"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file, detached (and unmounted) on drop.
struct Loop {
    dev: String,
    mounted: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: &str) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        run("truncate", &["-s", size, img.to_str().unwrap()]);
        let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()]).trim().to_string();
        Loop { dev, mounted: None, _dir: dir }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mounted {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(data, offset).unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0; len];
    std::fs::File::open(path).unwrap().read_exact_at(&mut b, offset).unwrap();
    b
}

#[tokio::test]
async fn btrfs_subvolumes_snapshots_rollback_and_free() {
    let mut lo = Loop::new("256M");
    run("mkfs.btrfs", &["-q", &lo.dev]);
    let mnt = tempfile::tempdir().unwrap();
    run("mount", &[&lo.dev, mnt.path().to_str().unwrap()]);
    lo.mounted = Some(mnt.path().to_path_buf());

    let plain = tempfile::tempdir().unwrap();
    let wrong = BtrfsStorage::new("b", plain.path(), Arc::new(SystemRunner), &Default::default());
    assert!(wrong.activate().await.unwrap_err().to_string().contains("not on a btrfs"));

    let s = BtrfsStorage::new("b", mnt.path(), Arc::new(SystemRunner), &Default::default());
    s.activate().await.unwrap();
    let vol = s.alloc(100, 0, 16).await.unwrap();
    assert_eq!(vol, "b:100/vm-100-disk-0.raw");
    let disk = s.path(&vol).unwrap();
    assert_eq!(disk, mnt.path().join("images/100/vm-100-disk-0/disk.raw"));
    let sub = mnt.path().join("images/100/vm-100-disk-0");
    let show = run("btrfs", &["subvolume", "show", sub.to_str().unwrap()]);
    assert!(show.contains("vm-100-disk-0"), "{show}");
    let listed = s.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].format.as_str(), listed[0].size, listed[0].vmid), ("raw", 16 << 20, 100));

    write_at(&disk, 4096, b"before");
    s.snapshot(&vol, "s1").await.unwrap();
    let snap = mnt.path().join("images/100/vm-100-disk-0@s1");
    let ro = run("btrfs", &["property", "get", snap.to_str().unwrap(), "ro"]);
    assert_eq!(ro.trim(), "ro=true");
    write_at(&disk, 4096, b"after!");
    s.snapshot(&vol, "s2").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["s1", "s2"]);
    s.rollback(&vol, "s1").await.unwrap();
    assert_eq!(read_at(&disk, 4096, 6), b"before");
    assert!(s.rollback(&vol, "nope").await.is_err());
    s.delete_snapshot(&vol, "s2").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["s1"]);
    assert_eq!(s.list().await.unwrap().len(), 1, "snapshots are not volumes");

    // Handed to another guest: refused while it has a snapshot, then the subvolume moves.
    assert!(s.rename(&vol, 101, 0).await.unwrap_err().to_string().contains("snapshots"));
    s.delete_snapshot(&vol, "s1").await.unwrap();
    let moved = s.rename(&vol, 101, 2).await.unwrap();
    assert_eq!(moved, "b:101/vm-101-disk-2.raw");
    assert_eq!(read_at(&s.path(&moved).unwrap(), 4096, 6), b"before");
    assert!(!sub.exists() && !mnt.path().join("images/100").exists());
    let show =
        run("btrfs", &["subvolume", "show", mnt.path().join("images/101/vm-101-disk-2").to_str().unwrap()]);
    assert!(show.contains("vm-101-disk-2"), "{show}");
    let (vol, sub) = (moved, mnt.path().join("images/101/vm-101-disk-2"));

    let usage = s.usage().await.unwrap().unwrap();
    assert!(usage.total > 200 << 20 && usage.avail > 0, "{usage:?}");
    s.free(&vol).await.unwrap();
    assert!(!sub.exists() && !snap.exists());
    assert!(s.list().await.unwrap().is_empty());
}

/// zfs-fuse's daemon, started if none answers (it stays for the other tests).
///
/// zfs-fuse exits 1 without a word (it logs only to syslog, absent here) when it cannot
/// take its lock in `/var/lock/zfs` (a fresh machine's `/var/lock -> /run/lock` may point
/// nowhere), when another daemon holds that lock, or when its pid file is left from a
/// killed one: each is settled first, and a failure says which state it found.
fn zfs_fuse() {
    const PIDFILE: &str = "/run/horcrux-test-zfs-fuse.pid";
    let answers = || Command::new("zpool").arg("list").output().is_ok_and(|o| o.status.success());
    let wait = |what: &str| {
        for _ in 0..100 {
            if answers() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let z = Command::new("zpool").arg("list").output().unwrap();
        panic!(
            "zfs-fuse ({what}) did not answer in 10 s: zpool list: {}{}; live daemons: {:?}",
            String::from_utf8_lossy(&z.stdout),
            String::from_utf8_lossy(&z.stderr),
            live_zfs_fuse()
        );
    };
    if answers() {
        return;
    }
    if !live_zfs_fuse().is_empty() {
        // Starting (another test binary's, or the package's init script's): give it time.
        return wait("already running");
    }
    std::fs::create_dir_all("/run/lock").unwrap();
    let _ = std::fs::remove_file(PIDFILE);
    let out = Command::new("zfs-fuse")
        .args(["--pidfile", PIDFILE])
        .output()
        .unwrap_or_else(|e| panic!("zfs-fuse: {e} (run scripts/deps.sh)"));
    assert!(
        out.status.success(),
        "zfs-fuse exited {} ({}); /var/lock -> {:?}, /var/lock/zfs exists: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::canonicalize("/var/lock"),
        Path::new("/var/lock/zfs").exists()
    );
    wait("started here")
}

/// Pids of zfs-fuse processes that are alive (a killed one stays a zombie here: PID 1
/// does not reap).
fn live_zfs_fuse() -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "PID (comm) STATE ...": comm may hold spaces, the state follows its last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        if head.ends_with("(zfs-fuse") && !tail.trim_start().starts_with('Z') {
            pids.push(pid);
        }
    }
    pids
}

struct Zpool(String, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Zpool {
    fn drop(&mut self) {
        let _ = Command::new("zpool").args(["destroy", "-f", &self.0]).status();
    }
}

#[tokio::test]
async fn zfs_datasets_snapshots_clones_and_free() {
    zfs_fuse();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pool.img");
    run("truncate", &["-s", "128M", img.to_str().unwrap()]);
    let name = format!("hx{}", std::process::id());
    let mnt = dir.path().join("mnt");
    run("zpool", &["create", "-m", mnt.to_str().unwrap(), &name, img.to_str().unwrap()]);
    let _pool = Zpool(name.clone(), dir);
    let opts = [("mountpoint".to_string(), mnt.display().to_string())].into_iter().collect();
    let s = ZfsPoolStorage::new("tank", name.clone(), Arc::new(SystemRunner), &opts);
    s.activate().await.unwrap();
    let missing = ZfsPoolStorage::new("x", "nopool", Arc::new(SystemRunner), &Default::default());
    assert!(missing.activate().await.unwrap_err().to_string().contains("nopool"));

    let vol = s.alloc_subvol(100, 0, 32).await.unwrap();
    assert_eq!(vol, "tank:subvol-100-disk-0");
    let root = s.path(&vol).unwrap();
    assert_eq!(root, mnt.join("subvol-100-disk-0"));
    let listed = s.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].content.as_str(), listed[0].size, listed[0].vmid), ("rootdir", 32 << 20, 100));
    assert!(listed[0].ctime > 1_700_000_000);

    std::fs::write(root.join("f"), b"before").unwrap();
    s.snapshot(&vol, "s1").await.unwrap();
    std::fs::write(root.join("f"), b"after").unwrap();
    s.snapshot(&vol, "s2").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["s1", "s2"]);
    // ZFS rolls back past later snapshots only with -r: s2 goes.
    s.rollback(&vol, "s1").await.unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"before");
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["s1"]);

    let clone = s.clone_volume(&vol, "s1", "subvol-101-disk-0").await.unwrap();
    assert_eq!(std::fs::read(s.path(&clone).unwrap().join("f")).unwrap(), b"before");
    let parents: Vec<_> = s.list().await.unwrap().into_iter().map(|v| (v.volid, v.parent)).collect();
    assert_eq!(
        parents,
        [
            ("tank:subvol-100-disk-0".to_string(), None),
            ("tank:subvol-101-disk-0".to_string(), Some("subvol-100-disk-0@s1".to_string()))
        ],
        "a clone names its origin, without the pool"
    );
    let e = s.free(&vol).await.unwrap_err().to_string();
    assert!(e.contains("dependent clones"), "a base with a linked clone stays: {e}");
    s.free(&clone).await.unwrap();
    s.delete_snapshot(&vol, "s1").await.unwrap();
    assert!(s.snapshots(&vol).await.unwrap().is_empty());
    let usage = s.usage().await.unwrap().unwrap();
    assert!(usage.avail > 0 && usage.total >= usage.used, "{usage:?}");
    s.free(&vol).await.unwrap();
    s.free(&vol).await.unwrap();
    assert!(s.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn lvm_reports_of_a_real_volume_group() {
    let lo = Loop::new("64M");
    let vg = format!("hx{}", std::process::id());
    run("pvcreate", &["-q", &lo.dev]);
    run("vgcreate", &["-q", &vg, &lo.dev]);
    struct Vg(String, String);
    impl Drop for Vg {
        fn drop(&mut self) {
            let _ = Command::new("vgremove").args(["-f", &self.0]).output();
            let _ = Command::new("pvremove").args(["-q", &self.1]).output();
        }
    }
    let _vg = Vg(vg.clone(), lo.dev.clone());
    // No device mapper: the volume exists in the metadata only.
    run("lvcreate", &["--driverloaded", "n", "-an", "-Zn", "-L", "8m", "-n", "vm-100-disk-0", &vg]);
    let s = LvmStorage::new("lvm1", vg.clone(), None, Arc::new(SystemRunner));
    s.activate().await.unwrap();
    assert!(LvmStorage::new("x", "novg", None, Arc::new(SystemRunner)).activate().await.is_err());
    let listed = s.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].volid.as_str(), listed[0].size, listed[0].vmid),
        ("lvm1:vm-100-disk-0", 8 << 20, 100)
    );
    assert!(listed[0].ctime > 1_700_000_000);
    let usage = s.usage().await.unwrap().unwrap();
    assert_eq!(usage.total - usage.avail, 8 << 20, "{usage:?}");
    assert_eq!(s.path("lvm1:vm-100-disk-0").unwrap(), PathBuf::from(format!("/dev/{vg}/vm-100-disk-0")));
}

/// Boots the tiny guest from `disk` and waits for its `showdisk` line (the first 12 bytes
/// of /dev/vda) to say `marker`.
async fn boot_shows(disk: DiskSource, marker: &str) {
    let g = std::env::var_os("HORCRUX_TINY_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.lab/tiny-guest"));
    assert!(g.join("vmlinuz").exists(), "no tiny guest in {}: run scripts/lab.sh", g.display());
    let tmp = tempfile::tempdir().unwrap();
    let driver = QemuDriver::new(tmp.path().join("run"), tmp.path().join("log"), Accel::Tcg).unwrap();
    let launch = GuestLaunch {
        vmid: 951,
        name: "netdisk".into(),
        spec: horcrux_core::VmSpec {
            memory_mib: 256,
            cores: 1,
            disks: vec![horcrux_core::DiskSpec {
                storage: "net".into(),
                size_mib: 64,
                volume: Some("net:x".into()),
                slot: Some("virtio0".into()),
                format: None,
            }],
            boot: Some(horcrux_core::KernelBoot {
                kernel: g.join("vmlinuz").display().to_string(),
                initrd: Some(g.join("initrd.gz").display().to_string()),
                cmdline: "console=ttyS0 showdisk stayup".into(),
            }),
            ..Default::default()
        },
        disks: vec![disk],
        cdroms: vec![],
        ha_until_ms: None,
        arch: Default::default(),
        loadvm: None,
    };
    driver.start(&launch).await.unwrap();
    let log = driver.serial_log(951);
    let want = format!("DISK:{marker}");
    let mut seen = String::new();
    for _ in 0..1200 {
        seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains(&want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = driver.stop(951).await;
    assert!(seen.contains(&want), "{want} not on the serial console:\n{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_images_on_ganesha_snapshots_free_and_a_guest_boots_from_one() {
    let server = netstore::Ganesha::start();
    let export = server.export().display().to_string();
    let s = NfsStorage::new("nas", "127.0.0.1", &export, Arc::new(SystemRunner), &Default::default());
    s.activate().await.unwrap();
    assert!(server.export().join("images").is_dir() && server.export().join("template/iso").is_dir());
    let usage = s.usage().await.unwrap().expect("nfs-ls -s reports the export's space");
    assert!(usage.total > 0 && usage.avail <= usage.total, "{usage:?}");

    let vol = s.alloc(120, 0, 64).await.unwrap();
    assert_eq!(vol, "nas:120/vm-120-disk-0.qcow2");
    let file = server.export().join("images/120/vm-120-disk-0.qcow2");
    assert!(file.exists(), "qemu-img made the image through the server");
    assert!(s.alloc(120, 0, 64).await.unwrap_err().to_string().contains("already exists"));
    std::fs::write(server.export().join("template/iso/boot.iso"), b"iso").unwrap();
    let listed: Vec<(String, u64, String)> =
        s.list().await.unwrap().into_iter().map(|v| (v.volid, v.size, v.content)).collect();
    assert_eq!(
        listed,
        [
            ("nas:120/vm-120-disk-0.qcow2".to_string(), 64 << 20, "images".to_string()),
            ("nas:iso/boot.iso".to_string(), 3, "iso".to_string()),
        ]
    );
    s.resize(&vol, 96 << 20).await.unwrap();
    assert_eq!(s.list().await.unwrap()[0].size, 96 << 20);

    s.snapshot(&vol, "first").await.unwrap();
    s.snapshot(&vol, "second").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["first", "second"]);
    s.rollback(&vol, "first").await.unwrap();
    s.delete_snapshot(&vol, "second").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["first"]);

    s.free(&vol).await.unwrap();
    assert!(!file.exists() && !server.export().join("images/120").exists());
    s.free(&vol).await.unwrap();

    // A raw disk on the export, read by QEMU's own NFS client (as uid 0, though QEMU runs
    // as its own user).
    let opts = [("format".to_string(), "raw".to_string())].into_iter().collect();
    let raw = NfsStorage::new("nas", "127.0.0.1", &export, Arc::new(SystemRunner), &opts);
    let vol = raw.alloc(121, 0, 16).await.unwrap();
    netstore::write_marker(&server.export().join("images/121/vm-121-disk-0.raw"), b"HX-NFS-DISK!");
    boot_shows(raw.source(&vol).unwrap(), "HX-NFS-DISK!").await;
    raw.free(&vol).await.unwrap();

    // A server that is not there: a clear error, not a hang.
    let gone =
        NfsStorage::new("gone", "127.0.0.1", "/no/such/export", Arc::new(SystemRunner), &Default::default());
    let e = gone.activate().await.unwrap_err().to_string();
    assert!(e.contains("mount"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_luns_on_tgtd_with_chap_and_a_guest_boots_from_one() {
    let server = netstore::Tgt::start("alice", "s3cretpass1", 32);
    let portal = netstore::TGT_PORTAL;
    let s = IscsiStorage::new(
        "san",
        portal,
        &server.target,
        Some("alice".into()),
        Some("s3cretpass1".into()),
        Arc::new(SystemRunner),
    );
    s.activate().await.unwrap();
    let listed: Vec<(String, u64)> = s.list().await.unwrap().into_iter().map(|v| (v.volid, v.size)).collect();
    assert_eq!(listed, [("san:lun1".to_string(), 32 << 20)]);
    assert!(s.alloc(100, 0, 16).await.unwrap_err().to_string().contains("on the target"));
    assert!(s.snapshot("san:lun1", "first").await.is_err());

    // A wrong password: refused at login, with the target's reason.
    let wrong = IscsiStorage::new(
        "san",
        portal,
        &server.target,
        Some("alice".into()),
        Some("nope".into()),
        Arc::new(SystemRunner),
    );
    let e = wrong.activate().await.unwrap_err().to_string();
    assert!(e.contains("Authentication failure"), "{e}");
    assert!(!e.contains("nope"));
    let unknown = "iqn.2026-12.org.horcrux:none";
    let creds = (Some("alice".to_string()), Some("s3cretpass1".to_string()));
    let e = IscsiStorage::new("san", portal, unknown, creds.0, creds.1, Arc::new(SystemRunner))
        .activate()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not export target"), "{e}");

    // QEMU logs in with CHAP itself (the password from a descriptor, not its argv).
    netstore::write_marker(&server.lun_file, b"HX-ISCSI-LUN");
    boot_shows(s.source("san:lun1").unwrap(), "HX-ISCSI-LUN").await;
    // Its import path: qemu-img reads the LUN with the password in its environment.
    let tmp = tempfile::tempdir().unwrap();
    let dir = horcrux_drivers::DirStorage::new("local", tmp.path());
    dir.activate().await.unwrap();
    let copy = dir.alloc(130, 0, 32).await.unwrap();
    dir.import_from(&copy, &s.source("san:lun1").unwrap()).await.unwrap();
    let copied = read_at(&dir.path(&copy).unwrap(), 0, 12);
    assert_ne!(copied, b"HX-ISCSI-LUN", "the copy is qcow2, not raw");
    let out = Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=12", "count=1"])
        .arg(format!("if={}", dir.path(&copy).unwrap().display()))
        .arg(format!("of={}", tmp.path().join("head").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(&std::fs::read(tmp.path().join("head")).unwrap()[..12], b"HX-ISCSI-LUN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_images_on_a_one_host_ceph_snapshots_clones_and_a_guest_boots_from_one() {
    let ceph = netstore::Ceph::start();
    let keyring = ceph.keyring();
    let s = RbdStorage::new(
        "ceph",
        "rbd",
        netstore::CEPH_MON,
        None,
        Some(&keyring),
        None,
        Arc::new(SystemRunner),
    );
    s.activate().await.unwrap();
    // No manager in this cluster: the pool's figures are unknown, not made up.
    assert_eq!(s.usage().await.unwrap(), None);

    let vol = s.alloc(160, 0, 16).await.unwrap();
    assert_eq!(vol, "ceph:vm-160-disk-0");
    assert!(s.alloc(160, 0, 16).await.unwrap_err().to_string().contains("exists"));
    let listed: Vec<(String, u64)> = s.list().await.unwrap().into_iter().map(|v| (v.volid, v.size)).collect();
    assert_eq!(listed, [("ceph:vm-160-disk-0".to_string(), 16 << 20)]);
    s.resize(&vol, 32 << 20).await.unwrap();
    assert_eq!(s.list().await.unwrap()[0].size, 32 << 20);

    // Data in, through qemu-img's librbd (the key in its environment).
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("marker.raw");
    let mut data = vec![0u8; 32 << 20];
    data[..12].copy_from_slice(b"HX-RBD-IMAGE");
    std::fs::write(&src, &data).unwrap();
    s.import_from(&vol, &DiskSource::File(src.clone())).await.unwrap();

    s.snapshot(&vol, "first").await.unwrap();
    s.snapshot(&vol, "second").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["first", "second"]);
    s.rollback(&vol, "first").await.unwrap();
    s.delete_snapshot(&vol, "second").await.unwrap();
    assert_eq!(s.snapshots(&vol).await.unwrap(), ["first"]);

    // A linked clone of the snapshot; its base cannot go while it exists.
    let clone = s.clone_snapshot(&vol, "first", "vm-161-disk-0").await.unwrap();
    assert_eq!(clone, "ceph:vm-161-disk-0");
    let e = s.free(&vol).await.unwrap_err().to_string();
    assert!(e.contains("clone"), "{e}");
    // QEMU's librbd reads the clone (the key from a descriptor, not its argv).
    boot_shows(s.source(&clone).unwrap(), "HX-RBD-IMAGE").await;
    // Handed to another guest: `rbd mv`.
    let clone = s.rename(&clone, 162, 0).await.unwrap();
    assert_eq!(clone, "ceph:vm-162-disk-0");
    let listed = s.list().await.unwrap();
    let c = listed.iter().find(|v| v.volid == clone).expect("the clone is listed");
    assert_eq!(c.parent.as_deref(), Some("vm-160-disk-0@first"), "{listed:?}");
    assert_eq!(listed.iter().find(|v| v.volid == vol).unwrap().parent, None);
    s.free(&clone).await.unwrap();
    s.free(&vol).await.unwrap();
    assert!(s.list().await.unwrap().is_empty());
    s.free(&vol).await.unwrap();

    // A wrong key: refused when the storage is activated.
    let wrong = RbdStorage::new(
        "ceph",
        "rbd",
        netstore::CEPH_MON,
        None,
        Some("AQBbS29nAAAAABAAq9p5c0ZRZ0N5bG5tR0VzVnQ9PQ=="),
        None,
        Arc::new(SystemRunner),
    );
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), wrong.activate())
        .await
        .unwrap()
        .unwrap_err();
    assert!(!e.to_string().contains("AQBbS29n"), "{e}");
}
