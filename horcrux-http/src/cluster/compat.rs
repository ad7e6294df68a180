//! `/api2/json`: the version, the members, the next free VMID, cluster status and resources.

#![allow(clippy::result_large_err)]

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::pve::*;
use crate::state::ApiState;
use crate::vms::compat::qemu_entry;

pub(crate) async fn cluster_status(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/status", None).await;
    answer(status, v, |v| {
        let mut out = vec![json!({
            "type": "cluster", "id": "cluster", "name": "horcrux",
            "quorate": u8::from(v["quorate"] == true), "nodes": v["nodes"].as_array().map(|a| a.len()).unwrap_or(0),
            "version": v["term"],
        })];
        for n in v["nodes"].as_array().into_iter().flatten() {
            out.push(json!({
                "type": "node", "id": format!("node/{}", n["name"].as_str().unwrap_or_default()),
                "name": n["name"], "nodeid": n["id"], "online": u8::from(n["online"] == true),
                "local": u8::from(n["local"] == true), "ip": n["address"],
            }));
        }
        json!(out)
    })
}

pub(crate) async fn cluster_resources(
    State(st): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let want = q.get("type").cloned();
    if want.as_deref().is_some_and(|t| !matches!(t, "vm" | "node" | "storage" | "sdn")) {
        return error(StatusCode::BAD_REQUEST, "type", "value must be one of vm, storage, node, sdn");
    }
    match resources(&st, &headers, want).await {
        Ok(out) => ok(json!(out)),
        Err(e) => e,
    }
}

/// The members this node hears from now.
pub(crate) fn online_members(st: &ApiState) -> Vec<String> {
    st.runtime.cluster().cluster_status().nodes.into_iter().filter(|n| n.online).map(|n| n.name).collect()
}

/// Member `node`'s latest reading into `cache`, once (`null` for a member this node does
/// not hear from: the call would wait for the forward to time out).
async fn fetch_live(
    st: &ApiState,
    headers: &HeaderMap,
    online: &std::collections::BTreeSet<String>,
    cache: &mut std::collections::BTreeMap<String, Value>,
    node: &str,
) {
    if cache.contains_key(node) {
        return;
    }
    let v = if online.contains(node) {
        let path = format!("/nodes/{}/metrics/current", form_escape(node));
        let (code, v, _) = native(st, headers, Method::GET, &path, None).await;
        if code.is_success() {
            v
        } else {
            Value::Null
        }
    } else {
        Value::Null
    };
    cache.insert(node.to_string(), v);
}

