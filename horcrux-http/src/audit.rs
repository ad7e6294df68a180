//! The audit log: every login (success or failure) and every mutating request (who, what,
//! when, result), one JSON line each in `DATA_DIR/audit.log` on the node that received it,
//! readable by privileged users at `GET /api/v1/access/audit`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::ApiState;

#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    /// Opened (append-only) at the first record and kept: one write(2) per record.
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: Arc::default() }
    }

    /// Appends one record; a failure to write is logged, not fatal to the request.
    pub fn record(&self, user: &str, action: &str, result: u16, detail: &str) {
        let line = json!({
            "time": crate::login::now_s(),
            "user": user,
            "action": action,
            "status": result,
            "detail": detail,
        });
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => *file = Some(f),
                Err(e) => return tracing::warn!("audit log {}: {e}", self.path.display()),
            }
        }
        let mut text = line.to_string();
        text.push('\n');
        if let Some(Err(e)) = file.as_mut().map(|f| f.write_all(text.as_bytes())) {
            tracing::warn!("audit log {}: {e}", self.path.display());
            *file = None;
        }
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

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
