//! Storage throughput: uploading a file through the API against `cp` of the same file on
//! the same file system, in the same invocation. The upload goes through HTTPS (curl, one
//! request, the body streamed), the native route, a hidden temporary file, the checksum and
//! an fsync before it is linked in; the reference is `cp` alone and `cp` then `sync FILE`
//! (the fsync the upload also does). Prints MiB/s and the ratios (target: upload ≥ 0.8x cp).
//!
//! Then `move_disk` of a disk full of data (`BENCH_MOVE_MIB`, default 1024) between two
//! directory storages, offline and while the tiny guest runs (blockdev-mirror), against
//! `qemu-img convert` of the same image; and the latency of snapshots of the running guest
//! (disk only, with its RAM) and of rollbacks, against `qemu-img snapshot -c` of the
//! stopped image.
//!
//! The same upload from a client that writes 1 MiB at a time (`bench/upload-client.py`:
//! curl's 64 KiB writes cost it a third of its throughput here). The transport reference:
//! the same curl upload received by `bench/tls-sink.py` (Python's
//! OpenSSL), discarded, and written + fsynced to the same file system.
//!
//! Run: `cargo bench --bench storage` (as root, after `scripts/lab.sh`). `BENCH_UPLOAD_MIB`
//! sets the file size (default 512), `BENCH_RUNS` the runs (default 3; the median counts).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, Daemon};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let mib: u64 = std::env::var("BENCH_UPLOAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.iso");
    // Incompressible data, written once (page cache warm for every reader alike).
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none", &format!("count={mib}")])
        .arg(format!("of={}", src.display())));
    let bytes = std::fs::metadata(&src).unwrap().len();
    let sha = run(Command::new("sha256sum").arg(&src)).split_whitespace().next().unwrap().to_string();
    let d = Daemon::start(&tmp.path().join("hx"), free_port(), &[]);
    let token = std::fs::read_to_string(tmp.path().join("hx/admin.token")).unwrap();
    let iso_dir = tmp.path().join("hx/storage/local/template/iso");

    let (mut cp, mut cp_sync, mut up, mut up_sum) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut up_big = Vec::new();
    for i in 0..runs {
        for (list, sync) in [(&mut cp, false), (&mut cp_sync, true)] {
            let dst = iso_dir.join(format!("cp-{i}-{sync}.iso"));
            let t = Instant::now();
            run(Command::new("cp").arg(&src).arg(&dst));
            if sync {
                run(Command::new("sync").arg(&dst));
            }
            list.push(t.elapsed());
            std::fs::remove_file(&dst).unwrap();
        }
        for (list, sum) in [(&mut up, false), (&mut up_sum, true)] {
            let name = format!("up-{i}-{sum}.iso");
            let mut q = format!("content=iso&filename={name}");
            if sum {
                q.push_str(&format!("&checksum={sha}&checksum-algorithm=sha256"));
            }
            let t = Instant::now();
            let code = run(Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-T"])
                .arg(&src)
                .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
                .args(["-H", "Content-Type: application/octet-stream"])
                .arg(format!("https://127.0.0.1:{}/api/v1/storage/local/upload?{q}", d.port)));
            list.push(t.elapsed());
            assert_eq!(code, "200", "upload {name}");
            assert_eq!(std::fs::metadata(iso_dir.join(&name)).unwrap().len(), bytes);
            std::fs::remove_file(iso_dir.join(&name)).unwrap();
        }
        let name = format!("big-{i}.iso");
        let t = Instant::now();
        run(Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/upload-client.py"))
            .arg(d.port.to_string())
            .arg(format!("/api/v1/storage/local/upload?content=iso&filename={name}"))
            .arg(&src)
            .arg(token.trim()));
        up_big.push(t.elapsed());
        assert_eq!(std::fs::metadata(iso_dir.join(&name)).unwrap().len(), bytes);
        std::fs::remove_file(iso_dir.join(&name)).unwrap();
    }
    let (sink, sink_sync) = tls_sink(&src, &iso_dir, runs);
    let (cp, cp_sync, up, up_sum) = (median(cp), median(cp_sync), median(up), median(up_sum));
    let up_big = median(up_big);
    println!("storage upload, {mib} MiB, median of {runs} runs (same file system)");
    println!("  cp                          {:>8.1} MiB/s  ({:?})", mib_s(bytes, cp), cp);
    println!("  cp + sync FILE (reference)  {:>8.1} MiB/s  ({:?})", mib_s(bytes, cp_sync), cp_sync);
    println!("  upload (HTTPS, fsync)       {:>8.1} MiB/s  ({:?})", mib_s(bytes, up), up);
    println!("  upload + sha256 check       {:>8.1} MiB/s  ({:?})", mib_s(bytes, up_sum), up_sum);
    println!("  upload, 1 MiB-write client  {:>8.1} MiB/s  ({:?})", mib_s(bytes, up_big), up_big);
    println!("  curl -> OpenSSL sink, discarded      {:>8.1} MiB/s  ({:?})", mib_s(bytes, sink), sink);
    println!(
        "  curl -> OpenSSL sink, write + fsync  {:>8.1} MiB/s  ({:?})",
        mib_s(bytes, sink_sync),
        sink_sync
    );
    println!("  ratio upload / (cp + sync)  {:>8.2}x", cp_sync.as_secs_f64() / up.as_secs_f64());
    println!("  ratio upload / sink (write + fsync) {:>5.2}x", sink_sync.as_secs_f64() / up.as_secs_f64());
    println!(
        "  ratio upload (1 MiB-write client) / (cp + sync) {:>4.2}x",
        cp_sync.as_secs_f64() / up_big.as_secs_f64()
    );
    println!("  ratio upload / cp           {:>8.2}x", cp.as_secs_f64() / up.as_secs_f64());
    println!("  ratio upload+sha256 / (cp + sync) {:>4.2}x", cp_sync.as_secs_f64() / up_sum.as_secs_f64());
    disks(&d, tmp.path(), runs);
}

