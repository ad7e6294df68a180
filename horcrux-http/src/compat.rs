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
        .route_layer(axum::middleware::from_fn(check_params))
        .fallback(not_implemented)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(proxmox_errors))
}

/// The parameters a route honours besides its path parameters, as Proxmox names them;
/// `None`: the handler checks every key itself (a guest's config keys). Anything else,
/// documented by Proxmox or not, is refused with an `errors` entry naming it (Proxmox
/// refuses undocumented ones the same way): no parameter is ignored silently.
fn accepted(method: &Method, route: &str) -> Option<&'static [&'static str]> {
    let m = method.as_str();
    Some(match (m, route) {
        ("POST", "/access/ticket") => {
            &["username", "password", "otp", "tfa-challenge", "realm", "new-format"]
        }
        ("GET", "/cluster/nextid") => &["vmid"],
        ("GET", "/nodes/{node}/qemu") => &["full"],
        ("POST", "/nodes/{node}/qemu") => return None,
        ("DELETE", "/nodes/{node}/qemu/{vmid}") => &["purge", "destroy-unreferenced-disks"],
        ("GET", "/nodes/{node}/qemu/{vmid}/config") => &["current"],
        ("PUT" | "POST", "/nodes/{node}/qemu/{vmid}/config") => return None,
        // The actions' own parameters are checked by `power`.
        ("POST", "/nodes/{node}/qemu/{vmid}/status/{action}") => return None,
        ("POST", "/nodes/{node}/qemu/{vmid}/migrate") => &["target", "online", "with-local-disks"],
        ("GET", "/nodes/{node}/tasks") => &[
            "limit",
            "start",
            "vmid",
            "typefilter",
            "userfilter",
            "errors",
            "source",
            "statusfilter",
            "since",
            "until",
        ],
        ("GET", "/nodes/{node}/tasks/{upid}/log") => &["start", "limit"],
        ("GET", "/nodes/{node}/storage") => &["content", "enabled", "storage"],
        ("GET", "/nodes/{node}/storage/{storage}/content") => &["content", "vmid"],
        ("GET", "/cluster/resources") => &["type"],
        ("GET", "/access/users") => &["enabled", "full"],
        ("POST", "/access/users") => {
            &["userid", "password", "comment", "email", "enable", "expire", "groups"]
        }
        ("PUT", "/access/users/{userid}") => &["comment", "email", "enable", "expire", "groups", "append"],
        ("POST", "/access/users/{userid}/token/{tokenid}") => &["privsep", "expire"],
        ("PUT", "/access/acl") => &["path", "roles", "users", "groups", "tokens", "propagate", "delete"],
        ("POST", "/access/roles") => &["roleid", "privs"],
        ("PUT", "/access/roles/{roleid}") => &["privs", "append"],
        ("POST", "/access/groups") => &["groupid", "comment"],
        ("GET", "/access/permissions") => &["path"],
        ("GET", "/pools") => &["poolid"],
        ("POST", "/pools") => &["poolid", "comment"],
        ("PUT", "/pools") => &["poolid", "comment", "vms", "storage", "delete"],
        ("PUT", "/pools/{poolid}") => &["comment", "vms", "storage", "delete"],
        _ => &[],
    })
}

/// What Proxmox says of a parameter it does not know; Horcrux says it of those it does
/// not honour too.
pub(crate) const UNSUPPORTED: &str = "property is not defined in schema or not supported by Horcrux";

/// Refuses a request carrying a parameter its route does not honour (query string, and
/// the body of a `POST`/`PUT`), before the handler runs.
async fn check_params(
    matched: axum::extract::MatchedPath,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.as_str().trim_start_matches("/api2/json").to_string();
    let Some(allowed) = accepted(req.method(), &route) else {
        return next.run(req).await;
    };
    let mut keys: Vec<String> = query(req.uri()).into_keys().collect();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body", "request body too large"),
    };
    if matches!(parts.method, Method::POST | Method::PUT) {
        match params(&parts.headers, &bytes) {
            Ok(p) => keys.extend(p.into_keys()),
            Err(e) => return e,
        }
    }
    let path_params: Vec<&str> =
        route.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
    let mut errors = serde_json::Map::new();
    for k in keys {
        if !allowed.contains(&k.as_str()) && !path_params.contains(&k.as_str()) {
            errors.insert(k, json!(UNSUPPORTED));
        }
    }
    if !errors.is_empty() {
        let message = format!(
            "Parameter verification failed. ({})",
            errors.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "data": null, "errors": errors, "message": message })),
        )
            .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Proxmox answers a path or method it does not serve with 501.
