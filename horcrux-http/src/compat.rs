//! `/api2/json`: Proxmox VE's wire format over the native API. Each route translates the
//! request (form-encoded or JSON, Proxmox's parameter names) into a call of the native
//! route, which authenticates, checks the privilege, forwards to the owning node and
//! acts, and translates the answer into `{"data": ...}` (errors into `{"errors": ...}`).
//! No logic is forked: what this layer adds is names and shapes.

// Handlers bail out with a ready Proxmox-shaped response; its size does not matter here.
#![allow(clippy::result_large_err)]

mod access;
mod qemu;

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
use access::*;
use qemu::*;

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
        .route("/nodes/{node}/qemu/{vmid}/config", get(qemu_config).post(update_config).put(update_config))
        .route("/nodes/{node}/qemu/{vmid}/status/{action}", post(power))
        .route("/nodes/{node}/qemu/{vmid}/migrate", post(migrate_qemu))
        .route("/nodes/{node}/tasks/{upid}/status", get(task_status))
        .route("/nodes/{node}/tasks/{upid}/log", get(task_log))
        .route("/nodes/{node}/tasks", get(list_tasks))
        .route("/nodes/{node}/status", get(node_status))
        .route("/nodes/{node}/storage", get(node_storage))
        .route("/nodes/{node}/storage/{storage}/content", get(storage_content))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/resources", get(cluster_resources))
        .route("/access/users", get(access_users).post(access_create_user))
        .route("/access/users/{userid}", get(access_user).put(access_user).delete(access_user))
        .route("/access/users/{userid}/token", get(access_token_list))
        .route(
            "/access/users/{userid}/token/{tokenid}",
            post(access_token).get(access_token_read_delete).delete(access_token_read_delete),
        )
        .route("/access/acl", get(access_acl).put(access_set_acl))
        .route("/access/roles", get(access_roles).post(access_create_role))
        .route("/access/roles/{roleid}", get(access_role).put(access_role).delete(access_role))
        .route("/access/groups", get(access_groups).post(access_groups))
        .route("/access/groups/{groupid}", get(access_group).delete(access_group))
        .route("/access/permissions", get(access_permissions))
        .route("/pools", get(pools).post(pools).put(pools))
        .route("/pools/{poolid}", get(pool).put(pool).delete(pool))
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

async fn storage_content(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let mut path = format!("/storage/{storage}/content?node={}", qemu::form_escape(&node));
    if let Some(vmid) = query(&uri).get("vmid") {
        path.push_str(&format!("&vmid={}", qemu::form_escape(vmid)));
    }
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
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
    native_from(st, headers, method, path, body, None).await
}

/// `native`, keeping the client's address (login throttling counts per address).
async fn native_from(
    st: &ApiState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
    peer: Option<crate::login::PeerAddr>,
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
    let Ok(mut req) = b.body(body) else {
        return (StatusCode::BAD_REQUEST, json!({"error": "bad request"}), HeaderMap::new());
    };
    if let Some(p) = peer {
        req.extensions_mut().insert(p);
    }
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

async fn ticket(
    State(st): State<ApiState>,
    peer: Option<axum::Extension<crate::login::PeerAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    let peer = peer.map(|axum::Extension(p)| p);
    let (status, v, h) =
        native_from(&st, &HeaderMap::new(), Method::POST, "/access/ticket", Some(login), peer).await;
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
