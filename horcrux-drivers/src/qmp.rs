//! An async QMP client over a unix socket: greeting, capability negotiation, commands
//! matched to replies by id, asynchronous events, and notice of the socket closing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {message}")]
    Connect { path: String, message: String },
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP command {0} got no reply in time")]
    Timeout(String),
}

/// An asynchronous QMP event such as `SHUTDOWN`, `STOP` or `RESUME`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub async fn connect(path: &Path) -> Result<Arc<Self>, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Connect { path: path.display().to_string(), message: e.to_string() })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(REPLY_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))?
            .map_err(|e| QmpError::Protocol(e.to_string()))?
            .ok_or(QmpError::Closed)?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| QmpError::Protocol(e.to_string()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("unexpected greeting {greeting}")));
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(64);
        let (closed_tx, closed) = watch::channel(false);
        let client = Arc::new(Self {
            writer: tokio::sync::Mutex::new(write),
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
            closed,
        });
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(line, "unparseable QMP message");
                    continue;
                };
                if let Some(ev) = msg.get("event").and_then(Value::as_str) {
                    let data = msg.get("data").cloned().unwrap_or(Value::Null);
                    let _ = events.send(QmpEvent { event: ev.to_string(), data });
                } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
                    let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(Ok(msg));
                    }
                }
            }
            let _ = closed_tx.send(true);
            for (_, tx) in pending.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                let _ = tx.send(Err(QmpError::Closed));
            }
        });
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, None).await
    }

    /// Runs one command sent together with a file descriptor (SCM_RIGHTS), as `getfd` and
    /// `add-fd` expect.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, Some(fd)).await
    }

    async fn execute_inner(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let written = {
            let mut w = self.writer.lock().await;
            match fd {
                None => w.write_all(line.as_bytes()).await.is_ok(),
                Some(fd) => send_with_fd(w.as_ref(), line.as_bytes(), fd).await.is_ok(),
            }
        };
        if !written {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(QmpError::Closed);
        }
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                return Err(QmpError::Timeout(command.to_string()));
            }
            Ok(Err(_)) => return Err(QmpError::Closed),
            Ok(Ok(r)) => r?,
        };
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: err.get("class").and_then(Value::as_str).unwrap_or("").to_string(),
                desc: err.get("desc").and_then(Value::as_str).unwrap_or("").to_string(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// `query-status`'s `status`: "running", "paused", "shutdown", "prelaunch", ...
    pub async fn query_status(&self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None).await?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {r}")))
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when QEMU closes the socket (it exited or was killed).
    pub async fn wait_closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Sends `bytes` with `fd` attached as SCM_RIGHTS ancillary data, in one message (QEMU
/// takes the descriptor with the command it arrived with).
async fn send_with_fd(
    stream: &UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        let rest = &bytes[sent..];
        // The descriptor rides with the first chunk only.
        let with_fd = sent == 0;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg(stream.as_raw_fd(), rest, with_fd.then_some(fd.as_raw_fd()))
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sendmsg(socket: i32, bytes: &[u8], fd: Option<i32>) -> std::io::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // Room for one int, aligned as cmsghdr requires.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer in it refers to locals alive for the call,
    // and the control buffer is large enough for one descriptor (CMSG_SPACE(4) <= 32).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
            std::ptr::copy_nonoverlapping(&fd as *const i32 as *const u8, libc::CMSG_DATA(cmsg), 4);
        }
        let n = libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP server: checks the client's framing against the protocol.
    #[tokio::test]
    async fn negotiates_matches_replies_and_reports_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
            let caps: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(caps["execute"], "qmp_capabilities");
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes()).await.unwrap();
            let q: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(q["execute"], "query-status");
            // An event arrives before the reply; the reply still finds its waiter.
            w.write_all(b"{\"event\": \"STOP\", \"data\": {}, \"timestamp\": {}}\n").await.unwrap();
            w.write_all(
                format!(
                    "{{\"return\": {{\"status\": \"paused\", \"running\": false}}, \"id\": {}}}\n",
                    q["id"]
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let bad: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(
                format!(
                    "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}, \"id\": {}}}\n",
                    bad["id"]
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        });
        let c = QmpClient::connect(&path).await.unwrap();
        let mut events = c.subscribe_events();
        assert_eq!(c.query_status().await.unwrap(), "paused");
        assert_eq!(events.recv().await.unwrap().event, "STOP");
        let e = c.execute("no-such", None).await.unwrap_err();
        assert!(matches!(e, QmpError::Command { ref class, .. } if class == "CommandNotFound"), "{e:?}");
        server.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.wait_closed()).await.unwrap();
        assert!(matches!(c.execute("query-status", None).await, Err(QmpError::Closed)));
    }
}
