//! The binary format (`horcrux_raft::codec`): encodings are pinned by a golden file, a
//! format 0 (JSON) data dir is upgraded in place, a newer or damaged one is refused without
//! being changed, and a format 0 peer's JSON frames are still read.

use std::collections::BTreeMap;
use std::path::Path;

use horcrux_core::{ApplyError, ApplyOk, ClusterState, Command, Request};
use horcrux_raft::codec::{self, FORMAT};
use horcrux_raft::transport::{decode_frame, encode_frame, Framing, RpcRequest, RpcResponse, MAX_FRAME};
use horcrux_raft::{Batch, HorcruxNode, LogStore, OpenError, SmData, StateMachineStore, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, SnapshotMeta, StoredMembership,
    Vote,
};
use serde_json::{json, Value};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format1-samples.json");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format1-golden.txt");

#[derive(serde::Deserialize)]
struct Samples {
    requests: Vec<Request>,
    state: ClusterState,
    results: Vec<Result<ApplyOk, ApplyError>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Each sample's JSON survives a round trip unchanged (so no sample field was dropped as
/// unknown), its encoding decodes to the same value, and the encodings equal the golden
/// file's. A change to an encoded type fails here. A field appended to an `evolving!`
/// struct keeps the format: give it a value in the samples and regenerate the golden file
/// with `HORCRUX_BLESS_FORMAT=1` (after checking that only that field's bytes were added).
/// Any other change is a new format (bump `codec::FORMAT`, keep a reader of this one, add
/// an upgrade step), then regenerate.
#[test]
fn encodings_match_the_golden_file() {
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(SAMPLES).unwrap()).unwrap();
    let samples: Samples = serde_json::from_value(raw.clone()).unwrap();
    for (i, r) in samples.requests.iter().enumerate() {
        assert_eq!(serde_json::to_value(r).unwrap(), raw["requests"][i], "request sample {i} lost a field");
    }
    assert_eq!(serde_json::to_value(&samples.state).unwrap(), raw["state"], "the state sample lost a field");

    let mut lines = Vec::new();
    for (i, r) in samples.requests.iter().enumerate() {
        let bytes = codec::encode(r).unwrap();
        assert_eq!(&codec::decode::<Request>(&bytes).unwrap(), r);
        lines.push(format!("request {i} {}", hex(&bytes)));
    }
    let batch = Batch(samples.requests.clone());
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(3, 2), 41),
        payload: EntryPayload::Normal(batch),
    };
    let bytes = codec::encode_serde(&entry).unwrap();
    assert_eq!(codec::decode_serde::<Entry<TypeConfig>>(&bytes).unwrap(), entry);
    lines.push(format!("entry {}", hex(&bytes)));
    let data = SmData {
        last_applied: Some(LogId::new(CommittedLeaderId::new(3, 2), 41)),
        last_membership: StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            membership(),
        ),
        state: samples.state.clone(),
    };
    let bytes = data.encode().unwrap();
    assert_eq!(SmData::decode(&bytes).unwrap().state, samples.state);
    lines.push(format!("state {}", hex(&bytes)));
    for (i, r) in samples.results.iter().enumerate() {
        let bytes = codec::encode(r).unwrap();
        assert_eq!(&codec::decode::<Result<ApplyOk, ApplyError>>(&bytes).unwrap(), r);
        lines.push(format!("result {i} {}", hex(&bytes)));
    }
    let got = lines.join("\n") + "\n";
    if std::env::var_os("HORCRUX_BLESS_FORMAT").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("the golden file (HORCRUX_BLESS_FORMAT=1 writes it)");
    for (g, w) in got.lines().zip(want.lines()) {
        assert_eq!(g, w, "an encoding changed: an appended evolving! field, or a new format (see codec.rs and this test's doc)");
    }
    assert_eq!(got.lines().count(), want.lines().count());
}

/// The samples hold one request per `Command` variant, in order: variant indexes
/// 0..n are all there and index n is not a variant. A variant added without a sample
/// fails here.
#[test]
fn the_samples_cover_every_command() {
    let samples: Samples = serde_json::from_str(&std::fs::read_to_string(SAMPLES).unwrap()).unwrap();
    let n = samples.requests.len();
    for (i, r) in samples.requests.iter().enumerate() {
        let bytes = codec::encode(&r.cmd).unwrap();
        assert_eq!(usize::from(bytes[1]), i, "sample {i} is variant {}", bytes[1]);
    }
    assert!(n < 251, "variant indexes above 250 take more than one byte");
    let err = codec::decode::<Command>(&[FORMAT, n as u8]).unwrap_err();
    assert!(
        err.to_string().contains("UnexpectedVariant"),
        "index {n} decodes as a Command: add its sample ({err})"
    );
}

fn membership() -> Membership<u64, HorcruxNode> {
    let node = HorcruxNode {
        name: "n1".into(),
        raft_addr: "127.0.0.1:7000".into(),
        api_addr: "127.0.0.1:8006".into(),
    };
    Membership::new(vec![[1u64].into()], BTreeMap::from([(1u64, node)]))
}

/// Writes records as format 0 did: serde_json, no format marker.
fn write_format0(dir: &Path, records: &[(&str, Vec<u8>, Vec<u8>)]) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let db = rocksdb::DB::open_cf(&opts, dir, ["log", "meta", "sm"]).unwrap();
    for (family, k, v) in records {
        db.put_cf(db.cf_handle(family).unwrap(), k, v).unwrap();
    }
    db.flush_wal(true).unwrap();
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    let req = Request { ts_ms: 1_700_000_000_000 + index, cmd, actor: None, id: None };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
        payload: EntryPayload::Normal(Batch(vec![req])),
    }
}

