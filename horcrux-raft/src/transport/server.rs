//! The receiving side: accepts QUIC connections (TLS requires a client certificate: a
//! cluster CA's, or a joining node's self-signed one), requires on the Raft ALPN a client
//! certificate that is a *current member's* recorded one (not merely CA-signed: a removed
//! node's, an HTTPS certificate or any other the CA signed is refused), checks it again on
//! every RPC, and dispatches each stream's request.

use std::any::Any;

use quinn::crypto::rustls::HandshakeData;

use super::{JoinRequest, JoinResponse, RpcRequest, RpcResponse, ALPN_JOIN, ALPN_RAFT, MAX_FRAME};
use crate::handle::ClusterHandle;

pub type ServerCtx = ClusterHandle;

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d: Box<dyn Any>| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, handle: ClusterHandle) {
    while let Some(incoming) = endpoint.accept().await {
        let handle = handle.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("QUIC handshake failed: {e}");
                    return;
                }
            };
            let protocol = alpn(&conn);
            let remote = conn.remote_address();
            if protocol.as_deref() == Some(ALPN_JOIN) {
                let presented = peer_certificate(&conn);
                if let Ok((send, recv)) = conn.accept_bi().await {
                    if let Err(e) = join_stream(&handle, send, recv, remote.ip(), presented).await {
                        tracing::debug!("join stream: {e}");
                    }
                }
                return;
            }
            let fingerprint = peer_fingerprint(&conn);
            let member = fingerprint.as_deref().and_then(|f| handle.member_by_fingerprint(f));
            let (Some(ALPN_RAFT), Some(fingerprint), Some(peer)) =
                (protocol.as_deref(), fingerprint.clone(), member)
            else {
                let why = match (protocol.as_deref(), &fingerprint) {
                    (Some(ALPN_RAFT), None) => "no client certificate",
                    (Some(ALPN_RAFT), Some(_)) => "the certificate is not a current member's",
                    _ => "unknown protocol",
                };
                tracing::warn!(%remote, fingerprint = ?fingerprint.as_deref().map(|f| &f[..16]), "refused a cluster connection: {why}");
                conn.close(quinn::VarInt::from_u32(1), why.as_bytes());
                return;
            };
            let mut in_flight = tokio::task::JoinSet::new();
            while let Ok((send, recv)) = conn.accept_bi().await {
                while in_flight.try_join_next().is_some() {}
                // Membership is checked per RPC too: a node removed while connected is cut off.
                if handle.member_by_fingerprint(&fingerprint) != Some(peer) {
                    tracing::warn!(%remote, peer, "refused an RPC: the peer is no longer a member");
                    // The RPCs accepted while it was a member still answer: one of them may
                    // be the removal itself (a node leaving), whose answer would otherwise
                    // be lost with the connection as a lease renewal arrives after the commit.
                    drop(send);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                        while in_flight.join_next().await.is_some() {}
                    })
                    .await;
                    conn.close(quinn::VarInt::from_u32(2), b"no longer a member");
                    return;
                }
                let handle = handle.clone();
                in_flight.spawn(async move {
                    if let Err(e) = rpc_stream(&handle, peer, send, recv).await {
                        tracing::debug!("RPC stream: {e}");
                    }
                });
            }
            // A closed connection does not cut short the work its RPCs started.
            in_flight.detach_all();
        });
    }
}

/// The certificate the peer presented (TLS requires one).
fn peer_certificate(conn: &quinn::Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

/// SHA-256 of the peer's certificate.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    peer_certificate(conn).map(|c| crate::pki::fingerprint_der(&c))
}

