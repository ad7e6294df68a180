//! Storage throughput: uploading a file through the API against `cp` of the same file on
//! the same file system, in the same invocation. The upload goes through HTTPS (curl, one
//! request, the body streamed), the native route, a hidden temporary file, the checksum and
//! an fsync before it is linked in; the reference is `cp` alone and `cp` then `sync FILE`
//! (the fsync the upload also does). Prints MiB/s and the ratios (target: upload ≥ 0.8x cp).
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
    }
    let (cp, cp_sync, up, up_sum) = (median(cp), median(cp_sync), median(up), median(up_sum));
    println!("storage upload, {mib} MiB, median of {runs} runs (same file system)");
    println!("  cp                          {:>8.1} MiB/s  ({:?})", mib_s(bytes, cp), cp);
    println!("  cp + sync FILE (reference)  {:>8.1} MiB/s  ({:?})", mib_s(bytes, cp_sync), cp_sync);
    println!("  upload (HTTPS, fsync)       {:>8.1} MiB/s  ({:?})", mib_s(bytes, up), up);
    println!("  upload + sha256 check       {:>8.1} MiB/s  ({:?})", mib_s(bytes, up_sum), up_sum);
    println!("  ratio upload / (cp + sync)  {:>8.2}x", cp_sync.as_secs_f64() / up.as_secs_f64());
    println!("  ratio upload / cp           {:>8.2}x", cp.as_secs_f64() / up.as_secs_f64());
    println!("  ratio upload+sha256 / (cp + sync) {:>4.2}x", cp_sync.as_secs_f64() / up_sum.as_secs_f64());
}
