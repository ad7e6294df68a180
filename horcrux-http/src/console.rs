//! Consoles, as Proxmox's: `vncproxy` and `termproxy` hand out a ticket, `vncwebsocket`
//! redeems it with a WebSocket that carries the guest's VNC (RFB) or serial port.
//!
//! A ticket is issued by the node that runs the guest (the forwarding layer carries the
//! `POST` there), bound to the caller, the guest and a port number, valid 40 s and good for
//! one connection. The WebSocket is answered by whichever node the browser talks to: it
//! checks the caller's `VM.Console` like any route, then asks the guest's node (itself, or
//! another member over a cluster-transport tunnel) to redeem the ticket and connect the
//! console; the bytes then flow browser ⇄ this node ⇄ the guest's node ⇄ QEMU.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use horcrux_actors::ConsoleKind;
use horcrux_raft::transport::ApiCall;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::auth::Caller;
use crate::console_tickets::{Grant, TICKET_TTL};
use crate::error::ApiError;
use crate::state::{parse_body, parse_vmid, ApiState};
use crate::ws;

/// How long a serial console's client may take to send its `USER:TICKET` line.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the serial log a new serial console shows first.
const SERIAL_REPLAY: u64 = 16 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VncProxy {
    #[serde(default)]
    websocket: Option<serde_json::Value>,
    #[serde(default, rename = "generate-password")]
    generate_password: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TermProxy {
    #[serde(default)]
    serial: Option<String>,
}

/// `POST /api/v1/vms/{vmid}/vncproxy`: a ticket for the guest's VNC console.
pub async fn vncproxy(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let p: VncProxy = parse_body(&body)?;
    let _ = p.websocket;
    let generate =
        matches!(&p.generate_password, Some(v) if v == &json!(1) || v == &json!(true) || v == &json!("1"));
    let mut answer = issue(&st, &caller, vmid, ConsoleKind::Vnc, "vncproxy").await?;
    answer["cert"] = json!(std::fs::read_to_string(cert_path(&st)).unwrap_or_default());
    if generate {
        // The VNC server asks for no password (the ticket is the authentication); a client
        // that insists on one gets a throwaway it may send.
        answer["password"] = json!(horcrux_core::ids::random_secret()[..8].to_string());
    }
    Ok(Json(answer))
}

/// `POST /api/v1/vms/{vmid}/termproxy`: a ticket for the guest's serial console.
pub async fn termproxy(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let p: TermProxy = parse_body(&body)?;
    match p.serial.as_deref() {
        None | Some("serial0") => {}
        Some("serial1" | "serial2" | "serial3") => {
            return Err(ApiError::bad_field("serial", "this guest has one serial port, serial0"))
        }
        Some(_) => {
            return Err(ApiError::bad_field(
                "serial",
                "value must be one of serial0, serial1, serial2, serial3",
            ))
        }
    }
    Ok(Json(issue(&st, &caller, vmid, ConsoleKind::Serial, "vncterm").await?))
}

fn cert_path(st: &ApiState) -> std::path::PathBuf {
    let data = st.runtime.tasks().dir().parent().map(|d| d.to_path_buf()).unwrap_or_default();
    crate::tls::TlsFiles::in_dir(&data).cert
}

/// A ticket for a running guest of this node, with its task (which ends with the session).
async fn issue(
    st: &ApiState,
    caller: &Caller,
    vmid: u32,
    kind: ConsoleKind,
    task_type: &str,
) -> Result<Value, ApiError> {
    let g = st.runtime.cluster().read_linearizable(move |s| s.guests.get(&vmid).cloned()).await?;
    g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if st.runtime.hypervisor().pid(vmid).is_none() {
        return Err(ApiError::conflict(format!("guest {vmid} is not running")));
    }
    let port = 5900 + (ring_u16() % 100);
    let task = st.runtime.tasks().create(task_type, &vmid.to_string(), caller.user());
    task.log(format!(
        "console ticket for {} (valid {} s, one connection)",
        caller.token_id,
        TICKET_TTL.as_secs()
    ));
    let upid = task.upid().to_string();
    let ticket = st.consoles.issue(Grant {
        token_id: caller.token_id.clone(),
        vmid,
        port,
        kind,
        issued: Instant::now(),
        task,
    });
    let consoles = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(TICKET_TTL + Duration::from_millis(100)).await;
        consoles.consoles.expire();
    });
    Ok(json!({ "port": port, "ticket": ticket, "user": caller.token_id, "upid": upid }))
}

