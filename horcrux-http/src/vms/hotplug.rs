//! Configuration changes of a running guest: what its `hotplug` option allows (disks on
//! virtio and scsi, network cards) is applied to it at once; the rest waits for the next
//! start and is answered as pending (`GET /vms/{vmid}/pending`, Proxmox's
//! `/nodes/{node}/qemu/{vmid}/pending`): the difference between the committed
//! configuration and the one the guest runs with.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use horcrux_actors::Hotplug;
use horcrux_core::vmconfig::{self, NetSpec};
use horcrux_core::{ClusterState, ObservedPower, VmSpec};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::ApiState;

/// One hot-plug pass at a time: each brings the running guest towards the configuration
/// committed when it runs, so passes of changes made in quick succession cannot undo each
/// other.
static PASS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Applies to running guest `vmid` what its committed configuration adds or removes and
/// its `hotplug` option allows, one device at a time, logging each; a device that fails
/// stays pending.
pub(crate) async fn apply(st: &ApiState, vmid: u32, log: &(dyn Fn(String) + Sync)) {
    let _pass = PASS.lock().await;
    if st.runtime.observed(vmid).power == ObservedPower::Stopped {
        return;
    }
    let committed = st
        .runtime
        .cluster()
        .read_local(|s: &ClusterState| s.guests.get(&vmid).map(|g| (g.vm_spec().clone(), s.storage.clone())));
    let Some((new, storage)) = committed else { return };
    let new = &new;
    let hv = st.runtime.hypervisor();
    let Some(running) = hv.running_spec(vmid) else { return };
    let features = vmconfig::hotplug_features(new.options.get("hotplug").map(String::as_str));
    if features.disk {
        let attached = |spec: &VmSpec| -> Vec<(String, Option<String>)> {
            spec.disk_slots().into_iter().zip(spec.disks.iter().map(|d| d.volume.clone())).collect()
        };
        let (before, after) = (attached(&running), attached(new));
        // The hypervisor refuses the buses that cannot (IDE, SATA): those stay pending.
        for (slot, vol) in before.iter().filter(|b| !after.contains(b)) {
            match hv.hotplug(vmid, Hotplug::RemoveDisk { slot }).await {
                Ok(()) => log(format!("hot-unplugged {slot} ({})", vol.as_deref().unwrap_or("-"))),
                Err(e) => log(format!("{slot} stays until the next start: {e}")),
            }
        }
        for (i, (slot, vol)) in after.iter().enumerate().filter(|(_, a)| !before.contains(a)) {
            let Some(volid) = vol else { continue };
            let Some(pool) = storage.get(&new.disks[i].storage) else { continue };
            let source = match st.runtime.volume_store(pool).source(volid) {
                Ok(s) => s,
                Err(e) => {
                    log(format!("{slot} is pending: {e}"));
                    continue;
                }
            };
            let change = Hotplug::AddDisk { disk: &new.disks[i], slot, source: &source };
            match hv.hotplug(vmid, change).await {
                Ok(()) => log(format!("hot-plugged {slot} ({volid})")),
                Err(e) => log(format!("{slot} is pending until the next start: {e}")),
            }
        }
    }
    // A CD-ROM's medium changes at once, whatever hotplug says (as in Proxmox); a new
    // drive waits for the next start.
    for cd in new.cdroms.iter().filter(|c| !running.cdroms.contains(c)) {
        if !running.cdroms.iter().any(|r| r.slot == cd.slot) {
            log(format!("{} is pending until the next start: a CD-ROM drive is added at a start", cd.slot));
            continue;
        }
        let source = match &cd.volume {
            None => None,
            Some(volid) => {
                let pool = storage.get(volid.split(':').next().unwrap_or_default());
                match pool.map(|p| st.runtime.volume_store(p).source(volid)) {
                    Some(Ok(s)) => Some(s),
                    Some(Err(e)) => {
                        log(format!("{} is pending: {e}", cd.slot));
                        continue;
                    }
                    None => continue,
                }
            }
        };
        match hv.hotplug(vmid, Hotplug::ChangeMedium { cdrom: cd, source: source.as_ref() }).await {
            Ok(()) => log(format!("{} now holds {}", cd.slot, cd.volume.as_deref().unwrap_or("nothing"))),
            Err(e) => log(format!("{} is pending until the next start: {e}", cd.slot)),
        }
    }
    if features.network {
        let changed = |n: &NetSpec, other: &VmSpec| !other.nets.iter().any(|o| o == n);
        for n in running.nets.iter().filter(|n| changed(n, new)) {
            match hv.hotplug(vmid, Hotplug::RemoveNic(n.index)).await {
                Ok(()) => log(format!("hot-unplugged net{}", n.index)),
                Err(e) => log(format!("net{} stays until the next start: {e}", n.index)),
            }
        }
        for n in new.nets.iter().filter(|n| changed(n, &running)) {
            match hv.hotplug(vmid, Hotplug::AddNic(n)).await {
                Ok(()) => log(format!("hot-plugged net{}", n.index)),
                Err(e) => log(format!("net{} is pending until the next start: {e}", n.index)),
            }
        }
    }
}