fn option(key: &str) -> Command {
    Command::SetClusterOption { key: key.into(), value: "v".into() }
}

fn format0_dir(dir: &Path) -> Vec<Entry<TypeConfig>> {
    let entries: Vec<_> = (6..=8).map(|i| entry(i, option(&format!("k{i}")))).collect();
    let mut state = SmData {
        last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
        last_membership: StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            membership(),
        ),
        state: ClusterState::default(),
    };
    state.state.options.insert("from-snapshot".into(), "yes".into());
    let meta = SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.last_membership.clone(),
        snapshot_id: "1-5".into(),
    };
    // The oldest layout: meta and data in one document, the data an array of numbers.
    let snapshot = json!({"meta": meta, "data": serde_json::to_vec(&state).unwrap()});
    let mut records = vec![
        ("meta", b"vote".to_vec(), serde_json::to_vec(&Vote::new_committed(2, 1)).unwrap()),
        (
            "meta",
            b"committed".to_vec(),
            serde_json::to_vec(&Some(LogId::new(CommittedLeaderId::new(2, 1), 7))).unwrap(),
        ),
        (
            "meta",
            b"last_purged".to_vec(),
            serde_json::to_vec(&LogId::new(CommittedLeaderId::new(1, 1), 5)).unwrap(),
        ),
        ("sm", b"snapshot".to_vec(), serde_json::to_vec(&snapshot).unwrap()),
    ];
    for e in &entries {
        records.push(("log", e.log_id.index.to_be_bytes().to_vec(), serde_json::to_vec(e).unwrap()));
    }
    write_format0(dir, &records);
    entries
}

/// Every kind of format 0 record (entries, vote, commit point, purge point, the oldest
/// snapshot layout) is converted; the log reads back the same entries and the state
/// machine the snapshot's state.
#[tokio::test]
async fn a_format_0_data_dir_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = format0_dir(tmp.path());
    let db = horcrux_raft::open_db(tmp.path()).unwrap();
    let mut log = LogStore::new(db.clone());
    assert_eq!(log.try_get_log_entries(6..9).await.unwrap(), entries);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
    assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(7));
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index), Some(5));
    let sm = StateMachineStore::open(db.clone()).unwrap();
    assert_eq!(sm.read().state.options["from-snapshot"], "yes");
    assert_eq!(sm.read().last_applied.map(|l| l.index), Some(5));
    for family in ["log", "meta", "sm"] {
        for item in db.iterator_cf(db.cf_handle(family).unwrap(), rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            assert_eq!(v[0], FORMAT, "{family}/{k:?}");
            assert_ne!(&*k, b"snapshot", "the oldest layout is gone");
        }
    }
}

/// A data dir marked with a newer format, or a format 0 one with a record that is not what
/// its key says, is refused with a message naming why, and is left exactly as it was.
#[test]
fn newer_and_damaged_data_dirs_are_refused_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    write_format0(tmp.path(), &[("meta", b"format".to_vec(), vec![FORMAT + 1])]);
    let err = horcrux_raft::open_db(tmp.path()).unwrap_err();
    assert!(matches!(err, OpenError::Format(_)));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("format {}", FORMAT + 1)) && msg.contains("newer than this Horcrux"),
        "{msg}"
    );
    assert!(msg.contains(&tmp.path().display().to_string()), "names the data dir: {msg}");

    let tmp = tempfile::tempdir().unwrap();
    let entries = format0_dir(tmp.path());
    write_format0(tmp.path(), &[("log", 9u64.to_be_bytes().to_vec(), b"{\"log_id\": 12".to_vec())]);
    let msg = horcrux_raft::open_db(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("record log/#9") && msg.contains("nothing was changed"), "{msg}");
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), tmp.path(), ["log", "meta", "sm"]).unwrap();
    let first = db.get_cf(db.cf_handle("log").unwrap(), 6u64.to_be_bytes()).unwrap().unwrap();
    assert_eq!(first, serde_json::to_vec(&entries[0]).unwrap(), "still format 0");
    assert!(db.get_cf(db.cf_handle("meta").unwrap(), b"format").unwrap().is_none(), "not marked");
}

/// A node of a release before format 1 sends JSON frames: they are read, and the reply
/// goes back in JSON, which that node reads. Frames of this release are binary and smaller.
#[test]
fn format_0_frames_are_read_and_answered_in_json() {
    let json_ping = serde_json::to_vec(&json!({"Ping": {"from": 3}})).unwrap();
    let (req, framing) = decode_frame::<RpcRequest, MAX_FRAME>(&json_ping).unwrap();
    assert!(matches!(req, RpcRequest::Ping { from: 3 }));
    assert_eq!(framing, Framing::Json);
    let reply = encode_frame(&RpcResponse::Pong, framing).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&reply).unwrap(), json!("Pong"));

    let req = RpcRequest::Propose(Request { ts_ms: 1, cmd: option("keyboard"), actor: None, id: None });
    let bin = encode_frame(&req, Framing::Binary).unwrap();
    assert_eq!(bin[0], FORMAT);
    let (back, framing) = decode_frame::<RpcRequest, MAX_FRAME>(&bin).unwrap();
    assert_eq!(framing, Framing::Binary);
    assert!(matches!(back, RpcRequest::Propose(r) if r.cmd == option("keyboard")));
    let json = encode_frame(&req, Framing::Json).unwrap();
    assert!(bin.len() * 2 < json.len(), "binary {} bytes, JSON {}", bin.len(), json.len());
    let mut newer = bin.clone();
    newer[0] = FORMAT + 1;
    assert!(decode_frame::<RpcRequest, MAX_FRAME>(&newer).unwrap_err().contains("newer"));
}
