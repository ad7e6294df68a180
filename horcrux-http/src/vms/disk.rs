//! A guest's disks: `PUT /api/v1/vms/{vmid}/resize` grows one (QMP `block_resize` while the
//! guest runs, the storage backend otherwise) and records the new size. Runs on the owner
//! (the forwarding layer carries it there), where the guest's QEMU and volumes are.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use horcrux_core::{ids, Command, GuestConfig, ObservedPower};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    /// The disk's slot: `virtio0`, `scsi1`, ...
    disk: String,
    /// `+1G` (grow by) or `10G` (grow to); K, M, G, T; a bare number is bytes.
    size: String,
    /// Refuse (409) unless the guest is still at this revision.
    revision: Option<u64>,
}

pub async fn resize(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let r: Resize = parse_body(&body)?;
    let cluster = st.runtime.cluster();
    let state = cluster.read_linearizable(|s| s.clone()).await?;
    let g =
        state.guests.get(&vmid).ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if r.revision.is_some_and(|rev| rev != g.revision) {
        return Err(ApiError::conflict(format!("guest {vmid} changed: revision is {}", g.revision)));
    }
    let mut spec = g.vm_spec().clone();
    let slots = spec.disk_slots();
    let i = slots
        .iter()
        .position(|s| *s == r.disk)
        .ok_or_else(|| ApiError::bad_field("disk", format!("guest {vmid} has no disk {:?}", r.disk)))?;
    let disk = spec.disks[i].clone();
    let path = format!("/storage/{}", disk.storage);
    if !crate::authz::caller_privileges(&state, &caller, &path).contains("Datastore.AllocateSpace") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("permission check failed: {} needs Datastore.AllocateSpace on {path}", caller.token_id),
        ));
    }
    let volid =
        disk.volume.clone().ok_or_else(|| ApiError::conflict(format!("disk {} has no volume", r.disk)))?;
    let current = disk.size_mib << 20;
    // Whole MiB, as the configuration records it.
    let new = ids::parse_disk_resize("size", &r.size, current)?.div_ceil(1 << 20) << 20;
    let task = st.runtime.tasks().create("resize", &vmid.to_string(), caller.user());
    if new == current {
        task.log(format!("{}: already {new} bytes", r.disk));
        task.finish(Ok::<(), String>(()));
        return Ok(Json(json!({ "upid": task.upid(), "revision": g.revision })));
    }
    let running = st.runtime.observed(vmid).power != ObservedPower::Stopped;
    let grown = if running {
        task.log(format!("{}: block_resize to {new} bytes (running)", r.disk));
        let args = json!({ "device": format!("drive-{}", r.disk), "size": new });
        st.runtime.hypervisor().qmp(vmid, "block_resize", Some(args)).await.map(|_| ())
    } else {
        task.log(format!("{}: {volid} to {new} bytes", r.disk));
        let pool = state
            .storage
            .get(&disk.storage)
            .ok_or_else(|| ApiError::conflict("the disk's storage is gone"))?;
        st.runtime.volume_store(pool).resize(&volid, new).await
    };
    if let Err(e) = grown {
        let msg = format!("resizing {}: {e}", r.disk);
        task.finish(Err::<(), String>(msg.clone()));
        return Err(ApiError::internal(msg));
    }
    spec.disks[i].size_mib = new >> 20;
    let cmd = Command::UpdateGuest {
        vmid,
        expected_revision: Some(g.revision),
        name: g.name.clone(),
        config: GuestConfig::Qemu(spec),
    };
    match cluster.propose(cmd).await {
        Ok(ok) => {
            task.log(format!("{} is {} MiB", r.disk, new >> 20));
            task.finish(Ok::<(), String>(()));
            Ok(Json(json!({ "upid": task.upid(), "revision": ok.revision })))
        }
        Err(e) => {
            // The volume grew; the recorded size did not (a concurrent change): say so.
            task.finish(Err::<(), String>(format!("the volume grew but the config was not updated: {e}")));
            Err(e.into())
        }
    }
}
