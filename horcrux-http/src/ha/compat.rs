//! `/api2/json/cluster/ha/...`: ha-manager's API (resources, rules, status) as Proxmox VE 9
//! names and shapes it, over the native routes.

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::pve::*;
use crate::state::ApiState;

fn bool01(v: &Value) -> Value {
    json!(u8::from(v.as_bool().unwrap_or(false)))
}

/// `GET /cluster/ha`: the index.
pub(crate) async fn ha_index() -> Response {
    ok(json!([{ "id": "resources" }, { "id": "rules" }, { "id": "status" }]))
}

/// A native resource as Proxmox's `resources.cfg` entry.
fn pve_resource(r: &Value) -> Value {
    let mut out = json!({
        "sid": r["sid"],
        "type": r["type"],
        "state": r["state"],
        "max_restart": r["max_restart"],
        "max_relocate": r["max_relocate"],
        "failback": bool01(&r["failback"]),
        "digest": r["digest"],
    });
    if r["comment"].as_str().is_some_and(|c| !c.is_empty()) {
        out["comment"] = r["comment"].clone();
    }
    out
}

/// Typed native fields from Proxmox parameters (`keys` only).
fn typed(p: &BTreeMap<String, String>, keys: &[&str]) -> Result<Map<String, Value>, Response> {
    let mut out = Map::new();
    for k in keys {
        let Some(v) = p.get(*k) else { continue };
        let value = match *k {
            "max_restart" | "max_relocate" => match int_param(p, k)? {
                Some(n) => json!(n),
                None => continue,
            },
            "failback" | "strict" | "disable" => json!(flag(p, k)?.unwrap_or(false)),
            "delete" => json!(list_param(p, k).unwrap_or_default()),
            _ => json!(v),
        };
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn sid_path(sid: &str) -> String {
    format!("/cluster/ha/resources/{}", form_escape(sid))
}

/// `GET|POST /cluster/ha/resources`.
pub(crate) async fn ha_resources(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        let kind = query(&uri).get("type").cloned();
        if let Some(k) = kind.as_deref().filter(|k| !matches!(*k, "vm" | "ct")) {
            return error(
                StatusCode::BAD_REQUEST,
                "type",
                &format!("value '{k}' does not have a value in the enumeration 'ct, vm'"),
            );
        }
        let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/ha/resources", None).await;
        return answer(status, v, |v| {
            let list: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| kind.as_deref().is_none_or(|k| r["type"] == k))
                .map(pve_resource)
                .collect();
            json!(list)
        });
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if p.contains_key("group") {
        return error(
            StatusCode::BAD_REQUEST,
            "group",
            "HA groups were replaced by node-affinity rules (Proxmox VE 9)",
        );
    }
    let Some(sid) = p.get("sid") else {
        return error(StatusCode::BAD_REQUEST, "sid", "property is missing and it is not optional");
    };
    let mut req = match typed(&p, &["state", "max_restart", "max_relocate", "failback", "comment", "type"]) {
        Ok(m) => m,
        Err(e) => return e,
    };
    req.insert("sid".into(), json!(sid));
    let (status, v, _) =
        native(&st, &headers, Method::POST, "/cluster/ha/resources", Some(Value::Object(req))).await;
    answer(status, v, |_| Value::Null)
}

/// `GET|PUT|DELETE /cluster/ha/resources/{sid}`.
pub(crate) async fn ha_resource(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(sid): Path<String>,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &sid_path(&sid), None).await;
            answer(status, v, |r| pve_resource(&r))
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            if p.contains_key("group") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "group",
                    "HA groups were replaced by node-affinity rules (Proxmox VE 9)",
                );
            }
            let keys = ["state", "max_restart", "max_relocate", "failback", "comment", "delete", "digest"];
            let req = match typed(&p, &keys) {
                Ok(m) => m,
                Err(e) => return e,
            };
            let (status, v, _) =
                native(&st, &headers, Method::PUT, &sid_path(&sid), Some(Value::Object(req))).await;
            answer(status, v, |_| Value::Null)
        }
        _ => {
            // `purge` (default 1): the resource also leaves the rules, which Horcrux
            // always does.
            let (status, v, _) = native(&st, &headers, Method::DELETE, &sid_path(&sid), None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}

/// `POST /cluster/ha/resources/{sid}/migrate|relocate`.
pub(crate) async fn ha_move(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((sid, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(node) = p.get("node") else {
        return error(StatusCode::BAD_REQUEST, "node", "property is missing and it is not optional");
    };
    let path = format!("{}/{action}", sid_path(&sid));
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(json!({ "node": node }))).await;
    answer(status, v, |v| json!({ "sid": v["sid"], "requested-node": v["node"] }))
}

fn pve_rule(r: &Value) -> Value {
    let mut out = json!({
        "rule": r["rule"],
        "type": r["type"],
        "resources": r["resources"],
        "digest": r["digest"],
    });
    if r["type"] == "node-affinity" {
        out["nodes"] = r["nodes"].clone();
        out["strict"] = bool01(&r["strict"]);
    } else {
        out["affinity"] = r["affinity"].clone();
    }
    if r["disable"].as_bool() == Some(true) {
        out["disable"] = json!(1);
    }
    if r["comment"].as_str().is_some_and(|c| !c.is_empty()) {
        out["comment"] = r["comment"].clone();
    }
    if !r["order"].is_null() {
        out["order"] = r["order"].clone();
    }
    out
}

const RULE_KEYS: [&str; 9] =
    ["type", "resources", "nodes", "strict", "affinity", "disable", "comment", "delete", "digest"];

/// `GET|POST /cluster/ha/rules`.
pub(crate) async fn ha_rules(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        let q = query(&uri);
        if let Some(t) =
            q.get("type").filter(|t| !matches!(t.as_str(), "node-affinity" | "resource-affinity"))
        {
            return error(
                StatusCode::BAD_REQUEST,
                "type",
                &format!(
                    "value '{t}' does not have a value in the enumeration 'node-affinity, resource-affinity'"
                ),
            );
        }
        let filter: Vec<String> = q
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "type" | "resource"))
            .map(|(k, v)| format!("{k}={}", form_escape(v)))
            .collect();
        let path = if filter.is_empty() {
            "/cluster/ha/rules".to_string()
        } else {
            format!("/cluster/ha/rules?{}", filter.join("&"))
        };
        let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
        return answer(status, v, |v| {
            json!(v.as_array().into_iter().flatten().map(pve_rule).collect::<Vec<_>>())
        });
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    for required in ["rule", "type", "resources"] {
        if !p.contains_key(required) {
            return error(StatusCode::BAD_REQUEST, required, "property is missing and it is not optional");
        }
    }
    let mut req = match typed(&p, &RULE_KEYS[..7]) {
        Ok(m) => m,
        Err(e) => return e,
    };
    req.insert("rule".into(), json!(p["rule"]));
    let (status, v, _) =
        native(&st, &headers, Method::POST, "/cluster/ha/rules", Some(Value::Object(req))).await;
    answer(status, v, |_| Value::Null)
}