fn ring_u16() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

#[derive(Deserialize)]
struct WsQuery {
    port: String,
    vncticket: String,
}

/// `GET /api/v1/vms/{vmid}/vncwebsocket?port=&vncticket=`: the console as a WebSocket.
pub async fn vncwebsocket(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let q: WsQuery = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad_field("vncticket", format!("port and vncticket are required: {e}")))?;
    let port: u16 = q
        .port
        .parse()
        .ok()
        .filter(|p| (5900..=5999).contains(p))
        .ok_or_else(|| ApiError::bad_field("port", "must be an integer from 5900 to 5999"))?;
    if q.vncticket.is_empty() || q.vncticket.len() > 512 {
        return Err(ApiError::bad_field("vncticket", "must be 1 to 512 characters"));
    }
    // The handshake is checked before the ticket is spent.
    let (resp, on_upgrade) = ws::upgrade(&mut req)?;
    let owner = st.runtime.cluster().read_local(|s| s.guests.get(&vmid).map(|g| g.node.clone()));
    let owner = owner.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    let ticket = q.vncticket.clone();
    let (kind, backend): (ConsoleKind, Box<dyn Io>) = if owner == st.runtime.cluster().node_name() {
        let grant = st.consoles.redeem(&ticket, &caller.token_id, vmid, port).map_err(forbidden)?;
        let kind = grant.kind;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_console(st.clone(), grant, theirs));
        (kind, Box::new(ours))
    } else {
        let uri = format!(
            "/vms/{vmid}/console?{}",
            serde_urlencoded::to_string([
                ("port", port.to_string()),
                ("vncticket", ticket.clone()),
                ("user", caller.token_id.clone())
            ])
            .unwrap_or_default()
        );
        let call = ApiCall {
            method: "CONSOLE".into(),
            uri,
            authorization: None,
            content_type: None,
            body: String::new(),
            csrf: None,
        };
        let tunnel = st.runtime.cluster().open_tunnel(&owner, call).await?;
        let mut tunnel = tokio::io::BufReader::new(tunnel);
        let mut status = String::new();
        let read = tokio::time::timeout(Duration::from_secs(15), tunnel.read_line(&mut status)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("node {owner} did not answer the console request"),
                ))
            }
        }
        let kind = match status.trim_end().split_once(' ') {
            Some(("OK", "vnc")) => ConsoleKind::Vnc,
            Some(("OK", "serial")) => ConsoleKind::Serial,
            Some(("ERR", why)) => return Err(forbidden(why.to_string())),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("node {owner}: malformed console answer"),
                ))
            }
        };
        (kind, Box::new(tunnel))
    };
    let user = caller.token_id.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let result = match kind {
            ConsoleKind::Vnc => relay_raw(io, backend).await,
            ConsoleKind::Serial => relay_termproxy(io, backend, &user, &ticket).await,
        };
        if let Err(e) = result {
            tracing::debug!(vmid, "console session: {e}");
        }
    });
    Ok(resp)
}

fn forbidden(why: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, why)
}

/// Both directions of a console's byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// On the guest's node: connects the console and splices it to `client` until either side
/// closes; a serial console first replays the end of the serial log. Ends the ticket's task.
async fn serve_console(st: ApiState, grant: Grant, mut client: impl Io) {
    let vmid = grant.vmid;
    let result = async {
        let console = st.runtime.hypervisor().console(vmid, grant.kind).await.map_err(|e| e.to_string())?;
        console.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut console = tokio::net::UnixStream::from_std(console).map_err(|e| e.to_string())?;
        grant.task.log(format!("connected by {}", grant.token_id));
        if grant.kind == ConsoleKind::Serial {
            let log = st.runtime.hypervisor().serial_log(vmid);
            let tail = tokio::task::spawn_blocking(move || crate::tail::last_bytes(&log, SERIAL_REPLAY))
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            client.write_all(&tail).await.map_err(|e| e.to_string())?;
        }
        let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut console).await.unwrap_or((0, 0));
        grant.task.log(format!("session closed: {up} bytes in, {down} bytes out"));
        Ok::<_, String>(())
    }
    .await;
    grant.task.finish(result);
}