/// The cluster's resources as Proxmox's `cluster/resources` lists them (`want`: one type),
/// with the live figures of each member the caller may read; the error answer of a native
/// call that failed. `GET /metrics` renders the same list.
pub(crate) async fn resources(
    st: &ApiState,
    headers: &HeaderMap,
    want: Option<String>,
) -> Result<Vec<Value>, Response> {
    let (st, headers) = (st.clone(), headers.clone());
    let mut out = Vec::new();
    // Each member's latest readings (the caller's rights apply; without Sys.Audit on a
    // member its entries carry no live figures).
    // Members this node does not hear from are not asked (the answer would wait for the
    // forward to time out); their entries carry no live figures.
    let online: std::collections::BTreeSet<String> = online_members(&st).into_iter().collect();
    // Fetched once per member, then read by reference (an entry per guest must not copy
    // its member's whole reading).
    let mut live_cache: std::collections::BTreeMap<String, Value> = Default::default();
    if want.is_none() || want.as_deref() == Some("vm") {
        // As Proxmox: every caller may ask, and sees what its rights show (no guests
        // without VM.Audit on /vms).
        let (status, v, _) = native(&st, &headers, Method::GET, "/vms", None).await;
        if !status.is_success() && status != StatusCode::FORBIDDEN {
            return Err(answer(status, v, |v| v));
        }
        for g in v.as_array().into_iter().flatten() {
            let mut e = qemu_entry(g);
            e["type"] = json!("qemu");
            e["id"] = json!(format!("qemu/{}", g["vmid"]));
            let node = g["node"].as_str().unwrap_or_default().to_string();
            if !online.contains(&node) {
                // As Proxmox: nobody observes a guest of a member that is not heard from.
                e["status"] = json!("unknown");
            }
            fetch_live(&st, &headers, &online, &mut live_cache, &node).await;
            let m = &live_cache[&node]["guests"][g["vmid"].to_string()];
            // PVE's live figures: cpu a fraction of the vCPUs, bytes, byte totals since start.
            copy_live(
                &mut e,
                m,
                &[
                    ("cpu", "cpu"),
                    ("mem", "mem"),
                    ("maxcpu", "maxcpu"),
                    ("maxdisk", "maxdisk"),
                    ("disk", "disk"),
                    ("netin", "netin_total"),
                    ("netout", "netout_total"),
                    ("diskread", "diskread_total"),
                    ("diskwrite", "diskwrite_total"),
                    ("uptime", "uptime"),
                ],
            );
            out.push(e);
        }
    }
    if want.is_none() || want.as_deref() == Some("node") {
        let (status, v, _) = native(&st, &headers, Method::GET, "/nodes", None).await;
        if !status.is_success() && status != StatusCode::FORBIDDEN {
            return Err(answer(status, v, |v| v));
        }
        for n in v.as_array().into_iter().flatten() {
            let name = n["name"].as_str().unwrap_or_default();
            let mut e = json!({ "type": "node", "id": format!("node/{name}"), "node": name, "status": node_status(&online, name) });
            fetch_live(&st, &headers, &online, &mut live_cache, name).await;
            let m = &live_cache[name]["node"];
            copy_live(
                &mut e,
                m,
                &[
                    ("cpu", "cpu"),
                    ("maxcpu", "maxcpu"),
                    ("mem", "memused"),
                    ("maxmem", "memtotal"),
                    ("disk", "rootused"),
                    ("maxdisk", "roottotal"),
                    ("uptime", "uptime"),
                ],
            );
            out.push(e);
        }
    }
    if want.is_none() || want.as_deref() == Some("storage") {
        let (status, v, _) = native(&st, &headers, Method::GET, "/storage", None).await;
        let (nodes_status, nodes, _) = native(&st, &headers, Method::GET, "/nodes", None).await;
        if status.is_success() && nodes_status.is_success() {
            // Proxmox lists a storage once per node that has it: `storage/{node}/{storage}`.
            let names: Vec<String> = nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect();
            for p in v.as_array().into_iter().flatten() {
                let id = p["storage"].as_str().unwrap_or_default();
                let on = |n: &str| p["nodes"].as_str().is_none_or(|l| l.split(',').any(|x| x == n));
                for node in names.iter().filter(|n| on(n)) {
                    let mut e = json!({
                        "type": "storage", "id": format!("storage/{node}/{id}"), "storage": id, "node": node,
                        "status": "unknown", "plugintype": p["type"], "content": p["content"],
                        "shared": u8::from(p["shared"] == 1),
                    });
                    let path = format!("/storage/{id}/status?node={}", form_escape(node));
                    let (code, s, _) = native(&st, &headers, Method::GET, &path, None).await;
                    if code.is_success() {
                        e["status"] = json!(if s["active"] == 1 { "available" } else { "unknown" });
                        if let (Some(total), Some(used)) = (s["total"].as_u64(), s["used"].as_u64()) {
                            e["disk"] = json!(used);
                            e["maxdisk"] = json!(total);
                        }
                    }
                    out.push(e);
                }
            }
        } else if want.is_some() {
            return Err(answer(status, v, |v| v));
        }
    }
    Ok(out)
}

/// Copies the live figures `pairs` (entry key, reading key) of reading `m` into `e`: `cpu`
/// as a fraction, the rest as whole numbers (bytes, counts, seconds).
fn copy_live(e: &mut Value, m: &Value, pairs: &[(&str, &str)]) {
    for (to, from) in pairs {
        if let Some(v) = m[*from].as_f64() {
            e[*to] = if *to == "cpu" { json!(v) } else { json!(v as u64) };
        }
    }
}

/// Proxmox's `repoid` is the build's short commit hash; Horcrux's names its version the
/// same way (eight hex digits derived from it).
pub(crate) fn repoid() -> String {
    let hash = env!("CARGO_PKG_VERSION")
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{hash:08x}")
}

pub(crate) async fn version() -> Response {
    ok(
        json!({ "version": "8.3.0", "release": "8.3", "repoid": repoid(), "horcrux": env!("CARGO_PKG_VERSION") }),
    )
}

/// A member as Proxmox reports it: `online` while heard from, else `offline`.
fn node_status(online: &std::collections::BTreeSet<String>, name: &str) -> &'static str {
    if online.contains(name) {
        "online"
    } else {
        "offline"
    }
}

pub(crate) async fn nodes(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/nodes", None).await;
    let online: std::collections::BTreeSet<String> = online_members(&st).into_iter().collect();
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        let name = n["name"].as_str().unwrap_or_default();
                        json!({ "node": name, "status": node_status(&online, name), "type": "node", "id": format!("node/{name}") })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!(list)
    })
}

pub(crate) async fn nextid(State(st): State<ApiState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let q = query(&uri);
    if let Some(vmid) = q.get("vmid") {
        // Proxmox checks the given id is free and answers it.
        let id = match vmid.parse::<u32>() {
            Ok(id) if (100..=999_999_999).contains(&id) => id,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "vmid",
                    "value must be an integer from 100 to 999999999",
                )
            }
        };
        let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{id}"), None).await;
        return match status {
            StatusCode::NOT_FOUND => ok(json!(id.to_string())),
            s if s.is_success() => error(StatusCode::BAD_REQUEST, "vmid", &format!("VM {id} already exists")),
            s => answer(s, v, |v| v),
        };
    }
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/nextid", None).await;
    // Proxmox answers the id as a string.
    answer(status, v, |v| json!(v["vmid"].as_u64().or(v.as_u64()).map(|n| n.to_string())))
}
