//! Raft log storage in RocksDB. Appends and votes are fsynced before openraft is told they
//! are durable, so every acknowledged write survives `kill -9`.
//!
//! `append` writes the entries (readable at once, which replication needs) and hands the
//! flush to a syncer thread, which syncs the WAL (covering every write made before it) and
//! then reports them durable. openraft (patched, see `vendor/README.md`) sends the entries
//! to the followers between the two, so a leader's fsync overlaps the followers' writes;
//! it counts its own copy, and a follower answers, only once the flush is reported.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::store::{cf, index_key, read_err, synced, write_err, CF_LOG, CF_META};
use crate::types::{NodeId, TypeConfig};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Entries kept in memory after they are written, for replication to read back.
const TAIL_MAX: usize = 128;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// The most recently appended entries, a gap-free run ending at the last one. The
    /// leader reads each new entry back once per follower; serving that from here saves
    /// a RocksDB seek and a decode each time.
    tail: Arc<std::sync::Mutex<std::collections::VecDeque<Entry<TypeConfig>>>>,
    /// Where an append's "durable" report goes: to the syncer, which reports it after its
    /// next WAL sync (`None`: each append is synced before it returns).
    syncer: Option<SyncQueue>,
}

/// Takes an append's report, to be made once a WAL sync covers the append
/// ([`sync_and_report`]). The daemon's is a thread; the simulation's a seeded task.
pub type SyncQueue = Arc<dyn Fn(LogFlushed<TypeConfig>) + Send + Sync>;

/// Syncs the WAL, which covers every write made before the call, then reports `waiting`
/// durable (or failed). What the syncer thread runs for each batch of queued appends.
pub fn sync_and_report(db: &DB, waiting: Vec<LogFlushed<TypeConfig>>) {
    let res = db.flush_wal(true).map_err(|e| e.to_string());
    for cb in waiting {
        cb.log_io_completed(res.clone().map_err(std::io::Error::other));
    }
}

/// Syncs for each queued append (and any that queued meanwhile); ends when the last
/// clone of the store, and so the sender, is dropped.
fn run_syncer(db: Arc<DB>, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        sync_and_report(&db, waiting);
    }
}

impl LogStore {
    /// A store whose appends are synced before `append` returns: what the deterministic
    /// simulation runs (a syncer thread would make it depend on thread timing).
    pub fn new(db: Arc<DB>) -> Self {
        Self { db, tail: Arc::default(), syncer: None }
    }

    /// A store whose appends are synced by a syncer thread: what a node runs.
    pub fn with_syncer(db: Arc<DB>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_db = db.clone();
        std::thread::Builder::new().name("raft-log-sync".into()).spawn(move || run_syncer(sync_db, rx))?;
        let tx = std::sync::Mutex::new(tx);
        let queue: SyncQueue = Arc::new(move |cb| {
            let sent = tx.lock().unwrap_or_else(|p| p.into_inner()).send(cb);
            if let Err(std::sync::mpsc::SendError(cb)) = sent {
                cb.log_io_completed(Err(std::io::Error::other("the log syncer thread is gone")));
            }
        });
        Ok(Self::with_sync_queue(db, queue))
    }

