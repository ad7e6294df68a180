//! `/api2/json`: Proxmox VE's wire format over the native API. Each route translates the
//! request (form-encoded or JSON, Proxmox's parameter names) into a call of the native
//! route, which authenticates, checks the privilege, forwards to the owning node and
//! acts, and translates the answer into `{"data": ...}` (errors into `{"errors": ...}`).
//! No logic is forked: what this layer adds is names and shapes.

// Handlers bail out with a ready Proxmox-shaped response; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::routes::ApiState;

/// The native router, set once it is built (compat calls go through it).
pub type NativeApp = Arc<OnceLock<Router>>;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/version", get(version))
        .route("/access/ticket", post(ticket))
        .route("/nodes", get(nodes))
        .route("/cluster/nextid", get(nextid))
        .route("/nodes/{node}/qemu", get(list_qemu).post(create_qemu))
        .route("/nodes/{node}/qemu/{vmid}", axum::routing::delete(delete_qemu))
        .route("/nodes/{node}/qemu/{vmid}/status/current", get(status_current))
        .route("/nodes/{node}/qemu/{vmid}/config", get(qemu_config))
        .route("/nodes/{node}/qemu/{vmid}/status/{action}", post(power))
        .route("/nodes/{node}/tasks/{upid}/status", get(task_status))
        .route("/nodes/{node}/tasks/{upid}/log", get(task_log))
        .route("/nodes/{node}/tasks", get(list_tasks))
        .route("/nodes/{node}/status", get(node_status))
        .route("/nodes/{node}/storage", get(node_storage))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/resources", get(cluster_resources))
        .route("/access/users", get(access_users).post(access_create_user))
        .route("/access/users/{userid}/token/{tokenid}", post(access_token))
        .route("/access/acl", get(access_acl).put(access_set_acl))
        .route("/access/roles", get(access_roles))
        .route("/access/permissions", get(access_permissions))
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

async fn list_tasks(State(st): State<ApiState>, headers: HeaderMap, Path(node): Path<String>) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/tasks", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| a.iter().filter(|t| t["node"] == node.as_str()).cloned().collect())
            .unwrap_or_default();
        json!(list)
    })
}

async fn node_status(State(st): State<ApiState>, headers: HeaderMap, Path(node): Path<String>) -> Response {
    // Needs Sys.Audit like Proxmox: the cluster status route checks it.
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/status", None).await;
    answer(status, v, |v| {
        let me = v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["name"] == node.as_str()).cloned());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        json!({
            "node": node,
            "status": if me.as_ref().is_some_and(|m| m["online"] == true) { "online" } else { "offline" },
            "cpuinfo": { "cpus": cpus },
            "pveversion": "horcrux/8.3.0",
        })
    })
}

async fn node_storage(State(st): State<ApiState>, headers: HeaderMap, Path(_node): Path<String>) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/storage", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| json!({ "storage": p["id"], "type": p["type"], "content": "images", "active": 1, "enabled": 1 }))
                    .collect()
            })
            .unwrap_or_default();
        json!(list)
    })
}

