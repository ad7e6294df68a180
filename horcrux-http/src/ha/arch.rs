//! `/api/v1/cluster/architectures`: the guest CPU architectures the cluster knows (the
//! built-in ones and those registered here), and which nodes run each natively or emulated.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use horcrux_core::arch::{self, Architecture};
use horcrux_core::Command;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/cluster/architectures", get(list).post(create))
        .route("/cluster/architectures/{name}", get(one).put(update).delete(remove))
}

fn arch_json(s: &horcrux_core::ClusterState, a: &Architecture, builtin: bool) -> Value {
    let mut native = Vec::new();
    let mut emulated = Vec::new();
    for n in s.nodes.values().filter(|n| !n.facts.arch.is_empty()) {
        if a.native_on(&n.facts) {
            native.push(n.name.clone());
        } else if a.emulated_on(&n.facts) {
            emulated.push(n.name.clone());
        }
    }
    let mut v = json!(a);
    v["builtin"] = json!(builtin);
    v["native_nodes"] = json!(native);
    v["emulating_nodes"] = json!(emulated);
    v
}

async fn list(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let v = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            let mut out: Vec<Value> = arch::builtins().iter().map(|a| arch_json(s, a, true)).collect();
            out.extend(s.architectures.values().map(|a| arch_json(s, a, false)));
            Value::Array(out)
        })
        .await?;
    Ok(Json(v))
}

async fn one(State(st): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let v = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            arch::lookup(&s.architectures, &name).map(|a| arch_json(s, &a, arch::is_builtin(&name)))
        })
        .await?;
    v.map(Json).ok_or_else(|| ApiError::not_found("no such architecture"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewArch {
    name: String,
    qemu_binary: String,
    machine: Option<String>,
    cpu: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchChange {
    qemu_binary: Option<String>,
    machine: Option<String>,
    cpu: Option<String>,
    /// `machine` or `cpu`: back to QEMU's default.
    #[serde(default)]
    delete: Vec<String>,
}

async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: NewArch = parse_body(&body)?;
    let a = Architecture { name: req.name, qemu_binary: req.qemu_binary, machine: req.machine, cpu: req.cpu };
    // Checked where it is applied: fields, reserved names, duplicates.
    st.propose_by(&caller, Command::SetArchitecture { create: true, arch: a.clone() }).await?;
    Ok(Json(json!(a)))
}

async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let change: ArchChange = parse_body(&body)?;
    if arch::is_builtin(&name) {
        return Err(ApiError::bad_field("name", format!("{name} is a built-in architecture")));
    }
    let key = name.clone();
    let old = st.runtime.cluster().read_linearizable(move |s| s.architectures.get(&key).cloned()).await?;
    let mut a = old.ok_or_else(|| ApiError::not_found("no such architecture"))?;
    for d in &change.delete {
        match d.as_str() {
            "machine" => a.machine = None,
            "cpu" => a.cpu = None,
            other => return Err(ApiError::bad_field("delete", format!("{other:?} cannot be removed"))),
        }
    }
    a.qemu_binary = change.qemu_binary.unwrap_or(a.qemu_binary);
    a.machine = change.machine.or(a.machine);
    a.cpu = change.cpu.or(a.cpu);
    st.propose_by(&caller, Command::SetArchitecture { create: false, arch: a.clone() }).await?;
    Ok(Json(json!(a)))
}

async fn remove(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if arch::is_builtin(&name) {
        return Err(ApiError::bad_field("name", format!("{name} is a built-in architecture")));
    }
    st.propose_by(&caller, Command::DeleteArchitecture { name }).await?;
    Ok(Json(json!({})))
}
