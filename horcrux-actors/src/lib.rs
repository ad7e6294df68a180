//! Actors and supervisors: one `GuestActor` per guest owned by this node, reconciling the
//! replicated desired power state with what the hypervisor reports; the `GuestFleet` that
//! starts and retires them as the replicated state changes; and the UPID task registry.

mod create;
mod fleet;
mod guard;
mod guest;
mod ha;
pub mod metrics;
mod port;
mod runtime;
mod storage;
mod tasks;

pub use create::{create_with_disks, CreateError, NewGuest};
pub use fleet::{GuestFleet, MigrateOne, ReconcileOne, Shutdown};
pub use guest::{GuestStatus, StatusBoard};
pub use ha::{FenceLauncher, HaManager, LeaseAgent, LeaseCell};
/// The hot-plug changes the HTTP crate asks of a running guest (the drivers' types, as
/// the runtime's hypervisor takes them).
pub use horcrux_drivers::hypervisor::ConsoleKind;
/// The /proc and statvfs readers the sampler uses (the HTTP layer's node status reads them too).
pub use horcrux_drivers::metrics as drivers_metrics;
pub use horcrux_drivers::{DiskSource, Hotplug};
pub use port::{read, ClusterPort};
pub use runtime::{start_fleet, NodeRuntime, RuntimeError, VolumeFactory};
pub use storage::{PoolActor, PoolStatus, StorageBoard, StorageFleet, REFRESH as STORAGE_REFRESH};
pub use tasks::{HistoryLimit, TaskInfo, TaskLog, TaskRegistry, TaskStatus, DEFAULT_TASK_HISTORY};
