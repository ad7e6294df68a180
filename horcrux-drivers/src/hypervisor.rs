//! The seams between actors and the host: a hypervisor that runs guests and a volume store
//! that holds their disks. Production implements them with QEMU and qemu-img; the
//! simulation with seeded in-memory fakes.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use horcrux_core::VmSpec;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Qmp(#[from] crate::qmp::QmpError),
    #[error("{program} failed: {message}")]
    Command { program: String, message: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> Self {
        DriverError::Io(e.to_string())
    }
}

/// Where a guest disk's data is, as QEMU and qemu-img reach it.
#[derive(Clone, PartialEq)]
pub enum DiskSource {
    /// A host file or block device: the daemon opens it and hands QEMU the descriptors.
    File(PathBuf),
    /// A volume QEMU reaches with its own network client (libnfs, libiscsi, librbd).
    Net(NetDisk),
}

/// A network volume: the QEMU protocol block node's options (`{"driver": "iscsi", ...}`),
/// the name qemu-img opens (a URL without credentials), the image format, and the
/// password it needs, if any: handed to QEMU through a descriptor and to qemu-img
/// through its environment, never in an argument vector.
#[derive(Debug, Clone, PartialEq)]
pub struct NetDisk {
    pub options: serde_json::Map<String, serde_json::Value>,
    pub url: String,
    pub format: String,
    pub secret: Option<NetSecret>,
}

/// A password and how the tools take it: QEMU's block node option naming a `secret`
/// object holding `value`, and the environment variable (and its value) qemu-img's and
/// the storage tools' client library reads (`LIBISCSI_CHAP_PASSWORD=PASSWORD`,
/// `CEPH_ARGS=--key=KEY ...`).
#[derive(Clone, PartialEq)]
pub struct NetSecret {
    pub value: String,
    /// How QEMU's `secret` object reads `value`: `raw` (a password) or `base64` (a cephx
    /// key, which QEMU's RBD driver hands on base64-encoded).
    pub format: &'static str,
    pub option: &'static str,
    pub env: (&'static str, String),
}

impl std::fmt::Debug for NetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NetSecret {{ option: {:?}, value: <secret> }}", self.option)
    }
}

impl std::fmt::Debug for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::File(p) => write!(f, "{}", p.display()),
            DiskSource::Net(n) => write!(f, "{} ({})", n.url, n.format),
        }
    }
}

impl DiskSource {
    /// The image format: a file's by its name (qcow2, vmdk; block devices and `.raw`
    /// files are raw), a network volume's as its store says.
    pub fn format(&self) -> &str {
        match self {
            DiskSource::File(p) => match p.extension().and_then(|e| e.to_str()) {
                Some("qcow2") => "qcow2",
                Some("vmdk") => "vmdk",
                _ => "raw",
            },
            DiskSource::Net(n) => &n.format,
        }
    }

    /// What qemu-img opens, and the environment it needs for that.
    pub fn qemu_img(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            DiskSource::File(p) => (p.display().to_string(), Vec::new()),
            DiskSource::Net(n) => (n.url.clone(), n.secret.iter().map(|s| s.env.clone()).collect()),
        }
    }
}

/// A device added to or removed from a running guest.
#[derive(Debug, Clone)]
pub enum Hotplug<'a> {
    AddDisk {
        disk: &'a horcrux_core::DiskSpec,
        slot: &'a str,
        source: &'a DiskSource,
    },
    RemoveDisk {
        slot: &'a str,
    },
    AddNic(&'a horcrux_core::vmconfig::NetSpec),
    RemoveNic(u8),
    /// Another ISO in CD-ROM drive `cdrom.slot` (none: empty it).
    ChangeMedium {
        cdrom: &'a horcrux_core::CdromSpec,
        source: Option<&'a DiskSource>,
    },
}

/// What the host says about a guest right now (defined in core, which the API speaks).
pub use horcrux_core::ObservedPower;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off by itself within the timeout.
    Graceful,
    /// It did not, and was stopped hard.
    Forced,
}

/// Everything a hypervisor needs to launch one guest.
#[derive(Debug, Clone)]
pub struct GuestLaunch {
    pub vmid: u32,
    pub name: String,
    pub spec: VmSpec,
    /// Where the disks are, in the order of `spec.disks`.
    pub disks: Vec<DiskSource>,
    /// Where the CD-ROMs' ISO images are (none: an empty drive), in the order of
    /// `spec.cdroms`.
    pub cdroms: Vec<Option<DiskSource>>,
    /// An HA guest: started by the node's fence (`fence.rs`), which kills it when the
    /// node's lease ends; the start is refused after this monotonic time (the end of the
    /// lease it was decided under). `None`: an ordinary guest, started by the daemon.
    pub ha_until_ms: Option<u64>,
    /// How QEMU runs the guest's architecture (binary, machine, CPU).
    pub arch: horcrux_core::arch::Architecture,
    /// Resume from this internal snapshot's saved state (`-loadvm`): the start after a
    /// rollback to a snapshot with `vmstate`.
    pub loadvm: Option<String>,
}