/// Serves a tunnel another member opened for a console of a guest of this node: the
/// answer line (`OK vnc|serial`, or `ERR reason`), then the console's bytes.
pub async fn serve_tunnel(st: ApiState, call: ApiCall, mut tunnel: horcrux_raft::transport::Tunnel) {
    let parsed = (|| {
        let (path, query) = call.uri.split_once('?')?;
        let vmid: u32 = path.strip_prefix("/vms/")?.strip_suffix("/console")?.parse().ok()?;
        let q: HashMap<String, String> = serde_urlencoded::from_str(query).ok()?;
        Some((vmid, q.get("port")?.parse::<u16>().ok()?, q.get("vncticket")?.clone(), q.get("user")?.clone()))
    })();
    let Some((vmid, port, ticket, user)) = parsed.filter(|_| call.method == "CONSOLE") else {
        let _ = tunnel.write_all(b"ERR malformed console request\n").await;
        return;
    };
    match st.consoles.redeem(&ticket, &user, vmid, port) {
        Ok(grant) => {
            let kind = if grant.kind == ConsoleKind::Vnc { "vnc" } else { "serial" };
            if tunnel.write_all(format!("OK {kind}\n").as_bytes()).await.is_ok() {
                serve_console(st, grant, tunnel).await;
            }
        }
        Err(why) => {
            let _ = tunnel.write_all(format!("ERR {why}\n").as_bytes()).await;
            let _ = tunnel.shutdown().await;
        }
    }
}

/// VNC: each WebSocket message's bytes to the console, the console's bytes back as binary
/// messages.
async fn relay_raw(ws_io: impl Io, backend: Box<dyn Io>) -> std::io::Result<()> {
    relay(ws_io, backend, Ok).await
}

/// Proxmox's termproxy protocol on the WebSocket: first `USER:TICKET\n` (the ticket the
/// socket was opened with), answered `OK`; then `0:LEN:DATA` (input), `1:COLS:ROWS:`
/// (resize: a serial port has no size, so ignored) and `2` (ping).
async fn relay_termproxy(
    ws_io: impl Io,
    backend: Box<dyn Io>,
    user: &str,
    ticket: &str,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(ws_io);
    let expected = format!("{user}:{ticket}\n");
    let mut pending = Vec::new();
    // The serial port takes one client at a time: one that never authenticates must not
    // hold it.
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws::read_message(&mut rd)).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no termproxy authentication within 10 s")
        })?;
        match msg? {
            ws::Message::Data(d) => pending.extend(d),
            ws::Message::Ping(p) => ws::write_frame(&mut wr, ws::OP_PONG, &p).await?,
            ws::Message::Close => return Ok(()),
        }
        if pending.len() >= expected.len() || pending.contains(&b'\n') {
            break;
        }
    }
    if !pending.starts_with(expected.as_bytes()) {
        ws::write_frame(&mut wr, ws::OP_CLOSE, &[]).await?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "wrong termproxy authentication",
        ));
    }
    pending.drain(..expected.len());
    ws::write_frame(&mut wr, ws::OP_BINARY, b"OK").await?;
    let ws_io = tokio::io::join(rd, wr);
    let mut parser = TermInput { buf: pending };
    relay(ws_io, backend, move |data| {
        parser.buf.extend(data);
        parser.take()
    })
    .await
}

/// The client's termproxy stream, parsed as it arrives.
struct TermInput {
    buf: Vec<u8>,
}

impl TermInput {
    /// The input bytes of every whole command buffered (partial ones wait for more).
    fn take(&mut self) -> std::io::Result<Vec<u8>> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed termproxy message");
        let mut out = Vec::new();
        loop {
            let Some(&first) = self.buf.first() else { return Ok(out) };
            match first {
                b'2' => {
                    self.buf.drain(..1);
                }
                b'0' | b'1' => {
                    let fields = if first == b'0' { 2 } else { 3 };
                    // Positions of the colons that end the header's fields.
                    let colons: Vec<usize> = self
                        .buf
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b':')
                        .map(|(i, _)| i)
                        .take(fields)
                        .collect();
                    if colons.len() < fields {
                        if self.buf.len() > 32 {
                            return Err(bad());
                        }
                        return Ok(out);
                    }
                    if first == b'1' {
                        self.buf.drain(..=colons[2]);
                        continue;
                    }
                    let len: usize = std::str::from_utf8(&self.buf[colons[0] + 1..colons[1]])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?;
                    if len > ws::MAX_MESSAGE {
                        return Err(bad());
                    }
                    let start = colons[1] + 1;
                    if self.buf.len() < start + len {
                        return Ok(out);
                    }
                    out.extend(&self.buf[start..start + len]);
                    self.buf.drain(..start + len);
                }
                _ => return Err(bad()),
            }
        }
    }
}

