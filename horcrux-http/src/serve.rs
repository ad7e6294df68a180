//! The TLS accept loop: each connection is handshaken and served by hyper (HTTP/1.1 or
//! HTTP/2) with the axum router.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
        };
        // Small request/response exchanges must not wait for Nagle + delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            // Handlers see the client's address (login throttling per source); headers only
            // the daemon may set are dropped.
            let app = app.layer(axum::Extension(crate::login::PeerAddr(peer))).layer(
                tower::util::MapRequestLayer::new(|mut r: axum::extract::Request| {
                    for h in crate::forward::INTERNAL_HEADERS {
                        r.headers_mut().remove(*h);
                    }
                    r
                }),
            );
            let svc = TowerToHyperService::new(app);
            if let Err(e) = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
