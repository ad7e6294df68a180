//! `GET /metrics`: the cluster in Prometheus' text format, with prometheus-pve-exporter's
//! metric names, help texts and labels (`id` as `node/NAME`, `qemu/VMID`,
//! `storage/NODE/ID`), so dashboards built on that exporter work against Horcrux
//! directly. Built from the same resource list as `/api2/json/cluster/resources` (so the
//! caller's rights filter it the same way) and the HA status; authenticated like any API
//! call (an API token, `Authorization: Bearer` or `PVEAPIToken=`).

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::pve::native;
use crate::state::ApiState;

/// One metric family: name, type, help, and its samples (labels, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family { name, kind, help, samples: Vec::new() }
    }
}

/// A label value escaped as the text format wants (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = writeln!(out, "{}{{{}}} {value:?}", f.name, labels.join(","));
        }
    }
    out
}

const HA_GUEST_STATES: &[&str] = &[
    "stopped",
    "request_stop",
    "request_start",
    "request_start_balance",
    "started",
    "fence",
    "recovery",
    "migrate",
    "relocate",
    "freeze",
    "error",
];

pub(crate) async fn metrics(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let resources = match super::compat::resources(&st, &headers, None).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut up = Family::new("pve_up", "gauge", "Node/VM/CT-Status is online/running");
    let mut disk_size = Family::new(
        "pve_disk_size_bytes",
        "gauge",
        "Storage size in bytes (for type 'storage'), root image size for VMs (for types 'qemu' and 'lxc').",
    );
    let mut disk_usage = Family::new(
        "pve_disk_usage_bytes",
        "gauge",
        "Used disk space in bytes (for type 'storage'), used root image space for VMs (for types 'qemu' and 'lxc').",
    );
    let mut mem_size = Family::new(
        "pve_memory_size_bytes",
        "gauge",
        "Number of available memory in bytes (for types 'node', 'qemu' and 'lxc').",
    );
    let mut mem_usage = Family::new(
        "pve_memory_usage_bytes",
        "gauge",
        "Used memory in bytes (for types 'node', 'qemu' and 'lxc').",
    );
    let mut cpu =
        Family::new("pve_cpu_usage_ratio", "gauge", "CPU utilization (for types 'node', 'qemu' and 'lxc').");
    let mut cpus = Family::new(
        "pve_cpu_usage_limit",
        "gauge",
        "Number of available CPUs (for types 'node', 'qemu' and 'lxc').",
    );
    let mut uptime = Family::new(
        "pve_uptime_seconds",
        "gauge",
        "Uptime of node or virtual guest in seconds (for types 'node', 'qemu' and 'lxc').",
    );
    let mut shared = Family::new(
        "pve_storage_shared",
        "gauge",
        "Whether or not the storage is shared among cluster nodes",
    );
    let mut tx = Family::new(
        "pve_network_transmit_bytes_total",
        "counter",
        "The amount of traffic in bytes that was sent from the guest over the network since it was started. (for types 'qemu' and 'lxc')",
    );
    let mut rx = Family::new(
        "pve_network_receive_bytes_total",
        "counter",
        "The amount of traffic in bytes that was sent to the guest over the network since it was started. (for types 'qemu' and 'lxc')",
    );
    let mut read = Family::new(
        "pve_disk_read_bytes_total",
        "counter",
        "The amount of bytes the guest read from its block devices since the guest was started. (for types 'qemu' and 'lxc')",
    );
    let mut written = Family::new(
        "pve_disk_written_bytes_total",
        "counter",
        "The amount of bytes the guest wrote to its block devices since the guest was started. (for types 'qemu' and 'lxc')",
    );
    let mut guest_info = Family::new("pve_guest_info", "gauge", "VM/CT info");
    let mut storage_info = Family::new("pve_storage_info", "gauge", "Storage info");
    let mut node_info = Family::new("pve_node_info", "gauge", "Node info");
    let mut ha = Family::new("pve_ha_state", "gauge", "HA service status (for HA managed VMs).");

    let num = |e: &Value, k: &str| e[k].as_f64();
    for e in &resources {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        let kind = e["type"].as_str().unwrap_or_default();
        let l = || vec![("id", id.clone())];
        let running = match kind {
            "node" => e["status"] == "online",
            "qemu" | "lxc" => e["status"] == "running",
            "storage" => e["status"] == "available",
            _ => continue,
        };
        up.samples.push((l(), if running { 1.0 } else { 0.0 }));
        for (family, key) in [
            (&mut disk_size, "maxdisk"),
            (&mut disk_usage, "disk"),
            (&mut mem_size, "maxmem"),
            (&mut mem_usage, "mem"),
            (&mut cpu, "cpu"),
            (&mut cpus, "maxcpu"),
            (&mut uptime, "uptime"),
        ] {
            if let Some(v) = num(e, key) {
                family.samples.push((l(), v));
            }
        }
        let text = |k: &str| match &e[k] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        match kind {
            "qemu" | "lxc" => {
                for (family, key) in [
                    (&mut tx, "netout"),
                    (&mut rx, "netin"),
                    (&mut read, "diskread"),
                    (&mut written, "diskwrite"),
                ] {
                    if let Some(v) = num(e, key) {
                        family.samples.push((l(), v));
                    }
                }
                let template = if e["template"] == 1 || e["template"] == true { "1" } else { "0" };
                guest_info.samples.push((
                    vec![
                        ("id", id.clone()),
                        ("node", text("node")),
                        ("name", text("name")),
                        ("type", kind.to_string()),
                        ("template", template.to_string()),
                        ("tags", text("tags")),
                    ],
                    1.0,
                ));
            }
            "storage" => {
                shared.samples.push((l(), if e["shared"] == 1 || e["shared"] == true { 1.0 } else { 0.0 }));
                let mut content: Vec<&str> = e["content"].as_str().unwrap_or_default().split(',').collect();
                content.sort_unstable();
                storage_info.samples.push((
                    vec![
                        ("id", id.clone()),
                        ("node", text("node")),
                        ("storage", text("storage")),
                        ("plugintype", text("plugintype")),
                        ("content", content.join(",")),
                    ],
                    1.0,
                ));
            }
            _ => {}
        }
    }
    // Node ids and levels from the cluster status (a caller without Sys.Audit on / gets none).
    let (code, status, _) = native(&st, &headers, Method::GET, "/cluster/status", None).await;
    if code.is_success() {
        for n in status["nodes"].as_array().into_iter().flatten() {
            let name = n["name"].as_str().unwrap_or_default();
            node_info.samples.push((
                vec![
                    ("id", format!("node/{name}")),
                    ("level", String::new()),
                    ("name", name.to_string()),
                    ("nodeid", n["id"].to_string()),
                ],
                1.0,
            ));
        }
    }
    let (code, status, _) = native(&st, &headers, Method::GET, "/cluster/ha/status", None).await;
    if code.is_success() {
        for r in status["resources"].as_array().into_iter().flatten() {
            let sid = r["sid"].as_str().unwrap_or_default();
            // `vm:100` is the resource `qemu/100` of cluster/resources.
            let id = sid.strip_prefix("vm:").map(|v| format!("qemu/{v}")).unwrap_or_else(|| sid.to_string());
            let state = r["state"].as_str().unwrap_or_default();
            for s in HA_GUEST_STATES {
                ha.samples.push((
                    vec![("id", id.clone()), ("state", s.to_string())],
                    f64::from(u8::from(*s == state)),
                ));
            }
        }
    }
    let body = render(&[
        up,
        disk_size,
        disk_usage,
        mem_size,
        mem_usage,
        cpu,
        cpus,
        uptime,
        shared,
        tx,
        rx,
        read,
        written,
        guest_info,
        storage_info,
        node_info,
        ha,
    ]);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_escapes_labels_and_skips_empty_families() {
        let mut f = Family::new("pve_up", "gauge", "Node/VM/CT-Status is online/running");
        f.samples.push((vec![("id", "qemu/100".into()), ("name", "a \"b\"\\c\nd".into())], 1.0));
        let empty = Family::new("pve_ha_state", "gauge", "x");
        let text = render(&[f, empty]);
        assert_eq!(
            text,
            "# HELP pve_up Node/VM/CT-Status is online/running\n# TYPE pve_up gauge\npve_up{id=\"qemu/100\",name=\"a \\\"b\\\"\\\\c\\nd\"} 1.0\n"
        );
    }
}
