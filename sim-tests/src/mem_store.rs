//! In-memory Raft storage for the simulation: the log, the vote, and a state machine that
//! runs the real `horcrux_core::ClusterState::apply`. Both survive a simulated crash (they
//! stand for the disk); each node records the hash of its state after every applied index
//! so the simulator can check that all nodes agree.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use horcrux_core::ClusterState;
use horcrux_raft::{HorcruxNode, NodeId, Response, SmData, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership, Vote,
};

#[derive(Default)]
pub struct LogInner {
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub last_purged: Option<LogId<NodeId>>,
    pub entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Appended but not yet flushed: a crash may lose these (the disk write cache).
    pub unsynced: std::collections::BTreeSet<u64>,
    /// Bumped by a crash, so flushes started before it do not count after it.
    pub generation: u64,
    /// The power is off: nothing more reaches this disk until the node boots again.
    pub dead: bool,
    /// Seeded slowness and failures of this disk (`None`: instant and reliable).
    pub faults: Option<StdRng>,
    /// Injected bug: every n-th entry is stored under a wrong term.
    pub corrupt_every: Option<u64>,
    /// Appends stay unflushed while this is set (tests hold a disk mid-write).
    pub hold_flushes: bool,
}

fn disk_err(what: &str) -> StorageError<NodeId> {
    StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(what)))
}

#[derive(Clone, Default)]
pub struct MemLog(pub Arc<Mutex<LogInner>>);

impl MemLog {
    pub fn new(seed: u64, faults: bool) -> Self {
        let log = Self::default();
        log.0.lock().unwrap().faults = faults.then(|| StdRng::seed_from_u64(seed ^ 0xd15c));
        log
    }

    /// The node boots: its disk takes writes again.
    pub fn power_on(&self) {
        self.0.lock().unwrap().dead = false;
    }

    /// How long the next write takes to become durable, and whether it fails.
    fn roll(&self) -> (std::time::Duration, bool) {
        let mut l = self.0.lock().unwrap();
        let Some(rng) = l.faults.as_mut() else { return (std::time::Duration::ZERO, false) };
        let ms = match rng.gen_range(0..1000) {
            0..=9 => rng.gen_range(20..200), // a slow disk
            10..=299 => rng.gen_range(1..5),
            _ => 0,
        };
        (std::time::Duration::from_millis(ms), rng.gen_range(0..10_000) < 3)
    }
    pub fn log_ids(&self) -> BTreeMap<u64, LogId<NodeId>> {
        self.0.lock().unwrap().entries.iter().map(|(i, e)| (*i, e.log_id)).collect()
    }

    /// A power loss: the disk's write cache is gone (every entry from the first one whose
    /// write had not completed) and nothing more is written until `power_on`. Returns how
    /// many entries were lost.
    pub fn crash_losing_unsynced(&self) -> usize {
        let mut l = self.0.lock().unwrap();
        l.generation += 1;
        l.dead = true;
        let Some(&first) = l.unsynced.iter().next() else { return 0 };
        let lost = l.entries.split_off(&first).len();
        l.unsynced.clear();
        lost
    }

    /// A crash after which the cache reached the disk anyway.
    pub fn crash_keeping_all(&self) {
        let mut l = self.0.lock().unwrap();
        l.generation += 1;
        l.unsynced.clear();
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // Only the run of entries that starts exactly at the range's start, as the product's
        // store does (see `horcrux_raft::log_store`): openraft 0.9 replicates what this
        // returns as if it began at `start`, so a gap after a concurrent purge would reach a
        // follower as a hole in its log.
        let l = self.0.lock().unwrap();
        let mut next = match range.start_bound() {
            std::ops::Bound::Included(&s) => Some(s),
            std::ops::Bound::Excluded(&s) => Some(s + 1),
            std::ops::Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        for (i, e) in l.entries.range(range) {
            if next.is_some_and(|n| n != *i) {
                break;
            }
            out.push(e.clone());
            next = Some(i + 1);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let l = self.0.lock().unwrap();
        let last = l.entries.values().next_back().map(|e| e.log_id).or(l.last_purged);
        Ok(LogState { last_purged_log_id: l.last_purged, last_log_id: last })
    }
    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut l = self.0.lock().unwrap();
        if l.dead {
            return Err(disk_err("the power is off"));
        }
        l.vote = Some(*vote);
        Ok(())
    }
    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.0.lock().unwrap().vote)
    }
    async fn save_committed(&mut self, c: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let mut l = self.0.lock().unwrap();
        if !l.dead {
            l.committed = c;
        }
        Ok(())
    }
    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.0.lock().unwrap().committed)
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
        let (indexes, generation) = {
            let mut l = self.0.lock().unwrap();
            if l.dead {
                return Err(disk_err("the power is off"));
            }
            let mut idx = Vec::new();
            for mut e in entries {
                if l.corrupt_every.is_some_and(|n| e.log_id.index % n == 0) {
                    e.log_id.leader_id.term += 1000;
                }
                idx.push(e.log_id.index);
                l.unsynced.insert(e.log_id.index);
                l.entries.insert(e.log_id.index, e);
            }
            (idx, l.generation)
        };
        // Like the production store (`LogStore::with_syncer`), `append` returns once the
        // entries are written and readable, and reports them durable later: the patched
        // openraft replicates them meanwhile (vendor/README.md), and counts them, or answers
        // the leader, only once the flush is reported. A power loss before that loses them.
        let (delay, fail) = self.roll();
        let log = self.0.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            while log.lock().unwrap().hold_flushes {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let mut l = log.lock().unwrap();
            if l.generation != generation {
                // The power went off meanwhile: the node is down, nobody waits for this.
                return;
            }
            if fail {
                drop(l);
                callback.log_io_completed(Err(std::io::Error::other("simulated disk write failure")));
                return;
            }
            for i in indexes {
                l.unsynced.remove(&i);
            }
            drop(l);
            callback.log_io_completed(Ok(()));
        });
        Ok(())
    }
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut l = self.0.lock().unwrap();
        if l.dead {
            return Err(disk_err("the power is off"));
        }
        l.entries.split_off(&log_id.index);
        l.unsynced.split_off(&log_id.index);
        Ok(())
    }
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut l = self.0.lock().unwrap();
        if l.dead {
            return Err(disk_err("the power is off"));
        }
        l.last_purged = Some(log_id);
        l.entries = l.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

