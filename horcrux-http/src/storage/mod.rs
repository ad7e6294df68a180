//! `/api/v1/storage`: the storage configuration (Proxmox's `storage.cfg`) in Proxmox's
//! parameter names, and a storage's status on this node as its pool actor found it. The
//! volumes a storage holds are in `nodes` (`/storage/{id}/content`).

pub mod compat;
mod multipart;
mod upload;
pub(crate) mod volume;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use horcrux_core::{Command, StoragePool};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::authz::caller_privileges;
use crate::error::ApiError;
use crate::state::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/storage", get(list).post(create))
        .route("/storage/{id}", get(one).put(update).delete(remove))
        .route("/storage/{id}/status", get(status))
        // A file's size is not bounded by the request body limit: it streams to disk.
        .route(
            "/storage/{id}/upload",
            axum::routing::post(upload::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/storage/{id}/download-url", axum::routing::post(upload::download_url))
}

/// A JSON body of Proxmox's flat parameters: strings, numbers and booleans (as 1/0), lists
/// comma-joined. Anything else is refused naming the key.
fn flat_params(body: &Bytes) -> Result<BTreeMap<String, String>, ApiError> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_field("body", e.to_string()))?
    };
    let obj = v.as_object().ok_or_else(|| ApiError::bad_field("body", "expected an object"))?;
    let scalar = |k: &str, v: &Value| -> Result<String, ApiError> {
        Ok(match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::Number(n) => n.to_string(),
            _ => return Err(ApiError::bad_field(k, "expected a string, number or boolean")),
        })
    };
    obj.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::Array(items) => {
                    items.iter().map(|i| scalar(k, i)).collect::<Result<Vec<_>, _>>()?.join(",")
                }
                v => scalar(k, v)?,
            };
            Ok((k.clone(), s))
        })
        .collect()
}

/// The storages the caller may see (`Datastore.Audit` or `Datastore.AllocateSpace` on
/// `/storage/{id}`, as Proxmox filters them), in Proxmox's keys.
async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let pools = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            s.storage
                .values()
                .filter(|p| {
                    let privs = caller_privileges(s, &caller, &format!("/storage/{}", p.id));
                    privs.contains("Datastore.Audit") || privs.contains("Datastore.AllocateSpace")
                })
                .map(|p| json!(p.to_params()))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(pools)))
}

async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let params = flat_params(&body)?;
    let pool = StoragePool::from_params(&params)?;
    let (id, ty) = (pool.id.clone(), pool.kind.type_name());
    let ok = st.propose_by(&caller, Command::CreateStorage { pool }).await?;
    Ok(Json(json!({ "storage": id, "type": ty, "revision": ok.revision })))
}

async fn current(st: &ApiState, id: String) -> Result<StoragePool, ApiError> {
    let pool = st.runtime.cluster().read_linearizable(move |s| s.storage.get(&id).cloned()).await?;
    pool.ok_or_else(|| ApiError::not_found("no such storage"))
}

async fn one(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(current(&st, id).await?.to_params())))
}

/// Changes what `PUT /storage/{id}` may change (`delete`: keys to reset; `digest`: the
/// config this change was made against, refused if it changed since).
async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let mut params = flat_params(&body)?;
    for fixed in ["storage", "type"] {
        if params.remove(fixed).is_some() {
            return Err(ApiError::bad_field(fixed, "cannot be changed"));
        }
    }
    let delete: Vec<String> = params
        .remove("delete")
        .map(|d| d.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let digest = params.remove("digest");
    let pool = current(&st, id.clone()).await?;
    if digest.is_some_and(|d| pool.to_params()["digest"] != d.as_str()) {
        return Err(ApiError::conflict(
            "the storage configuration changed since it was read (digest); read it again",
        ));
    }
    let mut config = pool.config.clone();
    config.apply_params(&pool.kind, &params, &delete)?;
    let ok = st.propose_by(&caller, Command::UpdateStorage { id: id.clone(), config }).await?;
    Ok(Json(json!({ "storage": id, "type": pool.kind.type_name(), "revision": ok.revision })))
}

async fn remove(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ok = st.propose_by(&caller, Command::DeleteStorage { id }).await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

#[derive(Deserialize)]
pub struct NodeQuery {
    node: Option<String>,
}

/// How long a status request waits for the storage's actor before answering what it
/// found last.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// A storage on this node: enabled, active, size, use and free space, type, content,
/// shared. A storage whose `nodes` leave this node out is refused naming it.
async fn status(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<Value>, ApiError> {
    let node = st.runtime.cluster().node_name().to_string();
    if let Some(other) = q.node.filter(|n| *n != node) {
        return Err(ApiError::bad_field("node", format!("no cluster member is named {other:?}")));
    }
    let pool = current(&st, id.clone()).await?;
    if !pool.on_node(&node) {
        return Err(ApiError::bad_field("storage", format!("storage {id} is not available on node {node}")));
    }
    let s = st.runtime.refresh_storage(&id, STATUS_WAIT).await;
    let params = pool.to_params();
    let mut out = json!({
        "storage": id,
        "type": pool.kind.type_name(),
        "content": params["content"],
        "shared": u8::from(pool.shared()),
        "enabled": u8::from(!pool.config.disable),
        "active": u8::from(s.as_ref().is_some_and(|s| s.active)),
    });
    if let Some(u) = s.as_ref().and_then(|s| s.usage) {
        out["total"] = json!(u.total);
        out["used"] = json!(u.used);
        out["avail"] = json!(u.avail);
    }
    if let Some(e) = s.and_then(|s| s.error) {
        out["error"] = json!(e);
    }
    Ok(Json(out))
}
