//! The in-memory network that replaces QUIC in the simulation: every RPC is a direct call
//! into the target node's Raft after a seeded delay (so messages reorder), unless it is
//! dropped, the target is down, or a partition (symmetric, or a one-way cut) separates the
//! two nodes; some requests are delivered twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_raft::{HorcruxNode, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use rand::rngs::StdRng;
use rand::Rng;

pub struct RouterInner {
    /// Running nodes.
    pub rafts: BTreeMap<NodeId, Raft<TypeConfig>>,
    /// Partition group of each node; nodes talk only within a group.
    pub group: BTreeMap<NodeId, u32>,
    /// One-way cuts (from, to): asymmetric partitions.
    pub cut: std::collections::BTreeSet<(NodeId, NodeId)>,
    pub dup_per_mille: u32,
    pub drop_per_mille: u32,
    pub max_delay_ms: u64,
    pub rng: StdRng,
    /// AppendEntries requests sent so far (what a test of the commit notification counts).
    pub append_entries_sent: u64,
}

#[derive(Clone)]
pub struct Router(pub Arc<Mutex<RouterInner>>);

#[derive(Clone)]
pub struct SimNet {
    pub router: Router,
    pub me: NodeId,
}

#[derive(Debug)]
struct Down(String);

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Down {}

impl Router {
    /// Decides the fate of one message: its delay, whether it is lost, and whether it is
    /// delivered twice.
    fn route(&self, from: NodeId, to: NodeId) -> (Duration, Option<Raft<TypeConfig>>, bool) {
        let mut r = self.0.lock().unwrap();
        let (max_delay, drop_per_mille, dup_per_mille) = (r.max_delay_ms, r.drop_per_mille, r.dup_per_mille);
        let delay = Duration::from_millis(r.rng.gen_range(0..=max_delay));
        let dropped = r.rng.gen_range(0..1000) < drop_per_mille;
        let duplicated = r.rng.gen_range(0..1000) < dup_per_mille;
        let target = if dropped || !r.link(from, to) { None } else { r.rafts.get(&to).cloned() };
        (delay, target, duplicated)
    }

    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        let r = self.0.lock().unwrap();
        r.link(to, from) && r.rafts.contains_key(&to) && r.rafts.contains_key(&from)
    }
}

impl RouterInner {
    fn link(&self, from: NodeId, to: NodeId) -> bool {
        self.group.get(&from) == self.group.get(&to) && !self.cut.contains(&(from, to))
    }
}

impl RaftNetworkFactory<TypeConfig> for SimNet {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &HorcruxNode) -> SimPeer {
        SimPeer { net: self.clone(), target }
    }
}

pub struct SimPeer {
    net: SimNet,
    target: NodeId,
}

type RpcErr<E> = RPCError<NodeId, HorcruxNode, E>;

fn unreachable<E: std::error::Error>(why: &str) -> RpcErr<E> {
    RPCError::Unreachable(Unreachable::new(&Down(why.to_string())))
}

impl SimPeer {
    /// Waits out the request's delay; the target's Raft if the request arrives, and whether
    /// it arrives twice.
    async fn arrive<E: std::error::Error>(&self) -> Result<(Raft<TypeConfig>, bool), RpcErr<E>> {
        let (delay, target, duplicated) = self.net.router.route(self.net.me, self.target);
        tokio::time::sleep(delay).await;
        target.map(|r| (r, duplicated)).ok_or_else(|| unreachable("lost"))
    }

    /// The reply is lost if the link back is cut by now.
    fn reply<T, E: std::error::Error>(&self, reply: T) -> Result<T, RpcErr<E>> {
        if self.net.router.connected(self.net.me, self.target) {
            Ok(reply)
        } else {
            Err(unreachable("reply lost"))
        }
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        self.net.router.0.lock().unwrap().append_entries_sent += 1;
        let (raft, twice) = self.arrive().await?;
        if twice {
            let _ = raft.append_entries(rpc.clone()).await;
        }
        let r = raft.append_entries(rpc).await;
        self.reply(r)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> {
        let (raft, twice) = self.arrive().await?;
        if twice {
            let _ = raft.install_snapshot(rpc.clone()).await;
        }
        let r = raft.install_snapshot(rpc).await;
        self.reply(r)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let (raft, twice) = self.arrive().await?;
        if twice {
            let _ = raft.vote(rpc.clone()).await;
        }
        let r = raft.vote(rpc).await;
        self.reply(r)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
