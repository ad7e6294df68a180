//! `PUT /api/v1/vms/{vmid}/config`: change a guest's configuration. Runs on the owner (the
//! forwarding layer carries it there), because new disks are allocated on its storage.
//! The change is compare-and-set on the revision the handler read (or the caller gave), so
//! two concurrent edits never silently overwrite each other. A running guest gets the
//! disks and cards its `hotplug` option allows at once (`hotplug.rs`); every other change
//! applies at its next start and is listed as pending until then.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use horcrux_core::{ids, Command, DiskSpec, GuestConfig, VmSpec};
use horcrux_raft::ProposeError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{NewDisk, NewNet};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigChange {
    /// Refuse the change (409) unless the guest is still at this revision.
    revision: Option<u64>,
    name: Option<String>,
    memory_mib: Option<u64>,
    cores: Option<u32>,
    sockets: Option<u32>,
    /// Network cards to add or replace, by index.
    #[serde(default)]
    nets: Vec<NewNet>,
    /// New disks, allocated on the owner's storage.
    #[serde(default)]
    add_disks: Vec<NewDisk>,
    /// CD-ROM drives to add or change, by slot (a new ISO, or none: empty).
    #[serde(default)]
    cdroms: Vec<horcrux_core::CdromSpec>,
    /// Options to set (`""` removes one).
    #[serde(default)]
    options: BTreeMap<String, String>,
    /// Keys to remove: `netN`, `arch`, `emulation`, an option name, a disk's slot (its
    /// volume becomes `unusedN`) or `unusedN` (its volume is freed).
    #[serde(default)]
    delete: Vec<String>,
    /// Free the volumes of the disks `delete` detaches instead of keeping them as unused
    /// (Proxmox's `unlink` with `force`).
    #[serde(default)]
    purge: bool,
    arch: Option<String>,
    emulation: Option<horcrux_core::arch::Emulation>,
}

/// Whether `k` names a disk slot (`virtio0`, `scsi3`, ...).
fn vmconfig_disk_slot(k: &str) -> bool {
    horcrux_core::vmconfig::parse_disk_slot("delete", k).is_ok()
}

/// The privileges a change needs, as Proxmox checks them per key: (privilege, ACL path).
fn needed(change: &ConfigChange, vmid: u32) -> Vec<(&'static str, String)> {
    let vm = format!("/vms/{vmid}");
    let mut out = Vec::new();
    if change.memory_mib.is_some() {
        out.push(("VM.Config.Memory", vm.clone()));
    }
    if change.cores.is_some() || change.sockets.is_some() {
        out.push(("VM.Config.CPU", vm.clone()));
    }
    if !change.nets.is_empty() || change.delete.iter().any(|k| k.starts_with("net")) {
        out.push(("VM.Config.Network", vm.clone()));
    }
    let is_disk = |k: &str| k.starts_with("unused") || vmconfig_disk_slot(k);
    if !change.add_disks.is_empty() || change.delete.iter().any(|k| is_disk(k)) {
        out.push(("VM.Config.Disk", vm.clone()));
    }
    // As Proxmox: the media of a CD-ROM drive is VM.Config.CDROM's.
    if !change.cdroms.is_empty() {
        out.push(("VM.Config.CDROM", vm.clone()));
    }
    if change.arch.is_some()
        || change.emulation.is_some()
        || change.delete.iter().any(|k| k == "arch" || k == "emulation")
    {
        out.push(("VM.Config.HWType", vm.clone()));
    }
    for d in &change.add_disks {
        out.push(("Datastore.AllocateSpace", format!("/storage/{}", d.storage)));
    }
    if change.name.is_some()
        || !change.options.is_empty()
        || change
            .delete
            .iter()
            .any(|k| !k.starts_with("net") && k != "arch" && k != "emulation" && !is_disk(k))
    {
        out.push(("VM.Config.Options", vm));
    }
    out
}

