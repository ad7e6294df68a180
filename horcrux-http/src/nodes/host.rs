//! Facts about this node's host for `GET /api/v1/nodes/{node}/status` and a storage's
//! capacity for `GET /api/v1/storage/{id}/status` (another member's are carried to it by
//! the forwarding layer), in the fields Proxmox's node and storage status use.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use horcrux_actors::drivers_metrics as metrics;

use crate::error::ApiError;
use crate::state::ApiState;

/// CPU use (0..1): the sampler's latest reading, or since boot when there is none yet.
fn cpu_usage(st: &ApiState) -> f64 {
    use horcrux_actors::metrics::Series;
    if let Some(cpu) =
        st.runtime.metrics().and_then(|m| m.latest(&Series::Node)).and_then(|n| n.get("cpu").copied())
    {
        if cpu.is_finite() {
            return cpu;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    match metrics::parse_proc_stat(&stat) {
        Some((busy, _, total, _)) if total > 0 => busy as f64 / total as f64,
        _ => 0.0,
    }
}

fn meminfo() -> Value {
    let m = metrics::parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let b = |key: &str| m.get(key).copied().unwrap_or(0);
    let (total, free, available) = (b("MemTotal"), b("MemFree"), b("MemAvailable"));
    let (swap_total, swap_free) = (b("SwapTotal"), b("SwapFree"));
    json!({
        "memory": { "total": total, "free": free, "available": available, "used": total.saturating_sub(available) },
        "swap": { "total": swap_total, "free": swap_free, "used": swap_total.saturating_sub(swap_free) },
    })
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
    super::this_node(&st, &node)?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (model, cores, sockets) = cpu_model();
    let loadavg: Vec<String> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect();
    let uptime = metrics::host_uptime(std::path::Path::new("/")).unwrap_or(0.0) as u64;
    let (total, free, avail) = metrics::fs_space(std::path::Path::new("/")).unwrap_or((0, 0, 0));
    let kernel = uname();
    let mut out = json!({
        "cpu": cpu_usage(&st),
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
