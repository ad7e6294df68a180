//! The TLS accept loop: each connection is handshaken and served by hyper (HTTP/1.1 or
//! HTTP/2) with the axum router. Bounded against slow or greedy clients: the handshake and
//! a request's headers must arrive within their timeouts, and one address holds at most
//! `MAX_CONNS_PER_ADDR` live connections at a time (a new one evicts its oldest).

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
/// Connections one client address may hold open at once. One more evicts that address's
/// oldest (closed gracefully: at once if idle or still handshaking, after its answer if a
/// request is in flight), the way a server drops idle keep-alive connections under
/// pressure, so a client that leaks pooled connections is not locked out; evicted ones
/// still draining count too, up to twice this, beyond which new ones are refused.
pub const MAX_CONNS_PER_ADDR: usize = 256;

fn header_timeout() -> Duration {
    std::env::var("HORCRUX_HEADER_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(HEADER_TIMEOUT)
}

/// One open connection of an address: asked to close through `evict`.
struct Conn {
    id: u64,
    evict: Arc<tokio::sync::Notify>,
    draining: bool,
}

/// The last connection id handed out, and each address's open connections, oldest first.
#[derive(Default)]
struct Conns {
    last_id: u64,
    by_addr: HashMap<IpAddr, Vec<Conn>>,
}

#[derive(Clone, Default)]
struct ConnCount(Arc<Mutex<Conns>>);

/// One counted connection; uncounted when dropped.
struct ConnSlot {
    count: ConnCount,
    ip: IpAddr,
    id: u64,
    evict: Arc<tokio::sync::Notify>,
}

impl ConnCount {
    fn take(&self, ip: IpAddr) -> Option<ConnSlot> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Conns { last_id, by_addr } = &mut *guard;
        let conns = by_addr.entry(ip).or_default();
        if conns.len() >= 2 * MAX_CONNS_PER_ADDR {
            return None;
        }
        if conns.iter().filter(|c| !c.draining).count() >= MAX_CONNS_PER_ADDR {
            if let Some(oldest) = conns.iter_mut().find(|c| !c.draining) {
                oldest.draining = true;
                oldest.evict.notify_one();
            }
        }
        *last_id += 1;
        let evict = Arc::new(tokio::sync::Notify::new());
        conns.push(Conn { id: *last_id, evict: evict.clone(), draining: false });
        Some(ConnSlot { count: self.clone(), ip, id: *last_id, evict })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut guard = self.count.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = guard.by_addr.get_mut(&self.ip) {
            conns.retain(|c| c.id != self.id);
            if conns.is_empty() {
                guard.by_addr.remove(&self.ip);
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
            tracing::debug!(%peer, "refused: {} connections from this address are open", 2 * MAX_CONNS_PER_ADDR);
            continue;
        };
        // Small request/response exchanges must not wait for Nagle + delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let evict = slot.evict.clone();
            let _slot = slot;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = evict.notified() => return,
            };
            // Handlers see the client's address (login throttling per source); headers only
            // the daemon may set are dropped.
            let app = app.layer(axum::Extension(crate::throttle::PeerAddr(peer))).layer(
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
            // Upgrades: the consoles' WebSockets.
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                _ = evict.notified() => {
                    // Newer connections from this address need the room: finish what is in
                    // flight, take no further request.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