async fn cluster_status(State(st): State<ApiState>, headers: HeaderMap) -> Response {
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

async fn cluster_resources(State(st): State<ApiState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let q = query(&uri);
    let want = q.get("type").cloned();
    if want.as_deref().is_some_and(|t| !matches!(t, "vm" | "node" | "storage" | "sdn")) {
        return error(StatusCode::BAD_REQUEST, "type", "value must be one of vm, storage, node, sdn");
    }
    let mut out = Vec::new();
    if want.is_none() || want.as_deref() == Some("vm") {
        let (status, v, _) = native(&st, &headers, Method::GET, "/vms", None).await;
        if !status.is_success() {
            return answer(status, v, |v| v);
        }
        for g in v.as_array().into_iter().flatten() {
            let mut e = qemu_entry(g);
            e["type"] = json!("qemu");
            e["id"] = json!(format!("qemu/{}", g["vmid"]));
            out.push(e);
        }
    }
    if want.is_none() || want.as_deref() == Some("node") {
        let (status, v, _) = native(&st, &headers, Method::GET, "/nodes", None).await;
        if !status.is_success() {
            return answer(status, v, |v| v);
        }
        for n in v.as_array().into_iter().flatten() {
            let name = n["name"].as_str().unwrap_or_default();
            out.push(
                json!({ "type": "node", "id": format!("node/{name}"), "node": name, "status": "online" }),
            );
        }
    }
    if want.is_none() || want.as_deref() == Some("storage") {
        let (status, v, _) = native(&st, &headers, Method::GET, "/storage", None).await;
        if status.is_success() {
            for p in v.as_array().into_iter().flatten() {
                let id = p["id"].as_str().unwrap_or_default();
                out.push(json!({ "type": "storage", "id": format!("storage/{id}"), "storage": id, "status": "available" }));
            }
        } else if want.is_some() {
            return answer(status, v, |v| v);
        }
    }
    ok(json!(out))
}

async fn access_users(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/users", None).await;
    answer(status, v, |v| v)
}

async fn access_create_user(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(userid) = p.get("userid").cloned() else {
        return error(StatusCode::BAD_REQUEST, "userid", "property is missing and it is not optional");
    };
    let groups: Vec<&str> =
        p.get("groups").map(|g| g.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let expire: u64 = p.get("expire").and_then(|e| e.parse().ok()).unwrap_or(0);
    let req = json!({ "userid": userid, "comment": p.get("comment").cloned().unwrap_or_default(), "groups": groups, "expire": expire });
    let (status, v, _) = native(&st, &headers, Method::POST, "/access/users", Some(req)).await;
    if !status.is_success() {
        return answer(status, v, |v| v);
    }
    if let Some(pw) = p.get("password") {
        let req = json!({ "userid": userid, "password": pw });
        let (status, v, _) = native(&st, &headers, Method::PUT, "/access/password", Some(req)).await;
        return answer(status, v, |_| Value::Null);
    }
    ok(Value::Null)
}

async fn access_token(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((userid, tokenid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let privsep = p.get("privsep").map(|v| v != "0").unwrap_or(true);
    let expire: u64 = p.get("expire").and_then(|e| e.parse().ok()).unwrap_or(0);
    let path = format!("/access/users/{userid}/token/{tokenid}");
    let (status, v, _) =
        native(&st, &headers, Method::POST, &path, Some(json!({ "privsep": privsep, "expire": expire })))
            .await;
    answer(status, v, |v| v)
}

async fn access_acl(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/acl", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| json!({ "path": e["path"], "roleid": e["role"], "type": e["ugid"]["type"], "ugid": e["ugid"]["id"], "propagate": u8::from(e["propagate"] == true) }))
                    .collect()
            })
            .unwrap_or_default();
        json!(list)
    })
}

/// Proxmox's form: `path`, `roles` (list), `users`/`groups`/`tokens` (lists), `propagate`,
/// `delete`; each (role, subject) pair becomes one native change.
async fn access_set_acl(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let list = |k: &str| -> Vec<String> {
        p.get(k)
            .map(|v| v.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let Some(path) = p.get("path").cloned() else {
        return error(StatusCode::BAD_REQUEST, "path", "property is missing and it is not optional");
    };
    let roles = list("roles");
    if roles.is_empty() {
        return error(StatusCode::BAD_REQUEST, "roles", "property is missing and it is not optional");
    }
    let propagate = p.get("propagate").map(|v| v != "0").unwrap_or(true);
    let delete = p.get("delete").is_some_and(|v| v != "0");
    let mut subjects = Vec::new();
    for (key, kind) in [("users", "user"), ("groups", "group"), ("tokens", "token")] {
        subjects.extend(list(key).into_iter().map(|s| (kind, s)));
    }
    if subjects.is_empty() {
        return error(StatusCode::BAD_REQUEST, "users", "give users, groups or tokens");
    }
    for role in &roles {
        for (kind, who) in &subjects {
            let req = json!({ "path": path, "role": role, kind.to_string(): who, "propagate": propagate, "delete": delete });
            let (status, v, _) = native(&st, &headers, Method::PUT, "/access/acl", Some(req)).await;
            if !status.is_success() {
                return answer(status, v, |v| v);
            }
        }
    }
    ok(Value::Null)
}

async fn access_roles(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/roles", None).await;
    answer(status, v, |v| v)
}

async fn access_permissions(
    State(st): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let path = match q.get("path") {
        Some(p) => format!(
            "/access/permissions?path={}",
            serde_urlencoded::to_string([("p", p)]).unwrap_or_default().trim_start_matches("p=")
        ),
        None => "/access/permissions".to_string(),
    };
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

/// Parameters from a form-encoded or JSON body (numbers and booleans as strings, as
/// Proxmox clients send them).
fn params(headers: &HeaderMap, body: &Bytes) -> Result<BTreeMap<String, String>, Response> {
    let json =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("json"));
    if body.is_empty() {
        return Ok(BTreeMap::new());
    }
    if json {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, "body", &e.to_string()))?;
        let obj =
            v.as_object().ok_or_else(|| error(StatusCode::BAD_REQUEST, "body", "expected an object"))?;
        Ok(obj
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect())
    } else {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .map(|v| v.into_iter().collect())
            .map_err(|e| error(StatusCode::BAD_REQUEST, "body", &e.to_string()))
    }
}

