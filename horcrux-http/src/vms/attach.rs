//! Volumes a guest uses without owning them: CD-ROM drives holding an ISO image (shared by
//! any number of guests, never freed with one) and whole LUNs of an iSCSI storage (one
//! guest at a time, made and removed on the target). Both are checked here against the
//! caller's rights on the volume's storage and against what the storage really holds.

use axum::http::StatusCode;
use horcrux_core::{ids, CdromSpec, ClusterState, StorageKind};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::ApiState;

/// The caller may read storage `storage` (Datastore.Audit or Datastore.AllocateSpace, as
/// Proxmox asks of an ISO a guest mounts).
fn require_read(state: &ClusterState, caller: &Caller, field: &str, storage: &str) -> Result<(), ApiError> {
    let held = crate::authz::caller_privileges(state, caller, &format!("/storage/{storage}"));
    if held.contains("Datastore.Audit") || held.contains("Datastore.AllocateSpace") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "permission check failed: {field}: {} needs Datastore.Audit or Datastore.AllocateSpace on \
             /storage/{storage}",
            caller.token_id
        ),
    ))
}

/// The size of the volume as storage `storage` lists it on this node, or a 400 naming
/// `field` when it does not hold it.
async fn listed(
    st: &ApiState,
    state: &ClusterState,
    field: &str,
    storage: &str,
    volume: &str,
) -> Result<u64, ApiError> {
    let pool = state
        .storage
        .get(storage)
        .ok_or_else(|| ApiError::bad_field(field, format!("unknown storage {storage:?}")))?;
    let all = st
        .runtime
        .volume_store(pool)
        .list()
        .await
        .map_err(|e| ApiError::bad_field(field, format!("storage {storage}: {e}")))?;
    all.into_iter()
        .find(|v| v.volid == volume)
        .map(|v| v.size)
        .ok_or_else(|| ApiError::bad_field(field, format!("volume {volume} does not exist")))
}

/// Each CD-ROM's ISO exists on a storage holding `iso` content that the caller may read.
pub(crate) async fn check_cdroms(
    st: &ApiState,
    state: &ClusterState,
    caller: &Caller,
    cdroms: &[CdromSpec],
) -> Result<(), ApiError> {
    for (i, c) in cdroms.iter().enumerate() {
        let Some(volume) = &c.volume else { continue };
        let field = format!("cdroms[{i}].volume");
        let storage = ids::parse_iso_volume(&field, volume)?;
        require_read(state, caller, &field, storage)?;
        let pool = state
            .storage
            .get(storage)
            .ok_or_else(|| ApiError::bad_field(&field, format!("unknown storage {storage:?}")))?;
        if !pool.config.content.iter().any(|c| c == "iso") {
            return Err(ApiError::bad_field(&field, format!("storage {storage} holds no iso content")));
        }
        listed(st, state, &field, storage, volume).await?;
    }
    Ok(())
}

/// The size in MiB of an existing volume a disk attaches as it is: one of the guest's own
/// unused volumes (`unused`: Proxmox's re-attach of `unusedN`), or a whole LUN of an
/// iSCSI storage (the only volumes a guest uses without owning); never a disk of another
/// guest. The caller's right to allocate on the storage is the route's check.
pub(crate) async fn attached_size_mib(
    st: &ApiState,
    state: &ClusterState,
    vmid: u32,
    unused: &[String],
    field: &str,
    storage: &str,
    volume: &str,
) -> Result<u64, ApiError> {
    let (of, _) = ids::parse_volume_id(volume).map_err(|e| ApiError::bad_field(field, e.message))?;
    if of != storage {
        return Err(ApiError::bad_field(field, format!("volume {volume} is not on storage {storage}")));
    }
    let pool = state
        .storage
        .get(storage)
        .ok_or_else(|| ApiError::bad_field(field, format!("unknown storage {storage:?}")))?;
    if owned(vmid, volume) && unused.iter().any(|u| u == volume) {
        let size = listed(st, state, field, storage, volume).await?;
        return Ok(size.div_ceil(1 << 20).max(1));
    }
    if !matches!(pool.kind, StorageKind::Iscsi { .. }) {
        return Err(ApiError::bad_field(
            field,
            format!(
                "only an unused volume of this guest or a LUN of an iSCSI storage is attached as it \
                 is ({storage} is {}); give a size to allocate a new disk",
                pool.kind.type_name()
            ),
        ));
    }
    if let Some(g) = state
        .guests
        .values()
        .find(|g| g.vmid != vmid && g.vm_spec().disks.iter().any(|d| d.volume.as_deref() == Some(volume)))
    {
        return Err(ApiError::conflict(format!("{field}: {volume} is a disk of guest {}", g.vmid)));
    }
    let size = listed(st, state, field, storage, volume).await?;
    Ok(size.div_ceil(1 << 20).max(1))
}

/// Whether a disk's volume is the guest's own (freed with it, kept as unused when
/// detached) rather than a LUN it only uses.
pub(crate) fn owned(vmid: u32, volume: &str) -> bool {
    ids::volume_owner(volume) == Some(vmid)
}
