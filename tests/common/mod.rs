//! Runs real `horcrux serve` processes for the end-to-end tests and talks to them over
//! HTTPS, trusting the certificate each daemon generated.

#![allow(dead_code)]

pub mod cluster;
pub mod ha;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn tiny_guest() -> PathBuf {
    let dir = std::env::var_os("HORCRUX_TINY_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".lab/tiny-guest"));
    assert!(dir.join("vmlinuz").exists(), "no tiny guest in {}: run scripts/tiny-guest.sh", dir.display());
    dir
}

/// The arm64 tiny guest (scripts/tiny-guest-arm64.sh): Debian's arm64 kernel and an arm64
/// busybox initramfs printing GUEST-BOOTED-AARCH64.
pub fn tiny_guest_arm64() -> PathBuf {
    let dir = std::env::var_os("HORCRUX_TINY_GUEST_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".lab/tiny-guest-arm64"));
    assert!(
        dir.join("vmlinuz").exists(),
        "no arm64 tiny guest in {}: run scripts/tiny-guest-arm64.sh",
        dir.display()
    );
    dir
}

/// Forgets a stopped node's commit point (written without fsync, so a power loss can take
/// it): the node then restarts with a state that lags its log.
pub fn forget_commit_point(raft_dir: &Path) {
    let db = horcrux_raft::open_db(raft_dir).unwrap();
    let none = horcrux_raft::codec::encode_serde(&None::<u64>).unwrap();
    db.put_cf(db.cf_handle("meta").unwrap(), b"committed", none).unwrap();
    db.flush_wal(true).unwrap();
}

pub struct Daemon {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// `horcrux serve` in `dir` on 127.0.0.1:`port` as node `name`, with extra arguments.
pub fn serve_command(dir: &Path, port: u16, name: &str, args: &[String], env: &[(&str, &str)]) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_horcrux"));
    cmd.args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--node-name", name])
        .args(args)
        .env("HORCRUX_ACCEL", "tcg")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Daemon {
    pub fn start(dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = serve_command(dir, port, "n1", &[], &[]);
        // Tests that do not name an accelerator get the default choice (auto).
        cmd.env_remove("HORCRUX_ACCEL");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Self::spawn_ready(cmd, dir, port)
    }

    pub fn spawn_ready(mut cmd: Command, dir: &Path, port: u16) -> Self {
        let child = cmd.spawn().unwrap();
        let d = Daemon { dir: dir.to_path_buf(), port, child: Some(child) };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.dir.join("ssl/ca.pem").exists() {
                if let Ok(r) =
                    Api::new(&format!("https://127.0.0.1:{}", self.port), &self.dir).get_public("/version")
                {
                    if r.0 == 200 {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "daemon did not come up; log:\n{}",
            std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
        );
    }

    pub fn client(&self) -> Api {
        Api::new(&format!("https://127.0.0.1:{}", self.port), &self.dir)
    }

    /// A client for this node that authenticates with another node's admin token (the
    /// token is replicated, and the cluster CA is the same).
    pub fn client_with_token_of(&self, other: &Daemon) -> Api {
        let token = std::fs::read_to_string(other.dir.join("admin.token")).unwrap();
        self.client().with_token(token.trim())
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    /// A daemon still running when its test ends (passed or panicked) takes its guests
    /// with it; one the test killed itself leaves them for a restarted daemon to adopt.
    fn drop(&mut self) {
        let ended_by_test = self.child.is_none();
        self.kill9();
        if !ended_by_test {
            kill_guests(&self.dir);
        }
    }
}

/// Kills the QEMUs a daemon with data dir `dir` left (a failed test must not leak them).
pub fn kill_guests(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("run/qemu")) else { return };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "pid") {
            if let Ok(pid) = std::fs::read_to_string(e.path()) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(dir.join("ssl/ca.pem")).unwrap();
        // One CA, two during a CA roll.
        let cas: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i.unwrap() {
                ureq::tls::PemItem::Certificate(c) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        let tls =
            ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(cas))).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let token = std::fs::read_to_string(dir.join("admin.token")).unwrap_or_default().trim().to_string();
        Api { base: base.to_string(), token, agent }
    }

    fn done(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value), ureq::Error> {
        let mut r = r?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_json().unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub fn get_public(&self, path: &str) -> Result<(u16, Value), ureq::Error> {
        Self::done(self.agent.get(format!("{}/api/v1{path}", self.base)).call())
    }

    /// Native paths are relative to /api/v1; Proxmox-compatible ones are given whole.
    fn url(&self, path: &str) -> String {
        // Proxmox's routes and Prometheus' scrape path are not under /api/v1.
        if path.starts_with("/api2/") || path == "/metrics" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/api/v1{path}", self.base)
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::done(
            self.agent.get(self.url(path)).header("Authorization", format!("Bearer {}", self.token)).call(),
        )
        .unwrap()
    }

    pub fn get_text(&self, path: &str) -> String {
        let mut r = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut().read_to_string().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::done(
            self.agent
                .post(self.url(path))
                .header("Authorization", format!("Bearer {}", self.token))
                .send_json(body),
        )
        .unwrap()
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        Self::done(
            self.agent
                .delete(self.url(path))
                .header("Authorization", format!("Bearer {}", self.token))
                .call(),
        )
        .unwrap()
    }

    /// Any method; `token` `None` sends no Authorization header. A request that meets a
    /// pooled connection the server already closed (after refusing a request without
    /// reading its body) is sent once more.
    pub fn request(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        match self.try_request(method, path, token, body) {
            Ok(r) => r,
            Err(_) => self.try_request(method, path, token, body).unwrap(),
        }
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), ureq::Error> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        Self::done(self.send(method, path, &headers, body))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = self.url(path);
        match method {
            "GET" | "DELETE" => {
                let mut b = if method == "GET" { self.agent.get(&url) } else { self.agent.delete(&url) };
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.call()
            }
            _ => {
                let mut b = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    other => panic!("method {other}"),
                };
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.send_json(body)
            }
        }
    }

    /// Any method with the given headers (no Authorization unless given); answers the
    /// status, the JSON body and the `Set-Cookie` header.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, Value, String) {
        let r = self.send(method, path, headers, body);
        let mut r = r.unwrap();
        let cookie =
            r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap_or(Value::Null), cookie)
    }

