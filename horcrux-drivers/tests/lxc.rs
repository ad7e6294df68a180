//! LXC for real (liblxc 5.0's tools, as root): a busybox template tarball made here is
//! extracted into a root file system (an ext4 image, loop-mounted, as on a `dir` storage) and shifted into the unprivileged range, the driver
//! writes the config, starts the container, sees it running, attaches into it (its host
//! name; root inside, uid 100000 outside), freezes and thaws it, follows it to STOPPED
//! with lxc-wait (no polling) and stops it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use horcrux_drivers::lxc::{
    extract_argv, shift_ownership, Cgroups, CtSpec, CtState, Features, ImageRootfs, LxcDriver,
};
use horcrux_drivers::storage::SystemRunner;

/// A busybox root file system as a `.tar.gz` template: init prints a marker on the
/// console and keeps a shell there.
fn busybox_template(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static (scripts/deps.sh)");
    for a in ["sh", "hostname", "id", "sleep", "ls", "cat", "echo", "mount"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(a)).unwrap();
    }
    std::os::unix::fs::symlink("../bin/busybox", tree.join("sbin/init")).unwrap();
    std::fs::write(tree.join("etc/inittab"), "::sysinit:/bin/echo CT-BOOTED\n::respawn:/bin/sh\n").unwrap();
    let out = dir.join("busybox.tar.gz");
    let st = Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&tree).arg(".").status().unwrap();
    assert!(st.success());
    out
}

#[tokio::test]
async fn a_busybox_container_runs_unprivileged_and_stops() {
    assert!(Path::new("/usr/bin/lxc-start").exists(), "LXC is not installed: run scripts/deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    // The container's root (uid 100000 on the host) must reach its root file system.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let template = busybox_template(tmp.path());
    // The root file system as on a `dir` storage: a sparse raw image with ext4, loop-mounted.
    let image = tmp.path().join("vm-4242-disk-0.raw");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let runner = SystemRunner;
    let images = ImageRootfs::new(&runner);
    images.format(&image, true).await.unwrap();
    let rootfs = tmp.path().join("rootfs");
    images.mount(&image, &rootfs).await.unwrap();
    let _mounted = Unmount(rootfs.clone());
    let root_meta = std::fs::metadata(&rootfs).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&root_meta),
        100_000,
        "mkfs made the mapped root its owner"
    );
    let st = Command::new("tar").args(extract_argv(&template, &rootfs).unwrap()).status().unwrap();
    assert!(st.success(), "the template extracts");
    shift_ownership(&rootfs).unwrap();
    let meta = std::fs::symlink_metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 100_000, "shifted into the unprivileged range");

    let vmid = 4242;
    let spec = CtSpec {
        vmid,
        hostname: "ct-test".into(),
        memory_mib: 64,
        swap_mib: 0,
        cores: Some(1),
        cpulimit: None,
        cpuunits: Some(512),
        unprivileged: true,
        features: Features::default(),
        nets: Vec::new(),
        rootfs: rootfs.clone(),
    };
    let lxc = LxcDriver::new(tmp.path().join("lxc"), Cgroups::detect(), Box::new(SystemRunner));
    lxc.write_config(&spec).unwrap();
    lxc.start(vmid).await.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(lxc.dir(vmid).join("lxc.log")).unwrap_or_default();
        panic!("lxc-start: {e}\n{log}")
    });
    assert_eq!(lxc.state(vmid).await.unwrap(), CtState::Running);
    assert_eq!(lxc.attach(vmid, &["hostname"]).await.unwrap().trim(), "ct-test");
    assert_eq!(lxc.attach(vmid, &["id", "-u"]).await.unwrap().trim(), "0", "root inside");
    let pid = lxc.pid(vmid).await.expect("its init's pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().nth(1) == Some("100000"), "an unprivileged host uid outside: {uid}");
    let console = std::fs::read_to_string(lxc.console_log(vmid)).unwrap_or_default();
    assert!(console.contains("CT-BOOTED"), "the console log: {console:?}");

    lxc.set_frozen(vmid, true).await.unwrap();
    assert_eq!(lxc.state(vmid).await.unwrap(), CtState::Frozen);
    lxc.set_frozen(vmid, false).await.unwrap();
    assert_eq!(lxc.state(vmid).await.unwrap(), CtState::Running);

    // The exit is followed by lxc-wait, not by polling: it returns when the container
    // stops behind the driver's back (killed from outside).
    let waiter = LxcDriver::new(tmp.path().join("lxc"), Cgroups::detect(), Box::new(SystemRunner));
    let wait = tokio::spawn(async move { waiter.wait(vmid, "STOPPED", Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!wait.is_finished());
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let t = std::time::Instant::now();
    wait.await.unwrap().expect("lxc-wait saw it stop");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(lxc.state(vmid).await.unwrap(), CtState::Stopped);
    lxc.stop(vmid, None).await.expect("stopping a stopped container is a no-op");

    // And a clean stop of a running one; its file system then unmounts, and what the
    // container wrote is in the image.
    lxc.start(vmid).await.unwrap();
    lxc.attach(vmid, &["sh", "-c", "echo kept > /root/note"]).await.unwrap();
    lxc.stop(vmid, Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(lxc.state(vmid).await.unwrap(), CtState::Stopped);
    images.unmount(&rootfs).await.unwrap();
    assert!(!rootfs.join("root/note").exists(), "unmounted");
    images.mount(&image, &rootfs).await.unwrap();
    assert_eq!(std::fs::read_to_string(rootfs.join("root/note")).unwrap(), "kept\n");
}

/// Unmounts a test's loop mount however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