/// The same curl upload received by `bench/tls-sink.py` (Python's OpenSSL), discarded and
/// written + fsynced into `dir`: what the HTTPS transport costs here without Horcrux.
fn tls_sink(src: &std::path::Path, dir: &std::path::Path, runs: usize) -> (Duration, Duration) {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=sink", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let sink = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/tls-sink.py");
    let once = |file: Option<std::path::PathBuf>| {
        let port = free_port().to_string();
        let mut cmd = Command::new("python3");
        cmd.args([sink, &port]).arg(&cert).arg(&key).stdout(std::process::Stdio::piped());
        if let Some(f) = &file {
            cmd.arg(f);
        }
        let mut child = cmd.spawn().expect("python3");
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        let t = Instant::now();
        run(Command::new("curl")
            // (The sink does not answer `Expect: 100-continue`; curl would wait 1 s for it.)
            .args(["-sk", "-o", "/dev/null", "-H", "Expect:", "-X", "POST", "-T"])
            .arg(src)
            .arg(format!("https://127.0.0.1:{port}/x")));
        let took = t.elapsed();
        assert!(child.wait().unwrap().success(), "the sink saw the whole body");
        if let Some(f) = file {
            std::fs::remove_file(f).unwrap();
        }
        took
    };
    let (mut bare, mut synced) = (Vec::new(), Vec::new());
    for i in 0..runs {
        bare.push(once(None));
        synced.push(once(Some(dir.join(format!("sink-{i}.iso")))));
    }
    (median(bare), median(synced))
}

/// Runs a task-answering request and waits for it; answers the time it took.
fn timed_task(api: &common::Api, method: &str, path: &str, body: serde_json::Value) -> Duration {
    let t = Instant::now();
    let (code, r) = api.request(method, path, Some(api.token()), &body);
    assert_eq!(code, 200, "{method} {path}: {r}");
    let status = api.wait_task(r["upid"].as_str().unwrap());
    assert_eq!(status, "OK", "{method} {path}");
    t.elapsed()
}

