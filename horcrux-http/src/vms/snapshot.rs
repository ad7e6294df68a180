//! A guest's snapshots, `/api/v1/vms/{vmid}/snapshots[...]`, run on the owner (the
//! forwarding layer carries them there). Each disk is snapshotted by its storage backend
//! while the guest is stopped; while it runs, qcow2 disks through QMP (internal snapshots,
//! with the RAM by `snapshot-save` when `vmstate` is asked for), other backends with the
//! vCPUs paused around the backend snapshot. Rollback stops the guest, returns each disk,
//! records the snapshot's config, and resumes a snapshot with RAM from it (`-loadvm`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use horcrux_core::snapshot::Snapshot;
use horcrux_core::{ClusterState, Command, DesiredPower, Guest, ObservedPower};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

fn guest(state: &ClusterState, vmid: u32) -> Result<&Guest, ApiError> {
    state.guests.get(&vmid).ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))
}

fn view(s: &Snapshot) -> Value {
    let mut v = json!({
        "name": s.name, "description": s.description, "snaptime": s.snaptime, "vmstate": u8::from(s.vmstate),
    });
    if let Some(p) = &s.parent {
        v["parent"] = json!(p);
    }
    v
}

/// The snapshots, then `current` (the guest's own state), as Proxmox lists them.
pub async fn list(State(st): State<ApiState>, Path(vmid): Path<String>) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(move |s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let mut out: Vec<Value> = g.snapshots.values().map(view).collect();
    let running = st.runtime.observed(vmid).power != ObservedPower::Stopped;
    let mut current =
        json!({ "name": "current", "description": "You are here!", "running": u8::from(running) });
    if let Some(p) = &g.parent {
        current["parent"] = json!(p);
    }
    out.push(current);
    Ok(Json(json!(out)))
}

