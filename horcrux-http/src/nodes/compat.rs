//! `/api2/json/nodes/{node}/...`: tasks, the node's status, its storages and their content.

#![allow(clippy::result_large_err)]

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::pve::*;
use crate::state::ApiState;

/// `GET /nodes/{node}/tasks`: the node's tasks, newest first, with Proxmox's filters and
/// paging (`start`, `limit` default 50).
pub(crate) async fn list_tasks(
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
    let path = format!("/nodes/{}/tasks", form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
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

/// `GET /api2/json/cluster/tasks`: the recent tasks of every member this node hears from
/// (each member's own list, with the caller's rights there), newest first.
pub(crate) async fn cluster_tasks(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    ok(json!(tasks_of_members(&st, &headers).await))
}

/// The tasks of every member this node hears from, newest first, in Proxmox's shape.
pub(crate) async fn tasks_of_members(st: &ApiState, headers: &HeaderMap) -> Vec<Value> {
    let members = crate::cluster::compat::online_members(st);
    let calls = members.iter().map(|n| {
        let path = format!("/nodes/{}/tasks", form_escape(n));
        let (st, headers) = (st.clone(), headers.clone());
        async move { native(&st, &headers, Method::GET, &path, None).await }
    });
    let mut all: Vec<Value> = Vec::new();
    for (status, v, _) in futures_util::future::join_all(calls).await {
        if status.is_success() {
            all.extend(v.as_array().into_iter().flatten().cloned());
        }
    }
    all.sort_by_key(|t| std::cmp::Reverse(t["starttime"].as_u64().unwrap_or(0)));
    all.into_iter()
        .map(|mut t| {
            if let Some(o) = t.as_object_mut() {
                o.remove("log");
            }
            if t["status"] != "running" {
                t["status"] = t["exitstatus"].clone();
            }
            t
        })
        .collect()
}

pub(crate) async fn node_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Response {
    let path = format!("/nodes/{}/status", form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |mut v| {
        // It answered, so it is up.
        v["node"] = json!(node);
        v["status"] = json!("online");
        v
    })
}

/// `GET /nodes/{node}/storage`: the storages on `node` the caller may see, each with its
/// status there (`content`: holding any of these; `enabled`: only enabled ones; `storage`:
/// only this one).
pub(crate) async fn node_storage(
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
        let id = p["storage"].as_str().unwrap_or_default();
        let holds = |c: &str| p["content"].as_str().unwrap_or_default().split(',').any(|h| h == c);
        let on_node = p["nodes"].as_str().is_none_or(|n| n.split(',').any(|n| n == node));
        if !on_node
            || q.get("storage").is_some_and(|s| s != id)
            || (enabled == Some(true) && p["disable"] == 1)
            || content.as_ref().is_some_and(|c| !c.iter().any(|c| holds(c)))
        {
            continue;
        }
        let (status, s) = node_status_of(&st, &headers, &node, id).await;
        if !status.is_success() {
            continue;
        }
        list.push(s);
    }
    ok(json!(list))
}

/// A storage's status on `node` in Proxmox's shape (booleans as 0/1, `used_fraction`).
async fn node_status_of(st: &ApiState, headers: &HeaderMap, node: &str, id: &str) -> (StatusCode, Value) {
    let path = format!("/storage/{id}/status?node={}", form_escape(node));
    let (status, mut v, _) = native(st, headers, Method::GET, &path, None).await;
    if status.is_success() {
        if let (Some(total), Some(used)) = (v["total"].as_u64(), v["used"].as_u64()) {
            v["used_fraction"] = json!(if total > 0 { used as f64 / total as f64 } else { 0.0 });
        }
        v.as_object_mut().map(|o| o.remove("error"));
    }
    (status, v)
}

/// `GET /nodes/{node}/storage/{storage}/status`.
pub(crate) async fn node_storage_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
) -> Response {
    let (status, v) = node_status_of(&st, &headers, &node, &storage).await;
    answer(status, v, |mut v| {
        v.as_object_mut().map(|o| {
            o.remove("storage");
            o.remove("used_fraction")
        });
        v
    })
}

pub(crate) async fn storage_content(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let mut path = format!("/storage/{storage}/content?node={}", form_escape(&node));
    for k in ["vmid", "content"] {
        if let Some(v) = q.get(k) {
            path.push_str(&format!("&{k}={}", form_escape(v)));
        }
    }
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

/// A path segment with `/`, `%`, `?` and `#` escaped (a volume id in a native path).
fn segment(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

/// `POST /nodes/{node}/storage/{storage}/content` (`vmid`, `filename`, `size`, `format`):
/// the new volume's id.
pub(crate) async fn storage_content_alloc(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut req = json!({});
    for k in ["vmid", "filename", "size"] {
        match p.get(k) {
            Some(v) if k == "vmid" => match v.parse::<u32>() {
                Ok(n) => req[k] = json!(n),
                Err(_) => return error(StatusCode::BAD_REQUEST, k, "type check ('integer') failed"),
            },
            Some(v) => req[k] = json!(v),
            None => return error(StatusCode::BAD_REQUEST, k, "property is missing and it is not optional"),
        }
    }
    if let Some(f) = p.get("format") {
        req["format"] = json!(f);
    }
    let path = format!("/storage/{storage}/content?node={}", form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(req)).await;
    answer(status, v, |v| v)
}

/// `GET|PUT|DELETE /nodes/{node}/storage/{storage}/content/{volume}` (the volume id with
/// or without its storage, its `/` escaped or not).
pub(crate) async fn storage_volume(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((node, storage, volume)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/storage/{storage}/content/{}?node={}", segment(&volume), form_escape(&node));
    if method == Method::PUT {
        let p = match params(&headers, &body) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let mut req = json!({});
        if let Some(n) = p.get("notes") {
            req["notes"] = json!(n);
        }
        match flag(&p, "protected") {
            Ok(Some(b)) => req["protected"] = json!(b),
            Ok(None) => {}
            Err(e) => return e,
        }
        let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(req)).await;
        return answer(status, v, |_| Value::Null);
    }
    let (status, v, _) = native(&st, &headers, method.clone(), &path, None).await;
    answer(status, v, |v| if method == Method::DELETE { v["upid"].clone() } else { v })
}

pub(crate) async fn task_status(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, upid)): Path<(String, String)>,
) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, &format!("/tasks/{upid}"), None).await;
    answer(status, v, |v| v)
}

/// The task's log lines `start..start+limit` (Proxmox's defaults: 0 and 50), with the
/// line count as `total` beside `data`.
pub(crate) async fn task_log(
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
