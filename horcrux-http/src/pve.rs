//! `/api2/json`: Proxmox VE's wire format over the native API. Each resource family's
//! `compat` module translates the request (form-encoded or JSON, Proxmox's parameter
//! names) into a call of the native route, which authenticates, checks the privilege,
//! forwards to the owning node and acts, and translates the answer into `{"data": ...}`
//! (errors into `{"errors": ...}`). No logic is forked: what that layer adds is names and
//! shapes. This module holds what every family's translation shares: parameter parsing,
//! the native call, the answer and error shapes, the table of the parameters each route
//! honours and the layer that refuses the others. It imports nothing but `state`.

// Handlers bail out with a ready Proxmox-shaped response; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::ApiState;

/// The parameters a route honours besides its path parameters, as Proxmox names them;
/// `None`: the handler checks every key itself (a guest's config keys). Anything else,
/// documented by Proxmox or not, is refused with an `errors` entry naming it (Proxmox
/// refuses undocumented ones the same way): no parameter is ignored silently.
pub(crate) fn accepted(method: &Method, route: &str) -> Option<&'static [&'static str]> {
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
        ("PUT", "/nodes/{node}/qemu/{vmid}/resize") => &["disk", "size", "digest"],
        ("PUT", "/nodes/{node}/qemu/{vmid}/unlink") => &["idlist", "force"],
        ("POST", "/nodes/{node}/qemu/{vmid}/move_disk") => {
            &["disk", "storage", "format", "delete", "target-vmid", "target-disk"]
        }
        ("POST", "/nodes/{node}/qemu/{vmid}/snapshot") => &["snapname", "description", "vmstate"],
        ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}") => &["force"],
        ("POST", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback") => &["start"],
        ("PUT", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config") => &["description"],
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
        ("GET", "/storage") => &["type"],
        // Every storage type's keys: `StoragePool::from_params` / `apply_params` check them.
        ("POST", "/storage") | ("PUT", "/storage/{storage}") => return None,
        // A multipart body, streamed: its fields are checked by the handler.
        ("POST", "/nodes/{node}/storage/{storage}/upload") => return None,
        ("POST", "/nodes/{node}/storage/{storage}/download-url") => {
            &["url", "content", "filename", "checksum", "checksum-algorithm", "verify-certificates"]
        }
        ("GET", "/nodes/{node}/storage/{storage}/content") => &["content", "vmid"],
        ("POST", "/nodes/{node}/storage/{storage}/content") => &["vmid", "filename", "size", "format"],
        ("PUT", "/nodes/{node}/storage/{storage}/content/{*volume}") => &["notes", "protected"],
        // `delay`: how long Proxmox waits for the task before answering; the removal is quick.
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{*volume}") => &["delay"],
        ("GET", "/cluster/resources") => &["type"],
        ("GET", "/cluster/tasks") => &[],
        ("GET", "/nodes/{node}/rrddata")
        | ("GET", "/nodes/{node}/qemu/{vmid}/rrddata")
        | ("GET", "/nodes/{node}/storage/{storage}/rrddata") => &["timeframe", "cf"],
        ("POST", "/nodes/{node}/qemu/{vmid}/vncproxy") => &["websocket", "generate-password"],
        ("POST", "/nodes/{node}/qemu/{vmid}/termproxy") => &["serial"],
        ("GET", "/nodes/{node}/qemu/{vmid}/vncwebsocket") => &["port", "vncticket"],
        ("GET", "/access/domains") => &[],
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
        ("GET", "/access/permissions") => &["path", "userid"],
        ("GET", "/cluster/ha/resources") => &["type"],
        ("POST", "/cluster/ha/resources") => {
            &["sid", "state", "max_restart", "max_relocate", "failback", "comment", "type", "group"]
        }
        ("PUT", "/cluster/ha/resources/{sid}") => {
            &["state", "max_restart", "max_relocate", "failback", "comment", "delete", "digest", "group"]
        }
        ("DELETE", "/cluster/ha/resources/{sid}") => &["purge"],
        ("POST", "/cluster/ha/resources/{sid}/{action}") => &["node"],
        ("GET", "/cluster/ha/rules") => &["type", "resource"],
        ("POST", "/cluster/ha/rules") => {
            &["rule", "type", "resources", "nodes", "strict", "affinity", "disable", "comment"]
        }
        ("PUT", "/cluster/ha/rules/{rule}") => {
            &["type", "resources", "nodes", "strict", "affinity", "disable", "comment", "delete", "digest"]
        }
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
pub(crate) async fn check_params(
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
pub(crate) async fn not_implemented(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches("/api2/json");
    let message = format!("Method '{method} {path}' not implemented");
    (StatusCode::NOT_IMPLEMENTED, Json(json!({ "data": null, "message": message }))).into_response()
}

/// Another method of a path that is served.
pub(crate) async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches("/api2/json");
    let message = format!("Method '{method} {path}' not implemented");
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({ "data": null, "message": message }))).into_response()
}

/// Errors made outside the handlers (a malformed path or query, axum's own rejections)
/// in Proxmox's shape: `{"data": null, "errors": {...}}`.
pub(crate) async fn proxmox_errors(resp: Response) -> Response {
    crate::error::reshape_plain_errors(resp, |status, message| error(status, "request", &message)).await
}

pub(crate) fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
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

/// A comma-separated list parameter.
pub(crate) fn list_param(p: &BTreeMap<String, String>, k: &str) -> Option<Vec<String>> {
    p.get(k).map(|v| v.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect())
}
/// Parameters from a form-encoded or JSON body (numbers and booleans as strings, as
/// Proxmox clients send them).
pub(crate) fn params(headers: &HeaderMap, body: &Bytes) -> Result<BTreeMap<String, String>, Response> {
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
pub(crate) fn error(status: StatusCode, field: &str, message: &str) -> Response {
    (status, Json(json!({ "data": null, "errors": { field: message }, "message": message }))).into_response()
}

pub(crate) fn ok(data: Value) -> Response {
    Json(json!({ "data": data })).into_response()
}

/// Calls the native route `method path` with the caller's credentials.
pub(crate) async fn native(
    st: &ApiState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, HeaderMap) {
    native_from(st, headers, method, path, body, None).await
}

/// `native` with a streamed request body (an upload), not buffered.
pub(crate) async fn native_body(
    st: &ApiState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Body,
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
    let Ok(req) = b.header(header::CONTENT_TYPE, "application/octet-stream").body(body) else {
        return (StatusCode::BAD_REQUEST, json!({"error": "bad request"}), HeaderMap::new());
    };
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    (parts.status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), parts.headers)
}

/// `native`, keeping the client's address (login throttling counts per address).
pub(crate) async fn native_from(
    st: &ApiState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
    peer: Option<crate::throttle::PeerAddr>,
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
pub(crate) fn answer(status: StatusCode, v: Value, shape: impl FnOnce(Value) -> Value) -> Response {
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

/// `s` escaped for a query string.
pub(crate) fn form_escape(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap_or_default().trim_start_matches("v=").to_string()
}