/// A configuration in Proxmox's keys and property strings (what `GET .../config` answers,
/// without the name and digest).
fn keys(spec: &VmSpec) -> serde_json::Map<String, Value> {
    let native = json!({
        "memory_mib": spec.memory_mib, "cores": spec.cores, "sockets": spec.sockets,
        "disks": spec.disks.iter().zip(spec.disk_slots()).map(|(d, slot)| {
            let mut d = json!(d);
            d["slot"] = slot.into();
            d
        }).collect::<Vec<_>>(),
        "nets": spec.nets, "unused": spec.unused, "cdroms": spec.cdroms, "options": spec.options,
        "arch": spec.arch.as_deref().unwrap_or(horcrux_core::arch::DEFAULT_ARCH),
    });
    let Value::Object(mut m) = super::compat::pve_config(&native) else { return Default::default() };
    for k in ["name", "digest"] {
        m.remove(k);
    }
    m
}

/// Proxmox's pending list: each key with its current value (`value`, what the guest runs
/// with), its pending one (`pending`) where they differ, and `delete: 1` where the key
/// goes at the next start. A stopped guest has nothing pending.
pub(crate) fn pending(running: Option<&VmSpec>, stored: &VmSpec) -> Vec<Value> {
    let after = keys(stored);
    let before = running.map(keys).unwrap_or_else(|| after.clone());
    let mut all: Vec<&String> = before.keys().chain(after.keys()).collect();
    all.sort();
    all.dedup();
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    all.into_iter()
        .map(|k| {
            let mut e = json!({ "key": k });
            match (before.get(k), after.get(k)) {
                (Some(b), Some(a)) => {
                    e["value"] = json!(text(b));
                    if a != b {
                        e["pending"] = json!(text(a));
                    }
                }
                (Some(b), None) => {
                    e["value"] = json!(text(b));
                    e["delete"] = json!(1);
                }
                (None, Some(a)) => e["pending"] = json!(text(a)),
                (None, None) => {}
            }
            e
        })
        .collect()
}

/// `GET /api/v1/vms/{vmid}/pending` (on the guest's owner).
pub(crate) async fn get_pending(
    State(st): State<ApiState>,
    Extension(_caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = crate::state::parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(|s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let running = match st.runtime.observed(vmid).power {
        ObservedPower::Stopped => None,
        _ => st.runtime.hypervisor().running_spec(vmid),
    };
    Ok(Json(json!(pending(running.as_ref(), g.vm_spec()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_lists_changed_added_and_deleted_keys() {
        let mut running = VmSpec::default();
        running.options.insert("onboot".into(), "1".into());
        let mut stored = running.clone();
        stored.memory_mib = 1024;
        stored.options.clear();
        stored.cdroms.push(horcrux_core::CdromSpec { slot: "ide2".into(), volume: None });
        let p = pending(Some(&running), &stored);
        let find = |k: &str| p.iter().find(|e| e["key"] == k).cloned().unwrap();
        assert_eq!(find("memory"), json!({"key": "memory", "value": "512", "pending": "1024"}));
        assert_eq!(find("onboot"), json!({"key": "onboot", "value": "1", "delete": 1}));
        assert_eq!(find("ide2"), json!({"key": "ide2", "pending": "none,media=cdrom"}));
        assert_eq!(find("cores"), json!({"key": "cores", "value": "1"}));
        // Stopped: nothing pending.
        assert!(pending(None, &stored)
            .iter()
            .all(|e| e.get("pending").is_none() && e.get("delete").is_none()));
    }
}