    /// A server-sent event stream as token `token` sees it, read line by line.
    pub fn sse(&self, path: &str, token: &str) -> Box<dyn std::io::BufRead> {
        let r = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "text/event-stream")
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        Box::new(std::io::BufReader::new(r.into_body().into_reader()))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = token.to_string();
        self
    }

    /// Polls a task until it stops; returns its exit status.
    pub fn wait_task(&self, upid: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let (code, t) = self.get(&format!("/tasks/{upid}"));
            assert_eq!(code, 200, "task {upid}: {t}");
            if t["status"] == "stopped" {
                return t["exitstatus"].as_str().unwrap_or("").to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("task {upid} did not finish");
    }
}

pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// A program from the lab's Python venv (`scripts/lab.sh` installs proxmoxer and
/// schemathesis there), or the path in `env`; a missing one fails the test loudly.
pub fn lab_tool(env: &str, name: &str) -> String {
    let path =
        std::env::var(env).unwrap_or_else(|_| format!("{}/.lab/venv/bin/{name}", env!("CARGO_MANIFEST_DIR")));
    assert!(Path::new(&path).exists(), "{path} missing: run scripts/lab.sh");
    path
}

/// schemathesis over `schema` against `url` as `token`: no 5xx, every answer as documented.
/// A fixed seed keeps CI reproducible; `HORCRUX_ST_SEED` and `HORCRUX_ST_EXAMPLES` explore.
/// Answers whether it passed, and its output.
pub fn schemathesis(dir: &Path, schema: &Path, url: &str, token: &str, seed: &str) -> (bool, String) {
    let st = lab_tool("HORCRUX_SCHEMATHESIS", "st");
    let seed = std::env::var("HORCRUX_ST_SEED").unwrap_or_else(|_| seed.into());
    let examples = std::env::var("HORCRUX_ST_EXAMPLES").unwrap_or_else(|_| "25".into());
    let out = Command::new(&st)
        .current_dir(dir)
        .arg("run")
        .arg(schema)
        .args(["--url", url])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--tls-verify", "false", "--no-color", "--seed", &seed, "-n", &examples])
        // A request that hangs fails the run naming its operation, instead of the whole
        // test running into nextest's timeout with nothing said.
        .args(["--request-timeout", "20"])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs the CLI against daemon `d` with the admin token of data dir `dir`: (success,
/// stdout and stderr).
pub fn cli(d: &Daemon, dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args(["--api", &format!("https://127.0.0.1:{}", d.port), "--token-file"])
        .arg(dir.join("admin.token"))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
