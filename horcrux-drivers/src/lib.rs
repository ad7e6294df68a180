//! The only code that touches the host: QEMU over QMP, disk images with qemu-img.
//! The actors reach it through the [`Hypervisor`] and [`VolumeStore`] traits so the
//! simulation can swap in deterministic in-memory drivers.

pub mod fence;
pub mod host;
pub mod hypervisor;
mod kvm_probe;
pub mod lxc;
pub mod lxd;
pub mod metrics;
pub mod oci;
pub mod qemu;
pub mod qmp;
pub mod storage;

pub use hypervisor::{
    BoxFuture, DiskSource, DriverError, GuestLaunch, Hotplug, Hypervisor, NetDisk, NetSecret, ObservedPower,
    ShutdownOutcome, StoreUsage, VolumeInfo, VolumeStore,
};
pub use qemu::{resolve_accel, tap_name, Accel, QemuDriver};
pub use storage::{BtrfsStorage, DirStorage, LvmStorage, Runner, SystemRunner, ZfsPoolStorage};
