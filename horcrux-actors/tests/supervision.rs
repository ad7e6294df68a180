//! Guest actors under their supervisor, against a scripted hypervisor: a panic in any
//! handler (reconcile, migrate) or in the exit watcher restarts the actor (or re-arms the
//! watcher) without touching the guest, and a guest that exits on its own is recorded as
//! stopped in the replicated state and not restarted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_actors::{NodeRuntime, TaskRegistry, VolumeFactory};
use horcrux_core::{Command, DesiredPower, GuestConfig, VmSpec};
use horcrux_drivers::{
    BoxFuture, DirStorage, DriverError, GuestLaunch, Hypervisor, ObservedPower, ShutdownOutcome, VolumeStore,
};
use horcrux_raft::{ClusterHandle, OpenOptions};
use tokio::sync::Notify;

#[derive(Default)]
struct ScriptedHv {
    running: Mutex<bool>,
    starts: AtomicU32,
    stops: AtomicU32,
    vmid: AtomicU32,
    panic_next_status: AtomicBool,
    panic_next_wait: AtomicBool,
    exit: Notify,
    /// Exit watchers currently waiting.
    watchers: Arc<AtomicU32>,
}

/// Counts a waiting watcher until it ends (or is dropped).
struct Watching(Arc<AtomicU32>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hypervisor for ScriptedHv {
    fn start<'a>(&'a self, l: &'a GuestLaunch) -> BoxFuture<'a, Result<(), DriverError>> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.vmid.store(l.vmid, Ordering::SeqCst);
        *self.running.lock().unwrap() = true;
        Box::pin(async { Ok(()) })
    }
    fn status(&self, _vmid: u32) -> BoxFuture<'_, Result<ObservedPower, DriverError>> {
        if self.panic_next_status.swap(false, Ordering::SeqCst) {
            panic!("scripted driver panic");
        }
        let r = *self.running.lock().unwrap();
        Box::pin(async move { Ok(if r { ObservedPower::Running } else { ObservedPower::Stopped }) })
    }
    fn stop(&self, _vmid: u32) -> BoxFuture<'_, Result<(), DriverError>> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        *self.running.lock().unwrap() = false;
        Box::pin(async { Ok(()) })
    }
    fn shutdown(&self, vmid: u32, _t: Duration) -> BoxFuture<'_, Result<ShutdownOutcome, DriverError>> {
        Box::pin(async move {
            self.stop(vmid).await?;
            Ok(ShutdownOutcome::Graceful)
        })
    }
    fn wait_exit(&self, _vmid: u32) -> BoxFuture<'_, ()> {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let watching = Watching(self.watchers.clone());
        let panic = self.panic_next_wait.swap(false, Ordering::SeqCst);
        Box::pin(async move {
            let _watching = watching;
            if panic {
                panic!("scripted watcher panic");
            }
            self.exit.notified().await;
            *self.running.lock().unwrap() = false;
        })
    }
    fn serial_log(&self, _vmid: u32) -> PathBuf {
        PathBuf::from("/dev/null")
    }
    fn running_guests(&self) -> BoxFuture<'_, Result<Vec<u32>, DriverError>> {
        let r = *self.running.lock().unwrap();
        let vmid = self.vmid.load(Ordering::SeqCst);
        Box::pin(async move { Ok(if r { vec![vmid] } else { vec![] }) })
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_restarts_actor_and_self_exit_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ClusterHandle::open(OpenOptions {
        dir: tmp.path().join("raft"),
        node_name: "n1".into(),
        api_addr: "127.0.0.1:1".into(),
        cluster: None,
        snapshot_logs: None,
    })
    .await
    .unwrap();
    let spec = VmSpec { memory_mib: 64, ..Default::default() };
    cluster
        .propose(Command::CreateGuest {
            vmid: 100,
            name: "g".into(),
            node: "n1".into(),
            config: GuestConfig::Qemu(spec),
            pool: None,
        })
        .await
        .unwrap();
    let hv = Arc::new(ScriptedHv::default());
    let volumes: VolumeFactory =
        Arc::new(|p| Arc::new(DirStorage::new(p.id.clone(), "/nonexistent")) as Arc<dyn VolumeStore>);
    let tasks = TaskRegistry::open("n1", tmp.path().join("tasks")).unwrap();
    let rt = NodeRuntime::start(cluster.clone(), hv.clone(), volumes, tasks, None).unwrap();
    // The first exit watcher panics: the actor arms a new one on a later reconcile.
    hv.panic_next_wait.store(true, Ordering::SeqCst);

    cluster
        .propose(Command::SetDesiredPower {
            vmid: 100,
            expected_revision: None,
            desired: DesiredPower::Running,
        })
        .await
        .unwrap();
    assert_eq!(rt.reconcile(100, None).await.unwrap(), ObservedPower::Running);
    assert_eq!(hv.starts.load(Ordering::SeqCst), 1);
    eventually("the panicking watcher is gone", || !hv.panic_next_wait.load(Ordering::SeqCst)).await;
    eventually("the panicking watcher is gone", || hv.watchers.load(Ordering::SeqCst) == 0).await;
    // A minute of 5-second ticks reconciles the running guest 12 times: still one watcher.
    for _ in 0..12 {
        assert_eq!(rt.reconcile(100, None).await.unwrap(), ObservedPower::Running);
    }
    assert_eq!(hv.watchers.load(Ordering::SeqCst), 1, "one exit watcher per running QEMU");

    hv.panic_next_status.store(true, Ordering::SeqCst);
    let e = rt.reconcile(100, None).await.unwrap_err();
    assert!(e.to_string().contains("panicked"), "{e}");
    // The supervisor restarted the actor: it answers again, and the guest was not touched.
    assert_eq!(rt.reconcile(100, None).await.unwrap(), ObservedPower::Running);
    assert_eq!(hv.starts.load(Ordering::SeqCst), 1);
    assert_eq!(hv.stops.load(Ordering::SeqCst), 0);

    // The guest exits by itself: noticed, committed as stopped, not restarted.
    hv.exit.notify_waiters();
    eventually("exit committed", || cluster.read_local(|s| !s.guests[&100].desired.is_running())).await;
    assert_eq!(rt.observed(100).power, ObservedPower::Stopped);
    assert_eq!(rt.reconcile(100, None).await.unwrap(), ObservedPower::Stopped);
    assert_eq!(hv.starts.load(Ordering::SeqCst), 1);

    // A panic in another handler (the migration's driver call) restarts the actor too.
    hv.panic_next_status.store(true, Ordering::SeqCst);
    let e = rt.migrate(100, "n2".into()).await.unwrap_err();
    assert!(e.to_string().contains("panicked"), "{e}");
    assert_eq!(rt.reconcile(100, None).await.unwrap(), ObservedPower::Stopped);

    // Deleting the guest retires its actor and forgets its status.
    cluster.propose(Command::DeleteGuest { vmid: 100, expected_revision: None }).await.unwrap();
    let e = rt.reconcile(100, None).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// A store whose activation panics once, then reports a fixed size.
