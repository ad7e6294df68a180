//! The receiving side: accepts QUIC connections, requires a CA-signed client certificate
//! on the Raft ALPN, and dispatches each stream's request.

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
            let authenticated = conn.peer_identity().is_some();
            if protocol.as_deref() == Some(ALPN_RAFT) && authenticated {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(e) = rpc_stream(&handle, send, recv).await {
                            tracing::debug!("RPC stream: {e}");
                        }
                    });
                }
            } else if protocol.as_deref() == Some(ALPN_JOIN) {
                if let Ok((send, recv)) = conn.accept_bi().await {
                    if let Err(e) = join_stream(&handle, send, recv).await {
                        tracing::debug!("join stream: {e}");
                    }
                }
            } else {
                tracing::warn!(remote = %conn.remote_address(), "refused a connection without a cluster certificate");
                conn.close(quinn::VarInt::from_u32(1), b"cluster certificate required");
            }
        });
    }
}

async fn rpc_stream(
    handle: &ClusterHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bytes = recv.read_to_end(MAX_FRAME).await?;
    let req: RpcRequest = serde_json::from_slice(&bytes)?;
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
        RpcRequest::Api(call) => RpcResponse::Api(handle.serve_api(call).await),
        RpcRequest::Ping { from } => {
            handle.heard_from(from);
            RpcResponse::Pong
        }
    };
    send.write_all(&serde_json::to_vec(&resp)?).await?;
    send.finish()?;
    Ok(())
}

async fn join_stream(
    handle: &ClusterHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bytes = recv.read_to_end(64 * 1024).await?;
    let resp = match serde_json::from_slice::<JoinRequest>(&bytes) {
        Ok(req) => handle.admit(req).await,
        Err(e) => JoinResponse::Refused { reason: format!("malformed join request: {e}") },
    };
    send.write_all(&serde_json::to_vec(&resp)?).await?;
    send.finish()?;
    // Give the peer time to read the reply before the connection drops.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped()).await;
    Ok(())
}
