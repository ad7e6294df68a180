//! OCI containers through their engines' REST APIs on a unix socket, not their CLIs:
//! Podman's libpod API (`/v4.0.0/libpod/...`) and the Docker Engine API (`/v1.41/...`),
//! which differ in paths and in the create body only. A minimal HTTP/1.1 client (one
//! request per connection; fixed-length or chunked answers) carries the calls; the
//! engine's event stream reports state changes as they happen.

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::hypervisor::DriverError;

/// Which engine speaks on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    Docker,
}

/// One HTTP exchange's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn io(e: std::io::Error) -> DriverError {
    DriverError::Io(e.to_string())
}

/// HTTP/1.1 over a unix socket.
#[derive(Debug, Clone)]
pub struct UnixHttp {
    socket: PathBuf,
}

impl UnixHttp {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        UnixHttp { socket: socket.into() }
    }

    /// Sends the request; the reader is positioned at the answer's body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<(String, String)>, BufReader<tokio::net::UnixStream>), DriverError> {
        let payload = body.map(|b| b.to_string().into_bytes());
        self.send_bytes(method, path, payload.as_deref().map(|b| (b, "application/json"))).await
    }

    /// Sends a request with a body of any type (an image's tarball).
    pub(crate) async fn send_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<(&[u8], &str)>,
    ) -> Result<(u16, Vec<(String, String)>, BufReader<tokio::net::UnixStream>), DriverError> {
        let mut s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| DriverError::Io(format!("{}: {e}", self.socket.display())))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some((bytes, kind)) = body {
            req.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", bytes.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(io)?;
        if let Some((bytes, _)) = body {
            s.write_all(bytes).await.map_err(io)?;
        }
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.map_err(io)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| DriverError::Io(format!("not an HTTP answer: {:?}", line.trim())))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(io)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.trim_end().split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Ok((status, headers, r))
    }

    /// One request and its whole answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, DriverError> {
        let (status, headers, r) = self.send(method, path, body).await?;
        Self::answer(status, headers, r).await
    }

    /// One request with a body of type `kind`, and its whole answer.
    pub async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        kind: &str,
    ) -> Result<Answer, DriverError> {
        let (status, headers, r) = self.send_bytes(method, path, Some((body, kind))).await?;
        Self::answer(status, headers, r).await
    }

    async fn answer(
        status: u16,
        headers: Vec<(String, String)>,
        mut r: BufReader<tokio::net::UnixStream>,
    ) -> Result<Answer, DriverError> {
        let header = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str());
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            while let Some(chunk) = read_chunk(&mut r).await? {
                body.extend(chunk);
            }
        } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            r.read_exact(&mut body).await.map_err(io)?;
        } else if status != 204 && status != 304 {
            r.read_to_end(&mut body).await.map_err(io)?;
        }
        Ok(Answer { status, body })
    }

    /// A streamed answer (the engine's events), handed on line by line until the engine
    /// closes it or the receiver is dropped.
    pub async fn lines(&self, path: &str) -> Result<tokio::sync::mpsc::Receiver<String>, DriverError> {
        let (status, headers, mut r) = self.send("GET", path, None).await?;
        if status != 200 {
            return Err(DriverError::Io(format!("GET {path}: HTTP {status}")));
        }
        let chunked = headers.iter().any(|(h, v)| h == "transfer-encoding" && v.contains("chunked"));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut pending = Vec::new();
            loop {
                let piece = if chunked {
                    match read_chunk(&mut r).await {
                        Ok(Some(c)) => c,
                        _ => return,
                    }
                } else {
                    let mut b = vec![0u8; 8192];
                    match r.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => b[..n].to_vec(),
                    }
                };
                pending.extend(piece);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    if !line.is_empty() && tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

impl UnixHttp {
    /// A WebSocket on `path` (LXD's event stream): its text messages, in order, until the
    /// server closes it or the receiver is dropped; pings are answered.
    pub async fn websocket(&self, path: &str) -> Result<tokio::sync::mpsc::Receiver<String>, DriverError> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: aG9yY3J1eC1ldmVudHM9PQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| DriverError::Io(format!("{}: {e}", self.socket.display())))?;
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.map_err(io)?;
        if line.split_whitespace().nth(1) != Some("101") {
            return Err(DriverError::Io(format!("GET {path}: {}", line.trim())));
        }
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(io)? == 0 || line == "\r\n" {
                break;
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(r);
            let mut text = Vec::new();
            loop {
                let mut h = [0u8; 2];
                if rd.read_exact(&mut h).await.is_err() {
                    return;
                }
                let len = match h[1] & 0x7f {
                    126 => {
                        let mut b = [0u8; 2];
                        if rd.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        u16::from_be_bytes(b) as usize
                    }
                    127 => {
                        let mut b = [0u8; 8];
                        if rd.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        u64::from_be_bytes(b) as usize
                    }
                    n => n as usize,
                };
                if len > 16 << 20 {
                    return;
                }
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    return;
                }
                match h[0] & 0x0f {
                    0x8 => return,
                    // A pong, masked as a client's frames must be (the zero mask).
                    0x9 => {
                        let mut f = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
                        f.extend(&payload[..payload.len().min(125)]);
                        if wr.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                    0x0..=0x2 => {
                        text.extend(payload);
                        if h[0] & 0x80 != 0 {
                            let msg = String::from_utf8_lossy(&text).into_owned();
                            text.clear();
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(rx)
    }
}

/// One chunk of a chunked body; `None` after the last.
async fn read_chunk<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, DriverError> {
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(io)?;
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| DriverError::Io(format!("bad chunk size {:?}", line.trim())))?;
    if size == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0u8; size + 2];
    r.read_exact(&mut chunk).await.map_err(io)?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// What a container is asked to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host directories bound into the container: (host path, path inside).
    pub volumes: Vec<(PathBuf, String)>,
}

/// A container as its engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciState {
    /// `created`, `running`, `exited`, `paused`, ...
    pub status: String,
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
}

/// An engine on its socket.
pub struct OciEngine {
    http: UnixHttp,
    engine: Engine,
}

fn refused(what: &str, a: &Answer) -> DriverError {
    let message = a.json()["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&a.body).trim().to_string());
    DriverError::Command { program: what.to_string(), message: format!("HTTP {}: {message}", a.status) }
}

impl OciEngine {
    pub fn new(engine: Engine, socket: impl Into<PathBuf>) -> Self {
        OciEngine { http: UnixHttp::new(socket), engine }
    }

    fn path(&self, rest: &str) -> String {
        match self.engine {
            Engine::Podman => format!("/v4.0.0/libpod{rest}"),
            Engine::Docker => format!("/v1.41{rest}"),
        }
    }

    /// The create call's path and body for `spec` (the engines name the fields apart).
    pub fn create_request(&self, spec: &OciSpec) -> (String, Value) {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match self.engine {
            Engine::Podman => {
                let mounts: Vec<Value> = spec
                    .volumes
                    .iter()
                    .map(|(src, dst)| {
                        json!({ "type": "bind", "source": src.display().to_string(), "destination": dst, "options": ["rbind"] })
                    })
                    .collect();
                (
                    self.path("/containers/create"),
                    json!({
                        "name": spec.name, "image": spec.image, "command": spec.command,
                        "env": spec.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                        "mounts": mounts,
                    }),
                )
            }
            Engine::Docker => {
                let binds: Vec<String> =
                    spec.volumes.iter().map(|(src, dst)| format!("{}:{dst}", src.display())).collect();
                (
                    format!("{}?name={}", self.path("/containers/create"), spec.name),
                    json!({ "Image": spec.image, "Cmd": spec.command, "Env": env, "HostConfig": { "Binds": binds } }),
                )
            }
        }
    }

    /// What the container wrote to its standard output and error so far.
    pub async fn logs(&self, name: &str) -> Result<String, DriverError> {
        let flags = match self.engine {
            Engine::Podman => "stdout=true&stderr=true",
            Engine::Docker => "stdout=1&stderr=1",
        };
        let a =
            self.http.request("GET", &self.path(&format!("/containers/{name}/logs?{flags}")), None).await?;
        if a.status != 200 {
            return Err(refused("logs", &a));
        }
        Ok(String::from_utf8_lossy(&demux(&a.body)).into_owned())
    }

    /// Creates the container; its id.
    pub async fn create(&self, spec: &OciSpec) -> Result<String, DriverError> {
        let (path, body) = self.create_request(spec);
        let a = self.http.request("POST", &path, Some(&body)).await?;
        if a.status != 201 && a.status != 200 {
            return Err(refused("create", &a));
        }
        a.json()["Id"].as_str().map(str::to_string).ok_or_else(|| refused("create", &a))
    }

    async fn post(&self, what: &str, rest: &str) -> Result<(), DriverError> {
        let a = self.http.request("POST", &self.path(rest), None).await?;
        // 304: already in that state.
        if matches!(a.status, 200 | 204 | 304) {
            Ok(())
        } else {
            Err(refused(what, &a))
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), DriverError> {
        self.post("start", &format!("/containers/{name}/start")).await
    }

    /// Stops it: SIGTERM, then SIGKILL after `timeout_s`.
    pub async fn stop(&self, name: &str, timeout_s: u32) -> Result<(), DriverError> {
        self.post("stop", &format!("/containers/{name}/stop?t={timeout_s}")).await
    }

    pub async fn inspect(&self, name: &str) -> Result<Option<OciState>, DriverError> {
        let a = self.http.request("GET", &self.path(&format!("/containers/{name}/json")), None).await?;
        if a.status == 404 {
            return Ok(None);
        }
        if a.status != 200 {
            return Err(refused("inspect", &a));
        }
        let v = a.json();
        let s = &v["State"];
        Ok(Some(OciState {
            status: s["Status"].as_str().unwrap_or("unknown").to_string(),
            pid: s["Pid"].as_u64().filter(|p| *p > 0).map(|p| p as u32),
            exit_code: s["ExitCode"].as_i64(),
        }))
    }

    /// Imports a root file system tarball as image `repo:tag` (no registry): its id.
    pub async fn import_image(
        &self,
        tarball: &std::path::Path,
        repo: &str,
        tag: &str,
    ) -> Result<String, DriverError> {
        let bytes = tokio::fs::read(tarball).await.map_err(io)?;
        let path = match self.engine {
            Engine::Podman => self.path(&format!(
                "/images/import?reference={}",
                horcrux_core::ids::percent_encode(&format!("{repo}:{tag}"))
            )),
            Engine::Docker => self.path(&format!(
                "/images/create?fromSrc=-&repo={}&tag={}",
                horcrux_core::ids::percent_encode(repo),
                horcrux_core::ids::percent_encode(tag)
            )),
        };
        let a = self.http.request_bytes("POST", &path, &bytes, "application/x-tar").await?;
        if a.status != 200 {
            return Err(refused("import", &a));
        }
        // libpod answers `{"Id"}`; Docker a stream of progress objects, the last the id.
        let text = String::from_utf8_lossy(&a.body).to_string();
        let mut id = None;
        for v in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            if let Some(e) = v["error"].as_str() {
                return Err(DriverError::Command { program: "import".into(), message: e.to_string() });
            }
            if let Some(s) = v["Id"].as_str().or(v["status"].as_str()) {
                if s.starts_with("sha256:") {
                    id = Some(s.to_string());
                } else if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    id = Some(format!("sha256:{s}"));
                }
            }
        }
        id.ok_or_else(|| refused("import", &a))
    }

    /// Removes it (a running one too, with `force`).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), DriverError> {
        let a = self
            .http
            .request("DELETE", &self.path(&format!("/containers/{name}?force={force}")), None)
            .await?;
        if matches!(a.status, 200 | 204 | 404) {
            Ok(())
        } else {
            Err(refused("remove", &a))
        }
    }

    /// The engine's events about container `name`, as they happen: (action, the event).
    pub async fn events(
        &self,
        name: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<(String, Value)>, DriverError> {
        let filters = json!({ "container": [name] }).to_string();
        let q = horcrux_core::ids::percent_encode(&filters);
        let mut lines = self.http.lines(&self.path(&format!("/events?stream=true&filters={q}"))).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                // libpod says `Status`, Docker `Action`.
                let action =
                    v["Action"].as_str().or(v["status"].as_str()).or(v["Status"].as_str()).unwrap_or("");
                // In libpod's words: Docker's `die` is libpod's `died`.
                let action = if action == "die" { "died" } else { action }.to_string();
                if tx.send((action, v)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// A log stream without its framing: a container without a terminal has each piece
/// headed by its stream (1 stdout, 2 stderr), three zero bytes and its length (u32 big
/// endian). Anything else is taken as it is.
pub fn demux(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let framed = matches!(rest[0], 0..=2) && rest[1..4] == [0, 0, 0];
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if !framed || rest.len() < 8 + len {
            break;
        }
        out.extend(&rest[8..8 + len]);
        rest = &rest[8 + len..];
    }
    if out.is_empty() && !rest.is_empty() && rest.len() == bytes.len() {
        return bytes.to_vec();
    }
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_name_the_create_fields_apart() {
        let spec = OciSpec {
            name: "web".into(),
            image: "localhost/bb:1".into(),
            command: vec!["/bin/sh".into()],
            env: vec![("A".into(), "1".into())],
            volumes: vec![("/srv/data".into(), "/data".into())],
        };
        let (p, b) = OciEngine::new(Engine::Podman, "/s").create_request(&spec);
        assert_eq!(p, "/v4.0.0/libpod/containers/create");
        assert_eq!(
            b,
            json!({"name": "web", "image": "localhost/bb:1", "command": ["/bin/sh"], "env": {"A": "1"},
                   "mounts": [{"type": "bind", "source": "/srv/data", "destination": "/data", "options": ["rbind"]}]})
        );
        let (p, b) = OciEngine::new(Engine::Docker, "/s").create_request(&spec);
        assert_eq!(p, "/v1.41/containers/create?name=web");
        assert_eq!(
            b,
            json!({"Image": "localhost/bb:1", "Cmd": ["/bin/sh"], "Env": ["A=1"], "HostConfig": {"Binds": ["/srv/data:/data"]}})
        );
    }

    #[test]
    fn log_frames_are_taken_apart() {
        let mut framed = vec![1u8, 0, 0, 0, 0, 0, 0, 3];
        framed.extend(b"up\n");
        framed.extend([2u8, 0, 0, 0, 0, 0, 0, 4]);
        framed.extend(b"err\n");
        assert_eq!(demux(&framed), b"up\nerr\n");
        assert_eq!(demux(b"plain text, no frames\n"), b"plain text, no frames\n");
    }

    #[tokio::test]
    async fn chunked_bodies_are_joined() {
        let wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut r = BufReader::new(&wire[..]);
        let mut out = Vec::new();
        while let Some(c) = read_chunk(&mut r).await.unwrap() {
            out.extend(c);
        }
        assert_eq!(out, b"hello world");
        assert_eq!(
            horcrux_core::ids::percent_encode("{\"a\":[\"b c\"]}"),
            "%7B%22a%22%3A%5B%22b%20c%22%5D%7D"
        );
    }
}
