//! `horcrux vm ...`: Proxmox `qm`-like commands over the API, with a progress indicator
//! while a task runs.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum VmCmd {
    /// List VMs.
    List,
    /// Create a VM (stopped).
    Create {
        /// VMID (100..=999999999); the next free one when omitted.
        #[arg(long)]
        vmid: Option<u64>,
        #[arg(long)]
        name: String,
        /// Memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u64,
        #[arg(long, default_value_t = 1)]
        cores: u32,
        /// A disk as STORAGE:SIZE_MIB, e.g. local:64; repeatable.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Direct kernel boot: kernel image, a volume (local:snippets/vmlinuz) or, for
        /// root@pam, an absolute path on the node.
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        #[arg(long, requires = "kernel", default_value = "")]
        cmdline: String,
    },
    /// Start a VM.
    Start { vmid: u32 },
    /// Stop a VM at once (like pulling the plug).
    Stop { vmid: u32 },
    /// Ask the guest to power off; stop it after the timeout.
    Shutdown {
        vmid: u32,
        /// Seconds to wait before stopping hard.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Move a stopped VM (without local disks) to another node.
    Migrate {
        vmid: u32,
        /// The node that will own the VM.
        #[arg(long)]
        target: String,
    },
    /// Delete a stopped VM and its disks.
    Delete { vmid: u32 },
    /// Show a VM's configuration and status.
    Status { vmid: u32 },
    /// A VM's disks: add, resize.
    #[command(subcommand)]
    Disk(crate::cli_disk::DiskCmd),
    /// A VM's snapshots: create, list, rollback, delete.
    #[command(subcommand)]
    Snapshot(crate::cli_disk::SnapshotCmd),
}

fn parse_disk(s: &str) -> anyhow::Result<Value> {
    let (storage, size) =
        s.split_once(':').with_context(|| format!("--disk {s:?}: expected STORAGE:SIZE_MIB"))?;
    let size: u64 = size.parse().with_context(|| format!("--disk {s:?}: size must be a number of MiB"))?;
    Ok(json!({ "storage": storage, "size_mib": size }))
}

/// Polls a task until it stops, showing a spinner on a terminal; fails if the task failed.
fn wait_task(c: &ApiClient, upid: &str, what: &str) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let frames = ['|', '/', '-', '\\'];
    let start = std::time::Instant::now();
    let mut i = 0usize;
    loop {
        let t = c.get(&format!("/tasks/{upid}"))?;
        if t.get("status").and_then(Value::as_str) == Some("stopped") {
            if tty {
                eprint!("\r\x1b[K");
            }
            let exit = t.get("exitstatus").and_then(Value::as_str).unwrap_or("unknown");
            if exit == "OK" {
                eprintln!("{what}: OK ({:.1} s)", start.elapsed().as_secs_f64());
                return Ok(());
            }
            bail!("{what} failed: {exit}");
        }
        if tty {
            eprint!("\r{} {what} ({:.0} s)", frames[i % frames.len()], start.elapsed().as_secs_f64());
            let _ = std::io::stderr().flush();
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn run_task(c: &ApiClient, resp: Value, what: &str) -> anyhow::Result<()> {
    let upid = resp.get("upid").and_then(Value::as_str).context("the server returned no task id")?;
    println!("{upid}");
    wait_task(c, upid, what)
}

pub fn run_vm(c: &ApiClient, cmd: VmCmd) -> anyhow::Result<()> {
    match cmd {
        VmCmd::Disk(cmd) => crate::cli_disk::run_disk(c, cmd),
        VmCmd::Snapshot(cmd) => crate::cli_disk::run_snapshot(c, cmd),
        VmCmd::List => {
            let vms = c.get("/vms")?;
            println!("{:>10} {:<24} {:<8} {:>10} {:>5} NODE", "VMID", "NAME", "STATUS", "MEM(MiB)", "CORES");
            for v in vms.as_array().into_iter().flatten() {
                println!(
                    "{:>10} {:<24} {:<8} {:>10} {:>5} {}",
                    v["vmid"].as_u64().unwrap_or(0),
                    v["name"].as_str().unwrap_or(""),
                    v["status"].as_str().unwrap_or(""),
                    v["memory_mib"].as_u64().unwrap_or(0),
                    v["cores"].as_u64().unwrap_or(0),
                    v["node"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        VmCmd::Create { vmid, name, memory, cores, disks, kernel, initrd, cmdline } => {
            let disks = disks.iter().map(|d| parse_disk(d)).collect::<anyhow::Result<Vec<_>>>()?;
            let mut body = json!({ "name": name, "memory_mib": memory, "cores": cores, "disks": disks });
            if let Some(v) = vmid {
                body["vmid"] = v.into();
            }
            if let Some(k) = kernel {
                body["boot"] = json!({ "kernel": k, "initrd": initrd, "cmdline": cmdline });
            }
            let resp = c.post("/vms", &body)?;
            let vmid = resp["vmid"].clone();
            run_task(c, resp, &format!("create VM {vmid}"))
        }
        VmCmd::Start { vmid } => {
            run_task(c, c.post(&format!("/vms/{vmid}/start"), &json!({}))?, &format!("start VM {vmid}"))
        }
        VmCmd::Stop { vmid } => {
            run_task(c, c.post(&format!("/vms/{vmid}/stop"), &json!({}))?, &format!("stop VM {vmid}"))
        }
        VmCmd::Shutdown { vmid, timeout } => run_task(
            c,
            c.post(&format!("/vms/{vmid}/shutdown"), &json!({ "timeout_s": timeout }))?,
            &format!("shutdown VM {vmid}"),
        ),
        VmCmd::Migrate { vmid, target } => run_task(
            c,
            c.post(&format!("/vms/{vmid}/migrate"), &json!({ "target": target }))?,
            &format!("migrate VM {vmid} to {target}"),
        ),
        VmCmd::Delete { vmid } => {
            run_task(c, c.delete(&format!("/vms/{vmid}"))?, &format!("delete VM {vmid}"))
        }
        VmCmd::Status { vmid } => {
            let v = c.get(&format!("/vms/{vmid}"))?;
            println!("status: {}", v["status"].as_str().unwrap_or("unknown"));
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}
