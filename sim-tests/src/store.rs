//! A node's storage in the simulation: the in-memory model (default: its disk can be slow,
//! fail, and lose what was not yet durable at a power loss) or the product's own RocksDB
//! stores (`--store rocksdb`: the real `LogStore` and `StateMachineStore` code on a
//! temporary directory; a crash keeps everything the process wrote, as the OS would).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use horcrux_raft::{HorcruxNode, LogStore, NodeId, Response, SmData, StateMachineStore, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, SnapshotMeta, StorageError, StoredMembership};
use tokio::sync::watch;

use crate::mem_store::{state_hash, MemLog, MemSm};

pub enum NodeStore {
    Mem { log: MemLog, sm: MemSm },
    Rocks(RocksStore),
}

pub struct RocksStore {
    dir: PathBuf,
    pub(crate) db: Arc<rocksdb::DB>,
    pub sm: RecordingSm,
}

impl RocksStore {
    pub fn open(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("simulation store dir");
        let db = horcrux_raft::open_db(&dir).expect("RocksDB opens");
        let sm = RecordingSm::open(db.clone(), Arc::default());
        Self { dir, db, sm }
    }

    /// A process crash: the database stays as the OS holds it; the next boot rebuilds the
    /// state machine from its snapshot and the log, as the daemon does.
    fn restart(&mut self) {
        self.sm = RecordingSm::open(self.db.clone(), self.sm.history.clone());
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

/// What a node's API side reads of its store (cheap to clone, like the product's handle).
#[derive(Clone)]
pub enum StoreView {
    Mem(MemSm),
    Rocks(StateMachineStore),
}

impl StoreView {
    pub fn with_data<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        match self {
            StoreView::Mem(sm) => f(&sm.0.lock().unwrap().data),
            StoreView::Rocks(sm) => f(&sm.read()),
        }
    }

    pub fn applied(&self) -> Option<u64> {
        self.with_data(|d| d.last_applied.map(|l| l.index))
    }

    pub fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
        match self {
            StoreView::Mem(sm) => {
                let mut i = sm.0.lock().unwrap();
                i.guests_changed.get_or_insert_with(|| watch::channel(0).0).subscribe()
            }
            StoreView::Rocks(sm) => sm.subscribe_guest_changes(),
        }
    }
}

impl NodeStore {
    pub fn view(&self) -> StoreView {
        match self {
            NodeStore::Mem { sm, .. } => StoreView::Mem(sm.clone()),
            NodeStore::Rocks(r) => StoreView::Rocks(r.sm.inner.clone()),
        }
    }

    /// What the checker reads: log ids by index, state hash by applied index.
    pub fn views(&self) -> (BTreeMap<u64, LogId<NodeId>>, BTreeMap<u64, u64>, u64) {
        match self {
            NodeStore::Mem { log, sm } => {
                let i = sm.0.lock().unwrap();
                (log.log_ids(), i.history.clone(), i.data.last_applied.map(|l| l.index).unwrap_or(0))
            }
            NodeStore::Rocks(r) => {
                let mut reader = LogStore::new(r.db.clone());
                let entries =
                    futures_now(reader.try_get_log_entries(..)).and_then(Result::ok).unwrap_or_default();
                let ids = entries.iter().map(|e| (e.log_id.index, e.log_id)).collect();
                let applied = r.sm.inner.read().last_applied.map(|l| l.index).unwrap_or(0);
                (ids, r.sm.history.lock().unwrap().clone(), applied)
            }
        }
    }

    pub fn with_data<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        self.view().with_data(f)
    }

    pub fn applied(&self) -> Option<u64> {
        self.view().applied()
    }

    /// A crash: with `power_loss`, the in-memory disk loses what was not yet durable
    /// (returns how many entries); RocksDB keeps what the process wrote.
    pub fn crash(&mut self, power_loss: bool) -> usize {
        match self {
            NodeStore::Mem { log, .. } if power_loss => log.crash_losing_unsynced(),
            NodeStore::Mem { log, .. } => {
                log.crash_keeping_all();
                0
            }
            NodeStore::Rocks(r) => {
                r.restart();
                0
            }
        }
    }

    pub fn power_on(&self) {
        if let NodeStore::Mem { log, .. } = self {
            log.power_on();
        }
    }

    /// The disk stops being slow or failing (the run heals).
    pub fn heal(&self) {
        if let NodeStore::Mem { log, .. } = self {
            log.0.lock().unwrap().faults = None;
        }
    }

    /// First and last log index and the purge point, for a report.
    pub fn log_bounds(&self) -> (Option<u64>, Option<u64>) {
        let (ids, _, _) = self.views();
        (ids.keys().next().copied(), ids.keys().next_back().copied())
    }

    pub fn state_hash(&self) -> u64 {
        self.with_data(|d| state_hash(&d.state))
    }
}

/// Polls a future that never waits (RocksDB reads are synchronous under `async`).
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// The product's `StateMachineStore`, applying one entry at a time and recording the
/// state's hash after each index for the checker.
#[derive(Clone)]
pub struct RecordingSm {
    pub inner: StateMachineStore,
    pub history: Arc<Mutex<BTreeMap<u64, u64>>>,
}

impl RecordingSm {
    fn open(db: Arc<rocksdb::DB>, history: Arc<Mutex<BTreeMap<u64, u64>>>) -> Self {
        Self { inner: StateMachineStore::open(db).expect("state machine opens"), history }
    }

    fn record(&self) {
        let d = self.inner.read();
        if let Some(l) = d.last_applied {
            let h = state_hash(&d.state);
            self.history.lock().unwrap().insert(l.index, h);
        }
    }
}

impl RaftStateMachine<TypeConfig> for RecordingSm {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, HorcruxNode>), StorageError<NodeId>> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            out.extend(self.inner.apply(std::iter::once(e)).await?);
            self.record();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, HorcruxNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.inner.install_snapshot(meta, snapshot).await?;
        self.record();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.inner.get_current_snapshot().await
    }
}