    /// A store whose appends are written unsynced and reported through `queue`: the
    /// daemon's path with another syncer (the simulation's deterministic one).
    pub fn with_sync_queue(db: Arc<DB>, queue: SyncQueue) -> Self {
        Self { syncer: Some(queue), ..Self::new(db) }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Entry<TypeConfig>>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds written entries to the tail, keeping it a gap-free run.
    fn remember(&self, entries: Vec<Entry<TypeConfig>>) {
        let mut tail = self.tail();
        for e in entries {
            if tail.back().is_some_and(|b| b.log_id.index + 1 != e.log_id.index) {
                tail.clear();
            }
            tail.push_back(e);
        }
        while tail.len() > TAIL_MAX {
            tail.pop_front();
        }
    }

    /// The entries from `start` on that are in `range`, if the tail holds `start`.
    fn read_tail(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let tail = self.tail();
        let first = tail.front()?.log_id.index;
        let last = tail.back()?.log_id.index;
        if start < first || start > last {
            return None;
        }
        let skip = (start - first) as usize;
        Some(tail.iter().skip(skip).take_while(|e| range.contains(&e.log_id.index)).cloned().collect())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let Some(bytes) = self.db.get_cf(cf(&self.db, CF_META), key).map_err(read_err)? else {
            return Ok(None);
        };
        codec::decode_serde(&bytes).map(Some).map_err(read_err)
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError<NodeId>> {
        let bytes = codec::encode_serde(value).map_err(write_err)?;
        let opts = if sync { synced() } else { rocksdb::WriteOptions::default() };
        self.db.put_cf_opt(cf(&self.db, CF_META), key, bytes, &opts).map_err(write_err)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let e: Entry<TypeConfig> = codec::decode_serde(&v).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => Some(s + 1),
            Bound::Unbounded => None,
        };
        // Only the run of entries that starts exactly at `start` and has no gap: openraft 0.9
        // replicates what this returns as if it began at `start`. When a purge raced with
        // a replication read, returning later entries sent a follower a batch that did not
        // follow its `prev_log_id`, and the follower (which accepts any `prev_log_id` below
        // its commit point) got a hole in its log. The simulation found this (seed 69).
        if let Some(entries) = start.and_then(|s| self.read_tail(s, &range)) {
            return Ok(entries);
        }
        let mut out = Vec::new();
        let from = index_key(start.unwrap_or(0));
        let it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&from, Direction::Forward));
        let mut next = start;
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let mut idx = [0u8; 8];
            idx.copy_from_slice(&k[..8]);
            let idx = u64::from_be_bytes(idx);
            if next.is_some_and(|n| n != idx) || !range.contains(&idx) {
                break;
            }
            out.push(codec::decode_serde(&v).map_err(read_err)?);
            next = Some(idx + 1);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not synced: after a crash openraft recovers the commit point from the leader, and
        // replaying from an older committed id is harmless because `apply` is deterministic.
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
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
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_LOG);
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for e in &entries {
            let bytes = codec::encode_serde(e).map_err(write_err)?;
            batch.put_cf(log_cf, index_key(e.log_id.index), bytes);
        }
        // With a syncer: written (visible to readers) now, durable once its sync covers it.
        let opts = if self.syncer.is_some() { rocksdb::WriteOptions::default() } else { synced() };
        if let Err(e) = self.db.write_opt(batch, &opts) {
            self.tail().clear();
            return Err(write_err(e));
        }
        self.remember(entries);
        match &self.syncer {
            None => callback.log_io_completed(Ok(())),
            Some(queue) => queue(callback),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut tail = self.tail();
            while tail.back().is_some_and(|e| e.log_id.index >= log_id.index) {
                tail.pop_back();
            }
        }
        let from = index_key(log_id.index);
        let to = index_key(u64::MAX);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), from, to);
        // Also remove the key u64::MAX itself, which delete_range excludes.
        batch.delete_cf(cf(&self.db, CF_LOG), to);
        self.db.write_opt(batch, &synced()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut tail = self.tail();
            while tail.front().is_some_and(|e| e.log_id.index <= log_id.index) {
                tail.pop_front();
            }
        }
        self.put_meta(KEY_LAST_PURGED, &log_id, true)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.db.write(batch).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(v: &[Entry<TypeConfig>]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    /// Reads return only the gap-free run that starts at the requested index: a read that
    /// raced with a purge must not hand replication entries that skip ahead.
    #[tokio::test]
    async fn reads_never_skip_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LogStore::new(crate::store::open_db(tmp.path()).unwrap());
        let mut batch = WriteBatch::default();
        for i in (1..=10).chain(12..=15) {
            batch.put_cf(cf(&store.db, CF_LOG), index_key(i), codec::encode_serde(&entry(i)).unwrap());
        }
        store.db.write(batch).unwrap();
        assert_eq!(indexes(&store.try_get_log_entries(3..8).await.unwrap()), vec![3, 4, 5, 6, 7]);
        // 11 is missing: stop before it.
        assert_eq!(indexes(&store.try_get_log_entries(9..15).await.unwrap()), vec![9, 10]);
        assert_eq!(indexes(&store.try_get_log_entries(12..).await.unwrap()), vec![12, 13, 14, 15]);
        store.purge(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
        // Purged start: nothing, rather than entries from 6 on.
        assert!(store.try_get_log_entries(2..9).await.unwrap().is_empty());
        assert_eq!(indexes(&store.try_get_log_entries(..8).await.unwrap()), vec![6, 7]);
    }

    fn written(store: &LogStore, range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry<TypeConfig>> {
        let entries: Vec<Entry<TypeConfig>> = range
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, 1), i),
                payload: EntryPayload::Blank,
            })
            .collect();
        let mut batch = WriteBatch::default();
        for e in &entries {
            batch.put_cf(cf(&store.db, CF_LOG), index_key(e.log_id.index), codec::encode_serde(e).unwrap());
        }
        store.db.write(batch).unwrap();
        store.remember(entries.clone());
        entries
    }

    /// Reads served from the in-memory tail equal what RocksDB answers, through appends,
    /// truncation (a follower's conflicting entries) and purges.
    #[tokio::test]
    async fn the_tail_answers_like_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(tmp.path()).unwrap();
        let mut store = LogStore::new(db.clone());
        let mut disk = LogStore::new(db); // no tail: always RocksDB
        written(&store, 1..=(TAIL_MAX as u64 + 20), 1);
        let last = TAIL_MAX as u64 + 20;
        assert_eq!(store.tail().len(), TAIL_MAX);
        async fn same(a: &mut LogStore, b: &mut LogStore, r: std::ops::Range<u64>) {
            let x = a.try_get_log_entries(r.clone()).await.unwrap();
            let y = b.try_get_log_entries(r.clone()).await.unwrap();
            assert_eq!(x, y, "{r:?}");
        }
        for r in [last - 5..last + 1, last - 5..last - 2, 1..4, 30..40, last..last + 10] {
            same(&mut store, &mut disk, r).await;
        }
        assert!(store.read_tail(last - 3, &(last - 3..)).is_some(), "served from memory");
        // A follower truncates conflicting entries and appends the new leader's.
        store.truncate(LogId::new(CommittedLeaderId::new(1, 1), last - 2)).await.unwrap();
        written(&store, last - 2..=last + 3, 2);
        same(&mut store, &mut disk, last - 6..last + 4).await;
        let got = store.try_get_log_entries(last - 2..last - 1).await.unwrap();
        assert_eq!(got[0].log_id.leader_id.term, 2, "the truncated entry is not served");
        // A purge drops the front.
        store.purge(LogId::new(CommittedLeaderId::new(2, 1), last)).await.unwrap();
        same(&mut store, &mut disk, last - 4..last + 4).await;
        assert!(store.try_get_log_entries(last - 4..last + 4).await.unwrap().is_empty());
        same(&mut store, &mut disk, last + 1..last + 4).await;
    }
}
