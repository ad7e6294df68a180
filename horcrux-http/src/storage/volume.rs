//! One volume of a storage (Proxmox's `/nodes/{node}/storage/{storage}/content/{volume}`):
//! its attributes, its notes and protection, removing it (refused while a guest uses it
//! or it is protected), and allocating a new disk image (`POST .../content`). Notes and
//! protection of file-backed volumes are kept beside them as Proxmox does
//! (`NAME.notes`, `NAME.protected`).

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use horcrux_core::{ids, ClusterState, StoragePool};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

#[derive(Deserialize)]
pub(crate) struct NodeQuery {
    /// The member whose copy is meant (the request is carried there); default: this node.
    #[allow(dead_code)]
    node: Option<String>,
}

/// The storage and the full volume id (`volume` may leave out the `STORAGE:` prefix, as
/// Proxmox allows).
async fn locate(
    st: &ApiState,
    id: &str,
    volume: &str,
) -> Result<(StoragePool, String, ClusterState), ApiError> {
    let volid = if volume.contains(':') { volume.to_string() } else { format!("{id}:{volume}") };
    let (storage, _) = ids::parse_volume_id(&volid).map_err(|e| ApiError::bad_field("volume", e.message))?;
    if storage != id {
        return Err(ApiError::bad_field("volume", format!("volume {volid} is not on storage {id}")));
    }
    let state = st.runtime.cluster().read_linearizable(|s| s.clone()).await?;
    let pool = state.storage.get(id).cloned().ok_or_else(|| ApiError::not_found("no such storage"))?;
    Ok((pool, volid, state))
}

/// Sidecar files of a file-backed volume: `NAME.notes`, `NAME.protected`.
fn sidecar(st: &ApiState, pool: &StoragePool, volid: &str, ext: &str) -> Option<std::path::PathBuf> {
    let path = st.runtime.volume_store(pool).path(volid).ok()?;
    let mut name = path.file_name()?.to_os_string();
    name.push(format!(".{ext}"));
    Some(path.with_file_name(name))
}

