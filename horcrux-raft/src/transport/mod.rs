//! The QUIC transport (quinn) with mutual TLS from the cluster CA: Raft RPCs, join
//! requests and write/read forwarding between nodes. One connection per peer, one
//! bidirectional stream per RPC. A frame is one [`crate::codec`] record: the format byte,
//! then bincode. A request in the JSON of format 0 (a node of an earlier release) is still
//! read and answered in JSON ([`decode_request`], [`encode_response`]).

mod client;
mod server;
mod tls;

use serde::{Deserialize, Serialize};

use crate::node::HorcruxNode;
use crate::types::{ApplyResult, NodeId, TypeConfig};
use horcrux_core::Request;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

pub use client::{join_cluster, Alternates, PeerCheck, QuicNetwork};
pub use server::{serve, ServerCtx};
pub use tls::{join_client_config, NodeIdentity, ALPN_JOIN, ALPN_RAFT};

/// How a frame was written; a reply goes back the way its request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The current format ([`crate::codec`]).
    Binary,
    /// JSON, format 0: what a node of a release before format 1 sends.
    Json,
}

/// A request (or reply) frame, in the current format or in format 0's JSON; decoding it
/// allocates at most `LIMIT` bytes ([`MAX_FRAME`] between members, [`MAX_JOIN_FRAME`] from
/// a joining node, which is not authenticated yet).
pub fn decode_frame<T: bincode::Decode<()> + serde::de::DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, Framing), String> {
    if bytes.len() > LIMIT {
        return Err(format!("frame of {} bytes, more than {LIMIT}", bytes.len()));
    }
    if crate::codec::is_json(bytes) {
        return serde_json::from_slice(bytes)
            .map(|v| (v, Framing::Json))
            .map_err(|e| format!("malformed JSON frame: {e}"));
    }
    crate::codec::decode_limited::<T, LIMIT>(bytes)
        .map(|v| (v, Framing::Binary))
        .map_err(|e| format!("frame {e}"))
}

/// `value` as a frame in `framing`.
pub fn encode_frame<T: bincode::Encode + Serialize>(value: &T, framing: Framing) -> Result<Vec<u8>, String> {
    match framing {
        Framing::Binary => crate::codec::encode(value).map_err(|e| e.to_string()),
        Framing::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
    }
}

/// Largest frame accepted: snapshots travel in openraft chunks well below this.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Largest join request or answer.
pub const MAX_JOIN_FRAME: usize = 64 * 1024;

// A message decoded, handled and dropped one at a time: boxing the large variant would
// only add an allocation per RPC.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum RpcRequest {
    AppendEntries(#[bincode(with_serde)] AppendEntriesRequest<TypeConfig>),
    Vote(#[bincode(with_serde)] VoteRequest<NodeId>),
    InstallSnapshot(#[bincode(with_serde)] InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a client write to the leader.
    Propose(Request),
    /// A follower asks the leader for a read index (ReadIndex protocol).
    ReadIndex,
    /// Liveness between members, for cluster status and quorum reporting.
    Ping {
        from: NodeId,
    },
    /// Remove a member (by name) from the membership; the leader does it.
    RemoveMember {
        name: String,
    },
    /// An API request for a guest or task this node owns, forwarded by another node.
    Api(ApiCall),
    /// Failed logins another member saw (throttle keys), so that every node counts them.
    LoginFailures {
        keys: Vec<String>,
    },
    /// A member asks the leader for a new certificate over a new public key (the caller is
    /// the member its current certificate names).
    RenewCert {
        public_key_hex: String,
    },
    /// A member asks the leader to renew its HA lease (the caller is the member its
    /// certificate names).
    RenewLease,
}

/// A renewed member certificate, recorded in the state before it is answered.
#[derive(Debug, Clone, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RenewedCert {
    pub cert_pem: String,
    pub expires_s: u64,
    /// Fingerprint of the CA that signed it.
    #[serde(default)]
    pub ca: String,
}

/// An HTTP request carried to the node that owns the guest (or ran the task).
#[derive(Debug, Clone, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct ApiCall {
    pub method: String,
    pub uri: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// The `CSRFPreventionToken` header of a ticket-authenticated write.
    #[serde(default)]
    pub csrf: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct ApiReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// Counts login failures reported by another member (installed by the HTTP layer).
pub type LoginFailureHook = std::sync::Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// The body of a streamed API call as it arrives: pieces in order, an error if the stream
/// was cut off (the call must then leave nothing behind).
pub type ApiBody = tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>;

/// Serves forwarded API calls on this node (installed by the HTTP layer): the call, and
/// for a streamed one (an upload) its body, which then is not in [`ApiCall::body`].
pub type ApiHandler = std::sync::Arc<
    dyn Fn(ApiCall, Option<ApiBody>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiReply> + Send>>
        + Send
        + Sync,
>;

/// Both directions of a tunnel as one byte stream.
pub struct Tunnel {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Tunnel {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Tunnel { send, recv }
    }
}

impl tokio::io::AsyncRead for Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.send), cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx)
    }
}

