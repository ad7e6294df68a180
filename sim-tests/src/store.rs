//! A node's storage in the simulation: the in-memory model (default: its disk can be slow,
//! fail, and lose what was not yet durable at a power loss) or the product's own RocksDB
//! stores (`--store rocksdb`: the real `LogStore` and `StateMachineStore` code on a
//! temporary directory, appending unsynced and reporting through the production
//! `sync_and_report`, called by a seeded task instead of the syncer thread).
//!
//! A process crash keeps everything the process wrote, as the OS would. A power loss keeps
//! only what a sync covered: the database is rebuilt from its own write-ahead log (kept
//! whole), replaying the write batches up to the last sync point (a WAL sync, or a synced
//! write: vote, truncation, purge, installed snapshot) and dropping the rest.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use horcrux_raft::{HorcruxNode, LogStore, NodeId, Response, SmData, StateMachineStore, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogReader, SnapshotMeta, StorageError, StoredMembership, Vote,
};
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
    /// The sequence number of the last write a sync covered, for this database.
    durable: Arc<AtomicU64>,
    /// Seeds the syncer's delays.
    rng: Arc<Mutex<StdRng>>,
    /// The injected bug: appends are reported durable before the sync that covers them.
    early_flush: bool,
    /// Databases made by power losses (each a new directory under `dir`).
    generation: u32,
}

impl RocksStore {
    pub fn open(dir: PathBuf, seed: u64, early_flush: bool) -> Self {
        let (db, durable) = Self::open_db(&dir.join("db-0"));
        let sm = RecordingSm::open(db.clone(), Arc::default(), durable.clone());
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed ^ 0x5e7c)));
        Self { dir, db, sm, durable, rng, early_flush, generation: 0 }
    }

    fn open_db(dir: &std::path::Path) -> (Arc<rocksdb::DB>, Arc<AtomicU64>) {
        std::fs::create_dir_all(dir).expect("simulation store dir");
        let db = horcrux_raft::open_db_with(dir, true).expect("RocksDB opens");
        let durable = Arc::new(AtomicU64::new(db.latest_sequence_number()));
        (db, durable)
    }

    /// The log store Raft runs on: the product's, appending unsynced; each report waits
    /// for a seeded delay (a 1-20 ms fsync, sometimes 20-200 ms), then the production `sync_and_report` syncs the WAL
    /// and reports every append queued meanwhile.
    pub fn log_store(&self) -> SimLog {
        let pending: Arc<Mutex<Vec<LogFlushed<TypeConfig>>>> = Arc::default();
        let (db, durable, rng, early) =
            (self.db.clone(), self.durable.clone(), self.rng.clone(), self.early_flush);
        let queue: horcrux_raft::SyncQueue = Arc::new(move |cb: LogFlushed<TypeConfig>| {
            let delay = {
                let mut rng = rng.lock().unwrap();
                if rng.gen_range(0..100) < 2 {
                    rng.gen_range(20..200) // a slow disk
                } else {
                    rng.gen_range(1..=20)
                }
            };
            if early {
                // The bug: durable before any sync.
                cb.log_io_completed(Ok(()));
            } else {
                pending.lock().unwrap().push(cb);
            }
            let (db, durable, pending) = (db.clone(), durable.clone(), pending.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                let waiting = std::mem::take(&mut *pending.lock().unwrap());
                durable.fetch_max(db.latest_sequence_number(), Ordering::SeqCst);
                horcrux_raft::sync_and_report(&db, waiting);
            });
        });
        SimLog {
            inner: horcrux_raft::LogStore::with_sync_queue(self.db.clone(), queue),
            db: self.db.clone(),
            durable: self.durable.clone(),
        }
    }

    /// A process crash: the database stays as the OS holds it; the next boot rebuilds the
    /// state machine from its snapshot and the log, as the daemon does.
    fn restart(&mut self) {
        self.sm = RecordingSm::open(self.db.clone(), self.sm.history.clone(), self.durable.clone());
    }

    /// A power loss: a new database holding exactly the writes up to the last sync point,
    /// replayed from the old one's write-ahead log. Answers how many log entries were lost.
    fn lose_power(&mut self) -> usize {
        let durable = self.durable.load(Ordering::SeqCst);
        let last_index = |db: &rocksdb::DB| {
            let mut it = db.iterator_cf(db.cf_handle("log").expect("log family"), rocksdb::IteratorMode::End);
            it.next()
                .and_then(Result::ok)
                .map(|(k, _)| u64::from_be_bytes(k[..8].try_into().unwrap()))
                .unwrap_or(0)
        };
        let before = last_index(&self.db);
        let kept: Vec<rocksdb::WriteBatch> = match self.db.latest_sequence_number() {
            0 => Vec::new(),
            _ => self
                .db
                .get_updates_since(0)
                .expect("the whole WAL is kept")
                .map(|u| u.expect("a readable WAL batch"))
                .take_while(|(seq, _)| *seq <= durable)
                .map(|(_, batch)| batch)
                .collect(),
        };
        self.generation += 1;
        let (db, durable) = Self::open_db(&self.dir.join(format!("db-{}", self.generation)));
        for batch in kept {
            db.write(batch).expect("replaying a WAL batch");
        }
        db.flush_wal(true).expect("sync the rebuilt database");
        durable.store(db.latest_sequence_number(), Ordering::SeqCst);
        let after = last_index(&db);
        self.db = db;
        self.durable = durable;
        self.sm = RecordingSm::open(self.db.clone(), self.sm.history.clone(), self.durable.clone());
        before.saturating_sub(after) as usize
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
            NodeStore::Rocks(r) if power_loss => r.lose_power(),
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
    db: Arc<rocksdb::DB>,
    durable: Arc<AtomicU64>,
}

impl RecordingSm {
    fn open(db: Arc<rocksdb::DB>, history: Arc<Mutex<BTreeMap<u64, u64>>>, durable: Arc<AtomicU64>) -> Self {
        Self {
            inner: StateMachineStore::open(db.clone()).expect("state machine opens"),
            history,
            db,
            durable,
        }
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
        // A synced write: a sync point.
        self.durable.fetch_max(self.db.latest_sequence_number(), Ordering::SeqCst);
        self.record();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.inner.get_current_snapshot().await
    }
}

/// The product's `LogStore`, noting the sync points of its synced writes (vote, truncation,
/// purge) for the power-loss model; appends are noted by the syncer.
pub struct SimLog {
    inner: LogStore,
    db: Arc<rocksdb::DB>,
    durable: Arc<AtomicU64>,
}

impl SimLog {
    fn synced(&self) {
        self.durable.fetch_max(self.db.latest_sequence_number(), Ordering::SeqCst);
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.inner.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.inner.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.inner.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.save_vote(vote).await?;
        self.synced();
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.inner.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.inner.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.inner.read_committed().await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.truncate(log_id).await?;
        self.synced();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point is written synced before the entries are deleted (unsynced).
        let before = self.db.latest_sequence_number();
        self.inner.purge(log_id).await?;
        self.durable.fetch_max(before + 1, Ordering::SeqCst);
        Ok(())
    }
}
