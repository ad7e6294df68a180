//! The sending side: openraft's network factory over QUIC, request forwarding to the
//! leader, liveness bookkeeping, and the join handshake of a new node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::tls::join_client_config;
use super::{JoinRequest, JoinResponse, RpcRequest, RpcResponse, MAX_FRAME};
use crate::node::HorcruxNode;
use crate::pki::CLUSTER_SERVER_NAME;
use crate::types::{NodeId, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

fn terr(e: impl std::fmt::Display) -> TransportError {
    TransportError(e.to_string())
}

async fn roundtrip(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(terr)?;
    send.write_all(bytes).await.map_err(terr)?;
    send.finish().map_err(terr)?;
    recv.read_to_end(MAX_FRAME).await.map_err(terr)
}

/// A send stream reset when dropped before [`ResetUnlessFinished::finish`].
struct ResetUnlessFinished(Option<quinn::SendStream>);

impl ResetUnlessFinished {
    fn stream(&mut self) -> &mut quinn::SendStream {
        self.0.as_mut().expect("until finished")
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        self.0.take().expect("until finished").finish().map_err(terr)
    }
}

impl Drop for ResetUnlessFinished {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.reset(quinn::VarInt::from_u32(1));
        }
    }
}

/// Which current member (if any) a certificate fingerprint belongs to.
pub type PeerCheck = Arc<dyn Fn(&str) -> Option<NodeId> + Send + Sync>;

/// A member's other addresses (its other corosync links), tried when its Raft address fails.
pub type Alternates = Arc<dyn Fn(NodeId) -> Vec<String> + Send + Sync>;

/// Shared by all peers: the endpoint, one cached connection per address, and when each
/// node was last heard from.
#[derive(Clone)]
pub struct QuicNetwork {
    endpoint: quinn::Endpoint,
    /// Replaced when this node's certificate is renewed.
    config: Arc<Mutex<quinn::ClientConfig>>,
    /// The identity before the last renewal: tried when a peer refuses the new one (a
    /// member that has not yet applied the entry recording it, which it can only learn
    /// from a peer it accepts).
    previous_config: Arc<Mutex<Option<quinn::ClientConfig>>>,
    conns: Arc<Mutex<HashMap<String, quinn::Connection>>>,
    contact: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Once set, a server must present a current member's certificate (the expected
    /// member's, when the call names its target), not merely one the CA signed.
    peer_check: Arc<std::sync::OnceLock<PeerCheck>>,
    alternates: Arc<std::sync::OnceLock<Alternates>>,
}

