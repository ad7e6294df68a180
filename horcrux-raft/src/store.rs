//! The RocksDB database shared by the log store and the state machine store:
//! column family `log` (entries keyed by big-endian index), `meta` (vote, committed,
//! last purged, the node's identity, the data dir's format) and `sm` (the last snapshot).
//! Records are in the format of [`crate::codec`]; opening upgrades an older data dir.

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, StorageError, StorageIOError};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::types::NodeId;

pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_SM: &str = "sm";

/// Why a data dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Db(#[from] rocksdb::Error),
    /// In a format this build can't read or upgrade (the message names the data dir).
    #[error("{0}")]
    Format(String),
}

pub fn open_db(dir: &Path) -> Result<Arc<DB>, OpenError> {
    open_db_with(dir, false)
}

/// `open_db`; with `keep_wal`, every WAL file is archived instead of deleted, so
/// `DB::get_updates_since(0)` replays the database's whole history (the simulation's
/// power loss rebuilds a store from the writes made before its last sync).
pub fn open_db_with(dir: &Path, keep_wal: bool) -> Result<Arc<DB>, OpenError> {
    let db = open_rocksdb(dir, keep_wal)?;
    crate::upgrade::ensure_current(&db, dir).map_err(OpenError::Format)?;
    Ok(db)
}

fn open_rocksdb(dir: &Path, keep_wal: bool) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    if keep_wal {
        opts.set_wal_ttl_seconds(u64::MAX / 2);
    }
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A Raft node shut down in this process releases the database only when its last task
    // drops it; give that a moment instead of failing an in-process restart.
    let mut attempts = 0;
    loop {
        let cfs = [CF_LOG, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        match DB::open_cf_descriptors(&opts, dir, cfs) {
            Ok(db) => return Ok(Arc::new(db)),
            Err(e) if attempts < 50 && e.to_string().contains("lock hold by current process") => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    // The three families are created by `open_db`; a missing one is a programming error.
    db.cf_handle(name).expect("column family created by open_db")
}

/// Writes that acknowledge a client must be on disk: fsync every batch.
pub fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::new(&e)).into()
}

pub fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}
