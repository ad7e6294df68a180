//! `/api2/json/nodes/{node}/qemu/...`: guests, their config as property strings, power.

// Handlers bail out with a ready Proxmox-shaped response; its size does not matter here.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use std::collections::BTreeMap;

use horcrux_core::vmconfig::{self, DiskRequest, NetSpec};

use crate::pve::*;
use crate::state::ApiState;

pub(crate) fn qemu_entry(v: &Value) -> Value {
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

pub(crate) async fn list_qemu(
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

/// Keys that steer the request rather than describe the guest: a create's `vmid`; a
/// change's `digest` (compare-and-set) and `delete` (keys to remove).
const CREATE_KEYS: &[&str] = &["vmid"];
const CHANGE_KEYS: &[&str] = &["digest", "delete"];

/// Proxmox parameters of a guest (create or config change) as the native API's fields.
/// `current` is the guest's native view when changing an existing one.
fn translate(
    p: &BTreeMap<String, String>,
    current: Option<&Value>,
) -> Result<serde_json::Map<String, Value>, Response> {
    let bad = |k: &str, m: &str| error(StatusCode::BAD_REQUEST, k, m);
    let mut out = serde_json::Map::new();
    let mut nets = Vec::new();
    let mut disks = Vec::new();
    let mut cdroms = Vec::new();
    let mut options = serde_json::Map::new();
    let control = if current.is_some() { CHANGE_KEYS } else { CREATE_KEYS };
    for (k, v) in p {
        let k = k.as_str();
        let int = |v: &str| v.parse::<u64>().map_err(|_| bad(k, "type check ('integer') failed"));
        match k {
            _ if control.contains(&k) => {}
            "name" => {
                out.insert("name".into(), json!(v));
            }
            "pool" if current.is_none() => {
                out.insert("pool".into(), json!(v));
            }
            // PVE 8.1+ writes memory as a property string (`current=2048`).
            "memory" => {
                let m = v.strip_prefix("current=").unwrap_or(v);
                out.insert("memory_mib".into(), json!(int(m)?));
            }
            "cores" | "sockets" => {
                out.insert(k.into(), json!(int(v)?));
            }
            "arch" => {
                out.insert("arch".into(), json!(v));
            }
            _ if k.starts_with("net") && k[3..].parse::<u8>().is_ok() => {
                let index: u8 = k[3..].parse().unwrap_or(0);
                // Keep the card's MAC address when the new value names none.
                let old_mac = current
                    .and_then(|c| c["nets"].as_array().cloned())
                    .and_then(|a| a.into_iter().find(|n| n["index"] == index))
                    .and_then(|n| n["macaddr"].as_str().map(str::to_string));
                let mac = old_mac.unwrap_or_else(crate::state::random_mac);
                let net = NetSpec::parse(k, index, v, &mac).map_err(|e| bad(&e.field, &e.message))?;
                nets.push(json!(net));
            }
            // Proxmox's alias of `ide2: ...,media=cdrom`.
            "cdrom" => match vmconfig::parse_disk("ide2", &format!("{v},media=cdrom")) {
                Ok(DiskRequest::Cdrom { volume }) => cdroms.push(json!({ "slot": "ide2", "volume": volume })),
                Ok(_) => return Err(bad(k, "not a CD-ROM")),
                Err(e) => return Err(bad(k, &e.message)),
            },
            _ if vmconfig::parse_disk_slot(k, k).is_ok() => {
                match vmconfig::parse_disk(k, v).map_err(|e| bad(&e.field, &e.message))? {
                    DiskRequest::New { storage, size_gb, format, import_from } => {
                        // With import-from the size is the image's (at least 1 MiB asked).
                        let mut d =
                            json!({ "storage": storage, "size_mib": (size_gb * 1024).max(1), "slot": k });
                        if let Some(f) = format {
                            d["format"] = json!(f);
                        }
                        if let Some(src) = import_from {
                            d["import_from"] = json!(src);
                        }
                        disks.push(d)
                    }
                    DiskRequest::Cdrom { volume } => cdroms.push(json!({ "slot": k, "volume": volume })),
                    DiskRequest::Existing { volume } => {
                        // Only the volume already in that slot (options are QEMU's defaults).
                        let same = current.and_then(|c| c["disks"].as_array().cloned()).is_some_and(|a| {
                            a.iter().any(|d| d["slot"] == k && d["volume"] == volume.as_str())
                        });
                        if !same {
                            // Used as it is (a LUN of an iSCSI storage); the native API
                            // says whether the volume may be.
                            let storage = volume.split(':').next().unwrap_or_default();
                            disks.push(json!({ "storage": storage, "volume": volume, "slot": k }));
                        }
                    }
                }
            }
            _ if vmconfig::KEPT_OPTIONS.contains(&k) => {
                let v = vmconfig::normalize_option(k, v).map_err(|e| bad(&e.field, &e.message))?;
                options.insert(k.into(), json!(v));
            }
            _ => return Err(bad(k, UNSUPPORTED)),
        }
    }
    if !nets.is_empty() {
        out.insert("nets".into(), json!(nets));
    }
    if !disks.is_empty() {
        out.insert(if current.is_some() { "add_disks" } else { "disks" }.into(), json!(disks));
    }
    if !cdroms.is_empty() {
        out.insert("cdroms".into(), json!(cdroms));
    }
    if !options.is_empty() {
        out.insert("options".into(), Value::Object(options));
    }
    Ok(out)
}

pub(crate) async fn create_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let vmid = match p.get("vmid").map(|v| v.parse::<u64>()) {
        None => return error(StatusCode::BAD_REQUEST, "vmid", "property is missing and it is not optional"),
        Some(Ok(v)) => v,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "vmid", "type check ('integer') failed"),
    };
    let mut req = match translate(&p, None) {
        Ok(r) => r,
        Err(e) => return e,
    };
    req.insert("vmid".into(), json!(vmid));
    req.entry("name").or_insert_with(|| json!(format!("vm{vmid}")));
    req.entry("memory_mib").or_insert(json!(512));
    // The node in the path owns the guest: the native create runs there.
    let path = format!("/vms?node={}", form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(Value::Object(req))).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `PUT` (synchronous, answers null) and `POST` (answers a task id) of
/// `/nodes/{node}/qemu/{vmid}/config`: Proxmox keys, `delete` (a list of keys), `digest`.
pub(crate) async fn update_config(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (status, current, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    if !status.is_success() {
        return answer(status, current, |v| v);
    }
    let mut req = match translate(&p, Some(&current)) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let revision = current["revision"].as_u64().unwrap_or(0);
    if let Some(d) = p.get("digest") {
        match u64::from_str_radix(d, 16) {
            Ok(r) if r == revision => {}
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "digest",
                    "detected modified configuration - file changed by other user? Try again.",
                )
            }
        }
    }
    // Compare-and-set on what this change was computed from.
    req.insert("revision".into(), json!(revision));
    if let Some(d) = p.get("delete") {
        let keys: Vec<&str> = d.split([',', ';', ' ']).filter(|k| !k.is_empty()).collect();
        req.insert("delete".into(), json!(keys));
    }
    let asynchronous = method == Method::POST;
    let (status, v, _) =
        native(&st, &headers, Method::PUT, &format!("/vms/{vmid}/config"), Some(Value::Object(req))).await;
    answer(status, v, |v| if asynchronous { v["upid"].clone() } else { Value::Null })
}

