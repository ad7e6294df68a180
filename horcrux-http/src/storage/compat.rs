//! `/api2/json/storage...`: the storage configuration in Proxmox's shape.

#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{json, Value};

use crate::pve::*;
use crate::state::ApiState;

/// `GET /storage[?type=]`, `POST /storage`.
pub(crate) async fn storages(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        let ty = query(&uri).get("type").cloned();
        let (status, v, _) = native(&st, &headers, Method::GET, "/storage", None).await;
        return answer(status, v, |v| {
            let list: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| ty.as_deref().is_none_or(|t| p["type"] == t))
                .cloned()
                .collect();
            json!(list)
        });
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (status, v, _) = native(&st, &headers, Method::POST, "/storage", Some(json!(p))).await;
    answer(status, v, |v| json!({ "storage": v["storage"], "type": v["type"] }))
}

/// `GET|PUT|DELETE /storage/{storage}`.
pub(crate) async fn storage(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let path = format!("/storage/{id}");
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
            answer(status, v, |v| v)
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(json!(p))).await;
            answer(status, v, |v| json!({ "storage": v["storage"], "type": v["type"] }))
        }
        _ => {
            let (status, v, _) = native(&st, &headers, Method::DELETE, &path, None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}