impl QuicNetwork {
    pub fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            config: Arc::new(Mutex::new(config)),
            previous_config: Arc::default(),
            conns: Arc::default(),
            contact: Arc::default(),
            peer_check: Arc::default(),
            alternates: Arc::default(),
        }
    }

    pub fn set_alternates(&self, alternates: Alternates) {
        let _ = self.alternates.set(alternates);
    }

    /// Dials with a new identity from now on (a renewed certificate); open connections are
    /// dropped so the next call presents it.
    pub fn set_client_config(&self, config: quinn::ClientConfig) {
        let old = std::mem::replace(&mut *self.config.lock().unwrap_or_else(|p| p.into_inner()), config);
        *self.previous_config.lock().unwrap_or_else(|p| p.into_inner()) = Some(old);
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn set_peer_check(&self, check: PeerCheck) {
        let _ = self.peer_check.set(check);
    }

    fn verify_peer(
        &self,
        conn: &quinn::Connection,
        target: Option<NodeId>,
        addr: &str,
    ) -> Result<(), TransportError> {
        let Some(check) = self.peer_check.get() else { return Ok(()) };
        let fingerprint = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|c| c.first().map(|c| crate::pki::fingerprint_der(c)));
        let member = fingerprint.as_deref().and_then(|f| check(f));
        match (member, target) {
            (Some(m), Some(t)) if m != t => {
                Err(TransportError(format!("{addr} presented member {m}'s certificate, not node {t}'s")))
            }
            (Some(_), _) => Ok(()),
            (None, _) => {
                tracing::warn!(%addr, "refused to talk to a server whose certificate is not a current member's");
                Err(TransportError(format!("{addr} presented a certificate that is not a current member's")))
            }
        }
    }

    /// The cached connection to `addr`, or a new one with the current identity (with the
    /// previous one when `previous`; `None` if there is no previous one).
    async fn connection(
        &self,
        addr: &str,
        previous: bool,
    ) -> Result<Option<quinn::Connection>, TransportError> {
        if !previous {
            if let Some(c) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
                if c.close_reason().is_none() {
                    return Ok(Some(c.clone()));
                }
            }
        }
        let config = if previous {
            let Some(c) = self.previous_config.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
                return Ok(None);
            };
            c
        } else {
            self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(terr)?
            .next()
            .ok_or_else(|| TransportError(format!("{addr} does not resolve")))?;
        let conn = self
            .endpoint
            .connect_with(config, sock, CLUSTER_SERVER_NAME)
            .map_err(terr)?
            .await
            .map_err(terr)?;
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), conn.clone());
        Ok(Some(conn))
    }

    /// One request over a connection to `addr` (see `connection`).
    async fn exchange(
        &self,
        target: Option<NodeId>,
        addr: &str,
        bytes: &[u8],
        previous: bool,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let Some(conn) = self.connection(addr, previous).await? else { return Ok(None) };
        let drop_it = || {
            // Stale (peer restarted) or refused: the next call redials.
            self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
        };
        if let Err(e) = self.verify_peer(&conn, target, addr) {
            drop_it();
            return Err(e);
        }
        match roundtrip(&conn, bytes).await {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                drop_it();
                Err(e)
            }
        }
    }

    /// One RPC to the node at `addr`, bounded by `timeout`.
    pub async fn call(
        &self,
        target: Option<NodeId>,
        addr: &str,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, TransportError> {
        let bytes = super::encode_frame(req, super::Framing::Binary).map_err(terr)?;
        let fut = async {
            let first = self.call_at(target, addr, &bytes).await;
            let Err(e) = first else { return first };
            // The member's other links, if an imported corosync.conf named them.
            let others = match (target, self.alternates.get()) {
                (Some(t), Some(alt)) => alt(t),
                _ => Vec::new(),
            };
            for other in others.iter().filter(|o| o.as_str() != addr) {
                if let Ok(r) = self.call_at(target, other, &bytes).await {
                    return Ok(r);
                }
            }
            Err(e)
        };
        let reply = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r?,
            Err(_) => {
                // A connection that carries no answer may be to a process that is gone (a
                // peer restarted without this side hearing of it: QUIC notices only after
                // its idle timeout). Redial next time instead of waiting on it again: a
                // vote sent over such a connection held elections up for seconds.
                self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
                return Err(TransportError(format!("no reply from {addr} within {timeout:?}")));
            }
        };
        if let Some(t) = target {
            self.heard_from(t);
        }
        super::decode_frame::<_, MAX_FRAME>(&reply).map(|(r, _)| r).map_err(terr)
    }

    /// A streamed API call to member `target` at `addr` (see [`super::STREAM_MARK`]):
    /// the body is sent as it comes, then the reply is awaited for at most `reply_timeout`.
    /// A body that fails resets the stream, so the other side sees it cut off.
    pub async fn call_streamed(
        &self,
        target: NodeId,
        addr: &str,
        call: &super::ApiCall,
        mut body: super::ApiBody,
        reply_timeout: Duration,
    ) -> Result<super::ApiReply, TransportError> {
        let (send, mut recv) = self.open_marked(super::STREAM_MARK, target, addr, call).await?;
        // Quinn finishes a stream dropped unfinished, which would read as a whole body:
        // this call dropped midway (its client gone) or a failed body resets it instead.
        let mut send = ResetUnlessFinished(Some(send));
        while let Some(piece) = body.recv().await {
            let b = piece.map_err(TransportError)?;
            send.stream().write_chunk(b).await.map_err(terr)?;
        }
        send.finish()?;
        let reply = tokio::time::timeout(reply_timeout, recv.read_to_end(MAX_FRAME))
            .await
            .map_err(|_| TransportError(format!("no reply from {addr} within {reply_timeout:?}")))?
            .map_err(terr)?;
        self.heard_from(target);
        match super::decode_frame::<RpcResponse, MAX_FRAME>(&reply).map_err(terr)?.0 {
            RpcResponse::Api(r) => Ok(r),
            _ => Err(TransportError(format!("unexpected reply from {addr}"))),
        }
    }

    /// Opens a tunnel to member `target` at `addr` (see [`super::TUNNEL_MARK`]): the header
    /// is sent, then the stream is the caller's.
    pub async fn open_tunnel(
        &self,
        target: NodeId,
        addr: &str,
        call: &super::ApiCall,
    ) -> Result<super::Tunnel, TransportError> {
        let (send, recv) = self.open_marked(super::TUNNEL_MARK, target, addr, call).await?;
        self.heard_from(target);
        Ok(super::Tunnel::new(send, recv))
    }

    /// A new stream to member `target` at `addr`, opened with `mark`, the header's length
    /// (u32, big endian) and the header (`call` as a binary frame): a streamed call or a
    /// tunnel (see [`super::STREAM_MARK`], [`super::TUNNEL_MARK`]).
    async fn open_marked(
        &self,
        mark: u8,
        target: NodeId,
        addr: &str,
        call: &super::ApiCall,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let head = super::encode_frame(call, super::Framing::Binary).map_err(terr)?;
        if head.len() > super::MAX_STREAM_HEADER {
            return Err(TransportError(format!("a stream header of {} bytes", head.len())));
        }
        let conn =
            self.connection(addr, false).await?.ok_or_else(|| TransportError("no connection".into()))?;
        if let Err(e) = self.verify_peer(&conn, Some(target), addr) {
            self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
            return Err(e);
        }
        let (mut send, recv) = conn.open_bi().await.map_err(terr)?;
        let mut first = vec![mark];
        first.extend((head.len() as u32).to_be_bytes());
        first.extend(head);
        send.write_all(&first).await.map_err(terr)?;
        Ok((send, recv))
    }

    /// One request to `addr`, with the current identity, then the previous one: a peer that
    /// does not know this node's renewed certificate yet still knows the previous one.
    async fn call_at(
        &self,
        target: Option<NodeId>,
        addr: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        match self.exchange(target, addr, bytes, false).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(TransportError("no connection".into())),
            Err(e) => match self.exchange(target, addr, bytes, true).await {
                Ok(Some(r)) => Ok(r),
                Ok(None) | Err(_) => Err(e),
            },
        }
    }

    pub fn heard_from(&self, node: NodeId) {
        self.contact.lock().unwrap_or_else(|p| p.into_inner()).insert(node, Instant::now());
    }

    pub fn last_contact(&self, node: NodeId) -> Option<Duration> {
        self.contact.lock().unwrap_or_else(|p| p.into_inner()).get(&node).map(|t| t.elapsed())
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = QuicPeer;

    async fn new_client(&mut self, target: NodeId, node: &HorcruxNode) -> QuicPeer {
        QuicPeer { net: self.clone(), target, addr: node.raft_addr.clone() }
    }
}

