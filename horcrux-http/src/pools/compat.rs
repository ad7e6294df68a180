//! `/api2/json/pools...`: pools and their members.

#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::pve::*;
use crate::state::ApiState;

/// A pool's members as Proxmox lists them (`qemu/100`, `storage/NODE/ID`).
fn pool_members(st: &ApiState, p: &Value) -> Vec<Value> {
    let node = st.runtime.cluster().node_name().to_string();
    let vms = p["vms"].as_array().into_iter().flatten().map(|g| {
        json!({ "id": format!("qemu/{}", g["vmid"]), "type": "qemu", "vmid": g["vmid"], "name": g["name"], "node": g["node"] })
    });
    let storage = p["storage"].as_array().into_iter().flatten().map(|s| {
        let id = s.as_str().unwrap_or_default();
        json!({ "id": format!("storage/{node}/{id}"), "type": "storage", "storage": id, "node": node })
    });
    vms.chain(storage).collect()
}

/// `GET /pools` (with `poolid`: that pool with its members, PVE 8's form), `POST /pools`,
/// `PUT /pools` (PVE 8's form with `poolid` as a parameter).
pub(crate) async fn pools(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let wanted = query(&uri).get("poolid").cloned();
            let (status, v, _) = native(&st, &headers, Method::GET, "/pools", None).await;
            answer(status, v, |v| {
                let list: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| wanted.as_deref().is_none_or(|w| p["poolid"] == w))
                    .map(|p| {
                        let mut out = json!({ "poolid": p["poolid"], "comment": p["comment"] });
                        if wanted.is_some() {
                            out["members"] = json!(pool_members(&st, p));
                        }
                        out
                    })
                    .collect();
                json!(list)
            })
        }
        _ => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let Some(poolid) = p.get("poolid").cloned() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "poolid",
                    "property is missing and it is not optional",
                );
            };
            if method == Method::POST {
                let req =
                    json!({ "poolid": poolid, "comment": p.get("comment").cloned().unwrap_or_default() });
                let (status, v, _) = native(&st, &headers, Method::POST, "/pools", Some(req)).await;
                return answer(status, v, |_| Value::Null);
            }
            update_pool(&st, &headers, &poolid, &p).await
        }
    }
}

async fn update_pool(
    st: &ApiState,
    headers: &HeaderMap,
    poolid: &str,
    p: &std::collections::BTreeMap<String, String>,
) -> Response {
    let mut vms = Vec::new();
    for v in list_param(p, "vms").unwrap_or_default() {
        match v.parse::<u32>() {
            Ok(n) => vms.push(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "vms", &format!("{v:?} is not a VMID")),
        }
    }
    let delete = match flag(p, "delete") {
        Ok(d) => d.unwrap_or(false),
        Err(e) => return e,
    };
    let mut req =
        json!({ "vms": vms, "storage": list_param(p, "storage").unwrap_or_default(), "delete": delete });
    if let Some(c) = p.get("comment") {
        req["comment"] = json!(c);
    }
    let (status, v, _) = native(st, headers, Method::PUT, &format!("/pools/{poolid}"), Some(req)).await;
    answer(status, v, |_| Value::Null)
}

/// The older per-pool form: `GET|PUT|DELETE /pools/{poolid}`.
pub(crate) async fn pool(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(poolid): Path<String>,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &format!("/pools/{poolid}"), None).await;
            answer(status, v, |p| json!({ "comment": p["comment"], "members": pool_members(&st, &p) }))
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            update_pool(&st, &headers, &poolid, &p).await
        }
        _ => {
            let (status, v, _) =
                native(&st, &headers, Method::DELETE, &format!("/pools/{poolid}"), None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}