struct FlakyStore {
    panics: AtomicU32,
    activations: Arc<AtomicU32>,
}

impl VolumeStore for FlakyStore {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        self.activations.fetch_add(1, Ordering::SeqCst);
        if self.panics.load(Ordering::SeqCst) > 0 {
            self.panics.fetch_sub(1, Ordering::SeqCst);
            panic!("scripted storage panic");
        }
        Box::pin(async { Ok(()) })
    }
    fn alloc(&self, _: u32, _: usize, _: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(async { Err(DriverError::Invalid("no".into())) })
    }
    fn path(&self, _: &str) -> Result<PathBuf, DriverError> {
        Err(DriverError::Invalid("no".into()))
    }
    fn free<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<horcrux_drivers::VolumeInfo>, DriverError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn usage(&self) -> BoxFuture<'_, Result<Option<horcrux_drivers::StoreUsage>, DriverError>> {
        Box::pin(async { Ok(Some(horcrux_drivers::StoreUsage { total: 100, used: 40, avail: 60 })) })
    }
}

/// Each storage on this node gets a supervised pool actor: a panic while probing restarts
/// it, a disabled storage is reported as such without being touched, a storage whose
/// `nodes` leave this node out gets no actor, and a removed one loses its actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_actors_follow_the_config_and_survive_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ClusterHandle::open(OpenOptions {
        dir: tmp.path().join("raft"),
        node_name: "n1".into(),
        api_addr: "127.0.0.1:1".into(),
        cluster: None,
        snapshot_logs: None,
    })
    .await
    .unwrap();
    let activations = Arc::new(AtomicU32::new(0));
    let a = activations.clone();
    let volumes: VolumeFactory = Arc::new(move |_| {
        Arc::new(FlakyStore { panics: AtomicU32::new(1), activations: a.clone() }) as Arc<dyn VolumeStore>
    });
    let tasks = TaskRegistry::open("n1", tmp.path().join("tasks")).unwrap();
    let rt =
        NodeRuntime::start(cluster.clone(), Arc::new(ScriptedHv::default()), volumes, tasks, None).unwrap();
    let add = |kv: &[(&str, &str)]| {
        let p = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Command::CreateStorage { pool: horcrux_core::StoragePool::from_params(&p).unwrap() }
    };
    cluster.propose(add(&[("storage", "d1"), ("type", "dir"), ("path", "/srv/d1")])).await.unwrap();
    cluster
        .propose(add(&[("storage", "far"), ("type", "dir"), ("path", "/srv/far"), ("nodes", "n2")]))
        .await
        .unwrap();
    let wait = Duration::from_secs(5);
    // The first probe panics: the supervisor restarts the actor, whose next probe works.
    eventually("the restarted actor measured the storage", || {
        rt.storage_status("d1").is_some_and(|s| s.active)
    })
    .await;
    let st = rt.refresh_storage("d1", wait).await.unwrap();
    assert_eq!((st.active, st.usage.map(|u| u.avail)), (true, Some(60)));
    assert!(activations.load(Ordering::SeqCst) >= 2, "one probe panicked, a later one worked");
    assert!(rt.refresh_storage("far", wait).await.is_none(), "not on this node");

    let mut off = cluster.read_local(|s| s.storage["d1"].config.clone());
    off.disable = true;
    let before = activations.load(Ordering::SeqCst);
    cluster.propose(Command::UpdateStorage { id: "d1".into(), config: off }).await.unwrap();
    let st = rt.refresh_storage("d1", wait).await.unwrap();
    assert_eq!((st.enabled, st.active), (false, false));
    assert_eq!(activations.load(Ordering::SeqCst), before, "a disabled storage is not activated");

    cluster.propose(Command::DeleteStorage { id: "d1".into() }).await.unwrap();
    assert!(rt.refresh_storage("d1", wait).await.is_none());
    eventually("the removed storage's status is gone", || rt.storage_status("d1").is_none()).await;
}
