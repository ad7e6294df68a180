//! The log and state machine survive a restart, including after a snapshot was taken.

use horcrux_core::{ApplyError, Command, StorageKind};
use horcrux_raft::{ClusterHandle, OpenOptions, ProposeError};

fn opts(dir: &std::path::Path) -> OpenOptions {
    OpenOptions {
        dir: dir.join("raft"),
        node_name: "n1".into(),
        api_addr: "127.0.0.1:8006".into(),
        cluster: None,
        snapshot_logs: None,
    }
}

fn add_storage(id: String) -> Command {
    Command::AddStorage { id, kind: StorageKind::Dir { path: "/tmp/x".into() } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_restart_and_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let h = ClusterHandle::open(opts(tmp.path())).await.unwrap();
        assert_eq!(h.node_name(), "n1");
        for i in 0..50 {
            h.propose(add_storage(format!("s{i}"))).await.unwrap();
        }
        // A refused command reports why and changes nothing.
        let e = h.propose(add_storage("s0".into())).await.unwrap_err();
        assert!(matches!(e, ProposeError::Rejected(ApplyError::Conflict { .. })), "{e:?}");
        h.raft().trigger().snapshot().await.unwrap();
        let r = h
            .raft()
            .wait(Some(std::time::Duration::from_secs(5)))
            .metrics(|m| m.snapshot.is_some(), "snapshot built")
            .await;
        r.unwrap();
        for i in 50..60 {
            h.propose(add_storage(format!("s{i}"))).await.unwrap();
        }
        h.shutdown().await;
    }
    let h = ClusterHandle::open(opts(tmp.path())).await.unwrap();
    let (count, nodes) = h.read_linearizable(|s| (s.storage.len(), s.nodes.len())).await.unwrap();
    assert_eq!(count, 60);
    assert_eq!(nodes, 1);
    h.propose(add_storage("after".into())).await.unwrap();
    assert!(h.read_local(|s| s.storage.contains_key("after")));
    h.shutdown().await;
}

/// Concurrent proposals share log entries, and a refused one in a batch neither fails nor
/// changes the others; every acknowledged write is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_and_judged_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let h = ClusterHandle::open(opts(tmp.path())).await.unwrap();
    h.propose(add_storage("taken".into())).await.unwrap();
    let before = h.raft().metrics().borrow().last_log_index.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let h = h.clone();
            // Every tenth proposal conflicts with the existing pool.
            let id = if i % 10 == 0 { "taken".to_string() } else { format!("p{i}") };
            tokio::spawn(async move { h.propose(add_storage(id)).await })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(ProposeError::Rejected(ApplyError::Conflict { .. })) => refused += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(refused, 20);
    let entries = h.raft().metrics().borrow().last_log_index.unwrap() - before;
    assert!(entries < 200, "200 concurrent proposals took {entries} log entries: not batched");
    assert_eq!(h.read_local(|s| s.storage.len()), 181);
    h.shutdown().await;
    drop(h);
    let h = ClusterHandle::open(opts(tmp.path())).await.unwrap();
    assert_eq!(h.read_linearizable(|s| s.storage.len()).await.unwrap(), 181);
    h.shutdown().await;
}
