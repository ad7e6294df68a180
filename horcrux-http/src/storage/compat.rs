//! `/api2/json/storage...`: the storage configuration in Proxmox's shape.

#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
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

/// `POST /nodes/{node}/storage/{storage}/upload`: a `multipart/form-data` body with
/// `content`, optional `checksum` and `checksum-algorithm`, then the file (its name,
/// normalized as Proxmox does, is the volume's). Streamed to the storage; a UPID.
pub(crate) async fn upload(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    body: axum::body::Body,
) -> Response {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let up = match super::multipart::read(ct, body).await {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, "filename", &e),
    };
    let mut q = vec![("node".to_string(), node)];
    for (k, v) in &up.fields {
        match k.as_str() {
            "content" | "checksum" | "checksum-algorithm" => q.push((k.clone(), v.clone())),
            "filename" => {}
            other => return error(StatusCode::BAD_REQUEST, other, UNSUPPORTED),
        }
    }
    if !up.fields.contains_key("content") {
        return error(StatusCode::BAD_REQUEST, "content", "property is missing and it is not optional");
    }
    let name: String = up
        .file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    q.push(("filename".into(), name));
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    let path = format!("/storage/{storage}/upload?{query}");
    let (status, v, _) = native_body(&st, &headers, Method::POST, &path, up.file).await;
    answer(status, v, |v| v["upid"].clone())
}

/// `POST /nodes/{node}/storage/{storage}/download-url`: `url`, `content`, `filename`,
/// `checksum`, `checksum-algorithm`, `verify-certificates`; a UPID.
pub(crate) async fn download_url(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut req = json!({ "node": node });
    for (k, v) in &p {
        if k == "verify-certificates" {
            match flag(&p, k) {
                Ok(b) => req[k] = json!(b.unwrap_or(true)),
                Err(e) => return e,
            }
        } else {
            req[k] = json!(v);
        }
    }
    let path = format!("/storage/{storage}/download-url?node={}", form_escape(&node));
    let (status, v, _) = native(&st, &headers, Method::POST, &path, Some(req)).await;
    answer(status, v, |v| v["upid"].clone())
}
