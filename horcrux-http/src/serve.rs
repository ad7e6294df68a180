//! The TLS accept loop: each connection is handshaken and served by hyper (HTTP/1.1 or
//! HTTP/2) with the axum router. Bounded against slow or greedy clients: the handshake and
//! a request's headers must arrive within their timeouts, and one address holds at most
//! `MAX_CONNS_PER_ADDR` connections at a time.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (slow-loris). hyper also counts
/// a kept-alive connection's idle time before its next request against it, so this is
/// also how long an idle connection stays open: long enough that clients reusing pooled
/// connections rarely race its closing. Tests shorten it with `HORCRUX_HEADER_TIMEOUT_S`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one client address may hold open at once (idle kept-alive ones count until
/// they time out: a test client holding one session per API operation needed more than 64).
pub const MAX_CONNS_PER_ADDR: usize = 256;

fn header_timeout() -> Duration {
    std::env::var("HORCRUX_HEADER_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(HEADER_TIMEOUT)
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct ConnCount(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One counted connection; uncounted when dropped.
struct ConnSlot {
    count: ConnCount,
    ip: IpAddr,
}

impl ConnCount {
    fn take(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_CONNS_PER_ADDR {
            return None;
        }
        *n += 1;
        Some(ConnSlot { count: self.clone(), ip })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut m = self.count.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let conns = ConnCount::default();
    let header_timeout = header_timeout();
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
        let Some(slot) = conns.take(peer.ip()) else {
            tracing::debug!(%peer, "refused: {MAX_CONNS_PER_ADDR} connections from this address are open");
            continue;
        };
        // Small request/response exchanges must not wait for Nagle + delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
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
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
