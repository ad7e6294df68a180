//! The Raft network seam. A single-node cluster has no peers, so every RPC reports the
//! target unreachable; the QUIC transport (cluster issue) and the simulator's in-memory
//! router implement the same openraft traits.

use crate::node::HorcruxNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{NodeId, TypeConfig};

#[derive(Clone, Default)]
pub struct NoPeerNetwork;

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, HorcruxNode, E> {
    let e =
        std::io::Error::other(format!("node {target} is not reachable: this node has no cluster transport"));
    RPCError::Unreachable(Unreachable::new(&e))
}

pub struct NoPeerClient {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NoPeerNetwork {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &HorcruxNode) -> Self::Network {
        NoPeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, HorcruxNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, HorcruxNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, HorcruxNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }
}
