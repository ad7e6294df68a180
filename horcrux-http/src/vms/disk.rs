//! A guest's disks: `PUT /api/v1/vms/{vmid}/resize` grows one (QMP `block_resize` while the
//! guest runs, the storage backend otherwise) and records the new size. Runs on the owner
//! (the forwarding layer carries it there), where the guest's QEMU and volumes are.

use axum::body::Bytes;
use axum::extract::{Path, State};
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

/// Guest `vmid` and the position of its disk in `slot` (`virtio0`, ...).
fn guest_disk<'a>(
    state: &'a horcrux_core::ClusterState,
    vmid: u32,
    slot: &str,
) -> Result<(&'a horcrux_core::Guest, usize), ApiError> {
    let g =
        state.guests.get(&vmid).ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let i = g
        .vm_spec()
        .disk_slots()
        .iter()
        .position(|s| s == slot)
        .ok_or_else(|| ApiError::bad_field("disk", format!("guest {vmid} has no disk {slot:?}")))?;
    Ok((g, i))
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
    let (g, i) = guest_disk(&state, vmid, &r.disk)?;
    if r.revision.is_some_and(|rev| rev != g.revision) {
        return Err(ApiError::conflict(format!("guest {vmid} changed: revision is {}", g.revision)));
    }
    let mut spec = g.vm_spec().clone();
    let disk = spec.disks[i].clone();
    crate::authz::require(&state, &caller, "Datastore.AllocateSpace", &format!("/storage/{}", disk.storage))?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Move {
    disk: String,
    /// The storage to move to; required unless `target_vmid` is given.
    #[serde(default)]
    storage: String,
    /// Hand the disk (or `unusedN` volume) to this guest instead, on the same node.
    #[serde(default)]
    target_vmid: Option<u32>,
    /// Its slot there (default the same key).
    #[serde(default)]
    target_disk: Option<String>,
    /// The target's image format where it has a choice (directory storages); default its
    /// configured one.
    format: Option<String>,
    /// Free the source once the guest uses the copy (otherwise it stays as `unusedN`).
    #[serde(default)]
    delete: bool,
}

/// Moves a disk to another storage: a new volume there, then a copy (`qemu-img convert`
/// while the guest is stopped, QMP `blockdev-mirror` while it runs), then the config
/// points at the copy; the source is freed (`delete`) or kept as `unusedN`. A task.
pub async fn move_disk(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let m: Move = parse_body(&body)?;
    let cluster = st.runtime.cluster();
    let state = cluster.read_linearizable(|s| s.clone()).await?;
    if let Some(to) = m.target_vmid.filter(|t| *t != vmid) {
        return reassign(&st, &caller, &state, vmid, to, &m).await;
    }
    if m.storage.is_empty() {
        return Err(ApiError::bad_field("storage", "property is missing and it is not optional"));
    }
    let (g, i) = guest_disk(&state, vmid, &m.disk)?;
    let mut spec = g.vm_spec().clone();
    let disk = spec.disks[i].clone();
    let source =
        disk.volume.clone().ok_or_else(|| ApiError::conflict(format!("disk {} has no volume", m.disk)))?;
    let target = state
        .storage
        .get(&m.storage)
        .ok_or_else(|| ApiError::bad_field("storage", format!("unknown storage {:?}", m.storage)))?;
    let node = cluster.node_name().to_string();
    if !target.on_node(&node) || target.config.disable || !target.holds("images") {
        return Err(ApiError::bad_field(
            "storage",
            format!("storage {} cannot hold disk images on {node}", m.storage),
        ));
    }
    crate::authz::require(&state, &caller, "Datastore.AllocateSpace", &format!("/storage/{}", m.storage))?;
    let mut target_pool = target.clone();
    if let Some(f) = &m.format {
        if !matches!(f.as_str(), "raw" | "qcow2" | "vmdk") {
            return Err(ApiError::bad_field("format", format!("{f:?} is not raw, qcow2 or vmdk")));
        }
        if !matches!(
            target.kind,
            horcrux_core::StorageKind::Dir { .. } | horcrux_core::StorageKind::Nfs { .. }
        ) {
            if f != "raw" {
                return Err(ApiError::bad_field(
                    "format",
                    format!("storage {} holds raw volumes only", m.storage),
                ));
            }
        } else {
            target_pool.config.options.insert("format".into(), f.clone());
        }
    }
    if m.storage == disk.storage && m.format.is_none() {
        return Err(ApiError::bad_field("storage", format!("disk {} is already on {}", m.disk, m.storage)));
    }
    let index = spec.free_disk_index(&[]);
    let task = st.runtime.tasks().create("qmmove", &vmid.to_string(), caller.user());
    let started = std::time::Instant::now();
    let fail = |msg: String| {
        task.finish(Err::<(), String>(msg.clone()));
        ApiError::internal(msg)
    };
    let dst_store = st.runtime.volume_store(&target_pool);
    let new = dst_store
        .alloc(vmid, index, disk.size_mib)
        .await
        .map_err(|e| fail(format!("allocating on {}: {e}", m.storage)))?;
    task.log(format!("allocated {new}"));
    let src_pool =
        state.storage.get(&disk.storage).ok_or_else(|| fail(format!("storage {} is gone", disk.storage)))?;
    let src = st.runtime.volume_store(src_pool).source(&source).map_err(|e| fail(e.to_string()))?;
    let running = st.runtime.observed(vmid).power != ObservedPower::Stopped;
    let copied = if running {
        let dst = dst_store.source(&new).map_err(|e| fail(e.to_string()))?;
        task.log(format!("mirroring {} to {new} while the guest runs", m.disk));
        let t = task.clone();
        let log = move |l: String| t.log(l);
        st.runtime.hypervisor().mirror_disk(vmid, &m.disk, &dst, &log).await
    } else {
        task.log(format!("copying {source} to {new}"));
        dst_store.import_from(&new, &src).await
    };
    if let Err(e) = copied {
        let _ = dst_store.free(&new).await;
        return Err(fail(format!("moving {}: {e}", m.disk)));
    }
    spec.disks[i].storage = m.storage.clone();
    spec.disks[i].volume = Some(new.clone());
    spec.disks[i].slot = Some(m.disk.clone());
    if !m.delete {
        spec.unused.push(source.clone());
    }
    let cmd = Command::UpdateGuest {
        vmid,
        expected_revision: Some(g.revision),
        name: g.name.clone(),
        config: GuestConfig::Qemu(spec),
    };
    match cluster.propose(cmd).await {
        Ok(ok) => {
            if m.delete {
                match st.runtime.volume_store(src_pool).free(&source).await {
                    Ok(()) => task.log(format!("freed {source}")),
                    Err(e) => task.log(format!("freeing {source}: {e}")),
                }
            } else {
                task.log(format!("{source} kept as unused{}", g.vm_spec().unused.len()));
            }
            task.log(format!("{} is on {new} ({} ms)", m.disk, started.elapsed().as_millis()));
            task.finish(Ok::<(), String>(()));
            Ok(Json(json!({ "upid": task.upid(), "revision": ok.revision, "volume": new })))
        }
        Err(e) => {
            // Not recorded: while stopped the copy goes; a running guest already uses it,
            // so it stays (and the error says so).
            if !running {
                let _ = dst_store.free(&new).await;
            }
            task.finish(Err::<(), String>(format!(
                "the disk was copied to {new} but the config was not updated: {e}"
            )));
            Err(e.into())
        }
    }
}

/// `move_disk` with `target_vmid`: the volume is renamed for the other guest (its disk
/// `vm-TO-disk-N`) and both configurations change in one committed entry. The source must
/// be stopped (or the volume one of its `unusedN`); both guests on this node.
async fn reassign(
    st: &ApiState,
    caller: &Caller,
    state: &horcrux_core::ClusterState,
    vmid: u32,
    to: u32,
    m: &Move,
) -> Result<Json<Value>, ApiError> {
    crate::authz::require(state, caller, "VM.Config.Disk", &format!("/vms/{to}"))?;
    let g =
        state.guests.get(&vmid).ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let t = state
        .guests
        .get(&to)
        .ok_or_else(|| ApiError::bad_field("target-vmid", format!("guest {to} does not exist")))?;
    if t.node != g.node {
        return Err(ApiError::bad_field(
            "target-vmid",
            format!("guest {to} is on {}, not {}", t.node, g.node),
        ));
    }
    let mut from_spec = g.vm_spec().clone();
    // Slots made explicit: the disks after the one that goes keep theirs.
    let slots = from_spec.disk_slots();
    for (d, slot) in from_spec.disks.iter_mut().zip(slots) {
        d.slot = Some(slot);
    }
    let unused = m.disk.strip_prefix("unused").and_then(|n| n.parse::<usize>().ok());
    let (volid, disk) = match unused {
        Some(n) => {
            let v = from_spec
                .unused
                .get(n)
                .cloned()
                .ok_or_else(|| ApiError::bad_field("disk", format!("guest {vmid} has no {}", m.disk)))?;
            from_spec.unused.remove(n);
            (v, None)
        }
        None => {
            let (_, i) = guest_disk(state, vmid, &m.disk)?;
            if g.desired.is_running() || st.runtime.observed(vmid).power != ObservedPower::Stopped {
                return Err(ApiError::conflict(format!(
                    "guest {vmid} is running; stop it to hand its disk over"
                )));
            }
            let d = from_spec.disks.remove(i);
            (
                d.volume
                    .clone()
                    .ok_or_else(|| ApiError::conflict(format!("disk {} has no volume", m.disk)))?,
                Some(d),
            )
        }
    };
    let storage = volid.split(':').next().unwrap_or_default().to_string();
    if !m.storage.is_empty() && m.storage != storage {
        return Err(ApiError::bad_field("storage", "give either a storage or a target guest"));
    }
    crate::authz::require(state, caller, "Datastore.AllocateSpace", &format!("/storage/{storage}"))?;
    let pool = state
        .storage
        .get(&storage)
        .ok_or_else(|| ApiError::conflict(format!("storage {storage} is gone")))?;
    let mut to_spec = t.vm_spec().clone();
    let slots = to_spec.disk_slots();
    for (d, slot) in to_spec.disks.iter_mut().zip(slots) {
        d.slot = Some(slot);
    }
    let target_slot = m.target_disk.clone().or_else(|| disk.as_ref().map(|_| m.disk.clone()));
    if let Some(slot) = &target_slot {
        horcrux_core::vmconfig::parse_disk_slot("target-disk", slot)?;
        let taken = to_spec.disk_slots().contains(slot) || to_spec.cdroms.iter().any(|c| &c.slot == slot);
        if taken {
            return Err(ApiError::bad_field("target-disk", format!("guest {to} already has {slot}")));
        }
    }
    let index = to_spec.free_disk_index(&[]);
    let task = st.runtime.tasks().create("qmmove", &vmid.to_string(), caller.user());
    let store = st.runtime.volume_store(pool);
    let new = match store.rename(&volid, to, index).await {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("handing {volid} to guest {to}: {e}");
            task.finish(Err::<(), String>(msg.clone()));
            return Err(ApiError::conflict(msg));
        }
    };
    task.log(format!("renamed {volid} to {new}"));
    match (disk, target_slot) {
        (Some(mut d), Some(slot)) => {
            d.volume = Some(new.clone());
            d.slot = Some(slot);
            to_spec.disks.push(d);
        }
        _ => to_spec.unused.push(new.clone()),
    }
    let cmd = Command::ReassignDisk {
        from: vmid,
        from_revision: g.revision,
        from_config: GuestConfig::Qemu(from_spec),
        to,
        to_revision: t.revision,
        to_config: GuestConfig::Qemu(to_spec),
    };
    match st.runtime.cluster().propose(cmd).await {
        Ok(ok) => {
            task.log(format!("{} of guest {vmid} is now {new} of guest {to}", m.disk));
            task.finish(Ok::<(), String>(()));
            Ok(Json(json!({ "upid": task.upid(), "revision": ok.revision, "volume": new })))
        }
        Err(e) => {
            // Not recorded: the volume goes back to its name (a guest still refers to it).
            let back = match ids::disk_index(&volid) {
                Some(i) => store.rename(&new, vmid, i).await.map(|_| ()),
                None => Ok(()),
            };
            task.finish(Err::<(), String>(format!("not handed over: {e}; renamed back: {back:?}")));
            Err(e.into())
        }
    }
}
