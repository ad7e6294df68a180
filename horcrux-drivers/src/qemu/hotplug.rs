//! Disks and network cards added to and removed from a running guest, as Proxmox's
//! hot-plug does: a disk's drive is added with the same `-drive` options a start would
//! give it (HMP `drive_add`, so it is `drive-SLOT` like the others and every later QMP
//! command finds it), then its device with `device_add`; a card's tap (or user-mode
//! network) with `netdev_add`, then its device. Removal is `device_del`, which the guest
//! must acknowledge (ACPI PCI hot-plug), then the backend goes. Only virtio and SCSI
//! disks hot-plug (as in Proxmox; IDE and SATA cannot). A CD-ROM drive's medium changes
//! in place (tray opened, medium removed, the new one inserted, tray closed).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hypervisor::{DiskSource, DriverError, Hotplug, Hypervisor};
use crate::qmp::QmpClient;
use std::path::PathBuf;

/// Runs an HMP command through QMP; HMP reports failure as text, not as a QMP error.
async fn hmp(qmp: &QmpClient, line: &str) -> Result<(), DriverError> {
    let out = qmp.execute("human-monitor-command", Some(json!({ "command-line": line }))).await?;
    let text = out.as_str().unwrap_or_default().trim();
    if text.is_empty() || text == "OK" {
        Ok(())
    } else {
        Err(DriverError::Invalid(format!("{}: {text}", line.split_whitespace().next().unwrap_or(line))))
    }
}

/// Whether a slot's bus takes devices while the guest runs.
pub fn hotpluggable_slot(slot: &str) -> bool {
    slot.starts_with("virtio") || slot.starts_with("scsi")
}

/// Adds disk `slot` on `disk` to the running guest.
pub async fn add_disk(qmp: &Arc<QmpClient>, slot: &str, disk: &DiskSource) -> Result<(), DriverError> {
    if !hotpluggable_slot(slot) {
        return Err(DriverError::Invalid(format!("{slot}: only virtio and scsi disks hot-plug")));
    }
    let format = disk.format();
    let drive = match disk {
        DiskSource::File(path) => {
            let open = |write: bool| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(path)
                    .map_err(|e| DriverError::Invalid(format!("{}: {e}", path.display())))
            };
            let (rw, ro) = (open(true)?, open(false)?);
            let opaque = json!({ "opaque": format!("drive-{slot}") });
            let set = qmp.execute_with_fd("add-fd", Some(opaque), rw.as_fd()).await?;
            let set =
                set["fdset-id"].as_u64().ok_or_else(|| DriverError::Invalid("add-fd: no fdset-id".into()))?;
            qmp.execute_with_fd("add-fd", Some(json!({ "fdset-id": set })), ro.as_fd()).await?;
            format!("file=/dev/fdset/{set},if=none,id=drive-{slot},format={format},file.locking=off")
        }
        DiskSource::Net(net) => {
            let mut options = net.options.clone();
            if let Some(s) = &net.secret {
                let id = format!("sec-{slot}");
                let _ = qmp.execute("object-del", Some(json!({ "id": id }))).await;
                let obj = json!({ "qom-type": "secret", "id": id, "data": s.value, "format": s.format });
                qmp.execute("object-add", Some(obj)).await?;
                options.insert(s.option.into(), json!(id));
            }
            let mut drive = format!("if=none,id=drive-{slot},format={format}");
            super::drive::flatten_options("file", &Value::Object(options), &mut drive);
            drive
        }
    };
    let added = hmp(qmp, &format!("drive_add auto \"{drive}\"")).await;
    if let Err(e) = added {
        release_disk(qmp, slot).await;
        return Err(e);
    }
    let n: u32 = slot.trim_start_matches(char::is_alphabetic).parse().unwrap_or(0);
    let device = if slot.starts_with("scsi") {
        ensure_scsi_controller(qmp).await?;
        json!({ "driver": "scsi-hd", "bus": "scsihw0.0", "scsi-id": n, "drive": format!("drive-{slot}"), "id": slot })
    } else {
        json!({ "driver": "virtio-blk-pci", "drive": format!("drive-{slot}"), "id": slot })
    };
    if let Err(e) = qmp.execute("device_add", Some(device)).await {
        let _ = hmp(qmp, &format!("drive_del drive-{slot}")).await;
        release_disk(qmp, slot).await;
        return Err(e.into());
    }
    Ok(())
}