/// `purge` and `destroy-unreferenced-disks` are what Horcrux always does: the guest
/// leaves its pools and every disk of it goes.
pub(crate) async fn delete_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    for k in ["purge", "destroy-unreferenced-disks"] {
        if let Err(e) = flag(&q, k) {
            return e;
        }
    }
    let (status, v, _) = native(&st, &headers, Method::DELETE, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| v["upid"].clone())
}

/// The guest's configuration as Proxmox property strings (`virtio0: local:100/vm-100-disk-0.qcow2,size=1G`).
pub(crate) async fn qemu_config(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| pve_config(&v))
}

/// A guest's (or a snapshot's) configuration, as the native API answers it, in Proxmox's
/// keys and property strings.
pub(crate) fn pve_config(v: &Value) -> Value {
    let mut c = serde_json::Map::new();
    c.insert("name".into(), v["name"].clone());
    c.insert("memory".into(), json!(v["memory_mib"].as_u64().unwrap_or(0).to_string()));
    c.insert("cores".into(), v["cores"].clone());
    c.insert("sockets".into(), v["sockets"].clone());
    if let Some(a) = v["arch"].as_str().filter(|a| *a != horcrux_core::arch::DEFAULT_ARCH) {
        c.insert("arch".into(), json!(a));
    }
    for d in v["disks"].as_array().into_iter().flatten() {
        let size = d["size_mib"].as_u64().unwrap_or(0);
        let size = if size % 1024 == 0 { format!("{}G", size / 1024) } else { format!("{size}M") };
        let vol = d["volume"].as_str().unwrap_or_default();
        let slot = d["slot"].as_str().unwrap_or("virtio0").to_string();
        let format = horcrux_core::ids::volume_format(vol);
        c.insert(slot, json!(format!("{vol},format={format},size={size}")));
    }
    for cd in v["cdroms"].as_array().into_iter().flatten() {
        let slot = cd["slot"].as_str().unwrap_or("ide2").to_string();
        c.insert(slot, json!(format!("{},media=cdrom", cd["volume"].as_str().unwrap_or("none"))));
    }
    for (i, u) in v["unused"].as_array().into_iter().flatten().enumerate() {
        c.insert(format!("unused{i}"), u.clone());
    }
    for n in v["nets"].as_array().into_iter().flatten() {
        if let Ok(net) = serde_json::from_value::<NetSpec>(n.clone()) {
            c.insert(format!("net{}", net.index), json!(net.to_property_string()));
        }
    }
    if let Some(o) = v["options"].as_object() {
        for (k, val) in o {
            let text = val.as_str().unwrap_or_default();
            // Booleans and integers as JSON numbers, as Proxmox answers them.
            let typed = match vmconfig::option_kind(k) {
                vmconfig::OptionKind::Bool | vmconfig::OptionKind::Int => {
                    text.parse::<u64>().map(|n| json!(n)).unwrap_or_else(|_| val.clone())
                }
                _ => val.clone(),
            };
            c.insert(k.clone(), typed);
        }
    }
    if let Some(b) = v.get("boot").filter(|b| b.is_object()) {
        c.insert("args".into(), json!(format!("-kernel {}", b["kernel"].as_str().unwrap_or_default())));
    }
    // Proxmox's digest: changes whenever the config does (here: the revision).
    c.insert("digest".into(), json!(format!("{:040x}", v["revision"].as_u64().unwrap_or(0))));
    Value::Object(c)
}

