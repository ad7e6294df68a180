//! `/api2/json/nodes/{node}/qemu/...`: guests, their config as property strings, power.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::{answer, error, native, params};
use crate::routes::ApiState;

pub(super) fn qemu_entry(v: &Value) -> Value {
    json!({
        "vmid": v["vmid"],
        "name": v["name"],
        "status": v["status"],
        "qmpstatus": v["qmpstatus"],
        "maxmem": v["memory_mib"].as_u64().unwrap_or(0) * 1024 * 1024,
        "cpus": v["cores"],
        "node": v["node"],
    })
}

pub(super) async fn list_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/vms", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| a.iter().filter(|g| g["node"] == node.as_str()).map(qemu_entry).collect())
            .unwrap_or_default();
        json!(list)
    })
}

/// Disk keys Proxmox accepts on create, with `STORAGE:SIZE_GB[,opts]` allocating a disk.
pub(super) const DISK_KEYS: &[&str] = &["virtio", "scsi", "sata", "ide"];

pub(super) async fn create_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let num = |k: &str, default: u64| -> Result<u64, Response> {
        match p.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| error(StatusCode::BAD_REQUEST, k, "expected an integer")),
        }
    };
    let vmid = match num("vmid", 0) {
        Ok(0) => return error(StatusCode::BAD_REQUEST, "vmid", "property is missing and it is not optional"),
        Ok(v) => v,
        Err(e) => return e,
    };
    let (memory, cores) = match (num("memory", 512), num("cores", 1)) {
        (Ok(m), Ok(c)) => (m, c),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut disks = Vec::new();
    for (k, v) in &p {
        if DISK_KEYS.iter().any(|d| k.starts_with(d) && k[d.len()..].parse::<u32>().is_ok()) {
            let spec = v.split(',').next().unwrap_or_default();
            let Some((storage, size)) = spec.split_once(':') else {
                return error(StatusCode::BAD_REQUEST, k, "expected STORAGE:SIZE_GB");
            };
            let Ok(gb) = size.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, k, "only new disks (STORAGE:SIZE_GB) are supported");
            };
            disks.push(json!({ "storage": storage, "size_mib": gb * 1024 }));
        }
    }
    let name = p.get("name").cloned().unwrap_or_else(|| format!("vm{vmid}"));
    let req = json!({ "vmid": vmid, "name": name, "memory_mib": memory, "cores": cores, "disks": disks });
    if node != st.runtime.cluster().node_name() {
        return error(
            StatusCode::BAD_REQUEST,
            "node",
            &format!("address node {node}'s own API to create guests there"),
        );
    }
    let (status, v, _) = native(&st, &headers, Method::POST, "/vms", Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}

pub(super) async fn delete_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::DELETE, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| v["upid"].clone())
}

/// The guest's configuration as Proxmox property strings (`virtio0: local:100/vm-100-disk-0.qcow2,size=1G`).
pub(super) async fn qemu_config(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| {
        let mut c = serde_json::Map::new();
        c.insert("name".into(), v["name"].clone());
        c.insert("memory".into(), json!(v["memory_mib"].as_u64().unwrap_or(0).to_string()));
        c.insert("cores".into(), v["cores"].clone());
        c.insert("ostype".into(), json!("l26"));
        for (i, d) in v["disks"].as_array().into_iter().flatten().enumerate() {
            let size = d["size_mib"].as_u64().unwrap_or(0);
            let size = if size % 1024 == 0 { format!("{}G", size / 1024) } else { format!("{size}M") };
            let vol = d["volume"].as_str().unwrap_or_default();
            c.insert(format!("virtio{i}"), json!(format!("{vol},format=qcow2,size={size}")));
        }
        if let Some(b) = v.get("boot").filter(|b| b.is_object()) {
            c.insert("args".into(), json!(format!("-kernel {}", b["kernel"].as_str().unwrap_or_default())));
        }
        // Proxmox's digest: changes whenever the config does (here: the revision).
        c.insert("digest".into(), json!(format!("{:040x}", v["revision"].as_u64().unwrap_or(0))));
        Value::Object(c)
    })
}

pub(super) async fn status_current(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| qemu_entry(&v))
}

pub(super) async fn power(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let req = match action.as_str() {
        "start" | "stop" => json!({}),
        "shutdown" => match p.get("timeout").map(|t| t.parse::<u32>()) {
            None => json!({}),
            Some(Ok(t)) => json!({ "timeout_s": t }),
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "timeout", "expected an integer"),
        },
        other => {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "action",
                &format!("status/{other} is not supported yet"),
            )
        }
    };
    let (status, v, _) =
        native(&st, &headers, Method::POST, &format!("/vms/{vmid}/{action}"), Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}
