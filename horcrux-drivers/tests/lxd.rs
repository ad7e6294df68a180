//! LXD 5.0 for real, through its REST API on the unix socket (a daemon started here with
//! its own `LXD_DIR`, a `dir` pool, no network): a busybox image imported from a unified
//! tarball, a container created from it, started (its init on the host), its death behind
//! LXD's back seen on the lifecycle event stream, started again, stopped, deleted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use horcrux_drivers::lxd::Lxd;

struct Daemon(Child, std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("lxd").arg("shutdown").env("LXD_DIR", &self.1).arg("--timeout=20").status();
        let _ = self.0.kill();
        let _ = self.0.wait();
        // LXD mounts its shmounts and devlxd under LXD_DIR.
        for m in ["devlxd", "shmounts"] {
            let _ = Command::new("umount").arg("-l").arg(self.1.join(m)).status();
        }
    }
}

/// A busybox image as LXD imports it: `metadata.yaml` and `rootfs/`, one tarball.
fn busybox_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("img");
    let root = img.join("rootfs");
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "echo", "hostname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::os::unix::fs::symlink("../bin/busybox", root.join("sbin/init")).unwrap();
    std::fs::write(root.join("etc/inittab"), "::sysinit:/bin/echo CT-BOOTED\n::respawn:/bin/sh\n").unwrap();
    std::fs::write(
        img.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: busybox\n",
    )
    .unwrap();
    let tar = dir.join("busybox.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tar)
        .arg("-C")
        .arg(&img)
        .args(["metadata.yaml", "rootfs"])
        .status();
    assert!(st.unwrap().success());
    tar
}

#[tokio::test]
async fn an_lxd_container_lives_and_dies_through_the_rest_api() {
    assert!(Path::new("/usr/bin/lxd").exists(), "LXD is not installed: run scripts/deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let lxd_dir = tmp.path().join("lxd");
    std::fs::create_dir_all(&lxd_dir).unwrap();
    let _daemon = Daemon(
        Command::new("lxd")
            .args(["--group", "root"])
            .env("LXD_DIR", &lxd_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        lxd_dir.clone(),
    );
    let ready =
        Command::new("lxd").args(["waitready", "--timeout=60"]).env("LXD_DIR", &lxd_dir).status().unwrap();
    assert!(ready.success(), "lxd waitready");
    let preseed = "storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n";
    let mut init = Command::new("lxd")
        .args(["init", "--preseed"])
        .env("LXD_DIR", &lxd_dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut init.stdin.take().unwrap(), preseed.as_bytes()).unwrap();
    assert!(init.wait().unwrap().success(), "lxd init --preseed");

    let lxd = Lxd::new(lxd_dir.join("unix.socket"));
    assert!(lxd.server_version().await.unwrap().starts_with("5."), "LXD 5");
    let fp = lxd.import_image(&busybox_image(tmp.path())).await.unwrap();
    assert_eq!(fp.len(), 64, "{fp}");
    assert_eq!(lxd.state("c1").await.unwrap(), None, "404 is no instance");
    lxd.create("c1", &fp).await.unwrap();
    let err = lxd.create("c1", &fp).await.unwrap_err().to_string();
    assert!(err.contains("already exists"), "a second instance of that name: {err}");
    assert_eq!(lxd.state("c1").await.unwrap().unwrap().status, "Stopped");

    let mut events = lxd.lifecycle().await.unwrap();
    lxd.set_state("c1", "start", 30, false).await.unwrap();
    let s = lxd.state("c1").await.unwrap().unwrap();
    assert_eq!(s.status, "Running", "{s:?}");
    let pid = s.pid.expect("its init's pid");
    // Killed behind LXD's back: the event stream says so, no polling.
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let killed = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((action, name)) = events.recv().await {
            if name == "c1" && (action == "instance-stopped" || action == "instance-shutdown") {
                return action;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a stopped event");
    assert!(killed.elapsed() < Duration::from_secs(5), "{seen} after {:?}", killed.elapsed());
    let t0 = Instant::now();
    while lxd.state("c1").await.unwrap().unwrap().status != "Stopped" {
        assert!(t0.elapsed() < Duration::from_secs(10), "LXD still reports it running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    lxd.set_state("c1", "start", 30, false).await.unwrap();
    assert_eq!(lxd.state("c1").await.unwrap().unwrap().status, "Running");
    lxd.set_state("c1", "stop", 5, true).await.unwrap();
    assert_eq!(lxd.state("c1").await.unwrap().unwrap().status, "Stopped");
    lxd.delete("c1").await.unwrap();
    assert_eq!(lxd.state("c1").await.unwrap(), None);
}