/// Proxmox's error shape: `{"data": null, "errors": {"param": "message"}}`, the message
/// also in `message`.
fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (status, Json(json!({ "data": null, "errors": { field: message }, "message": message }))).into_response()
}

fn ok(data: Value) -> Response {
    Json(json!({ "data": data })).into_response()
}

/// Calls the native route `method path` with the caller's credentials.
async fn native(
    st: &ApiState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, HeaderMap) {
    let Some(app) = st.native.get().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "starting"}), HeaderMap::new());
    };
    let mut b = Request::builder().method(method).uri(format!("/api/v1{path}"));
    for h in [header::AUTHORIZATION, header::COOKIE] {
        if let Some(v) = headers.get(&h) {
            b = b.header(h, v);
        }
    }
    if let Some(v) = headers.get("CSRFPreventionToken") {
        b = b.header("CSRFPreventionToken", v);
    }
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let Ok(req) = b.body(body) else {
        return (StatusCode::BAD_REQUEST, json!({"error": "bad request"}), HeaderMap::new());
    };
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, value, parts.headers)
}

/// A native answer in Proxmox's shape, `shape` applied to successful data.
fn answer(status: StatusCode, v: Value, shape: impl FnOnce(Value) -> Value) -> Response {
    if status.is_success() {
        return ok(shape(v));
    }
    let message = v["error"].as_str().unwrap_or("error").to_string();
    let field = v["field"].as_str().unwrap_or("request").to_string();
    error(status, &field, &message)
}

async fn version() -> Response {
    ok(
        json!({ "version": "8.3.0", "release": "8.3", "repoid": "horcrux", "horcrux": env!("CARGO_PKG_VERSION") }),
    )
}

async fn ticket(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut login = json!({
        "username": p.get("username").cloned().unwrap_or_default(),
        "password": p.get("password").cloned().unwrap_or_default(),
    });
    if let Some(o) = p.get("otp") {
        login["otp"] = json!(o);
    }
    if let Some(c) = p.get("tfa-challenge") {
        login["tfa-challenge"] = json!(c);
    }
    let (status, v, h) = native(&st, &HeaderMap::new(), Method::POST, "/access/ticket", Some(login)).await;
    let mut resp = answer(status, v, |v| v);
    if let Some(c) = h.get(header::SET_COOKIE) {
        resp.headers_mut().insert(header::SET_COOKIE, c.clone());
    }
    resp
}

async fn nodes(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/nodes", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        let name = n["name"].as_str().unwrap_or_default();
                        json!({ "node": name, "status": "online", "type": "node", "id": format!("node/{name}") })
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!(list)
    })
}

async fn nextid(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/nextid", None).await;
    // Proxmox answers the id as a string.
    answer(status, v, |v| json!(v["vmid"].as_u64().or(v.as_u64()).map(|n| n.to_string())))
}

fn qemu_entry(v: &Value) -> Value {
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

async fn list_qemu(State(st): State<ApiState>, headers: HeaderMap, Path(node): Path<String>) -> Response {
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
const DISK_KEYS: &[&str] = &["virtio", "scsi", "sata", "ide"];

async fn create_qemu(
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

async fn delete_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::DELETE, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| v["upid"].clone())
}

/// The guest's configuration as Proxmox property strings (`virtio0: local:100/vm-100-disk-0.qcow2,size=1G`).
async fn qemu_config(
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

async fn status_current(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/vms/{vmid}"), None).await;
    answer(status, v, |v| qemu_entry(&v))
}

async fn power(
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

async fn task_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, upid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/tasks/{upid}"), None).await;
    answer(status, v, |v| v)
}

async fn task_log(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, upid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/tasks/{upid}/log"), None).await;
    answer(status, v, |v| v)
}
