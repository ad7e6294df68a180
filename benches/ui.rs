//! The web UI's performance figures (issue 15): `GET /api2/json/cluster/resources` with
//! 1,000 guests (target p50 <= 20 ms), against `GET /api2/json/version` on the same
//! connection as the reference (the floor of one authenticated HTTPS round trip); then the
//! browser figures from `tests/ui/perf.mjs` in headless Chromium: the bytes of the first
//! load of login + dashboard (target <= 300 KB), the time until the dashboard is
//! interactive (<= 1.5 s) and the time to render the guest list with 1,000 guests
//! (<= 300 ms).
//!
//! Run: `cargo bench --bench ui` (as root, after `scripts/lab.sh`). `BENCH_GUESTS` changes
//! the number of guests (default 1000), `BENCH_ROUNDS` the requests timed (default 200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{free_port, Daemon};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() as f64) - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let guests = env("BENCH_GUESTS", 1000);
    let rounds = env("BENCH_ROUNDS", 200);
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let auth = format!("PVEAPIToken=root@pam!admin={}", api.token());
    // The browser figures first, on the fresh one-node daemon: the page weight is the UI's
    // own (the guest list's speed is measured with 1,000 synthetic guests in the page).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("node")
        .arg(root.join("tests/ui/perf.mjs"))
        .env("HORCRUX_URL", format!("https://127.0.0.1:{port}"))
        .env("HORCRUX_ADMIN_TOKEN", &auth)
        .output()
        .expect("node runs tests/ui/perf.mjs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "perf.mjs failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().rev().find(|l| l.starts_with('{')).expect("perf.mjs prints a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let check = |name: &str, value: f64, budget: f64, unit: &str| {
        println!(
            "{name:<40} {value:9.1} {unit}  budget {budget} {unit}: {}",
            if value <= budget { "met" } else { "NOT met" }
        );
    };
    check("first load, login + dashboard", v["page_bytes"].as_f64().unwrap() / 1024.0, 300.0, "KB");
    check("dashboard interactive", v["dashboard_ms"].as_f64().unwrap(), 1500.0, "ms");
    check("guest list, 1000 guests", v["guest_list_1000_ms"].as_f64().unwrap(), 300.0, "ms");
    let t0 = Instant::now();
    for i in 0..guests {
        let vmid = 1000 + i;
        let (code, body) =
            api.post("/vms", &json!({"vmid": vmid, "name": format!("g{vmid}"), "memory_mib": 64}));
        assert_eq!(code, 200, "{body}");
    }
    println!("created {guests} guests in {:.1} s", t0.elapsed().as_secs_f64());
    let time = |path: &str| -> Vec<Duration> {
        let mut v: Vec<Duration> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                let (code, body, _) = api.raw("GET", path, &[("Authorization", &auth)], &json!(null));
                let took = t.elapsed();
                assert_eq!(code, 200, "{body}");
                took
            })
            .collect();
        v.sort();
        v
    };
    let (code, body, _) =
        api.raw("GET", "/api2/json/cluster/resources", &[("Authorization", &auth)], &json!(null));
    assert_eq!(code, 200);
    let listed = body["data"].as_array().unwrap().iter().filter(|e| e["type"] == "qemu").count();
    assert_eq!(listed, guests, "every guest is listed");
    let reference = time("/api2/json/version");
    let resources = time("/api2/json/cluster/resources");
    // What cluster/resources is built from (native calls made in-process).
    for path in ["/vms", "/nodes/n1/metrics/current", "/storage"] {
        let v = time(path);
        println!("  part: GET /api/v1{path:<29} p50 {:7.2} ms", v[v.len() / 2].as_secs_f64() * 1000.0);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "GET /api2/json/version (reference)        p50 {:7.2} ms  p99 {:7.2} ms",
        ms(percentile(&reference, 0.5)),
        ms(percentile(&reference, 0.99))
    );
    let p50 = percentile(&resources, 0.5);
    println!(
        "GET /api2/json/cluster/resources ({guests} guests) p50 {:7.2} ms  p99 {:7.2} ms  target p50 <= 20 ms: {}",
        ms(p50),
        ms(percentile(&resources, 0.99)),
        if ms(p50) <= 20.0 { "met" } else { "NOT met" }
    );

    println!("(Proxmox VE's UI loads several MB before its first screen: ext-all.js and pvemanagerlib.js; docs/ui.md)");
}