async fn not_implemented(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches("/api2/json");
    let message = format!("Method '{method} {path}' not implemented");
    (StatusCode::NOT_IMPLEMENTED, Json(json!({ "data": null, "message": message }))).into_response()
}

/// Another method of a path that is served.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches("/api2/json");
    let message = format!("Method '{method} {path}' not implemented");
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({ "data": null, "message": message }))).into_response()
}

/// Errors made outside the handlers (a malformed path or query, axum's own rejections)
/// in Proxmox's shape: `{"data": null, "errors": {...}}`.
async fn proxmox_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut out = error(status, "request", &message);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// A Proxmox boolean parameter: `1`/`0` (also `true`/`false`, as JSON clients send them).
pub(crate) fn flag(p: &BTreeMap<String, String>, k: &str) -> Result<Option<bool>, Response> {
    match p.get(k).map(String::as_str) {
        None => Ok(None),
        Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
        Some("0" | "false" | "no" | "off") => Ok(Some(false)),
        Some(_) => Err(error(StatusCode::BAD_REQUEST, k, "type check ('boolean') failed")),
    }
}

/// An integer parameter (`None`: absent).
pub(crate) fn int_param(p: &BTreeMap<String, String>, k: &str) -> Result<Option<u64>, Response> {
    p.get(k)
        .map(|v| {
            v.parse::<u64>().map_err(|_| error(StatusCode::BAD_REQUEST, k, "type check ('integer') failed"))
        })
        .transpose()
}

/// `GET /nodes/{node}/tasks`: the node's tasks, newest first, with Proxmox's filters and
/// paging (`start`, `limit` default 50).
async fn list_tasks(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let (limit, start, vmid, since, until) = match (|| {
        Ok::<_, Response>((
            int_param(&q, "limit")?.unwrap_or(50),
            int_param(&q, "start")?.unwrap_or(0),
            int_param(&q, "vmid")?,
            int_param(&q, "since")?,
            int_param(&q, "until")?,
        ))
    })() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let errors_only = match flag(&q, "errors") {
        Ok(e) => e.unwrap_or(false),
        Err(e) => return e,
    };
    let source = q.get("source").map(String::as_str).unwrap_or("archive");
    if !matches!(source, "archive" | "active" | "all") {
        return error(StatusCode::BAD_REQUEST, "source", "value must be one of archive, active, all");
    }
    let statuses: Option<Vec<String>> = q
        .get("statusfilter")
        .map(|f| f.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_lowercase).collect());
    let (status, v, _) = native(&st, &headers, Method::GET, "/tasks", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["node"] == node.as_str())
            .filter(|t| {
                let running = t["status"] == "running";
                let exit = t["exitstatus"].as_str().unwrap_or("");
                let class = if running {
                    "active"
                } else if exit == "OK" {
                    "ok"
                } else if exit.starts_with("WARNINGS") {
                    "warning"
                } else {
                    "error"
                };
                let started = t["starttime"].as_u64().unwrap_or(0);
                (source != "archive" || !running)
                    && (source != "active" || running)
                    && (!errors_only || class == "error")
                    && statuses.as_ref().is_none_or(|s| s.iter().any(|c| c == class))
                    && vmid.is_none_or(|id| t["id"] == id.to_string().as_str())
                    && q.get("typefilter").is_none_or(|f| t["type"] == f.as_str())
                    && q.get("userfilter")
                        .is_none_or(|f| t["user"].as_str().is_some_and(|u| u.contains(f.as_str())))
                    && since.is_none_or(|s| started >= s)
                    && until.is_none_or(|u| started <= u)
            })
            .skip(start as usize)
            .take(limit as usize)
            .map(|t| {
                let mut t = t.clone();
                if let Some(o) = t.as_object_mut() {
                    o.remove("log");
                    if t["status"] != "running" {
                        t["status"] = t["exitstatus"].clone();
                    }
                }
                t
            })
            .collect();
        json!(list)
    })
}

async fn node_status(State(st): State<ApiState>, headers: HeaderMap, Path(node): Path<String>) -> Response {
    let path = format!("/nodes/{}/status", qemu::form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |mut v| {
        // It answered, so it is up.
        v["node"] = json!(node);
        v["status"] = json!("online");
        v
    })
}