/// `GET /api/v1/storage/{id}/content/{volume}`: `{volid, path, size, used, format,
/// notes, protected}`.
pub(crate) async fn get(
    State(st): State<ApiState>,
    Path((id, volume)): Path<(String, String)>,
    Query(_q): Query<NodeQuery>,
) -> Result<Json<Value>, ApiError> {
    let (pool, volid, _) = locate(&st, &id, &volume).await?;
    let store = st.runtime.volume_store(&pool);
    let list = store.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let v = list
        .into_iter()
        .find(|v| v.volid == volid)
        .ok_or_else(|| ApiError::not_found(format!("volume {volid} does not exist")))?;
    let path = match store.source(&volid) {
        Ok(s) => s.qemu_img().0,
        Err(_) => store.path(&volid).map(|p| p.display().to_string()).unwrap_or_default(),
    };
    let mut out = json!({
        "volid": volid, "path": path, "size": v.size, "used": v.used, "format": v.format,
        "protected": sidecar(&st, &pool, &volid, "protected").is_some_and(|p| p.exists()),
    });
    if let Some(notes) = sidecar(&st, &pool, &volid, "notes").and_then(|p| std::fs::read_to_string(p).ok()) {
        out["notes"] = json!(notes);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Attributes {
    notes: Option<String>,
    protected: Option<bool>,
}

/// `PUT /api/v1/storage/{id}/content/{volume}` `{notes, protected}`: file-backed volumes.
pub(crate) async fn update(
    State(st): State<ApiState>,
    Path((id, volume)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let a: Attributes = parse_body(&body)?;
    let (pool, volid, _) = locate(&st, &id, &volume).await?;
    let exists =
        st.runtime.volume_store(&pool).list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    if !exists.iter().any(|v| v.volid == volid) {
        return Err(ApiError::not_found(format!("volume {volid} does not exist")));
    }
    let field = if a.notes.is_some() { "notes" } else { "protected" };
    let (notes, protected) =
        match (sidecar(&st, &pool, &volid, "notes"), sidecar(&st, &pool, &volid, "protected")) {
            (Some(n), Some(p)) => (n, p),
            _ => {
                return Err(ApiError::bad_field(
                    field,
                    format!("storage {id} keeps no notes or protection for {volid}"),
                ))
            }
        };
    if let Some(text) = a.notes {
        if text.len() > 64 * 1024 || text.contains('\0') {
            return Err(ApiError::bad_field("notes", "at most 64 KiB, no NUL"));
        }
        let written = if text.is_empty() {
            std::fs::remove_file(&notes).or(Ok(()))
        } else {
            std::fs::write(&notes, text)
        };
        written.map_err(|e: std::io::Error| ApiError::internal(e.to_string()))?;
    }
    match a.protected {
        Some(true) => std::fs::write(&protected, b"").map_err(|e| ApiError::internal(e.to_string()))?,
        Some(false) => {
            let _ = std::fs::remove_file(&protected);
        }
        None => {}
    }
    Ok(Json(json!({ "volid": volid })))
}

/// The guest whose configuration names `volid` (a disk, an unused volume, a CD-ROM, a
/// boot file), if any.
fn user_of(state: &ClusterState, volid: &str) -> Option<u32> {
    state.guests.values().find_map(|g| {
        let s = g.vm_spec();
        let named = s.disks.iter().any(|d| d.volume.as_deref() == Some(volid))
            || s.unused.iter().any(|u| u == volid)
            || s.cdroms.iter().any(|c| c.volume.as_deref() == Some(volid))
            || s.boot.as_ref().is_some_and(|b| b.files().iter().any(|(_, f)| *f == volid));
        named.then_some(g.vmid)
    })
}

/// `DELETE /api/v1/storage/{id}/content/{volume}`: refused while a guest uses the volume
/// or it is protected; a task.
pub(crate) async fn delete(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, volume)): Path<(String, String)>,
    Query(_q): Query<NodeQuery>,
) -> Result<Json<Value>, ApiError> {
    let (pool, volid, state) = locate(&st, &id, &volume).await?;
    if let Some(vmid) = user_of(&state, &volid) {
        return Err(ApiError::conflict(format!("volume {volid} is used by guest {vmid}")));
    }
    if sidecar(&st, &pool, &volid, "protected").is_some_and(|p| p.exists()) {
        return Err(ApiError::conflict(format!("volume {volid} is protected")));
    }
    let store = st.runtime.volume_store(&pool);
    let listed = store.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    if !listed.iter().any(|v| v.volid == volid) {
        return Err(ApiError::not_found(format!("volume {volid} does not exist")));
    }
    let task = st.runtime.tasks().create("imgdel", &id, caller.user());
    match store.free(&volid).await {
        Ok(()) => {
            if let Some(n) = sidecar(&st, &pool, &volid, "notes") {
                let _ = std::fs::remove_file(n);
            }
            task.log(format!("removed {volid}"));
            task.finish(Ok::<(), String>(()));
            Ok(Json(json!({ "upid": task.upid() })))
        }
        Err(e) => {
            task.finish(Err::<(), String>(e.to_string()));
            Err(ApiError::internal(format!("removing {volid}: {e}")))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewVolume {
    vmid: u32,
    /// `vm-VMID-disk-N` (with `.qcow2`/`.raw`/`.vmdk` on file storages).
    filename: String,
    /// Proxmox's size: KiB, or with an `M` or `G` suffix.
    size: String,
    format: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    node: Option<String>,
}

/// Proxmox's volume size: a number of KiB, or `NM`, `NG`; answers MiB (at least 1).
fn size_mib(size: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_field("size", format!("{size:?}: KiB, or a number with M or G"));
    let (n, unit) = match size.strip_suffix(['M', 'G', 'K']) {
        Some(n) => (n, size.chars().last().unwrap_or('K')),
        None => (size, 'K'),
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mib = match unit {
        'G' => n.checked_mul(1024).ok_or_else(bad)?,
        'M' => n,
        _ => n.div_ceil(1024),
    };
    if mib == 0 {
        return Err(bad());
    }
    Ok(mib)
}

/// `POST /api/v1/storage/{id}/content` `{vmid, filename, size, format}`: a new disk image
/// (Proxmox's `pvesm alloc`); answers its volume id.
pub(crate) async fn alloc(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let n: NewVolume = parse_body(&body)?;
    ids::validate_vmid("vmid", u64::from(n.vmid))?;
    let mib = size_mib(&n.size)?;
    let stem = n.filename.split('.').next().unwrap_or_default();
    let index = stem
        .strip_prefix(&format!("vm-{}-disk-", n.vmid))
        .and_then(|i| i.parse::<usize>().ok())
        .ok_or_else(|| ApiError::bad_field("filename", format!("expected vm-{}-disk-N", n.vmid)))?;
    let format = n.format.or_else(|| n.filename.split_once('.').map(|(_, f)| f.to_string()));
    let state = st.runtime.cluster().read_linearizable(|s| s.clone()).await?;
    let pool = state.storage.get(&id).cloned().ok_or_else(|| ApiError::not_found("no such storage"))?;
    crate::authz::require(&state, &caller, "Datastore.AllocateSpace", &format!("/storage/{id}"))?;
    if !pool.holds("images") {
        return Err(ApiError::bad_field("storage", format!("storage {id} holds no disk images")));
    }
    let pool = pool.for_format("format", format.as_deref())?;
    let volid = st
        .runtime
        .volume_store(&pool)
        .alloc(n.vmid, index, mib)
        .await
        .map_err(|e| ApiError::bad_field("filename", e.to_string()))?;
    Ok(Json(json!(volid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_proxmox_takes_them() {
        assert_eq!(size_mib("4G").unwrap(), 4096);
        assert_eq!(size_mib("512M").unwrap(), 512);
        assert_eq!(size_mib("1048576").unwrap(), 1024);
        assert_eq!(size_mib("1").unwrap(), 1);
        for bad in ["", "0", "-1", "1T", "xG"] {
            assert!(size_mib(bad).is_err(), "{bad}");
        }
    }
}