pub async fn one(
    State(st): State<ApiState>,
    Path((vmid, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(move |s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let s = g
        .snapshots
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("guest {vmid} has no snapshot {name}")))?;
    let mut v = view(s);
    v["spec"] = json!(s.spec);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Describe {
    description: String,
}

pub async fn describe(
    State(st): State<ApiState>,
    Path((vmid, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let d: Describe = parse_body(&body)?;
    let ok = st
        .runtime
        .cluster()
        .propose(Command::SetSnapshotDescription { vmid, name, description: d.description })
        .await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

/// Each disk with a volume: (slot, volume id, storage id).
fn volumes(spec: &horcrux_core::VmSpec) -> Vec<(String, String, String)> {
    spec.disk_slots()
        .into_iter()
        .zip(&spec.disks)
        .filter_map(|(slot, d)| Some((slot, d.volume.clone()?, d.storage.clone())))
        .collect()
}

/// The backend of `storage` on this node (a macro: the backend's type is the drivers'
/// crate's, which this crate reaches only through the runtime).
macro_rules! store {
    ($st:expr, $state:expr, $storage:expr) => {
        $state
            .storage
            .get($storage.as_str())
            .map(|pool| $st.runtime.volume_store(pool))
            .ok_or_else(|| format!("storage {} is gone", $storage))
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSnapshot {
    snapname: String,
    #[serde(default)]
    description: String,
    /// Save the RAM too (a running guest with qcow2 disks).
    #[serde(default)]
    vmstate: bool,
}

async fn qmp(st: &ApiState, vmid: u32, cmd: &str, args: Value) -> Result<Value, String> {
    st.runtime.hypervisor().qmp(vmid, cmd, Some(args)).await.map_err(|e| e.to_string())
}

/// `drive-SLOT` -> the node name of its top block node (what `snapshot-save` names).
async fn node_names(st: &ApiState, vmid: u32) -> Result<std::collections::BTreeMap<String, String>, String> {
    let blocks = st.runtime.hypervisor().qmp(vmid, "query-block", None).await.map_err(|e| e.to_string())?;
    Ok(blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            Some((b["device"].as_str()?.to_string(), b["inserted"]["node-name"].as_str()?.to_string()))
        })
        .collect())
}

/// QMP `snapshot-save` of every disk, the RAM into the first, then waits for its job.
async fn save_vm(st: &ApiState, vmid: u32, name: &str, slots: &[String]) -> Result<(), String> {
    let nodes = node_names(st, vmid).await?;
    let devices: Vec<String> = slots
        .iter()
        .map(|s| {
            nodes.get(&format!("drive-{s}")).cloned().ok_or_else(|| format!("QEMU does not show drive-{s}"))
        })
        .collect::<Result<_, _>>()?;
    let job = format!("snapshot-save-{vmid}");
    qmp(
        st,
        vmid,
        "snapshot-save",
        json!({ "job-id": job, "tag": name, "vmstate": devices[0], "devices": devices }),
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = st.runtime.hypervisor().qmp(vmid, "query-jobs", None).await.map_err(|e| e.to_string())?;
        let mine = jobs.as_array().into_iter().flatten().find(|j| j["id"] == job.as_str()).cloned();
        match mine {
            Some(j) if j["status"] == "concluded" => {
                let _ = qmp(st, vmid, "job-dismiss", json!({ "id": job })).await;
                return match j["error"].as_str() {
                    Some(e) => Err(format!("snapshot-save: {e}")),
                    None => Ok(()),
                };
            }
            None => return Err("the snapshot-save job disappeared".into()),
            _ if std::time::Instant::now() > deadline => {
                return Err("snapshot-save did not finish in 10 minutes".into())
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Takes the disks' snapshots (and the RAM's); on failure undoes what it took.
async fn take(
    st: &ApiState,
    state: &ClusterState,
    g: &Guest,
    name: &str,
    vmstate: bool,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<bool, ApiError> {
    let vmid = g.vmid;
    let disks = volumes(g.vm_spec());
    let power = st.runtime.observed(vmid).power;
    let all_qcow2 = !disks.is_empty() && disks.iter().all(|(_, v, _)| v.ends_with(".qcow2"));
    if power == ObservedPower::Stopped {
        if vmstate {
            log("the guest is stopped: no RAM to save".into());
        }
        let mut done: Vec<(&String, &String)> = Vec::new();
        for (slot, volid, storage) in &disks {
            let r = match store!(st, state, storage) {
                Ok(s) => s.snapshot(volid, name).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                for (volid, storage) in done {
                    if let Ok(s) = store!(st, state, storage) {
                        let _ = s.delete_snapshot(volid, name).await;
                    }
                }
                return Err(ApiError::bad_field("snapname", format!("{slot} ({volid}): {e}")));
            }
            log(format!("{slot}: snapshot of {volid}"));
            done.push((volid, storage));
        }
        return Ok(false);
    }
    let slots: Vec<String> = disks.iter().map(|(s, _, _)| s.clone()).collect();
    if vmstate {
        if !all_qcow2 {
            return Err(ApiError::bad_field(
                "vmstate",
                "saving the RAM needs every disk in qcow2 (internal snapshots)",
            ));
        }
        log("saving RAM and disks (snapshot-save)".into());
        save_vm(st, vmid, name, &slots).await.map_err(ApiError::internal)?;
        return Ok(true);
    }
    if all_qcow2 {
        let actions: Vec<Value> = slots
            .iter()
            .map(|s| json!({ "type": "blockdev-snapshot-internal-sync", "data": { "device": format!("drive-{s}"), "name": name } }))
            .collect();
        qmp(st, vmid, "transaction", json!({ "actions": actions })).await.map_err(ApiError::internal)?;
        log(format!("internal snapshots of {} while running", slots.join(", ")));
        return Ok(false);
    }
    // Other backends: the vCPUs paused (QEMU drains its I/O) around the backend snapshots.
    let pause = power == ObservedPower::Running;
    if pause {
        qmp(st, vmid, "stop", json!({})).await.map_err(ApiError::internal)?;
    }
    let mut result = Ok(false);
    let mut done: Vec<(String, String)> = Vec::new();
    for (slot, volid, storage) in &disks {
        let r = match store!(st, state, storage) {
            Ok(s) => s.snapshot(volid, name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            result = Err(ApiError::bad_field("snapname", format!("{slot} ({volid}): {e}")));
            break;
        }
        done.push((volid.clone(), storage.clone()));
    }
    if pause {
        if let Err(e) = qmp(st, vmid, "cont", json!({})).await {
            log(format!("resuming the guest failed: {e}"));
        }
    }
    if result.is_err() {
        for (volid, storage) in &done {
            if let Ok(s) = store!(st, state, storage) {
                let _ = s.delete_snapshot(volid, name).await;
            }
        }
    } else {
        log(format!("snapshots of {} with the guest paused", slots.join(", ")));
    }
    result
}

/// Removes the disks' snapshots `name` (through QMP for a running guest's qcow2 disks).
async fn drop_disk_snapshots(
    st: &ApiState,
    state: &ClusterState,
    g: &Guest,
    spec: &horcrux_core::VmSpec,
    name: &str,
    force: bool,
) -> Result<(), ApiError> {
    let running = st.runtime.observed(g.vmid).power != ObservedPower::Stopped;
    for (slot, volid, storage) in volumes(spec) {
        let r = if running && volid.ends_with(".qcow2") {
            let args = json!({ "device": format!("drive-{slot}"), "name": name });
            qmp(st, g.vmid, "blockdev-snapshot-delete-internal-sync", args).await.map(|_| ())
        } else {
            match store!(st, state, storage) {
                Ok(s) => s.delete_snapshot(&volid, name).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        };
        match r {
            Err(e) if !force => return Err(ApiError::internal(format!("{slot} ({volid}): {e}"))),
            Err(e) => tracing::warn!(vmid = g.vmid, "snapshot {name} of {volid}: {e} (forced)"),
            Ok(()) => {}
        }
    }
    Ok(())
}

pub async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let n: NewSnapshot = parse_body(&body)?;
    horcrux_core::snapshot::validate_name("snapname", &n.snapname)?;
    horcrux_core::snapshot::validate_description("description", &n.description)?;
    let state = st.runtime.cluster().read_linearizable(|s| s.clone()).await?;
    let g = guest(&state, vmid)?;
    if g.snapshots.contains_key(&n.snapname) {
        return Err(ApiError::conflict(format!("guest {vmid} already has a snapshot {}", n.snapname)));
    }
    let task = st.runtime.tasks().create("qmsnapshot", &vmid.to_string(), caller.user());
    let t = task.clone();
    let started = std::time::Instant::now();
    let vmstate = match take(&st, &state, g, &n.snapname, n.vmstate, &|l| t.log(l)).await {
        Ok(v) => v,
        Err(e) => {
            task.finish(Err::<(), String>(e.message.clone()));
            return Err(e);
        }
    };
    let snapshot = Snapshot {
        name: n.snapname.clone(),
        description: n.description,
        snaptime: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        vmstate,
        parent: None,
        spec: g.vm_spec().clone(),
    };
    match st.runtime.cluster().propose(Command::CreateSnapshot { vmid, snapshot }).await {
        Ok(ok) => {
            task.log(format!("snapshot {} taken in {} ms", n.snapname, started.elapsed().as_millis()));
            task.finish(Ok::<(), String>(()));
            Ok(Json(json!({ "upid": task.upid(), "revision": ok.revision })))
        }
        Err(e) => {
            let _ = drop_disk_snapshots(&st, &state, g, g.vm_spec(), &n.snapname, true).await;
            task.finish(Err::<(), String>(e.to_string()));
            Err(e.into())
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Remove {
    #[serde(default)]
    force: bool,
}

pub async fn remove(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((vmid, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let r: Remove = parse_body(&body)?;
    let state = st.runtime.cluster().read_linearizable(|s| s.clone()).await?;
    let g = guest(&state, vmid)?;
    let snap = g
        .snapshots
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("guest {vmid} has no snapshot {name}")))?;
    let task = st.runtime.tasks().create("qmdelsnapshot", &vmid.to_string(), caller.user());
    if let Err(e) = drop_disk_snapshots(&st, &state, g, &snap.spec, &name, r.force).await {
        task.finish(Err::<(), String>(e.message.clone()));
        return Err(e);
    }
    let ok = st.runtime.cluster().propose(Command::DeleteSnapshot { vmid, name: name.clone() }).await?;
    task.log(format!("snapshot {name} deleted"));
    task.finish(Ok::<(), String>(()));
    Ok(Json(json!({ "upid": task.upid(), "revision": ok.revision })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// Start the guest afterwards (a snapshot with RAM always resumes).
    #[serde(default)]
    start: bool,
}

pub async fn rollback(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((vmid, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let r: Rollback = parse_body(&body)?;
    let cluster = st.runtime.cluster();
    let state = cluster.read_linearizable(|s| s.clone()).await?;
    let g = guest(&state, vmid)?;
    let snap = g
        .snapshots
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("guest {vmid} has no snapshot {name}")))?;
    // Backends that only roll back to their latest snapshot (zfs) would destroy the later ones.
    for (slot, volid, storage) in volumes(&snap.spec) {
        let s = store!(st, state, storage).map_err(ApiError::conflict)?;
        if !s.rolls_back_past_later_snapshots() {
            let snaps = s.snapshots(&volid).await.map_err(|e| ApiError::internal(e.to_string()))?;
            if snaps.last().is_some_and(|l| *l != name) {
                return Err(ApiError::bad_field(
                    "snapname",
                    format!(
                        "{slot} ({volid}): its storage rolls back to its latest snapshot only ({})",
                        snaps.last().unwrap()
                    ),
                ));
            }
        }
    }
    let task = st.runtime.tasks().create("qmrollback", &vmid.to_string(), caller.user());
    let started = std::time::Instant::now();
    let fail = |task: &horcrux_actors::TaskLog, e: String| {
        task.finish(Err::<(), String>(e.clone()));
        ApiError::internal(e)
    };
    if g.desired.is_running() || st.runtime.observed(vmid).power != ObservedPower::Stopped {
        task.log("stopping the guest");
        let stop = DesiredPower::Stopped { graceful_timeout_s: None };
        cluster.propose(Command::SetDesiredPower { vmid, expected_revision: None, desired: stop }).await?;
        if let Err(e) = st.runtime.reconcile(vmid, Some(task.clone())).await {
            return Err(fail(&task, format!("stopping the guest: {e}")));
        }
    }
    for (slot, volid, storage) in volumes(&snap.spec) {
        let r = match store!(st, state, storage) {
            Ok(s) => s.rollback(&volid, &name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            return Err(fail(&task, format!("{slot} ({volid}): {e}")));
        }
        task.log(format!("{slot}: {volid} back at {name}"));
    }
    let ok = cluster
        .propose(Command::RollbackSnapshot { vmid, name: name.clone(), expected_revision: None })
        .await?;
    let mut revision = ok.revision;
    if snap.vmstate || r.start {
        task.log(if snap.vmstate { "resuming from the saved RAM" } else { "starting the guest" });
        let ok = cluster
            .propose(Command::SetDesiredPower {
                vmid,
                expected_revision: None,
                desired: DesiredPower::Running,
            })
            .await?;
        revision = ok.revision;
        match st.runtime.reconcile(vmid, Some(task.clone())).await {
            Ok(_) => {}
            Err(e) => return Err(fail(&task, format!("starting the guest: {e}"))),
        }
    }
    task.log(format!("rolled back to {name} in {} ms", started.elapsed().as_millis()));
    task.finish(Ok::<(), String>(()));
    Ok(Json(json!({ "upid": task.upid(), "revision": revision })))
}