/// A comma-separated list parameter.
fn list_param(p: &BTreeMap<String, String>, k: &str) -> Option<Vec<String>> {
    p.get(k).map(|v| v.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// What a storage type holds (Horcrux's pools hold guest images).
const STORAGE_CONTENT: &str = "images";

async fn node_storage(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let enabled = match flag(&q, "enabled") {
        Ok(e) => e,
        Err(e) => return e,
    };
    let content = list_param(&q, "content");
    let (status, v, _) = native(&st, &headers, Method::GET, "/storage", None).await;
    if !status.is_success() {
        return answer(status, v, |v| v);
    }
    let mut list = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or_default();
        if q.get("storage").is_some_and(|s| s != id)
            || enabled == Some(false)
            || content.as_ref().is_some_and(|c| !c.iter().any(|c| c == STORAGE_CONTENT))
        {
            continue;
        }
        let usage = storage_usage(&st, &headers, &node, id).await;
        let mut e = json!({
            "storage": id, "type": p["type"], "content": STORAGE_CONTENT,
            "active": 1, "enabled": 1, "shared": 0,
        });
        if let Some((total, used, avail)) = usage {
            e["total"] = json!(total);
            e["used"] = json!(used);
            e["avail"] = json!(avail);
            e["used_fraction"] = json!(if total > 0 { used as f64 / total as f64 } else { 0.0 });
        }
        list.push(e);
    }
    ok(json!(list))
}

/// A storage's size, use and free space on `node` (total, used, avail bytes).
async fn storage_usage(st: &ApiState, headers: &HeaderMap, node: &str, id: &str) -> Option<(u64, u64, u64)> {
    let path = format!("/storage/{id}/status?node={}", qemu::form_escape(node));
    let (status, v, _) = native(st, headers, Method::GET, &path, None).await;
    if !status.is_success() {
        return None;
    }
    Some((v["total"].as_u64()?, v["used"].as_u64()?, v["avail"].as_u64()?))
}

async fn storage_content(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    if list_param(&q, "content").is_some_and(|c| !c.iter().any(|c| c == STORAGE_CONTENT)) {
        return ok(json!([]));
    }
    let mut path = format!("/storage/{storage}/content?node={}", qemu::form_escape(&node));
    if let Some(vmid) = q.get("vmid") {
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
                let id = p["id"].as_str().unwrap_or_default();
                for node in &names {
                    let mut e = json!({
                        "type": "storage", "id": format!("storage/{node}/{id}"), "storage": id, "node": node,
                        "status": "available", "plugintype": p["type"], "content": STORAGE_CONTENT, "shared": 0,
                    });
                    if let Some((total, used, _)) = storage_usage(&st, &headers, node, id).await {
                        e["disk"] = json!(used);
                        e["maxdisk"] = json!(total);
                    }
                    out.push(e);
                }
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
    let field = v["field"].as_str().unwrap_or("request");
    // The native API's field names, as the Proxmox parameters they came from.
    let field = match field {
        "memory_mib" => "memory",
        "timeout_s" => "timeout",
        f => f,
    };
    error(status, field, &message)
}

/// Proxmox's `repoid` is the build's short commit hash; Horcrux's names its version the
/// same way (eight hex digits derived from it).
fn repoid() -> String {
    let hash = env!("CARGO_PKG_VERSION")
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{hash:08x}")
}

async fn version() -> Response {
    ok(
        json!({ "version": "8.3.0", "release": "8.3", "repoid": repoid(), "horcrux": env!("CARGO_PKG_VERSION") }),
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
    // `realm` completes a user name given without one, as Proxmox's login form does.
    let mut username = p.get("username").cloned().unwrap_or_default();
    if let Some(realm) = p.get("realm").filter(|_| !username.contains('@')) {
        username = format!("{username}@{realm}");
    }
    if let Err(e) = flag(&p, "new-format") {
        return e;
    }
    let mut login = json!({
        "username": username,
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

async fn nextid(State(st): State<ApiState>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
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

async fn task_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, upid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/tasks/{upid}"), None).await;
    answer(status, v, |v| v)
}

/// The task's log lines `start..start+limit` (Proxmox's defaults: 0 and 50), with the
/// line count as `total` beside `data`.
async fn task_log(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, upid)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let (start, limit) = match (int_param(&q, "start"), int_param(&q, "limit")) {
        (Ok(s), Ok(l)) => (s.unwrap_or(0) as usize, l.unwrap_or(50) as usize),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/tasks/{upid}/log"), None).await;
    if !status.is_success() {
        return answer(status, v, |v| v);
    }
    let lines = v.as_array().cloned().unwrap_or_default();
    let total = lines.len();
    let page: Vec<Value> = lines.into_iter().skip(start).take(limit).collect();
    Json(json!({ "data": page, "total": total })).into_response()
}