pub async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let change: ConfigChange = parse_body(&body)?;
    let cluster = st.runtime.cluster();
    let state = cluster.read_linearizable(|s| s.clone()).await?;
    for (privilege, path) in needed(&change, vmid) {
        crate::authz::require(&state, &caller, privilege, &path)?;
    }
    let g =
        state.guests.get(&vmid).ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if let Some(r) = change.revision {
        if r != g.revision {
            return Err(ApiError::conflict(format!(
                "guest {vmid} changed: revision is {}, not {r}",
                g.revision
            )));
        }
    }
    let mut spec: VmSpec = g.vm_spec().clone();
    let name = change.name.unwrap_or_else(|| g.name.clone());
    ids::validate_dns_label("name", &name)?;
    spec.memory_mib = change.memory_mib.unwrap_or(spec.memory_mib);
    spec.cores = change.cores.unwrap_or(spec.cores);
    spec.sockets = change.sockets.unwrap_or(spec.sockets);
    // Slots made explicit: removing a disk must not renumber the implicit `virtioN` of
    // the ones after it.
    let slots = spec.disk_slots();
    for (d, slot) in spec.disks.iter_mut().zip(slots) {
        d.slot = Some(slot);
    }
    let old_unused = spec.unused.clone();
    let mut freed: Vec<String> = Vec::new();
    for key in &change.delete {
        if let Some(i) = key.strip_prefix("unused").and_then(|n| n.parse::<usize>().ok()) {
            let volid = old_unused
                .get(i)
                .ok_or_else(|| ApiError::bad_field("delete", format!("guest {vmid} has no {key}")))?;
            spec.unused.retain(|v| v != volid);
            freed.push(volid.clone());
            continue;
        }
        if spec.cdroms.iter().any(|c| &c.slot == key) {
            spec.cdroms.retain(|c| &c.slot != key);
            continue;
        }
        if let Some(i) = spec.disks.iter().position(|d| d.slot.as_deref() == Some(key.as_str())) {
            let d = spec.disks.remove(i);
            if let Some(v) = d.volume {
                if !super::attach::owned(vmid, &v) {
                    // A LUN the guest only used: detached, left on the target.
                } else if change.purge {
                    freed.push(v);
                } else {
                    spec.unused.push(v);
                }
            }
            continue;
        }
        if key == "arch" {
            spec.arch = None;
        } else if key == "emulation" {
            spec.emulation = Default::default();
        } else if let Some(index) = key.strip_prefix("net").and_then(|n| n.parse::<u8>().ok()) {
            spec.nets.retain(|n| n.index != index);
        } else if horcrux_core::vmconfig::KEPT_OPTIONS.contains(&key.as_str()) {
            spec.options.remove(key);
        } else {
            return Err(ApiError::bad_field("delete", format!("{key:?} cannot be removed")));
        }
    }
    if st.runtime.observed(vmid).power != horcrux_core::ObservedPower::Stopped {
        // A volume the running guest still has attached (not hot-unplugged) stays.
        let attached = st.runtime.hypervisor().running_spec(vmid).unwrap_or_else(|| g.vm_spec().clone());
        let in_use = |v: &String| attached.disks.iter().any(|d| d.volume.as_ref() == Some(v));
        if let Some(v) = freed.iter().find(|v| in_use(v)) {
            return Err(ApiError::conflict(format!(
                "guest {vmid} is running with {v} attached: detach it first (hot-unplug), or stop the guest"
            )));
        }
    }
    for n in change.nets {
        let n = n.into_spec();
        spec.nets.retain(|x| x.index != n.index);
        spec.nets.push(n);
    }
    spec.nets.sort_by_key(|n| n.index);
    for (k, v) in change.options {
        if v.is_empty() {
            spec.options.remove(&k);
        } else {
            spec.options.insert(k, v);
        }
    }
    for c in &change.cdroms {
        spec.cdroms.retain(|x| x.slot != c.slot);
        spec.cdroms.push(c.clone());
    }
    super::attach::check_cdroms(&st, &state, &caller, &change.cdroms).await?;
    let first_new = spec.disks.len();
    // New disks filled from an image (an import volume, another guest's disk), each at
    // least as large as it: index in spec.disks -> source volume.
    let mut imports = BTreeMap::new();
    for (i, d) in change.add_disks.iter().enumerate() {
        if let Some(src) = &d.import_from {
            let field = format!("add_disks[{i}].import_from");
            if d.volume.is_some() {
                return Err(ApiError::bad_field(field, "a disk either uses a volume or imports one"));
            }
            let size = super::import_size(&st, &state, &caller, &field, src).await?;
            imports.insert(spec.disks.len(), (src.clone(), size.div_ceil(1 << 20)));
        }
        if !state.storage.contains_key(&d.storage) {
            return Err(ApiError::bad_field(
                format!("add_disks[{i}].storage"),
                format!("unknown storage {:?}", d.storage),
            ));
        }
        let slot = d.slot.clone().unwrap_or_else(|| format!("virtio{}", spec.disks.len()));
        let size_mib = match &d.volume {
            Some(v) => {
                let field = format!("add_disks[{i}].volume");
                let size =
                    super::attach::attached_size_mib(&st, &state, vmid, &spec.unused, &field, &d.storage, v)
                        .await?;
                // An unused volume attached again is no longer unused.
                spec.unused.retain(|u| u != v);
                size
            }
            None => imports.get(&spec.disks.len()).map_or(d.size_mib, |(_, mib)| d.size_mib.max(*mib)),
        };
        spec.disks.push(DiskSpec {
            storage: d.storage.clone(),
            size_mib,
            volume: d.volume.clone(),
            slot: Some(slot),
            format: d.format.clone(),
        });
    }
    if let Some(a) = change.arch {
        spec.arch = Some(a);
    }
    if let Some(e) = change.emulation {
        spec.emulation = e;
    }
    spec.validate()?;
    horcrux_core::vmconfig::validate_option_values(&spec.options)?;
    super::check_arch(&state, &g.node, &spec)?;

    // Allocate the new disks under names no other disk of the guest uses.
    let mut allocated: Vec<(String, String)> = Vec::new();
    // Each new disk takes an index no disk, unused volume or volume being freed has.
    let freed_names: Vec<&str> = freed.iter().map(String::as_str).collect();
    for i in first_new..spec.disks.len() {
        if spec.disks[i].volume.is_some() {
            continue;
        }
        let index = spec.free_disk_index(&freed_names);
        let d = &spec.disks[i];
        let pool = match state.storage[&d.storage].for_format("format", d.format.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                free(&st, &state, &allocated).await;
                return Err(e.into());
            }
        };
        match (st.runtime.volumes())(&pool).alloc(vmid, index, d.size_mib).await {
            Ok(volid) => {
                allocated.push((d.storage.clone(), volid.clone()));
                spec.disks[i].volume = Some(volid.clone());
                if let Some((src, _)) = imports.get(&i) {
                    if let Err(e) = import(&st, &state, &pool, &volid, src).await {
                        free(&st, &state, &allocated).await;
                        return Err(ApiError::internal(format!("importing {src} into {volid}: {e}")));
                    }
                }
            }
            Err(e) => {
                free(&st, &state, &allocated).await;
                return Err(ApiError::internal(format!("allocating a disk on {}: {e}", d.storage)));
            }
        }
    }
    let cmd = Command::UpdateGuest {
        vmid,
        expected_revision: Some(g.revision),
        name,
        config: GuestConfig::Qemu(spec),
    };
    match cluster.propose(cmd).await {
        Ok(ok) => {
            // A finished task, so Proxmox's asynchronous form (POST .../config) has a UPID.
            let task = st.runtime.tasks().create("qmconfig", &vmid.to_string(), caller.user());
            for (_, v) in &allocated {
                task.log(format!("allocated {v}"));
            }
            // Volumes nothing refers to any more go once the change is committed.
            for volid in &freed {
                let storage = volid.split(':').next().unwrap_or_default();
                match state.storage.get(storage) {
                    Some(pool) => match st.runtime.volume_store(pool).free(volid).await {
                        Ok(()) => task.log(format!("freed {volid}")),
                        Err(e) => task.log(format!("freeing {volid}: {e}")),
                    },
                    None => task.log(format!("{volid}: its storage is gone")),
                }
            }
            task.log(format!("guest {vmid} configuration updated (revision {})", ok.revision));
            // A running guest gets what hotplug allows (the task ends once it has; a
            // guest slow to give a device up does not hold the answer); the rest is pending.
            let (st2, t) = (st.clone(), task.clone());
            tokio::spawn(async move {
                let log = |l: String| t.log(l);
                super::hotplug::apply(&st2, vmid, &log).await;
                t.finish(Ok::<(), String>(()));
            });
            let added: Vec<&String> = allocated.iter().map(|(_, v)| v).collect();
            Ok(Json(json!({ "revision": ok.revision, "added": added, "upid": task.upid() })))
        }
        Err(e) => {
            // Refused: nothing refers to the new volumes. Unknown outcome: keep them (the
            // change may have committed) and say so.
            if matches!(e, ProposeError::Rejected(_)) {
                free(&st, &state, &allocated).await;
            }
            Err(e.into())
        }
    }
}

/// Copies image `src` (of its storage, on this node) into the new volume `volid` of `pool`.
async fn import(
    st: &ApiState,
    state: &horcrux_core::ClusterState,
    pool: &horcrux_core::StoragePool,
    volid: &str,
    src: &str,
) -> Result<(), String> {
    let storage = src.split(':').next().unwrap_or_default();
    let src_pool = state.storage.get(storage).ok_or_else(|| format!("storage {storage} is gone"))?;
    let from = st.runtime.volume_store(src_pool).source(src).map_err(|e| e.to_string())?;
    st.runtime.volume_store(pool).import_from(volid, &from).await.map_err(|e| e.to_string())
}

async fn free(st: &ApiState, state: &horcrux_core::ClusterState, allocated: &[(String, String)]) {
    for (storage, volid) in allocated {
        if let Some(pool) = state.storage.get(storage) {
            if let Err(e) = (st.runtime.volumes())(pool).free(volid).await {
                tracing::warn!("freeing {volid} after a refused config change: {e}");
            }
        }
    }
}
