//! `horcrux vm disk ...` and `horcrux vm snapshot ...`: a VM's disks and snapshots (like
//! `qm disk resize|move|unlink` and `qm snapshot|listsnapshot|rollback|delsnapshot`).

use clap::Subcommand;
use serde_json::{json, Value};

use crate::cli::run_task;
use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Add a disk: `horcrux vm disk add 100 --storage local --size 1024 [--slot scsi1]`.
    Add {
        vmid: u32,
        #[arg(long)]
        storage: String,
        /// Size in MiB.
        #[arg(long)]
        size: u64,
        /// virtioN, scsiN, sataN or ideN (default: the next virtio).
        #[arg(long)]
        slot: Option<String>,
    },
    /// Grow a disk: `horcrux vm disk resize 100 virtio0 +1G` (or an absolute `10G`).
    Resize { vmid: u32, disk: String, size: String },
    /// Move a disk to another storage (online while the VM runs):
    /// `horcrux vm disk move 100 virtio0 tank [--format raw] [--delete]`.
    Move {
        vmid: u32,
        disk: String,
        storage: String,
        #[arg(long)]
        format: Option<String>,
        /// Free the source afterwards (otherwise it is kept as unusedN).
        #[arg(long)]
        delete: bool,
    },
    /// Detach a disk (hot-unplugged from a running VM where hotplug allows): its volume
    /// becomes unusedN, or is freed with `--purge`. `horcrux vm disk detach 100 virtio1`.
    Detach {
        vmid: u32,
        disk: String,
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot (`--vmstate`: with the RAM of a running VM).
    Create {
        vmid: u32,
        name: String,
        #[arg(long)]
        vmstate: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The snapshots as a tree, with `current`.
    List { vmid: u32 },
    /// Roll back (the VM is stopped first; `--start` starts it after).
    Rollback {
        vmid: u32,
        name: String,
        #[arg(long)]
        start: bool,
    },
    /// Delete a snapshot (`--force`: forget it even if a disk's snapshot is gone).
    Delete {
        vmid: u32,
        name: String,
        #[arg(long)]
        force: bool,
    },
}

pub fn run_disk(c: &ApiClient, cmd: DiskCmd) -> anyhow::Result<()> {
    match cmd {
        DiskCmd::Add { vmid, storage, size, slot } => {
            let mut disk = json!({ "storage": storage, "size_mib": size });
            if let Some(s) = slot {
                disk["slot"] = json!(s);
            }
            let r = c.put(&format!("/vms/{vmid}/config"), &json!({ "add_disks": [disk] }))?;
            println!(
                "added {}",
                r["added"].as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("")
            );
            Ok(())
        }
        DiskCmd::Resize { vmid, disk, size } => {
            let r = c.put(&format!("/vms/{vmid}/resize"), &json!({ "disk": disk, "size": size }))?;
            run_task(c, r, &format!("resize {disk} of VM {vmid}"))
        }
        DiskCmd::Move { vmid, disk, storage, format, delete } => {
            let mut body = json!({ "disk": disk, "storage": storage, "delete": delete });
            if let Some(f) = format {
                body["format"] = json!(f);
            }
            let r = c.post(&format!("/vms/{vmid}/move_disk"), &body)?;
            run_task(c, r, &format!("move {disk} of VM {vmid} to {storage}"))
        }
        DiskCmd::Detach { vmid, disk, purge } => {
            let body = json!({ "delete": [disk], "purge": purge });
            let r = c.put(&format!("/vms/{vmid}/config"), &body)?;
            run_task(c, r, &format!("detach {disk} of VM {vmid}"))
        }
    }
}

/// Prints the snapshot tree: children under their parent, `current` where it is.
fn print_tree(list: &[Value], parent: Option<&str>, depth: usize) {
    for s in list.iter().filter(|s| s["parent"].as_str() == parent) {
        let name = s["name"].as_str().unwrap_or("");
        let ram = if s["vmstate"] == 1 { " (with RAM)" } else { "" };
        let desc = s["description"].as_str().unwrap_or("");
        println!("{}`-> {name}{ram} {desc}", "  ".repeat(depth));
        if name != "current" {
            print_tree(list, Some(name), depth + 1);
        }
    }
}

pub fn run_snapshot(c: &ApiClient, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create { vmid, name, vmstate, description } => {
            let body = json!({ "snapname": name, "vmstate": vmstate, "description": description });
            run_task(
                c,
                c.post(&format!("/vms/{vmid}/snapshots"), &body)?,
                &format!("snapshot {name} of VM {vmid}"),
            )
        }
        SnapshotCmd::List { vmid } => {
            let list = c.get(&format!("/vms/{vmid}/snapshots"))?;
            print_tree(list.as_array().map(Vec::as_slice).unwrap_or_default(), None, 0);
            Ok(())
        }
        SnapshotCmd::Rollback { vmid, name, start } => {
            let r = c.post(&format!("/vms/{vmid}/snapshots/{name}/rollback"), &json!({ "start": start }))?;
            run_task(c, r, &format!("rollback of VM {vmid} to {name}"))
        }
        SnapshotCmd::Delete { vmid, name, force } => {
            let r = c.delete_with(&format!("/vms/{vmid}/snapshots/{name}"), &json!({ "force": force }))?;
            run_task(c, r, &format!("delete snapshot {name} of VM {vmid}"))
        }
    }
}
