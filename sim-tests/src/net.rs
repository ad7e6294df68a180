//! The in-memory network that replaces QUIC in the simulation: every RPC is a direct call
//! into the target node's Raft after a seeded delay, unless it is dropped, the target is
//! down, or a partition separates the two nodes.

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
    pub drop_per_mille: u32,
    pub max_delay_ms: u64,
    pub rng: StdRng,
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
    /// Decides the fate of one message from `from` to `to`: its delay, or that it is lost.
    fn route(&self, from: NodeId, to: NodeId) -> (Duration, Option<Raft<TypeConfig>>) {
        let mut r = self.0.lock().unwrap();
        let (max_delay, drop_per_mille) = (r.max_delay_ms, r.drop_per_mille);
        let delay = Duration::from_millis(r.rng.gen_range(0..=max_delay));
        let dropped = r.rng.gen_range(0..1000) < drop_per_mille;
        let connected = r.group.get(&from) == r.group.get(&to);
        let target = if dropped || !connected { None } else { r.rafts.get(&to).cloned() };
        (delay, target)
    }

    fn connected(&self, from: NodeId, to: NodeId) -> bool {
        let r = self.0.lock().unwrap();
        r.group.get(&from) == r.group.get(&to) && r.rafts.contains_key(&to) && r.rafts.contains_key(&from)
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
    /// Delivers the request (after its delay) and the reply (if the link still holds).
    async fn send<T, E: std::error::Error>(
        &self,
        call: impl AsyncFnOnce(Raft<TypeConfig>) -> T,
    ) -> Result<T, RpcErr<E>> {
        let (delay, target) = self.net.router.route(self.net.me, self.target);
        tokio::time::sleep(delay).await;
        let Some(raft) = target else { return Err(unreachable("lost")) };
        let reply = call(raft).await;
        if !self.net.router.connected(self.net.me, self.target) {
            return Err(unreachable("reply lost"));
        }
        Ok(reply)
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let t = self.target;
        self.send(async move |r: Raft<TypeConfig>| r.append_entries(rpc).await)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(t, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> {
        let t = self.target;
        self.send(async move |r: Raft<TypeConfig>| r.install_snapshot(rpc).await)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(t, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        let t = self.target;
        self.send(async move |r: Raft<TypeConfig>| r.vote(rpc).await)
            .await?
            .map_err(|e| RPCError::RemoteError(RemoteError::new(t, e)))
    }
}