pub struct QuicPeer {
    net: QuicNetwork,
    target: NodeId,
    addr: String,
}

type RpcErr<E> = RPCError<NodeId, HorcruxNode, E>;

impl QuicPeer {
    async fn rpc<E: std::error::Error>(
        &self,
        req: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RpcErr<E>> {
        self.net
            .call(Some(self.target), &self.addr, &req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&TransportError(format!("unexpected reply to {what}"))))
}

impl RaftNetwork<TypeConfig> for QuicPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        match self.rpc(RpcRequest::AppendEntries(rpc), &option).await? {
            RpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>> {
        match self.rpc(RpcRequest::InstallSnapshot(rpc), &option).await? {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        match self.rpc(RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected("vote")),
        }
    }
}

/// How long one member may take to answer a join request (a dead member in the token's
/// list must not stall the join).
const JOIN_ATTEMPT: Duration = Duration::from_secs(5);

/// Result of a successful join: this node's id and identity.
pub struct Admitted {
    pub node_id: NodeId,
    pub cert_pem: String,
    /// Made here; never sent.
    pub key_pem: String,
    pub ca_pem: String,
    /// The members' certificate fingerprints at the time of joining.
    pub members: std::collections::BTreeMap<NodeId, String>,
    pub expires_s: u64,
}

/// Asks the members listed in a token to admit `node`, following redirects to the leader.
/// The members are trusted only if their CA has the token's fingerprint.
pub async fn join_cluster(
    addrs: &[String],
    ca_fingerprints: &[String],
    token_id: &str,
    secret: &str,
    node: &HorcruxNode,
) -> Result<Admitted, TransportError> {
    let bind: std::net::SocketAddr = "0.0.0.0:0".parse().map_err(terr)?;
    let endpoint = quinn::Endpoint::client(bind).map_err(terr)?;
    let (key_pem, public_key) = crate::pki::new_member_key().map_err(terr)?;
    let own = crate::pki::joiner_cert(&key_pem).map_err(terr)?;
    let config = join_client_config(ca_fingerprints, own, crate::pki::key_der(&key_pem).map_err(terr)?)
        .map_err(terr)?;
    let req = super::encode_frame(
        &JoinRequest {
            token_id: token_id.into(),
            secret: secret.into(),
            node: node.clone(),
            public_key_hex: horcrux_core::ids::hex_encode(&public_key),
        },
        super::Framing::Binary,
    )
    .map_err(terr)?;
    let mut queue: Vec<String> = addrs.to_vec();
    let mut last = TransportError("the token lists no member address".into());
    let mut hops = 0;
    while let Some(addr) = queue.pop() {
        hops += 1;
        if hops > 10 {
            break;
        }
        let attempt = async {
            let sock = tokio::net::lookup_host(&addr)
                .await
                .map_err(terr)?
                .next()
                .ok_or_else(|| terr("no address"))?;
            let conn = endpoint
                .connect_with(config.clone(), sock, CLUSTER_SERVER_NAME)
                .map_err(terr)?
                .await
                .map_err(terr)?;
            let reply = roundtrip(&conn, &req).await?;
            super::decode_frame::<JoinResponse, { super::MAX_JOIN_FRAME }>(&reply)
                .map(|(r, _)| r)
                .map_err(terr)
        };
        match tokio::time::timeout(JOIN_ATTEMPT, attempt).await {
            Ok(Ok(JoinResponse::Accepted { node_id, cert_pem, ca_pem, members, expires_s })) => {
                return Ok(Admitted { node_id, cert_pem, key_pem, ca_pem, members, expires_s })
            }
            Ok(Ok(JoinResponse::Redirect { leader_addr })) => queue.push(leader_addr),
            Ok(Ok(JoinResponse::Refused { reason })) => {
                return Err(TransportError(format!("join refused: {reason}")))
            }
            Ok(Err(e)) => last = TransportError(format!("{addr}: {e}")),
            Err(_) => last = TransportError(format!("{addr}: no answer within {JOIN_ATTEMPT:?}")),
        }
    }
    Err(last)
}
