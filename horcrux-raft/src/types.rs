//! openraft's type configuration for Horcrux.

use std::io::Cursor;

use horcrux_core::{ApplyError, ApplyOk, Request};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// One log entry's payload: the requests proposed together. The leader gathers concurrent
/// proposals into one entry, so one fsync and one replication round serve all of them.
///
/// openraft's entry types reach it through serde. In a binary format (bincode, see
/// [`crate::codec`]) it is its requests' native bincode encoding as one byte string; in
/// JSON (format 0, and debugging) the array of requests, as before.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Batch(pub Vec<Request>);

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.0.serialize(s);
        }
        let bytes = crate::codec::encode_nested(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Vec::<Request>::deserialize(d).map(Batch);
        }
        let bytes = serde_bytes_owned(d)?;
        crate::codec::decode_nested(&bytes).map(Batch).map_err(serde::de::Error::custom)
    }
}

/// A byte string from a binary deserializer (bincode hands it over as `bytes` or `byte_buf`).
fn serde_bytes_owned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(v)
        }
    }
    d.deserialize_byte_buf(Bytes)
}

/// What applying one request produced, sent back to its proposer.
pub type ApplyResult = Result<ApplyOk, ApplyError>;

/// What applying one entry produced: one result per request of its [`Batch`], in order
/// (empty for blank and membership entries).
pub type Response = Vec<ApplyResult>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = Response,
        Node = crate::node::HorcruxNode,
        AsyncRuntime = crate::runtime::HorcruxRuntime,
);

// `declare_raft_types!` defaults SnapshotData to `Cursor<Vec<u8>>`; keep the import used.
#[allow(dead_code)]
type SnapshotBytes = Cursor<Vec<u8>>;