/// `GET /nodes/{node}/qemu/{vmid}/pending`: the native list is Proxmox's already.
pub(crate) async fn pending_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}/pending"), None).await;
    answer(status, v, |v| v)
}

pub(crate) async fn status_current(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    let sid = format!("vm:{vmid}");
    let ha = st.runtime.cluster().read_local(|s| s.ha_resources.get(&sid).map(|r| (r.state, r.service)));
    answer(status, v, |v| {
        let mut e = qemu_entry(&v);
        // Proxmox's `ha`: whether an HA resource manages the guest, its requested state.
        e["ha"] = match ha {
            Some((state, service)) => json!({ "managed": 1, "state": state, "service": service }),
            None => json!({ "managed": 0 }),
        };
        e
    })
}

/// The parameters each power action honours (Proxmox's others are refused).
fn power_params(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        // `timeout` on start and stop bounds how long Proxmox waits; Horcrux's tasks end as
        // soon as the guest is up or down, so any bound is met.
        "start" | "stop" => &["timeout"],
        "resume" | "reset" => &[],
        "shutdown" => &["timeout", "forceStop"],
        "reboot" => &["timeout"],
        "suspend" => &["todisk"],
        _ => return None,
    })
}

pub(crate) async fn power(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(allowed) = power_params(&action) else {
        let message = format!("Method 'POST /nodes/{{node}}/qemu/{{vmid}}/status/{action}' not implemented");
        return (StatusCode::NOT_IMPLEMENTED, axum::Json(json!({ "data": null, "message": message })))
            .into_response();
    };
    if let Some(k) =
        p.keys().find(|k| !allowed.contains(&k.as_str()) && !["node", "vmid"].contains(&k.as_str()))
    {
        return error(StatusCode::BAD_REQUEST, k, UNSUPPORTED);
    }
    let timeout = match p.get("timeout").map(|t| t.parse::<u32>()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "timeout", "type check ('integer') failed"),
    };
    // Horcrux always stops a guest hard once the timeout has passed (`forceStop=1`);
    // `forceStop=0` is accepted as clients send it and documented as this difference.
    if let Err(e) = flag(&p, "forceStop") {
        return e;
    }
    match flag(&p, "todisk") {
        Err(e) => return e,
        Ok(Some(true)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "todisk",
                "suspend to disk is not supported; suspend pauses the vCPUs",
            )
        }
        Ok(_) => {}
    }
    let req = match timeout {
        Some(t) if matches!(action.as_str(), "shutdown" | "reboot") => json!({ "timeout_s": t }),
        _ => json!({}),
    };
    let (status, v, _) =
        native(&st, &headers, Method::POST, &format!("/vms/{vmid}/{action}"), Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}

