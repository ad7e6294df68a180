//! `GET /api/v1/access/audit`: the newest records of a node's audit log.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::ApiState;

#[derive(Deserialize)]
pub struct Tail {
    limit: Option<usize>,
    /// Whose log (the request is carried to that member); default: this node's.
    node: Option<String>,
}

pub async fn read(State(st): State<ApiState>, Query(q): Query<Tail>) -> Result<Json<Value>, ApiError> {
    if let Some(node) = q.node.filter(|n| n != st.runtime.cluster().node_name()) {
        return Err(ApiError::bad_field("node", format!("no cluster member is named {node:?}")));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_field("limit", "1 to 10000"));
    }
    Ok(Json(json!(st.audit.tail(limit))))
}