fn disks(d: &Daemon, dir: &std::path::Path, runs: usize) {
    use serde_json::json;
    let mib: u64 = std::env::var("BENCH_MOVE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let api = d.client();
    for s in ["a", "b"] {
        let path = dir.join(format!("store-{s}"));
        let (code, e) = api.post(
            "/storage",
            &json!({"storage": s, "type": "dir", "path": path, "content": "images", "format": "raw"}),
        );
        assert_eq!(code, 200, "{e}");
    }
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 300, "name": "mv", "memory_mib": 128, "boot": boot, "disks": [{"storage": "a", "size_mib": mib}]}),
    );
    assert_eq!(code, 200, "{e}");
    let vol = dir.join("store-a/images/300/vm-300-disk-0.raw");
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "conv=notrunc,fsync", "status=none", &format!("count={mib}")])
        .arg(format!("of={}", vol.display())));
    let (mut convert, mut offline, mut online) = (Vec::new(), Vec::new(), Vec::new());
    let copy = dir.join("convert.raw");
    for _ in 0..runs {
        let t = Instant::now();
        run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(&vol).arg(&copy));
        convert.push(t.elapsed());
        std::fs::remove_file(&copy).unwrap();
    }
    // Offline there and back, then online there and back (the guest running).
    let mut on = "a";
    for _ in 0..runs {
        let to = if on == "a" { "b" } else { "a" };
        offline.push(timed_task(
            &api,
            "POST",
            "/vms/300/move_disk",
            json!({"disk": "virtio0", "storage": to, "delete": true}),
        ));
        on = to;
    }
    timed_task(&api, "POST", "/vms/300/start", json!({}));
    for _ in 0..runs {
        let to = if on == "a" { "b" } else { "a" };
        online.push(timed_task(
            &api,
            "POST",
            "/vms/300/move_disk",
            json!({"disk": "virtio0", "storage": to, "delete": true}),
        ));
        on = to;
    }
    timed_task(&api, "POST", "/vms/300/stop", json!({}));
    let (convert, offline, online) = (median(convert), median(offline), median(online));
    println!("move_disk, {mib} MiB of data, median of {runs} runs");
    println!(
        "  qemu-img convert (reference)  {:>8.1} MiB/s  ({convert:?})",
        mib as f64 / convert.as_secs_f64()
    );
    println!(
        "  move_disk offline             {:>8.1} MiB/s  ({offline:?})",
        mib as f64 / offline.as_secs_f64()
    );
    println!(
        "  move_disk online (mirror)     {:>8.1} MiB/s  ({online:?})",
        mib as f64 / online.as_secs_f64()
    );
    println!("  time offline / convert        {:>8.2}x", offline.as_secs_f64() / convert.as_secs_f64());
    println!("  time online / convert         {:>8.2}x", online.as_secs_f64() / convert.as_secs_f64());
    snapshots(&api, dir, runs);
}

fn snapshots(api: &common::Api, dir: &std::path::Path, runs: usize) {
    use serde_json::json;
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 301, "name": "sn", "memory_mib": 128, "boot": boot, "disks": [{"storage": "local", "size_mib": 64}]}),
    );
    assert_eq!(code, 200, "{e}");
    let img = dir.join("hx/storage/local/images/301/vm-301-disk-0.qcow2");
    let mut bare = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        run(Command::new("qemu-img").args(["snapshot", "-c", &format!("bare{i}")]).arg(&img));
        bare.push(t.elapsed());
        run(Command::new("qemu-img").args(["snapshot", "-d", &format!("bare{i}")]).arg(&img));
    }
    timed_task(api, "POST", "/vms/301/start", json!({}));
    std::thread::sleep(Duration::from_secs(3));
    let (mut disk, mut ram, mut back_disk, mut back_ram) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        disk.push(timed_task(api, "POST", "/vms/301/snapshots", json!({"snapname": format!("d{i}")})));
        ram.push(timed_task(
            api,
            "POST",
            "/vms/301/snapshots",
            json!({"snapname": format!("r{i}"), "vmstate": true}),
        ));
    }
    for i in 0..runs {
        // With RAM: stop, disks back, resume from the saved state (running again at the end).
        back_ram.push(timed_task(api, "POST", &format!("/vms/301/snapshots/r{i}/rollback"), json!({})));
        // Disk only, then started again.
        back_disk.push(timed_task(
            api,
            "POST",
            &format!("/vms/301/snapshots/d{i}/rollback"),
            json!({"start": true}),
        ));
    }
    timed_task(api, "POST", "/vms/301/stop", json!({}));
    println!("snapshots of the running tiny guest (128 MiB RAM, 64 MiB qcow2), median of {runs} runs");
    println!("  qemu-img snapshot -c, stopped (reference)  {:?}", median(bare));
    println!("  snapshot, disks only (QMP transaction)     {:?}", median(disk));
    println!("  snapshot with RAM (snapshot-save)          {:?}", median(ram));
    println!("  rollback to a RAM snapshot (resumes)       {:?}", median(back_ram));
    println!("  rollback to a disk snapshot + start        {:?}", median(back_disk));
}
