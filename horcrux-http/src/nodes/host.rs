//! Facts about this node's host for `GET /api/v1/nodes/{node}/status` and a storage's
//! capacity for `GET /api/v1/storage/{id}/status` (another member's are carried to it by
//! the forwarding layer), in the fields Proxmox's node and storage status use.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::ApiState;

/// `/proc/stat`'s first line: (busy, total) jiffies since boot.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU use (0..1) since the previous call (the first: since boot).
fn cpu_usage() -> f64 {
    static LAST: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));
    let Some((busy, total)) = cpu_jiffies() else { return 0.0 };
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let (b0, t0) = *last;
    *last = (busy, total);
    if total > t0 {
        (busy.saturating_sub(b0)) as f64 / (total - t0) as f64
    } else {
        0.0
    }
}

fn meminfo() -> Value {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key).and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    let (total, free, available) = (kib("MemTotal:"), kib("MemFree:"), kib("MemAvailable:"));
    let (swap_total, swap_free) = (kib("SwapTotal:"), kib("SwapFree:"));
    json!({
        "memory": { "total": total, "free": free, "available": available, "used": total.saturating_sub(available) },
        "swap": { "total": swap_total, "free": swap_free, "used": swap_total.saturating_sub(swap_free) },
    })
}

fn statvfs(path: &str) -> Option<(u64, u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `vfs` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        return None;
    }
    let f = vfs.f_frsize as u64;
    Some((vfs.f_blocks as u64 * f, vfs.f_bfree as u64 * f, vfs.f_bavail as u64 * f))
}

fn cpu_model() -> (String, u64, u64) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        text.lines().find_map(|l| {
            let (key, v) = l.split_once(':')?;
            (key.trim() == k).then(|| v.trim().to_string())
        })
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut sockets: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("physical id").and_then(|r| r.split(':').nth(1)))
        .collect();
    sockets.sort();
    sockets.dedup();
    let sockets = sockets.len().max(1) as u64;
    let cores = field("cpu cores").and_then(|c| c.parse().ok()).unwrap_or(1);
    (model, cores * sockets, sockets)
}

fn uname() -> Value {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return json!({ "sysname": "Linux", "release": "", "version": "", "machine": std::env::consts::ARCH });
    }
    let s = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    json!({ "sysname": s(&u.sysname), "release": s(&u.release), "version": s(&u.version), "machine": s(&u.machine) })
}

/// The host as Proxmox's `GET /nodes/{node}/status` describes it.
pub async fn node_status(
    State(st): State<ApiState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if node != st.runtime.cluster().node_name() {
        return Err(ApiError::not_found(format!("no cluster member is named {node:?}")));
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (model, cores, sockets) = cpu_model();
    let loadavg: Vec<String> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect();
    let uptime: u64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split('.').next().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let (total, free, avail) = statvfs("/").unwrap_or((0, 0, 0));
    let kernel = uname();
    let mut out = json!({
        "cpu": cpu_usage(),
        "cpuinfo": { "cpus": cpus, "cores": cores, "sockets": sockets, "model": model },
        "loadavg": loadavg,
        "uptime": uptime,
        "rootfs": { "total": total, "free": free, "avail": avail, "used": total - free },
        "boot-info": { "mode": if std::path::Path::new("/sys/firmware/efi").exists() { "efi" } else { "legacy-bios" } },
        "kversion": format!("{} {} {}", kernel["sysname"].as_str().unwrap_or(""), kernel["release"].as_str().unwrap_or(""), kernel["version"].as_str().unwrap_or("")),
        "current-kernel": kernel,
        "pveversion": format!("horcrux/{}", env!("CARGO_PKG_VERSION")),
    });
    if let (Some(o), Value::Object(m)) = (out.as_object_mut(), meminfo()) {
        o.extend(m);
    }
    Ok(Json(out))
}
