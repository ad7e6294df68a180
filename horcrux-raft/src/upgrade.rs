//! Brings a data dir written in an earlier format to the current one ([`codec::FORMAT`]),
//! in place, when it is opened; refuses one written by a newer release.
//!
//! The format a data dir is in is recorded under `meta/format` (one byte). A data dir
//! without it is either new (empty: it is marked at once) or from before format 1, when
//! every record was JSON: then every record is converted in one synced batch that also
//! writes the marker, so a crash during the upgrade leaves the data dir as it was. A
//! record that is not what its key says refuses the upgrade, naming the record, and
//! changes nothing.

use std::path::Path;

use openraft::{Entry, LogId, SnapshotMeta, Vote};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;

use crate::codec::{self, FORMAT};
use crate::handle::{StoredIdentity, KEY_NODE};
use crate::log_store::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::node::HorcruxNode;
use crate::state_machine::{SmData, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META};
use crate::store::{cf, synced, CF_LOG, CF_META, CF_SM};
use crate::types::{NodeId, TypeConfig};

pub(crate) const KEY_FORMAT: &[u8] = b"format";
/// Format 0's single-document snapshot: `{"meta": ..., "data": [bytes of the JSON state]}`.
const KEY_SNAPSHOT_V0: &[u8] = b"snapshot";

/// Makes the data dir at `dir` (opened as `db`) current, or says why it can't be.
pub(crate) fn ensure_current(db: &DB, dir: &Path) -> Result<(), String> {
    let at = |e: String| format!("data dir {}: {e}", dir.display());
    let marker = db.get_cf(cf(db, CF_META), KEY_FORMAT).map_err(|e| at(e.to_string()))?;
    match marker.as_deref() {
        Some([FORMAT]) => Ok(()),
        Some([n]) if *n > FORMAT => Err(at(format!(
            "written in format {n}, newer than this Horcrux reads (format {FORMAT}): run the release that wrote it, or a newer one"
        ))),
        Some(other) => Err(at(format!("unknown format marker {other:?}"))),
        None if is_empty(db) => {
            db.put_cf_opt(cf(db, CF_META), KEY_FORMAT, [FORMAT], &synced()).map_err(|e| at(e.to_string()))
        }
        None => {
            let converted = from_json(db).map_err(|e| at(format!("cannot upgrade from format 0 (JSON): {e}; nothing was changed")))?;
            tracing::info!(
                dir = %dir.display(),
                records = converted,
                "upgraded the data dir from format 0 (JSON) to format {FORMAT} (bincode)"
            );
            Ok(())
        }
    }
}

fn is_empty(db: &DB) -> bool {
    [CF_LOG, CF_META, CF_SM]
        .iter()
        .all(|name| db.iterator_cf(cf(db, name), IteratorMode::Start).next().is_none())
}

fn json<T: DeserializeOwned>(family: &str, key: &[u8], bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("record {family}/{} is not format 0: {e}", show_key(key)))
}

fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| c.is_ascii_graphic()) => s.to_string(),
        _ if key.len() == 8 => format!("#{}", u64::from_be_bytes(key.try_into().unwrap_or_default())),
        _ => format!("{key:?}"),
    }
}

/// Converts every format 0 record; returns how many. Writes nothing unless all convert.
fn from_json(db: &DB) -> Result<usize, String> {
    let enc = |e: codec::FormatError| e.to_string();
    let mut batch = WriteBatch::default();
    let mut records = 0;

    let log = cf(db, CF_LOG);
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let entry: Entry<TypeConfig> = json(CF_LOG, &k, &v)?;
        batch.put_cf(log, &k, codec::encode_serde(&entry).map_err(enc)?);
        records += 1;
    }

    let meta = cf(db, CF_META);
    for item in db.iterator_cf(meta, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let bytes = match &*k {
            KEY_VOTE => codec::encode_serde(&json::<Vote<NodeId>>(CF_META, &k, &v)?),
            KEY_COMMITTED => codec::encode_serde(&json::<Option<LogId<NodeId>>>(CF_META, &k, &v)?),
            KEY_LAST_PURGED => codec::encode_serde(&json::<LogId<NodeId>>(CF_META, &k, &v)?),
            KEY_NODE => codec::encode(&json::<StoredIdentity>(CF_META, &k, &v)?),
            _ => return Err(format!("unknown record {CF_META}/{}", show_key(&k))),
        };
        batch.put_cf(meta, &k, bytes.map_err(enc)?);
        records += 1;
    }

    type Meta = SnapshotMeta<NodeId, HorcruxNode>;
    #[derive(serde::Deserialize)]
    struct SnapshotV0 {
        meta: Meta,
        data: Vec<u8>,
    }
    let sm = cf(db, CF_SM);
    let get = |key: &[u8]| db.get_cf(sm, key).map_err(|e| e.to_string());
    let (snap_meta, snap_data) =
        match (get(KEY_SNAPSHOT_META)?, get(KEY_SNAPSHOT_DATA)?, get(KEY_SNAPSHOT_V0)?) {
            (Some(m), d, _) => {
                (Some(json::<Meta>(CF_SM, KEY_SNAPSHOT_META, &m)?), d.map(|d| (KEY_SNAPSHOT_DATA, d)))
            }
            (None, _, Some(doc)) => {
                let v0: SnapshotV0 = json(CF_SM, KEY_SNAPSHOT_V0, &doc)?;
                batch.delete_cf(sm, KEY_SNAPSHOT_V0);
                (Some(v0.meta), Some((KEY_SNAPSHOT_V0, v0.data)))
            }
            (None, Some(_), None) => {
                return Err(format!("record {CF_SM}/snapshot-data has no snapshot-meta"))
            }
            (None, None, None) => (None, None),
        };
    if let Some(m) = snap_meta {
        batch.put_cf(sm, KEY_SNAPSHOT_META, codec::encode_serde(&m).map_err(enc)?);
        records += 1;
    }
    if let Some((key, data)) = snap_data {
        let state: SmData = json(CF_SM, key, &data)?;
        batch.put_cf(sm, KEY_SNAPSHOT_DATA, state.encode().map_err(enc)?);
        records += 1;
    }
    for item in db.iterator_cf(sm, IteratorMode::Start) {
        let (k, _) = item.map_err(|e| e.to_string())?;
        if ![KEY_SNAPSHOT_META, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_V0].contains(&&*k) {
            return Err(format!("unknown record {CF_SM}/{}", show_key(&k)));
        }
    }

    batch.put_cf(meta, KEY_FORMAT, [FORMAT]);
    db.write_opt(batch, &synced()).map_err(|e| e.to_string())?;
    Ok(records)
}