async fn rpc_stream(
    handle: &ClusterHandle,
    peer: crate::types::NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await?;
    if first[0] == super::STREAM_MARK {
        return api_stream(handle, send, recv).await;
    }
    if first[0] == super::TUNNEL_MARK {
        let call = read_stream_header(&mut recv).await?;
        handle.serve_tunnel(call, super::Tunnel::new(send, recv)).await;
        return Ok(());
    }
    let mut bytes = first.to_vec();
    bytes.extend(recv.read_to_end(MAX_FRAME - 1).await?);
    let (req, framing) = super::decode_frame::<RpcRequest, MAX_FRAME>(&bytes)?;
    let raft = handle.raft();
    let resp = match req {
        RpcRequest::AppendEntries(r) => RpcResponse::AppendEntries(raft.append_entries(r).await),
        RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
        RpcRequest::InstallSnapshot(r) => RpcResponse::InstallSnapshot(raft.install_snapshot(r).await),
        RpcRequest::Propose(r) => RpcResponse::Propose(handle.propose_here(r).await),
        RpcRequest::ReadIndex => RpcResponse::ReadIndex(handle.read_index_here().await),
        RpcRequest::RemoveMember { name } => {
            RpcResponse::RemoveMember(handle.remove_member_here(&name).await)
        }
        RpcRequest::Api(call) => RpcResponse::Api(handle.serve_api(call, None).await),
        RpcRequest::LoginFailures { keys } => {
            handle.note_login_failures(keys);
            RpcResponse::Pong
        }
        RpcRequest::RenewCert { public_key_hex } => {
            RpcResponse::RenewCert(handle.renew_for_member(peer, &public_key_hex).await)
        }
        RpcRequest::RenewLease => RpcResponse::Lease(handle.grant_lease_to_member(peer).await),
        RpcRequest::Ping { from } if from == peer => {
            handle.heard_from(from);
            RpcResponse::Pong
        }
        RpcRequest::Ping { from } => {
            tracing::warn!(
                peer,
                claimed = from,
                "refused a ping: it names another node than its certificate"
            );
            return Err(format!("node {peer} sent a ping as node {from}").into());
        }
    };
    send.write_all(&super::encode_frame(&resp, framing)?).await?;
    send.finish()?;
    Ok(())
}

/// A streamed API call (see [`super::STREAM_MARK`]): the header, then the body handed on
/// piece by piece while the call is served; the reply goes back on the same stream.
async fn api_stream(
    handle: &ClusterHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (call, framing) = read_stream_header_framed(&mut recv).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let pump = tokio::spawn(async move {
        loop {
            let piece = match recv.read_chunk(1 << 20, true).await {
                Ok(Some(c)) => Ok(c.bytes),
                Ok(None) => return,
                Err(e) => Err(format!("the forwarded body was cut off: {e}")),
            };
            let stop = piece.is_err();
            if tx.send(piece).await.is_err() || stop {
                return;
            }
        }
    });
    let reply = handle.serve_api(call, Some(rx)).await;
    pump.abort();
    send.write_all(&super::encode_frame(&RpcResponse::Api(reply), framing)?).await?;
    send.finish()?;
    Ok(())
}

/// The header of a streamed call or a tunnel: its length (u32, big endian), then an
/// [`super::ApiCall`] frame.
async fn read_stream_header_framed(
    recv: &mut quinn::RecvStream,
) -> Result<(super::ApiCall, super::Framing), Box<dyn std::error::Error + Send + Sync>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > super::MAX_STREAM_HEADER {
        return Err(format!("streamed call header of {len} bytes").into());
    }
    let mut head = vec![0u8; len];
    recv.read_exact(&mut head).await?;
    Ok(super::decode_frame::<super::ApiCall, { super::MAX_STREAM_HEADER }>(&head)?)
}

async fn read_stream_header(
    recv: &mut quinn::RecvStream,
) -> Result<super::ApiCall, Box<dyn std::error::Error + Send + Sync>> {
    Ok(read_stream_header_framed(recv).await?.0)
}

async fn join_stream(
    handle: &ClusterHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    source: std::net::IpAddr,
    presented: Option<rustls::pki_types::CertificateDer<'static>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bytes = recv.read_to_end(super::MAX_JOIN_FRAME).await?;
    // The joining node proves it holds the key it asks a certificate for: the TLS handshake
    // was signed with the key of the certificate it presented.
    let holds = |req: &JoinRequest| {
        let key = presented.as_ref().and_then(|c| crate::pki::cert_public_key(c).ok());
        let asked = horcrux_core::ids::hex_decode(&req.public_key_hex);
        key.is_some() && key == asked
    };
    let decoded = super::decode_frame::<JoinRequest, { super::MAX_JOIN_FRAME }>(&bytes);
    let framing = decoded.as_ref().map(|(_, f)| *f).unwrap_or(super::Framing::Binary);
    let resp = match decoded {
        Ok((req, _)) if holds(&req) => handle.admit(req, source).await,
        Ok((req, _)) => {
            tracing::warn!(%source, node = %req.node.name, "refused a join: the key asked for is not the one the connection presented");
            JoinResponse::Refused {
                reason: "the public key in the request is not the one of the certificate presented".into(),
            }
        }
        Err(e) => JoinResponse::Refused { reason: format!("malformed join request: {e}") },
    };
    send.write_all(&super::encode_frame(&resp, framing)?).await?;
    send.finish()?;
    // Give the peer time to read the reply before the connection drops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped()).await;
    Ok(())
}
