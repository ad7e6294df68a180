//! `SimPort`: a simulated node as the actors see it (the `ClusterPort` seam). Proposals go
//! through the product's `Proposer`, forwarded to the leader when the network allows, as
//! `ClusterHandle::propose` does over QUIC.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_actors::ClusterPort;
use horcrux_core::{ApplyOk, ClusterState, Command, Request};
use horcrux_drivers::BoxFuture;
use horcrux_raft::{NodeId, ProposeError, Proposer};
use tokio::sync::watch;

use crate::net::Router;
use crate::store::StoreView;

pub type Proposers = Arc<Mutex<BTreeMap<NodeId, Proposer>>>;

pub struct SimPort {
    pub id: NodeId,
    /// The name the actors believe this node has (a bug may lie here).
    pub name: String,
    pub sm: StoreView,
    pub proposers: Proposers,
    pub router: Router,
    /// This node's clock: simulated time plus its skew.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl ClusterPort for SimPort {
    fn node_name(&self) -> &str {
        &self.name
    }

    fn with_state(&self, f: &mut dyn FnMut(&ClusterState)) {
        self.sm.with_data(|d| f(&d.state))
    }

    fn subscribe_guest_changes(&self) -> watch::Receiver<u64> {
        self.sm.subscribe_guest_changes()
    }

    fn read_barrier(&self) -> BoxFuture<'static, Result<(), ProposeError>> {
        let (id, sm, router) = (self.id, self.sm.clone(), self.router.clone());
        Box::pin(async move {
            let unavailable = |m: &str| ProposeError::Unavailable(m.to_string());
            let me =
                router.0.lock().unwrap().rafts.get(&id).cloned().ok_or_else(|| unavailable("node down"))?;
            let leader = me.metrics().borrow().current_leader.ok_or_else(|| unavailable("no leader"))?;
            if leader != id && !(router.connected(id, leader) && router.connected(leader, id)) {
                return Err(unavailable("leader unreachable"));
            }
            let raft = router
                .0
                .lock()
                .unwrap()
                .rafts
                .get(&leader)
                .cloned()
                .ok_or_else(|| unavailable("leader down"))?;
            let read = tokio::time::timeout(Duration::from_secs(4), raft.get_read_log_id())
                .await
                .map_err(|_| unavailable("leadership not confirmed in time"))?
                .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
            let index = read.0.map(|l| l.index);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            while sm.applied() < index {
                if tokio::time::Instant::now() >= deadline {
                    return Err(unavailable("not caught up with the leader"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        })
    }

    fn propose_as(
        &self,
        actor: Option<horcrux_core::access::Actor>,
        cmd: Command,
    ) -> BoxFuture<'static, Result<ApplyOk, ProposeError>> {
        let (id, sm, proposers, router) =
            (self.id, self.sm.clone(), self.proposers.clone(), self.router.clone());
        // No request id: a sim node's port restarts with the node, and a restarted
        // sequence would collide with the old session's results.
        let req = Request { ts_ms: (self.clock)(), cmd, actor, id: None };
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            loop {
                let mut target = id;
                let mut res = None;
                for _ in 0..2 {
                    let Some(p) = proposers.lock().unwrap().get(&target).cloned() else { break };
                    match p.propose(req.clone()).await {
                        Err(horcrux_raft::transport::ForwardError::NotLeader { leader: Some(l) })
                            if l != target && router.connected(id, l) && router.connected(l, id) =>
                        {
                            target = l;
                        }
                        other => {
                            res = Some(other);
                            break;
                        }
                    }
                }
                match res {
                    Some(Ok(Ok(ok))) => {
                        // Read-your-writes, as the product waits for its own apply. Polled:
                        // waiters on one tokio `watch` wake in a random order, which would
                        // make runs of one seed differ.
                        while sm.applied() < Some(ok.revision) {
                            if tokio::time::Instant::now() >= deadline {
                                return Err(ProposeError::Unavailable(
                                    "committed but not applied here".into(),
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        return Ok(ok);
                    }
                    Some(Ok(Err(e))) => return Err(ProposeError::Rejected(e)),
                    _ if tokio::time::Instant::now() >= deadline => {
                        return Err(ProposeError::Unavailable("quorum lost: not committed in time".into()))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    }
}
