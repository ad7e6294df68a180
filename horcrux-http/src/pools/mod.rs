//! `/api/v1/pools`: resource pools. Rights granted on `/pool/{poolid}` apply to every guest
//! and storage of the pool (`ClusterState::privileges`), as in Proxmox.

pub mod compat;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use horcrux_core::{ClusterState, Command, Pool};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::authz::caller_privileges;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/pools", get(list).post(create))
        .route("/pools/{poolid}", get(one).put(update).delete(remove))
}

fn view(s: &ClusterState, p: &Pool) -> Value {
    let vms: Vec<Value> = p
        .vms
        .iter()
        .filter_map(|v| s.guests.get(v))
        .map(|g| json!({ "vmid": g.vmid, "name": g.name, "node": g.node, "type": "qemu" }))
        .collect();
    json!({ "poolid": p.poolid, "comment": p.comment, "vms": vms, "storage": p.storage })
}

/// The pools the caller may audit.
async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let pools = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            s.pools
                .values()
                .filter(|p| {
                    caller_privileges(s, &caller, &format!("/pool/{}", p.poolid)).contains("Pool.Audit")
                })
                .map(|p| view(s, p))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(pools)))
}

async fn one(State(st): State<ApiState>, Path(poolid): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = st.runtime.cluster().read_linearizable(move |s| s.pools.get(&poolid).map(|p| view(s, p))).await?;
    Ok(Json(p.ok_or_else(|| ApiError::not_found("no such pool"))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPool {
    poolid: String,
    #[serde(default)]
    comment: String,
}

async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let p: NewPool = parse_body(&body)?;
    let ok =
        st.propose_by(&caller, Command::CreatePool { poolid: p.poolid.clone(), comment: p.comment }).await?;
    Ok(Json(json!({ "poolid": p.poolid, "revision": ok.revision })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolChange {
    comment: Option<String>,
    #[serde(default)]
    vms: Vec<u32>,
    #[serde(default)]
    storage: Vec<String>,
    /// Remove the listed members instead of adding them.
    #[serde(default)]
    delete: bool,
}

/// Moving a guest or storage in or out of a pool changes who may act on it: the caller
/// needs `VM.Allocate` on each guest and `Datastore.Allocate` on each storage as well.
async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(poolid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c: PoolChange = parse_body(&body)?;
    let needed: Vec<(&str, String)> = c
        .vms
        .iter()
        .map(|v| ("VM.Allocate", format!("/vms/{v}")))
        .chain(c.storage.iter().map(|s| ("Datastore.Allocate", format!("/storage/{s}"))))
        .collect();
    let who = caller.clone();
    let missing = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            needed.into_iter().find(|(p, path)| !caller_privileges(s, &who, path).contains(*p))
        })
        .await?;
    if let Some((privilege, path)) = missing {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("permission check failed: {} needs {privilege} on {path}", caller.token_id),
        ));
    }
    let cmd = Command::UpdatePool {
        poolid: poolid.clone(),
        comment: c.comment,
        vms: c.vms,
        storage: c.storage,
        delete: c.delete,
    };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "poolid": poolid, "revision": ok.revision })))
}

async fn remove(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(poolid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::DeletePool { poolid }).await?;
    Ok(Json(json!({})))
}
