//! Gathers concurrent proposals into one log entry.
//!
//! openraft 0.9 appends (and fsyncs) each `client_write` on its own, so the leader paid one
//! fsync and one state machine round per write. The proposer queues writes while up to
//! [`MAX_IN_FLIGHT`] batches are being committed and sends everything that queued meanwhile
//! as the next entry: under load the batch grows with the queue, at low load it is one
//! write and adds no wait.

use std::sync::Arc;

use horcrux_core::Request;
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::handle::OP_TIMEOUT;
use crate::transport::ForwardError;
use crate::types::{ApplyResult, Batch, TypeConfig};

/// Batches being committed at once; further writes wait and join the next batch.
pub const MAX_IN_FLIGHT: usize = 1;
/// Most requests in one entry.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<ApplyResult, ForwardError>>;

/// Cheap to clone; the batching task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<(Request, Reply)>,
}

impl Proposer {
    /// Starts the batching task for `raft` on `rt` (the Raft thread).
    pub fn spawn(rt: &tokio::runtime::Handle, raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        rt.spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `req` here and waits until it is committed and applied, or says that this
    /// node is not the leader (nothing was proposed then).
    pub async fn propose(&self, req: Request) -> Result<ApplyResult, ForwardError> {
        let (reply, rx) = oneshot::channel();
        let gone = || ForwardError::Unavailable("this node is shutting down".into());
        self.tx.send((req, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<(Request, Reply)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before draining, so that the queue grows while batches commit.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut reqs = vec![first.0];
        let mut replies = vec![first.1];
        while reqs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((req, reply)) => {
                    reqs.push(req);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let res = tokio::time::timeout(OP_TIMEOUT, raft.client_write(Batch(reqs))).await;
            drop(slot);
            let err = match res {
                Ok(Ok(resp)) if resp.data.len() == replies.len() => {
                    for (reply, r) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(r));
                    }
                    return;
                }
                Ok(Ok(resp)) => ForwardError::Unavailable(format!(
                    "internal: {} results for a batch of {}",
                    resp.data.len(),
                    replies.len()
                )),
                Err(_) => ForwardError::Unavailable(format!(
                    "quorum lost: the write was not committed within {OP_TIMEOUT:?}"
                )),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    ForwardError::NotLeader { leader: f.leader_id }
                }
                Ok(Err(e)) => ForwardError::Unavailable(e.to_string()),
            };
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        });
    }
}