/// Splices a WebSocket and a byte stream: client messages through `input` to the backend,
/// backend bytes as binary messages; pings answered; ends when either side closes.
async fn relay<F>(ws_io: impl Io, backend: Box<dyn Io>, mut input: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> std::io::Result<Vec<u8>> + Send,
{
    use tokio::io::AsyncReadExt;
    let (mut ws_rd, ws_wr) = tokio::io::split(ws_io);
    let (mut be_rd, mut be_wr) = tokio::io::split(backend);
    let ws_wr = tokio::sync::Mutex::new(ws_wr);
    let up = async {
        loop {
            match ws::read_message(&mut ws_rd).await? {
                ws::Message::Data(d) => {
                    let bytes = input(d)?;
                    if !bytes.is_empty() {
                        be_wr.write_all(&bytes).await?;
                        be_wr.flush().await?;
                    }
                }
                ws::Message::Ping(p) => ws::write_frame(&mut *ws_wr.lock().await, ws::OP_PONG, &p).await?,
                ws::Message::Close => return Ok::<_, std::io::Error>(()),
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = be_rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            ws::write_frame(&mut *ws_wr.lock().await, ws::OP_BINARY, &buf[..n]).await?;
        }
    };
    let result = tokio::select! { r = up => r, r = down => r };
    let _ = ws::write_frame(&mut *ws_wr.lock().await, ws::OP_CLOSE, &[]).await;
    result
}

/// `POST /api2/json/nodes/{node}/qemu/{vmid}/vncproxy`.
pub async fn compat_vncproxy(
    st: State<ApiState>,
    headers: axum::http::HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    compat_proxy(st, headers, &vmid, "vncproxy", body).await
}

/// `POST /api2/json/nodes/{node}/qemu/{vmid}/termproxy`.
pub async fn compat_termproxy(
    st: State<ApiState>,
    headers: axum::http::HeaderMap,
    Path((_node, vmid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    compat_proxy(st, headers, &vmid, "termproxy", body).await
}

async fn compat_proxy(
    State(st): State<ApiState>,
    headers: axum::http::HeaderMap,
    vmid: &str,
    which: &str,
    body: Bytes,
) -> Response {
    let params = match crate::pve::params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let native_body: serde_json::Map<String, Value> =
        params.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let path = format!("/vms/{}/{which}", crate::pve::form_escape(vmid));
    let (status, v, _) =
        crate::pve::native(&st, &headers, axum::http::Method::POST, &path, Some(Value::Object(native_body)))
            .await;
    crate::pve::answer(status, v, |v| v)
}

/// `GET /api2/json/nodes/{node}/qemu/{vmid}/vncwebsocket`: the native route, with the
/// upgrade of this very request (authentication and privileges checked there).
pub async fn compat_websocket(
    State(st): State<ApiState>,
    Path((_node, vmid)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(app) = st.native.get().cloned() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting").into_response();
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let uri = format!("/api/v1/vms/{}/vncwebsocket{query}", crate::pve::form_escape(&vmid));
    // A fresh request for the native router (this one carries the routing of /api2/json),
    // with this connection's upgrade and the client's address.
    let (mut parts, body) = req.into_parts();
    let mut fresh = axum::http::Request::builder().method(parts.method.clone()).uri(uri);
    if let Some(h) = fresh.headers_mut() {
        *h = std::mem::take(&mut parts.headers);
    }
    let Ok(mut fresh) = fresh.body(body) else {
        return ApiError::bad_field("vmid", "malformed").into_response();
    };
    if let Some(u) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        fresh.extensions_mut().insert(u);
    }
    if let Some(p) = parts.extensions.remove::<crate::throttle::PeerAddr>() {
        fresh.extensions_mut().insert(p);
    }
    use tower::ServiceExt;
    let resp = match app.oneshot(fresh).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    // A refusal in Proxmox's shape.
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    crate::pve::answer(status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), |v| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termproxy_input_is_parsed_across_messages() {
        let mut p = TermInput { buf: Vec::new() };
        p.buf.extend(b"0:5:hel");
        assert_eq!(p.take().unwrap(), b"");
        p.buf.extend(b"lo1:80:24:20:3:a:b");
        assert_eq!(p.take().unwrap(), b"helloa:b");
        p.buf.extend("0:4:é!!".as_bytes());
        assert_eq!(p.take().unwrap(), "é!!".as_bytes());
        p.buf.extend(b"x");
        assert!(p.take().is_err());
    }
}