/// Offline migration (`target`; `online=1` and `with-local-disks=1` are refused: not
/// supported yet).
pub(crate) async fn migrate_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(target) = p.get("target") else {
        return error(StatusCode::BAD_REQUEST, "target", "property is missing and it is not optional");
    };
    for k in ["online", "with-local-disks"] {
        match flag(&p, k) {
            Err(e) => return e,
            Ok(Some(true)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    k,
                    "only offline migration of guests without local disks is supported",
                )
            }
            Ok(_) => {}
        }
    }
    let req = json!({ "target": target });
    let (status, v, _) =
        native(&st, &headers, Method::POST, &format!("/vms/{vmid}/migrate"), Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `PUT /nodes/{node}/qemu/{vmid}/resize` (`disk`, `size`, `digest`): a task's UPID.
pub(crate) async fn resize_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut req = json!({});
    for k in ["disk", "size"] {
        match p.get(k) {
            Some(v) => req[k] = json!(v),
            None => return error(StatusCode::BAD_REQUEST, k, "property is missing and it is not optional"),
        }
    }
    if let Some(d) = p.get("digest") {
        match u64::from_str_radix(d, 16) {
            Ok(rev) => req["revision"] = json!(rev),
            Err(_) => return error(StatusCode::BAD_REQUEST, "digest", "not a digest this server gave"),
        }
    }
    let (status, v, _) = native(&st, &headers, Method::PUT, &format!("/vms/{vmid}/resize"), Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `GET|POST /nodes/{node}/qemu/{vmid}/snapshot`: the list (with `current`), or take one
/// (`snapname`, `description`, `vmstate`; a UPID).
pub(crate) async fn snapshots(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let path = format!("/vms/{vmid}/snapshots");
    if method == Method::GET {
        let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
        return answer(status, v, |v| v);
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(name) = p.get("snapname") else {
        return error(StatusCode::BAD_REQUEST, "snapname", "property is missing and it is not optional");
    };
    let vmstate = match flag(&p, "vmstate") {
        Ok(v) => v.unwrap_or(false),
        Err(e) => return e,
    };
    let req = json!({ "snapname": name, "description": p.get("description").cloned().unwrap_or_default(), "vmstate": vmstate });
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `GET|DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}`: the index, or delete it
/// (`force`; a UPID).
pub(crate) async fn snapshot(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((_node, vmid, name)): Path<(String, String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let path = format!("/vms/{vmid}/snapshots/{name}");
    if method == Method::GET {
        let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
        return answer(status, v, |_| json!([{ "cmd": "rollback" }, { "cmd": "config" }]));
    }
    let force = match flag(&query(&uri), "force") {
        Ok(f) => f.unwrap_or(false),
        Err(e) => return e,
    };
    let (status, v, _) = native(&st, &headers, Method::DELETE, &path, Some(json!({ "force": force }))).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `POST /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback` (`start`; a UPID).
pub(crate) async fn snapshot_rollback(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let start = match flag(&p, "start") {
        Ok(s) => s.unwrap_or(false),
        Err(e) => return e,
    };
    let path = format!("/vms/{vmid}/snapshots/{name}/rollback");
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(json!({ "start": start }))).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `GET|PUT /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config`: the config it was taken
/// of (with `snapname`, `snaptime`, `vmstate`, `description`, `parent`), or a new
/// `description`.
pub(crate) async fn snapshot_config(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((_node, vmid, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let path = format!("/vms/{vmid}/snapshots/{name}");
    if method == Method::GET {
        let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
        return answer(status, v, |v| {
            let mut flat = v["spec"].clone();
            flat["name"] = json!(format!("snap-{}", v["name"].as_str().unwrap_or_default()));
            let mut c = pve_config(&flat);
            c.as_object_mut().map(|o| {
                o.remove("digest");
                o.remove("name")
            });
            c["snapname"] = v["name"].clone();
            c["snaptime"] = v["snaptime"].clone();
            c["description"] = v["description"].clone();
            if v["vmstate"] == 1 {
                c["vmstate"] = json!(1);
            }
            if let Some(p) = v["parent"].as_str() {
                c["parent"] = json!(p);
            }
            c
        });
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let req = json!({ "description": p.get("description").cloned().unwrap_or_default() });
    let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(req)).await;
    answer(status, v, |_| Value::Null)
}

/// `PUT /nodes/{node}/qemu/{vmid}/unlink` (`idlist`: disk keys; `force`: free the volumes
/// instead of keeping them as `unusedN`).
pub(crate) async fn unlink_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(ids) = list_param(&p, "idlist") else {
        return error(StatusCode::BAD_REQUEST, "idlist", "property is missing and it is not optional");
    };
    let force = match flag(&p, "force") {
        Ok(f) => f.unwrap_or(false),
        Err(e) => return e,
    };
    let req = json!({ "delete": ids, "purge": force });
    let (status, v, _) = native(&st, &headers, Method::PUT, &format!("/vms/{vmid}/config"), Some(req)).await;
    answer(status, v, |_| Value::Null)
}

/// `POST /nodes/{node}/qemu/{vmid}/move_disk` (`disk`, `storage`, `format`, `delete`, or
/// `target-vmid` and `target-disk` to hand the disk to another guest); a UPID.
pub(crate) async fn move_disk_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut req = json!({});
    let other = p.get("target-vmid").filter(|v| **v != vmid);
    if let Some(t) = other {
        match t.parse::<u32>() {
            Ok(t) => req["target_vmid"] = json!(t),
            Err(_) => return error(StatusCode::BAD_REQUEST, "target-vmid", "type check ('integer') failed"),
        }
        if let Some(d) = p.get("target-disk") {
            req["target_disk"] = json!(d);
        }
    }
    // `storage` may be left out when the disk goes to another guest.
    let required: &[&str] = if other.is_some() { &["disk"] } else { &["disk", "storage"] };
    for k in ["disk", "storage"] {
        match p.get(k) {
            Some(v) => req[k] = json!(v),
            None if !required.contains(&k) => {}
            None => return error(StatusCode::BAD_REQUEST, k, "property is missing and it is not optional"),
        }
    }
    if let Some(f) = p.get("format") {
        req["format"] = json!(f);
    }
    match flag(&p, "delete") {
        Ok(d) => req["delete"] = json!(d.unwrap_or(false)),
        Err(e) => return e,
    }
    let (status, v, _) =
        native(&st, &headers, Method::POST, &format!("/vms/{vmid}/move_disk"), Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}
