//! Reboot, suspend and resume (`POST /api/v1/vms/{vmid}/reboot|suspend|resume`). They run
//! on the owner (the forwarding layer carries them there) as tasks, like Proxmox's
//! `qmreboot`, `qmsuspend` and `qmresume`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use horcrux_core::ObservedPower;
use horcrux_core::{Command, DesiredPower};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_vmid, ApiState};

/// The guest must exist, be meant to run, and run here.
async fn running_guest(st: &ApiState, vmid: u32) -> Result<u64, ApiError> {
    let g = st.runtime.cluster().read_linearizable(move |s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if !g.desired.is_running() || st.runtime.observed(vmid).power == ObservedPower::Stopped {
        return Err(ApiError::conflict(format!("guest {vmid} is not running")));
    }
    Ok(g.revision)
}

/// A clean reboot as Proxmox does it: power off (hard after the timeout), then start a
/// new QEMU, so configuration changes made meanwhile take effect.
pub async fn reboot(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let timeout = crate::state::power_off_timeout(&body)?;
    let revision = running_guest(&st, vmid).await?;
    let task = st.runtime.tasks().create("qmreboot", &vmid.to_string(), caller.user());
    let (runtime, t) = (st.runtime.clone(), task.clone());
    tokio::spawn(async move {
        let outcome = async {
            let cluster = runtime.cluster();
            let down = DesiredPower::Stopped { graceful_timeout_s: Some(timeout) };
            let ok = cluster
                .propose(Command::SetDesiredPower { vmid, expected_revision: Some(revision), desired: down })
                .await
                .map_err(|e| e.to_string())?;
            t.log(format!("powering guest {vmid} off (hard after {timeout} s)"));
            match runtime.reconcile(vmid, Some(t.clone())).await {
                Ok(ObservedPower::Stopped) => {}
                Ok(other) => return Err(format!("guest {vmid} is {other:?} after power-off").to_lowercase()),
                Err(e) => return Err(e.to_string()),
            }
            let up = DesiredPower::Running;
            cluster
                .propose(Command::SetDesiredPower { vmid, expected_revision: Some(ok.revision), desired: up })
                .await
                .map_err(|e| e.to_string())?;
            t.log(format!("starting guest {vmid}"));
            match runtime.reconcile(vmid, Some(t.clone())).await {
                Ok(ObservedPower::Running | ObservedPower::Paused) => Ok(()),
                Ok(other) => Err(format!("guest {vmid} is {other:?} after the start").to_lowercase()),
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        t.finish(outcome);
    });
    Ok(Json(json!({ "upid": task.upid() })))
}

async fn pause(st: ApiState, caller: Caller, vmid: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(vmid)?;
    running_guest(&st, vmid).await?;
    let kind = if paused { "qmsuspend" } else { "qmresume" };
    let task = st.runtime.tasks().create(kind, &vmid.to_string(), caller.user());
    let result = st.runtime.hypervisor().set_paused(vmid, paused).await;
    let result =
        result.map(|()| task.log(format!("guest {vmid} {}", if paused { "paused" } else { "resumed" })));
    // Refresh the observed state (paused / running) the status routes report.
    let _ = st.runtime.reconcile(vmid, None).await;
    task.finish(result.as_ref().map_err(|e| e.to_string()).copied());
    result.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "upid": task.upid() })))
}

/// Pauses the guest's vCPUs (Proxmox's suspend without `todisk`).
pub async fn suspend(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    pause(st, caller, &vmid, true).await
}

pub async fn resume(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    pause(st, caller, &vmid, false).await
}

/// Resets the guest at once, as its reset button does (Proxmox's `qmreset`): the QEMU
/// keeps running.
pub async fn reset(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    running_guest(&st, vmid).await?;
    let task = st.runtime.tasks().create("qmreset", &vmid.to_string(), caller.user());
    let result = st.runtime.hypervisor().reset(vmid).await;
    let result = result.map(|()| task.log(format!("guest {vmid} reset")));
    task.finish(result.as_ref().map_err(|e| e.to_string()).copied());
    result.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "upid": task.upid() })))
}
