//! `/api/v1/cluster/...`: membership and quorum status, and join tokens.

pub mod compat;
pub(crate) mod prometheus;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};

use crate::auth::Caller;
use horcrux_core::Command;
use horcrux_raft::corosync;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

const DEFAULT_TOKEN_TTL_S: u64 = 3600;
const MAX_TOKEN_TTL_S: u64 = 7 * 24 * 3600;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/cluster/status", get(status))
        .route("/cluster/tokens", get(list_tokens).post(create_token))
        .route("/cluster/tokens/{id}", delete(revoke_token))
        .route("/cluster/quorum", get(quorum))
        .route("/cluster/options", get(list_options))
        .route("/cluster/options/{key}", axum::routing::put(set_option))
        .route("/cluster/nodes/{name}", delete(remove_node))
        .route("/cluster/corosync", get(get_corosync).post(import_corosync))
        .route("/cluster/ca", get(get_ca))
        .route("/cluster/ca/rotate", axum::routing::post(rotate_ca))
}

async fn status(State(st): State<ApiState>) -> Json<Value> {
    Json(json!(st.runtime.cluster().cluster_status()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    ttl_s: Option<u64>,
}

async fn create_token(State(st): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: NewToken = parse_body(&body)?;
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl) {
        return Err(ApiError::bad_field("ttl_s", format!("must be 1..={MAX_TOKEN_TTL_S} seconds")));
    }
    let token = st.runtime.cluster().create_join_token(Duration::from_secs(ttl)).await?;
    Ok(Json(json!({ "token": token, "ttl_s": ttl })))
}

async fn list_tokens(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let now = st.runtime.cluster().now_ms();
    let tokens = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            s.join_tokens
                .values()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "created_ms": t.created_ms,
                        "expires_ms": t.expires_ms,
                        "expired": now >= t.expires_ms,
                        "used_by": t.used_by,
                        "revoked": t.revoked,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(Value::Array(tokens)))
}

async fn revoke_token(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::RevokeJoinToken { id: id.clone() }).await?;
    Ok(Json(json!({ "id": id, "revoked": true })))
}

/// votequorum's view, as `corosync-quorumtool -s` shows it (the CLI renders it).
async fn quorum(State(st): State<ApiState>) -> Json<Value> {
    Json(json!(st.runtime.cluster().quorum_view()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportCorosync {
    /// The text of a corosync.conf.
    config: String,
}

async fn import_corosync(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ImportCorosync = parse_body(&body)?;
    let config = corosync::parse(&req.config).map_err(|e| ApiError::bad_field("config", e.to_string()))?;
    st.propose_by(&caller, Command::ImportCorosync { config: config.clone() }).await?;
    Ok(Json(json!(config)))
}

/// The CA members trust and, during a roll, the previous one and which members still hold a
/// certificate from it (or have not confirmed their new one).
async fn get_ca(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let view = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            let ca = s.cluster_ca.as_ref()?;
            let fp = |pem: &str| horcrux_raft::pki::fingerprint_pem(pem).unwrap_or_default();
            let current = fp(&ca.cert_pem);
            let members: Vec<Value> = s
                .member_certs
                .iter()
                .map(|(id, c)| {
                    json!({
                        "node_id": id,
                        "name": c.name,
                        "current_ca": c.ca == current,
                        "confirmed": c.previous.is_none(),
                    })
                })
                .collect();
            Some(json!({
                "fingerprint": current,
                "rotating": ca.previous_cert_pem.is_some(),
                "previous_fingerprint": ca.previous_cert_pem.as_deref().map(fp),
                "members": members,
            }))
        })
        .await?;
    view.map(Json).ok_or_else(|| ApiError::conflict("this cluster has no CA"))
}

/// Starts a CA roll; it completes on its own (`GET /cluster/ca` shows the progress).
async fn rotate_ca(State(st): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let _: Empty = parse_body(&body)?;
    let fingerprint = st.runtime.cluster().rotate_ca().await?;
    Ok(Json(json!({ "fingerprint": fingerprint })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn get_corosync(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let c = st.runtime.cluster().read_linearizable(|s| s.corosync.clone()).await?;
    Ok(Json(json!(c)))
}

async fn remove_node(State(st): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    horcrux_core::ids::validate_dns_label("name", &name)?;
    st.runtime.cluster().remove_member(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionValue {
    value: String,
}

/// Sets one cluster-wide option; committed through Raft before it answers.
async fn set_option(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: OptionValue = parse_body(&body)?;
    let ok = st.propose_by(&caller, Command::SetClusterOption { key: key.clone(), value: req.value }).await?;
    Ok(Json(json!({ "key": key, "revision": ok.revision })))
}

async fn list_options(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(st.runtime.cluster().read_linearizable(|s| s.options.clone()).await?)))
}

pub(crate) async fn native_version() -> Json<Value> {
    Json(
        json!({ "version": env!("CARGO_PKG_VERSION"), "release": env!("CARGO_PKG_VERSION"), "product": "horcrux" }),
    )
}

pub(crate) async fn next_id(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let id = st.runtime.cluster().read_linearizable(|s| s.next_vmid()).await?;
    let id = id.ok_or_else(|| ApiError::conflict("no free VMID left"))?;
    Ok(Json(json!({ "vmid": id })))
}

pub(crate) async fn list_nodes(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let nodes =
        st.runtime.cluster().read_linearizable(|s| json!(s.nodes.values().collect::<Vec<_>>())).await?;
    Ok(Json(nodes))
}
