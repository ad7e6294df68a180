//! The state machine: `horcrux_core::ClusterState` in memory, rebuilt on start from the last
//! snapshot (kept in RocksDB) plus the committed log that follows it.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use horcrux_core::ClusterState;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use rocksdb::DB;

use crate::node::HorcruxNode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec;
use crate::store::{cf, read_err, synced, write_err, CF_SM};
use crate::types::{NodeId, Response, TypeConfig};

/// The snapshot's metadata and its data (the encoded [`SmData`], stored as is), written
/// together in one synced batch. (Before format 1 there was also a `snapshot` key holding
/// both in one JSON document; `upgrade` converts it.)
pub(crate) const KEY_SNAPSHOT_META: &[u8] = b"snapshot-meta";
pub(crate) const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot-data";

type Meta = SnapshotMeta<NodeId, HorcruxNode>;

/// The applied state: what a snapshot holds. Encoded with [`codec::encode`] (serde kept for
/// the JSON of format 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct SmData {
    #[bincode(with_serde)]
    pub last_applied: Option<LogId<NodeId>>,
    #[bincode(with_serde)]
    pub last_membership: StoredMembership<NodeId, HorcruxNode>,
    pub state: ClusterState,
}

impl SmData {
    /// The snapshot data of this state.
    pub fn encode(&self) -> Result<Vec<u8>, codec::FormatError> {
        codec::encode(self)
    }

    /// A state from snapshot data.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::FormatError> {
        codec::decode(bytes)
    }
}

impl SmData {
    /// Applies one committed entry: the business command through `ClusterState::apply`,
    /// a membership change by recording it. Shared with the simulator's state machine.
    pub fn apply_entry(&mut self, entry: Entry<TypeConfig>) -> Response {
        let index = entry.log_id.index;
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Vec::new(),
            // Each request of a batch is validated and applied on its own: one refused
            // request leaves the others (and the state) as if it had not been proposed.
            EntryPayload::Normal(batch) => batch.0.iter().map(|req| self.state.apply(index, req)).collect(),
            EntryPayload::Membership(m) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                Vec::new()
            }
        }
    }
}

/// The stored snapshot's metadata and data.
fn load_snapshot(db: &DB) -> Result<Option<(Meta, Vec<u8>)>, StorageError<NodeId>> {
    let sm = cf(db, CF_SM);
    let Some(meta) = db.get_cf(sm, KEY_SNAPSHOT_META).map_err(read_err)? else {
        return Ok(None);
    };
    let meta: Meta = codec::decode_serde(&meta).map_err(read_err)?;
    let data = db.get_cf(sm, KEY_SNAPSHOT_DATA).map_err(read_err)?.unwrap_or_default();
    Ok(Some((meta, data)))
}

struct Shared {
    data: RwLock<SmData>,
    /// Index of the last applied entry that changed guests (or a snapshot install):
    /// what guest reconcilers watch. Other entries do not wake them.
    guests_changed: watch::Sender<u64>,
}

/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    shared: Arc<Shared>,
}

impl StateMachineStore {
    pub fn open(db: Arc<DB>) -> Result<Self, StorageError<NodeId>> {
        let data = match load_snapshot(&db)? {
            None => SmData::default(),
            Some((_, bytes)) => SmData::decode(&bytes).map_err(read_err)?,
        };
        let applied = data.last_applied.map(|l| l.index).unwrap_or(0);
        let (tx, _) = watch::channel(applied);
        Ok(Self { db, shared: Arc::new(Shared { data: RwLock::new(data), guests_changed: tx }) })
    }

    /// A read view of the applied state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        // `ClusterState::apply` validates before it mutates, so even a poisoned lock holds a
        // state that is consistent as of some applied entry.
        self.shared.data.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
        self.shared.guests_changed.subscribe()
    }

    fn snapshot_bytes(&self) -> Result<(Meta, Vec<u8>), StorageError<NodeId>> {
        // Copy under the lock, serialize outside it: apply is not held up meanwhile.
        let data = self.read().clone();
        let bytes = data.encode().map_err(read_err)?;
        let id = match data.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, bytes.len()),
            None => format!("0-0-{}", bytes.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id: id,
        };
        Ok((meta, bytes))
    }

    fn store_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, HorcruxNode>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let meta = codec::encode_serde(meta).map_err(write_err)?;
        let sm = cf(&self.db, CF_SM);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(sm, KEY_SNAPSHOT_META, meta);
        batch.put_cf(sm, KEY_SNAPSHOT_DATA, data);
        self.db.write_opt(batch, &synced()).map_err(write_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, bytes) = self.snapshot_bytes()?;
        self.store_snapshot(&meta, &bytes)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, HorcruxNode>), StorageError<NodeId>> {
        let d = self.read();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut guests_changed = false;
        let last_index = {
            let mut d = self.shared.data.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                if let EntryPayload::Normal(batch) = &entry.payload {
                    guests_changed |= batch.0.iter().any(|req| req.cmd.touches_guests());
                }
                out.push(d.apply_entry(entry));
            }
            d.last_applied.map(|l| l.index).unwrap_or(0)
        };
        if guests_changed {
            self.shared.guests_changed.send_replace(last_index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
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
        let data = SmData::decode(&bytes).map_err(read_err)?;
        self.store_snapshot(meta, &bytes)?;
        let index = data.last_applied.map(|l| l.index).unwrap_or(0);
        *self.shared.data.write().unwrap_or_else(|p| p.into_inner()) = data;
        self.shared.guests_changed.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(load_snapshot(&self.db)?
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot stores its data as built, in the current format, and comes back after a
    /// restart.
    #[tokio::test]
    async fn snapshots_survive_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(tmp.path()).unwrap();
        let mut sm = StateMachineStore::open(db.clone()).unwrap();
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
        sm.shared.data.write().unwrap().state.options.insert("k".into(), "v".repeat(300));
        let snap = sm.build_snapshot().await.unwrap();
        let raw = db.get_cf(cf(&db, CF_SM), KEY_SNAPSHOT_DATA).unwrap().unwrap();
        assert_eq!(raw, snap.snapshot.into_inner(), "the data is stored as built");
        assert_eq!(raw[0], codec::FORMAT);
        drop(sm);
        let mut sm = StateMachineStore::open(db).unwrap();
        assert_eq!(sm.read().state.options["k"].len(), 300);
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    }
}