#[derive(Default)]
pub struct SmInner {
    pub data: SmData,
    pub snapshot: Option<(SnapshotMeta<NodeId, HorcruxNode>, Vec<u8>)>,
    /// Hash of the state after each applied index (for the state-agreement invariant).
    pub history: BTreeMap<u64, u64>,
    /// Injected bug: skip applying every n-th entry.
    pub skip_every: Option<u64>,
    /// Injected bug: drop guest migrations from applied entries.
    pub skip_migrate: bool,
    /// Fires with the applied index when an entry changed guests (what the fleet watches).
    pub guests_changed: Option<tokio::sync::watch::Sender<u64>>,
}

#[derive(Clone, Default)]
pub struct MemSm(pub Arc<Mutex<SmInner>>);

/// FNV-1a of the state's canonical JSON: equal states hash equal on every node.
pub fn state_hash(s: &ClusterState) -> u64 {
    let bytes = serde_json::to_vec(s).unwrap_or_default();
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.0.lock().unwrap();
        // The production snapshot format, so replicated snapshots exercise it.
        let bytes = inner.data.encode().unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id: inner.data.last_applied,
            last_membership: inner.data.last_membership.clone(),
            snapshot_id: format!("{:?}", inner.data.last_applied.map(|l| l.index)),
        };
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, HorcruxNode>), StorageError<NodeId>> {
        let i = self.0.lock().unwrap();
        Ok((i.data.last_applied, i.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut i = self.0.lock().unwrap();
        let mut out = Vec::new();
        for mut e in entries {
            let idx = e.log_id.index;
            if i.skip_every.is_some_and(|n| idx % n == 0) && matches!(e.payload, EntryPayload::Normal(_)) {
                // Injected bug: this entry's command is lost.
                e.payload = EntryPayload::Blank;
            }
            if let (true, EntryPayload::Normal(b)) = (i.skip_migrate, &mut e.payload) {
                b.0.retain(|r| !matches!(r.cmd, horcrux_core::Command::MigrateGuest { .. }));
            }
            let touches =
                matches!(&e.payload, EntryPayload::Normal(b) if b.0.iter().any(|r| r.cmd.touches_guests()));
            out.push(i.data.apply_entry(e));
            let h = state_hash(&i.data.state);
            i.history.insert(idx, h);
            if touches {
                if let Some(tx) = &i.guests_changed {
                    tx.send_replace(idx);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, HorcruxNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data = SmData::decode(&bytes)
            .map_err(|e| StorageError::from(openraft::StorageIOError::read(openraft::AnyError::new(&e))))?;
        let mut i = self.0.lock().unwrap();
        if let Some(l) = data.last_applied {
            let h = state_hash(&data.state);
            i.history.insert(l.index, h);
        }
        i.data = data;
        i.snapshot = Some((meta.clone(), bytes));
        if let (Some(tx), Some(l)) = (&i.guests_changed, meta.last_log_id) {
            tx.send_replace(l.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let i = self.0.lock().unwrap();
        Ok(i.snapshot
            .as_ref()
            .map(|(m, b)| Snapshot { meta: m.clone(), snapshot: Box::new(Cursor::new(b.clone())) }))
    }
}