/// The SCSI controller the start adds when a scsi disk exists: added now if none did.
async fn ensure_scsi_controller(qmp: &QmpClient) -> Result<(), DriverError> {
    let peripherals = qmp.execute("qom-list", Some(json!({ "path": "/machine/peripheral" }))).await?;
    let present = peripherals.as_array().into_iter().flatten().any(|p| p["name"] == "scsihw0");
    if !present {
        qmp.execute("device_add", Some(json!({ "driver": "virtio-scsi-pci", "id": "scsihw0" }))).await?;
    }
    Ok(())
}

/// The fd sets and secret a disk's drive was given.
async fn release_disk(qmp: &QmpClient, slot: &str) {
    if let Ok(sets) = qmp.execute("query-fdsets", None).await {
        for set in sets.as_array().into_iter().flatten() {
            let ours =
                set["fds"].as_array().into_iter().flatten().any(|f| f["opaque"] == format!("drive-{slot}"));
            if ours {
                let _ = qmp.execute("remove-fd", Some(json!({ "fdset-id": set["fdset-id"] }))).await;
            }
        }
    }
    let _ = qmp.execute("object-del", Some(json!({ "id": format!("sec-{slot}") }))).await;
}

/// Asks the guest to give up device `id` and waits (at most `timeout`) until it has.
async fn unplug(qmp: &QmpClient, id: &str, timeout: Duration) -> Result<(), DriverError> {
    qmp.execute("device_del", Some(json!({ "id": id }))).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let peripherals = qmp.execute("qom-list", Some(json!({ "path": "/machine/peripheral" }))).await?;
        if !peripherals.as_array().into_iter().flatten().any(|p| p["name"] == id) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DriverError::Invalid(format!(
                "{id}: the guest did not release the device within {} s (does it handle ACPI hot-plug?)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes disk `slot` from the running guest.
pub async fn remove_disk(qmp: &Arc<QmpClient>, slot: &str) -> Result<(), DriverError> {
    if !hotpluggable_slot(slot) {
        return Err(DriverError::Invalid(format!("{slot}: only virtio and scsi disks hot-plug")));
    }
    unplug(qmp, slot, Duration::from_secs(15)).await?;
    // The drive a hot-unplugged device used goes with it; an older QEMU may keep it.
    let _ = hmp(qmp, &format!("drive_del drive-{slot}")).await;
    release_disk(qmp, slot).await;
    Ok(())
}

/// Adds card `net{index}` (`model`, `mac`): on the tap `tap` (already on its bridge) or,
/// without one, user-mode networking.
pub async fn add_nic(
    qmp: &Arc<QmpClient>,
    index: u8,
    model: &str,
    mac: &str,
    tap: Option<std::os::fd::OwnedFd>,
) -> Result<(), DriverError> {
    let id = format!("net{index}");
    let netdev = match &tap {
        Some(fd) => {
            let name = format!("fd-{id}");
            qmp.execute_with_fd("getfd", Some(json!({ "fdname": name })), fd.as_fd()).await?;
            json!({ "type": "tap", "id": id, "fd": name })
        }
        None => json!({ "type": "user", "id": id }),
    };
    qmp.execute("netdev_add", Some(netdev)).await?;
    let driver = if model == "virtio" { "virtio-net-pci" } else { model };
    let device = json!({ "driver": driver, "netdev": id, "mac": mac, "id": id });
    if let Err(e) = qmp.execute("device_add", Some(device)).await {
        let _ = qmp.execute("netdev_del", Some(json!({ "id": id }))).await;
        return Err(e.into());
    }
    Ok(())
}

/// Removes card `net{index}` from the running guest.
pub async fn remove_nic(qmp: &Arc<QmpClient>, index: u8) -> Result<(), DriverError> {
    let id = format!("net{index}");
    unplug(qmp, &id, Duration::from_secs(15)).await?;
    qmp.execute("netdev_del", Some(json!({ "id": id }))).await?;
    Ok(())
}

/// Puts `source` (an ISO; none: nothing) into the CD-ROM drive `slot` of the running guest.
pub async fn change_medium(
    qmp: &Arc<QmpClient>,
    slot: &str,
    source: Option<&DiskSource>,
) -> Result<(), DriverError> {
    let _ = qmp.execute("blockdev-open-tray", Some(json!({ "id": slot, "force": true }))).await;
    qmp.execute("blockdev-remove-medium", Some(json!({ "id": slot }))).await?;
    release_disk(qmp, &format!("cd-{slot}")).await;
    if let Some(source) = source {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let node = format!("cd-{slot}-{:x}", stamp % (1 << 40));
        let file = match source {
            DiskSource::File(path) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| DriverError::Invalid(format!("{}: {e}", path.display())))?;
                let opaque = json!({ "opaque": format!("drive-cd-{slot}") });
                let set = qmp.execute_with_fd("add-fd", Some(opaque), f.as_fd()).await?;
                let set = set["fdset-id"]
                    .as_u64()
                    .ok_or_else(|| DriverError::Invalid("add-fd: no fdset-id".into()))?;
                json!({ "driver": "file", "filename": format!("/dev/fdset/{set}"), "locking": "off" })
            }
            DiskSource::Net(net) => {
                let mut options = net.options.clone();
                if let Some(s) = &net.secret {
                    let id = format!("sec-cd-{slot}");
                    let obj = json!({ "qom-type": "secret", "id": id, "data": s.value, "format": s.format });
                    qmp.execute("object-add", Some(obj)).await?;
                    options.insert(s.option.into(), json!(id));
                }
                Value::Object(options)
            }
        };
        let add = json!({ "driver": "raw", "node-name": node, "read-only": true, "file": file });
        if let Err(e) = qmp.execute("blockdev-add", Some(add)).await {
            release_disk(qmp, &format!("cd-{slot}")).await;
            return Err(e.into());
        }
        qmp.execute("blockdev-insert-medium", Some(json!({ "id": slot, "node-name": node }))).await?;
    }
    qmp.execute("blockdev-close-tray", Some(json!({ "id": slot }))).await?;
    Ok(())
}

/// The running guest's configuration: what it started with, then each hot-plug change.
impl super::QemuDriver {
    /// Where the running guest's configuration is kept (what it started with, then each
    /// hot-plug change): a restarted daemon still tells what is pending.
    pub(super) fn running_spec_path(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(format!("{vmid}.running.json"))
    }

    pub(super) fn save_running_spec(&self, vmid: u32, spec: &horcrux_core::VmSpec) {
        let path = self.running_spec_path(vmid);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(spec)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(vmid, "recording the running configuration: {e}");
        }
    }

    pub(super) async fn hotplug_inner(&self, vmid: u32, change: Hotplug<'_>) -> Result<(), DriverError> {
        let qmp = self.qmp(vmid).await?;
        let mut spec = self.running_spec(vmid).ok_or_else(|| {
            DriverError::Invalid(format!("guest {vmid}: its running configuration is unknown"))
        })?;
        match change {
            Hotplug::AddDisk { disk, slot, source } => {
                add_disk(&qmp, slot, source).await?;
                let mut d = disk.clone();
                d.slot = Some(slot.to_string());
                spec.disks.push(d);
            }
            Hotplug::RemoveDisk { slot } => {
                remove_disk(&qmp, slot).await?;
                let slots = spec.disk_slots();
                let keep: Vec<bool> = slots.iter().map(|s| s != slot).collect();
                let mut it = keep.iter();
                spec.disks.retain(|_| *it.next().unwrap_or(&true));
            }
            Hotplug::AddNic(n) => {
                let tap = match &n.bridge {
                    Some(bridge) => {
                        let name = super::tap_name(vmid, n.index);
                        let fd = super::open_tap(&name)?;
                        super::bridge_tap(&name, bridge).await?;
                        Some(fd)
                    }
                    None => None,
                };
                add_nic(&qmp, n.index, &n.model, &n.macaddr, tap).await?;
                if n.link_down {
                    let args = serde_json::json!({ "name": format!("net{}", n.index), "up": false });
                    qmp.execute("set_link", Some(args)).await?;
                }
                spec.nets.retain(|x| x.index != n.index);
                spec.nets.push(n.clone());
                spec.nets.sort_by_key(|x| x.index);
            }
            Hotplug::RemoveNic(index) => {
                remove_nic(&qmp, index).await?;
                spec.nets.retain(|x| x.index != index);
            }
            Hotplug::ChangeMedium { cdrom, source } => {
                if !spec.cdroms.iter().any(|c| c.slot == cdrom.slot) {
                    return Err(DriverError::Invalid(format!(
                        "{}: a CD-ROM drive is added at a start",
                        cdrom.slot
                    )));
                }
                change_medium(&qmp, &cdrom.slot, source).await?;
                spec.cdroms.retain(|c| c.slot != cdrom.slot);
                spec.cdroms.push(cdrom.clone());
            }
        }
        self.save_running_spec(vmid, &spec);
        Ok(())
    }
}
