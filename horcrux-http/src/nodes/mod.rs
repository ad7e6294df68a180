//! A node's tasks (`/api/v1/tasks...`), storages and their content (`/api/v1/storage...`),
//! and its host (`host`); their `/api2/json` translations (`compat`).

pub mod compat;
pub mod host;
pub mod metrics;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::*;

pub(crate) async fn list_tasks(State(st): State<ApiState>) -> Json<Value> {
    let tasks: Vec<Value> = st
        .runtime
        .tasks()
        .list()
        .into_iter()
        .map(|mut t| {
            t.log.clear();
            let mut v = json!(t);
            v.as_object_mut().map(|o| o.remove("log"));
            v
        })
        .collect();
    Json(Value::Array(tasks))
}

/// A route about a node is answered by that node (the forwarding layer carries it there):
/// here, any other name is no member.
pub(crate) fn this_node(st: &ApiState, node: &str) -> Result<(), ApiError> {
    if node == st.runtime.cluster().node_name() {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no cluster member is named {node:?}")))
    }
}

/// `GET /api/v1/nodes/{node}/tasks` (answered on that node, where its tasks are kept):
/// every task with `Sys.Audit` on the node, else the caller's own, as Proxmox lists them.
pub(crate) async fn node_tasks(
    State(st): State<ApiState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    this_node(&st, &node)?;
    let own = caller.user().to_string();
    let path = format!("/nodes/{node}");
    let all = st
        .runtime
        .cluster()
        .read_linearizable(move |s| crate::authz::caller_privileges(s, &caller, &path).contains("Sys.Audit"))
        .await?;
    let Json(list) = list_tasks(State(st)).await;
    let mine = |t: &&Value| all || t["user"].as_str() == Some(own.as_str());
    Ok(Json(Value::Array(list.as_array().into_iter().flatten().filter(mine).cloned().collect())))
}

pub(crate) async fn get_task(
    State(st): State<ApiState>,
    Path(upid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t =
        st.runtime.tasks().get(&upid).ok_or_else(|| ApiError::not_found(format!("task {upid} not found")))?;
    let mut v = json!(t);
    v.as_object_mut().map(|o| o.remove("log"));
    Ok(Json(v))
}

pub(crate) async fn get_task_log(
    State(st): State<ApiState>,
    Path(upid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t =
        st.runtime.tasks().get(&upid).ok_or_else(|| ApiError::not_found(format!("task {upid} not found")))?;
    // Proxmox's shape: [{"n": line number from 1, "t": text}].
    let lines: Vec<Value> = t.log.iter().enumerate().map(|(i, l)| json!({ "n": i + 1, "t": l })).collect();
    Ok(Json(Value::Array(lines)))
}

#[derive(Deserialize)]
pub(crate) struct ContentQuery {
    /// Whose volumes to list (the request is carried to that member); default: this node.
    node: Option<String>,
    vmid: Option<u64>,
    /// Only this content type (`images`, `iso`, `vztmpl`, ...).
    content: Option<String>,
}

/// The volumes a storage holds on one node, of the content types it is configured for
/// (Proxmox's storage content).
pub(crate) async fn storage_content(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> Result<Json<Value>, ApiError> {
    let node = st.runtime.cluster().node_name().to_string();
    if let Some(other) = q.node.filter(|n| *n != node) {
        return Err(ApiError::bad_field("node", format!("no cluster member is named {other:?}")));
    }
    if let Some(c) = q.content.as_deref().filter(|c| !horcrux_core::storage::CONTENT_TYPES.contains(c)) {
        return Err(ApiError::bad_field("content", format!("{c:?} is not a content type")));
    }
    let pool = st.runtime.cluster().read_linearizable(move |s| s.storage.get(&id).cloned()).await?;
    let pool = pool.ok_or_else(|| ApiError::not_found("no such storage"))?;
    if !pool.on_node(&node) {
        return Err(ApiError::bad_field(
            "storage",
            format!("storage {} is not available on node {node}", pool.id),
        ));
    }
    let store = (st.runtime.volumes())(&pool);
    let list = store.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    // Notes and protection kept beside a file-backed volume (`NAME.notes`, `NAME.protected`).
    let beside = |volid: &str, ext: &str| {
        store.path(volid).ok().map(|p| {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".{ext}"));
            p.with_file_name(name)
        })
    };
    let items: Vec<Value> = list
        .into_iter()
        .filter(|v| pool.holds(&v.content))
        .filter(|v| q.content.as_deref().is_none_or(|c| c == v.content))
        .filter(|v| q.vmid.is_none_or(|id| id == u64::from(v.vmid)))
        .map(|v| {
            let mut e = json!({
                "volid": v.volid, "format": v.format, "size": v.size, "used": v.used,
                "content": v.content, "ctime": v.ctime,
            });
            if v.vmid != 0 {
                e["vmid"] = json!(v.vmid);
            }
            if let Some(parent) = &v.parent {
                e["parent"] = json!(parent);
            }
            if let Some(notes) = beside(&v.volid, "notes").and_then(|p| std::fs::read_to_string(p).ok()) {
                e["notes"] = json!(notes);
            }
            if beside(&v.volid, "protected").is_some_and(|p| p.exists()) {
                e["protected"] = json!(1);
            }
            e
        })
        .collect();
    Ok(Json(json!(items)))
}
