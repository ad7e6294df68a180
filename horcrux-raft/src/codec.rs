//! The binary format of what Horcrux stores and sends between nodes: Raft log entries, the
//! vote and commit point, snapshots, the node identity, and transport RPCs.
//!
//! Every record and frame is one format byte ([`FORMAT`]) followed by bincode 2 with
//! `config::standard()` (little-endian, variable-length integers). Horcrux's own types use
//! bincode's derives (enums: the variant's index, then its fields in order) or
//! `horcrux_core::evolving!` (structs: a field count, then the fields in order).
//! openraft's types go through their serde impls in bincode's serde mode; the one Horcrux
//! type inside them, the entry payload [`Batch`], carries its native encoding as bytes.
//!
//! How the format evolves. Structs of the state, of requests and of the node identity are
//! encoded by `horcrux_core::evolving!`: a field count, then the fields; a field appended
//! at the end (with the value older records decode to) keeps the format, and a record from
//! a newer build with more fields is refused by name. Enum variants are positional: a
//! variant appended at the end keeps the format, and a command that needs another field
//! becomes a new variant. Anything else that changes an encoding (a field removed or
//! reordered, a variant's fields changed, a variant inserted; `HorcruxNode` or `SmData`,
//! which are positional) makes a new format: bump [`FORMAT`], keep the previous types as
//! a reader of the previous format, and add its upgrade step to [`crate::upgrade`]. The
//! golden test in `tests/format.rs` fails when an encoding changes without that.
//!
//! Format 0 was JSON (serde_json), before format bytes existed; `upgrade` converts a data
//! dir written in it, and the transport still answers a JSON request in JSON.
//!
//! [`Batch`]: crate::types::Batch

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format this build writes, and the newest it reads.
pub const FORMAT: u8 = 1;

/// Format 0 records and frames are JSON documents: an object, an array, a string or `null`.
pub(crate) fn is_json(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(b'{' | b'[' | b'"' | b'n'))
}

/// Decoding allocates no more than this much for one record (the RocksDB records are
/// written by this node; frames are bounded by the transport's own limit before this).
const DECODE_LIMIT: usize = 1 << 30;
type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;
const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty record")]
    Empty,
    #[error(
        "written in format {found}, newer than this Horcrux reads (format {FORMAT}): run the release that wrote it, or a newer one"
    )]
    Newer { found: u8 },
    #[error("in the JSON format of releases before format 1: upgrade the data dir first (it is upgraded when `horcrux serve` opens it)")]
    Json,
    #[error("in unknown format {found}")]
    Unknown { found: u8 },
    #[error("malformed format {FORMAT} record: {0}")]
    Malformed(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

fn body(bytes: &[u8]) -> Result<&[u8], FormatError> {
    match bytes.first() {
        None => Err(FormatError::Empty),
        Some(&FORMAT) => Ok(&bytes[1..]),
        Some(_) if is_json(bytes) => Err(FormatError::Json),
        Some(&found) if found > FORMAT && found < 0x20 => Err(FormatError::Newer { found }),
        Some(&found) => Err(FormatError::Unknown { found }),
    }
}

fn whole<T>((value, read): (T, usize), len: usize) -> Result<T, FormatError> {
    if read == len {
        Ok(value)
    } else {
        Err(FormatError::Malformed(format!("{} trailing bytes", len - read)))
    }
}

/// `value` in the current format, through its bincode derive.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![FORMAT];
    bincode::encode_into_std_write(value, &mut out, CONFIG)
        .map_err(|e| FormatError::Encode(e.to_string()))?;
    Ok(out)
}

/// A record written by [`encode`].
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, FormatError> {
    decode_limited::<T, DECODE_LIMIT>(bytes)
}

/// A frame written by [`encode`], allocating at most `LIMIT` bytes while decoding it
/// (bincode checks each length prefix against what is left of the limit before it
/// allocates): what a peer sends, where a forged length must not reserve gigabytes.
pub fn decode_limited<T: Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<T, FormatError> {
    let b = body(bytes)?;
    let config = bincode::config::standard().with_limit::<LIMIT>();
    whole(bincode::decode_from_slice(b, config).map_err(|e| FormatError::Malformed(e.to_string()))?, b.len())
}

/// `value` (an openraft type) in the current format, through its serde impl.
pub fn encode_serde<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![FORMAT];
    bincode::serde::encode_into_std_write(value, &mut out, CONFIG)
        .map_err(|e| FormatError::Encode(e.to_string()))?;
    Ok(out)
}

/// A record written by [`encode_serde`].
pub fn decode_serde<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let b = body(bytes)?;
    whole(
        bincode::serde::decode_from_slice(b, CONFIG).map_err(|e| FormatError::Malformed(e.to_string()))?,
        b.len(),
    )
}

/// The bincode body alone (no format byte), for a value nested in a serde-encoded one.
pub(crate) fn encode_nested<T: Encode>(value: &T) -> Result<Vec<u8>, String> {
    bincode::encode_to_vec(value, CONFIG).map_err(|e| e.to_string())
}

pub(crate) fn decode_nested<T: Decode<()>>(bytes: &[u8]) -> Result<T, String> {
    let (value, read) = bincode::decode_from_slice(bytes, CONFIG).map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Sample {
        a: u64,
        b: String,
    }

    #[test]
    fn records_carry_their_format() {
        let s = Sample { a: 300, b: "x".into() };
        let bytes = encode(&s).unwrap();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), s);

        let mut newer = bytes.clone();
        newer[0] = FORMAT + 1;
        let err = decode::<Sample>(&newer).unwrap_err();
        assert_eq!(err, FormatError::Newer { found: FORMAT + 1 });
        assert!(err.to_string().contains("newer than this Horcrux reads"), "{err}");
        assert_eq!(decode::<Sample>(br#"{"a":1,"b":"x"}"#).unwrap_err(), FormatError::Json);
        assert_eq!(decode::<Sample>(&[]).unwrap_err(), FormatError::Empty);
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode::<Sample>(&long), Err(FormatError::Malformed(_))));
        assert!(matches!(decode::<Sample>(&bytes[..2]), Err(FormatError::Malformed(_))));
    }

    /// A length prefix claiming more than the limit is refused before anything is allocated.
    #[test]
    fn forged_lengths_are_refused_within_the_limit() {
        // A string claiming 2^32 bytes (varint 0xfc + u32), followed by nothing.
        let forged = [FORMAT, 0x01, 0xfc, 0x00, 0x00, 0x00, 0x01, 0x00];
        let err = decode_limited::<Sample, 4096>(&forged).unwrap_err();
        assert!(matches!(&err, FormatError::Malformed(m) if m.contains("LimitExceeded")), "{err}");
        let ok = encode(&Sample { a: 1, b: "y".repeat(100) }).unwrap();
        assert!(decode_limited::<Sample, 4096>(&ok).is_ok());
        assert!(decode_limited::<Sample, 64>(&ok).is_err());
    }
}
