//! Podman for real, through its libpod REST API on a unix socket (`podman system service`,
//! started here with its own storage): a container from an imported busybox image is
//! created, started, inspected, seen to exit through the event stream (no polling),
//! started again, stopped, removed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use horcrux_drivers::oci::{Engine, OciEngine, OciSpec};

/// The API service, stopped however the test ends; podman's storage keeps a private
/// mount of its overlay directory, which goes too.
struct Service(Child, std::path::PathBuf);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("umount").arg("-l").arg(self.1.join("root/overlay")).status();
    }
}

fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root").arg(dir.join("root")).arg("--runroot").arg(dir.join("runroot"));
    c.env("CONTAINERS_CONF", dir.join("containers.conf"));
    c
}

#[tokio::test]
async fn a_podman_container_lives_and_dies_through_the_rest_api() {
    assert!(Path::new("/usr/bin/podman").exists(), "podman is not installed: run scripts/deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // As ../shared/LAB.md says: runc, and explicit limits (the defaults exceed this kernel's).
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\",\"nproc=1024:1024\"]\n[engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let tar = busybox_tar(dir);
    let sock = dir.join("podman.sock");
    let _service = Service(
        podman(dir)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir.to_path_buf(),
    );
    let engine = OciEngine::new(Engine::Podman, &sock);
    wait_for_api(&engine).await;
    // The image, imported through the API (no registry).
    let imported = engine.import_image(&tar, "hx-bb", "1").await.unwrap();
    assert!(imported.starts_with("sha256:"), "{imported}");
    lifecycle(&engine, "localhost/hx-bb:1").await;
}

async fn wait_for_api(engine: &OciEngine) {
    let t0 = Instant::now();
    while engine.inspect("nothing-here").await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the API did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(engine.inspect("nothing-here").await.unwrap(), None, "404 is no container");
}

/// A busybox root file system as a tarball.
fn busybox_tar(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap()
        .success());
    tar
}

/// One container's whole life.
async fn lifecycle(engine: &OciEngine, image: &str) {
    // A host directory bound in: the container reads what is there and writes back.
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_path_buf();
    std::fs::write(data.join("in"), "from-the-host\n").unwrap();
    let spec = OciSpec {
        name: "hx-c1".into(),
        image: image.into(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo $GREETING; cat /data/in; echo out > /data/out; sleep 2".into(),
        ],
        env: vec![("GREETING".into(), "up".into())],
        volumes: vec![(data.clone(), "/data".into())],
    };
    let id = engine.create(&spec).await.unwrap();
    assert_eq!(id.len(), 64, "{id}");
    let err = engine.create(&spec).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 500") || err.contains("HTTP 409"), "a second container of that name: {err}");
    assert_eq!(engine.inspect("hx-c1").await.unwrap().unwrap().status, "created");

    let mut events = engine.events("hx-c1").await.unwrap();
    engine.start("hx-c1").await.unwrap();
    let started = Instant::now();
    let s = engine.inspect("hx-c1").await.unwrap().unwrap();
    assert_eq!(s.status, "running", "{s:?}");
    assert!(s.pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()), "{s:?}");
    // The process exits after 2 s; the engine says so at once.
    let died = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((action, _)) = events.recv().await {
            if action == "died" {
                return Instant::now();
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a died event");
    let after = died.duration_since(started);
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
        "died {after:?} after the start"
    );
    let s = engine.inspect("hx-c1").await.unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.exit_code), ("exited", Some(0)), "{s:?}");
    let logs = engine.logs("hx-c1").await.unwrap();
    assert_eq!(logs, "up\nfrom-the-host\n", "its output, unframed");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "out\n", "written through the volume");

    // Started again, then stopped (SIGTERM; sh ignores it in sleep: SIGKILL after 1 s).
    engine.start("hx-c1").await.unwrap();
    assert_eq!(engine.inspect("hx-c1").await.unwrap().unwrap().status, "running");
    engine.stop("hx-c1", 1).await.unwrap();
    assert_eq!(engine.inspect("hx-c1").await.unwrap().unwrap().status, "exited");
    engine.stop("hx-c1", 1).await.expect("stopping a stopped container is a no-op");
    engine.remove("hx-c1", true).await.unwrap();
    assert_eq!(engine.inspect("hx-c1").await.unwrap(), None);
}

/// The same against dockerd (started here with its own data and exec roots, no bridge,
/// no iptables, as ../shared/LAB.md says), through the Docker Engine API.
#[tokio::test]
async fn a_docker_container_lives_and_dies_through_the_rest_api() {
    assert!(Path::new("/usr/sbin/dockerd").exists(), "dockerd is not installed: run scripts/deps.sh");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tar = busybox_tar(dir);
    let sock = dir.join("docker.sock");
    let _daemon = Daemon(
        Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let engine = OciEngine::new(Engine::Docker, &sock);
    wait_for_api(&engine).await;
    // The image, imported through the API as `docker import` does it.
    let imported = engine.import_image(&tar, "hx-bb", "1").await.unwrap();
    assert!(imported.starts_with("sha256:"), "{imported}");
    lifecycle(&engine, "hx-bb:1").await;
}

/// dockerd, stopped however the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and unmounts.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}