/// Serves tunnels opened to this node (installed by the HTTP layer): what the header asks
/// for, and the stream, which the handler owns until it is done with it.
pub type TunnelHandler = std::sync::Arc<
    dyn Fn(ApiCall, Tunnel) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync,
>;

/// The first byte of a streamed API call (where a frame has its format byte): then the
/// length of the header (u32, big endian), the header (an [`ApiCall`] frame without body),
/// and the raw body up to the end of the stream. Uploads of any size travel so, never
/// held whole in memory. A node of a release without it reads the byte as a newer format
/// and refuses the call with that message.
pub const STREAM_MARK: u8 = 0x1f;
/// The first byte of a tunnel (a console relayed to the node that runs the guest): then the
/// length of the header (u32, big endian), the header (an [`ApiCall`] frame naming what to
/// connect to), and from then on raw bytes both ways until either side closes. What the
/// bytes mean is the handler's business (see [`TunnelHandler`]).
pub const TUNNEL_MARK: u8 = 0x1e;
/// Largest header of a streamed call.
pub const MAX_STREAM_HEADER: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum RpcResponse {
    AppendEntries(#[bincode(with_serde)] Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(#[bincode(with_serde)] Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        #[bincode(with_serde)]
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<ApplyResult, ForwardError>),
    ReadIndex(Result<u64, ForwardError>),
    Pong,
    RemoveMember(Result<(), ForwardError>),
    Api(ApiReply),
    RenewCert(Result<RenewedCert, ForwardError>),
    /// The leader's commit index when it granted the lease.
    Lease(Result<u64, ForwardError>),
}

/// Why a forwarded write or read failed on the node that received it.
#[derive(Debug, Clone, Serialize, Deserialize, bincode::Encode, bincode::Decode, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
    /// The request is wrong for the current state (unknown member, owns guests, ...).
    #[error("{0}")]
    Refused(String),
}

/// Sent by a node that wants to join, on the join ALPN (it has no certificate yet).
#[derive(Debug, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct JoinRequest {
    pub token_id: String,
    pub secret: String,
    pub node: HorcruxNode,
    /// The P-256 public key (uncompressed point, hex) the joining node made for its
    /// certificate; its private key stays on the node.
    pub public_key_hex: String,
}

#[derive(Debug, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum JoinResponse {
    Accepted {
        node_id: NodeId,
        cert_pem: String,
        ca_pem: String,
        /// The members' certificate fingerprints, trusted until this node's own copy of
        /// the state has them.
        members: std::collections::BTreeMap<NodeId, String>,
        /// When the certificate expires (Unix seconds); the node renews it before.
        #[serde(default)]
        expires_s: u64,
    },
    /// Ask the leader instead (its Raft address).
    Redirect {
        leader_addr: String,
    },
    Refused {
        reason: String,
    },
}