/// `GET|PUT|DELETE /cluster/ha/rules/{rule}`.
pub(crate) async fn ha_rule(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(rule): Path<String>,
    body: Bytes,
) -> Response {
    let path = format!("/cluster/ha/rules/{}", form_escape(&rule));
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
            answer(status, v, |r| pve_rule(&r))
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            if !p.contains_key("type") {
                return error(StatusCode::BAD_REQUEST, "type", "property is missing and it is not optional");
            }
            let req = match typed(&p, &RULE_KEYS) {
                Ok(m) => m,
                Err(e) => return e,
            };
            let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(Value::Object(req))).await;
            answer(status, v, |_| Value::Null)
        }
        _ => {
            let (status, v, _) = native(&st, &headers, Method::DELETE, &path, None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}

/// `GET /cluster/ha/status`: the index.
pub(crate) async fn ha_status_index() -> Response {
    ok(json!([{ "name": "current" }, { "name": "manager_status" }]))
}

/// `GET /cluster/ha/status/current`: ha-manager's `status` entries.
pub(crate) async fn ha_status_current(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/ha/status", None).await;
    answer(status, v, |v| {
        let manager = v["manager"]["node"].as_str().unwrap_or_default().to_string();
        let quorate = v["quorate"].as_bool().unwrap_or(false);
        let mut out = vec![
            json!({
                "id": "quorum",
                "type": "quorum",
                "node": manager,
                "status": if quorate { "OK".to_string() } else { format!("No quorum on node '{manager}'!") },
                "quorate": u8::from(quorate),
            }),
            json!({
                "id": "master",
                "type": "master",
                "node": manager,
                "status": format!("{manager} (active, lease {} ms + margin {} ms)", v["lease_ms"], v["margin_ms"]),
            }),
        ];
        for n in v["nodes"].as_array().into_iter().flatten() {
            let name = n["name"].as_str().unwrap_or_default();
            let state = n["state"].as_str().unwrap_or("unknown");
            let active = v["resources"].as_array().into_iter().flatten().any(|r| r["node"] == name);
            let mode = if active { "active" } else { "idle" };
            out.push(json!({
                "id": format!("lrm:{name}"),
                "type": "lrm",
                "node": name,
                "status": format!("{name} ({mode}, {state}, lease {} ms left)", n["lease_remaining_ms"]),
            }));
        }
        for r in v["resources"].as_array().into_iter().flatten() {
            let sid = r["sid"].as_str().unwrap_or_default();
            let node = r["node"].as_str().unwrap_or_default();
            let state = r["state"].as_str().unwrap_or_default();
            out.push(json!({
                "id": format!("service:{sid}"),
                "type": "service",
                "sid": sid,
                "node": node,
                "state": state,
                "crm_state": state,
                "request_state": r["request_state"],
                "max_restart": r["max_restart"],
                "max_relocate": r["max_relocate"],
                "status": format!("{sid} ({node}, {state})"),
            }));
        }
        json!(out)
    })
}

/// `GET /cluster/ha/status/manager_status`: the CRM's status object.
pub(crate) async fn ha_manager_status(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/cluster/ha/status", None).await;
    answer(status, v, |v| {
        let node_status: Map<String, Value> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| (n["name"].as_str().unwrap_or_default().to_string(), n["state"].clone()))
            .collect();
        let service_status: Map<String, Value> = v["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let mut s =
                    json!({ "state": r["state"], "node": r["node"], "failed_nodes": r["failed_nodes"] });
                if !r["target"].is_null() {
                    s["target"] = r["target"].clone();
                }
                (r["sid"].as_str().unwrap_or_default().to_string(), s)
            })
            .collect();
        let manager = v["manager"]["node"].clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "manager_status": {
                "master_node": manager,
                "node_status": node_status,
                "service_status": service_status,
                "timestamp": now,
            },
            "quorum": { "node": manager, "quorate": u8::from(v["quorate"].as_bool().unwrap_or(false)) },
        })
    })
}
