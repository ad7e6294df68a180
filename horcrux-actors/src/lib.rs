//! Actors and supervisors: one `GuestActor` per guest owned by this node, reconciling the
//! replicated desired power state with what the hypervisor reports; the `GuestFleet` that
//! starts and retires them as the replicated state changes; and the UPID task registry.

mod create;
mod fleet;
mod guard;
mod guest;
mod ha;
mod port;
mod runtime;
mod storage;
mod tasks;

pub use create::{create_with_disks, CreateError, NewGuest};
pub use fleet::{GuestFleet, MigrateOne, ReconcileOne, Shutdown};
pub use guest::{GuestStatus, StatusBoard};
pub use ha::{FenceLauncher, HaManager, LeaseAgent, LeaseCell};
pub use port::{read, ClusterPort};
pub use runtime::{start_fleet, NodeRuntime, RuntimeError, VolumeFactory};
pub use storage::{PoolActor, PoolStatus, StorageBoard, StorageFleet, REFRESH as STORAGE_REFRESH};
pub use tasks::{HistoryLimit, TaskInfo, TaskLog, TaskRegistry, TaskStatus, DEFAULT_TASK_HISTORY};