/// Which console of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKind {
    Vnc,
    Serial,
}

pub trait Hypervisor: Send + Sync + 'static {
    /// Starts the guest; returns once it runs. Starting a running guest is a no-op.
    fn start<'a>(&'a self, launch: &'a GuestLaunch) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Observes the guest, adopting a process left by an earlier daemon if there is one.
    fn status(&self, vmid: u32) -> BoxFuture<'_, Result<ObservedPower, DriverError>>;
    /// Stops the guest at once. Stopping a stopped guest is a no-op.
    fn stop(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>>;
    /// Asks the guest to power off; stops it hard after `timeout`.
    fn shutdown(&self, vmid: u32, timeout: Duration) -> BoxFuture<'_, Result<ShutdownOutcome, DriverError>>;
    /// Resolves when the running guest's process goes away (immediately if none runs).
    fn wait_exit(&self, vmid: u32) -> BoxFuture<'_, ()>;
    /// The running guest's process (its CPU time and memory are read from `/proc`).
    fn pid(&self, vmid: u32) -> Option<u32> {
        let _ = vmid;
        None
    }
    /// Where the guest's serial console is logged.
    fn serial_log(&self, vmid: u32) -> PathBuf;
    /// A new connection to the running guest's console: its VNC server (RFB) or its
    /// serial port (raw bytes both ways).
    fn console(
        &self,
        vmid: u32,
        kind: ConsoleKind,
    ) -> BoxFuture<'_, Result<std::os::unix::net::UnixStream, DriverError>> {
        let _ = (vmid, kind);
        Box::pin(async { Err(DriverError::Invalid("this hypervisor has no console".into())) })
    }
    /// Every guest whose process runs on this host now, whoever started it.
    fn running_guests(&self) -> BoxFuture<'_, Result<Vec<u32>, DriverError>>;
    /// Pauses (`true`) or resumes (`false`) a running guest's vCPUs: Proxmox's
    /// suspend/resume. The process keeps running either way.
    fn set_paused(&self, vmid: u32, paused: bool) -> BoxFuture<'_, Result<(), DriverError>> {
        let _ = (vmid, paused);
        Box::pin(async { Err(DriverError::Invalid("this hypervisor cannot pause guests".into())) })
    }
    /// Runs a QMP command on the running guest (`block_resize`, `blockdev-mirror`, ...).
    fn qmp<'a>(
        &'a self,
        vmid: u32,
        command: &'a str,
        arguments: Option<serde_json::Value>,
    ) -> BoxFuture<'a, Result<serde_json::Value, DriverError>> {
        let _ = (vmid, command, arguments);
        Box::pin(async { Err(DriverError::Invalid("this hypervisor has no QMP".into())) })
    }
    /// Applies one hot-plug change to the running guest.
    fn hotplug<'a>(&'a self, vmid: u32, change: Hotplug<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (vmid, change);
        Box::pin(async { Err(DriverError::Invalid("this hypervisor cannot hot-plug devices".into())) })
    }
    /// The configuration the running guest has: what it was started with, and the
    /// hot-plug changes made since (`None`: not running, or not known).
    fn running_spec(&self, vmid: u32) -> Option<VmSpec> {
        let _ = vmid;
        None
    }
    /// Moves a running guest's disk `slot` onto `target` (a volume the caller allocated)
    /// without stopping it; afterwards the guest uses the target.
    fn mirror_disk<'a>(
        &'a self,
        vmid: u32,
        slot: &'a str,
        target: &'a DiskSource,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (vmid, slot, target, progress);
        Box::pin(async {
            Err(DriverError::Invalid("this hypervisor cannot move disks of a running guest".into()))
        })
    }
    /// Resets a running guest as the reset button does (Proxmox's `status/reset`): the
    /// process keeps running, the guest reboots at once without shutting down.
    fn reset(&self, vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
        let _ = vmid;
        Box::pin(async { Err(DriverError::Invalid("this hypervisor cannot reset guests".into())) })
    }
}

pub use crate::storage::{StoreUsage, VolumeInfo, VolumeStore};
