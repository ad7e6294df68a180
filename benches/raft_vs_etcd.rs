//! Committed writes of 256-byte values through Horcrux (3 nodes, the API path a config
//! change takes: HTTPS -> Raft over QUIC -> RocksDB fsync) and through etcd (3 members,
//! its HTTP gRPC gateway `/v3/kv/put`), in one run on loopback, at 1 and 16 clients.
//! Prints throughput, p50 and p99 for both and the ratios.
//!
//! Run: `bench/raft-vs-etcd` (installs etcd, builds in release) or
//! `cargo bench --bench raft_vs_etcd`. `BENCH_SECONDS` sets the time per measurement (5),
//! `BENCH_ROUNDS` the number of interleaved rounds whose medians are reported (3).
//! `BENCH_ONLY=horcrux` (or `etcd`) loads one system only, with `BENCH_CLIENTS` clients
//! (16), and keeps the data dirs and daemon logs: for profiling.
//!
//! Then leader changes (`BENCH_LEADER_CHANGES` rounds, 3; 0 skips them): the leader is
//! killed with SIGKILL and a write is sent at once to a follower, retried every 5 ms until
//! it is accepted; the time from the kill to the acceptance is printed for both systems,
//! then the killed member is restarted on its data and the cluster is let heal.
//! `BENCH_KEEP=1` keeps the data dirs and daemon logs. `BENCH_HORCRUX_BIN=PATH` runs
//! another build of the daemon (to compare two commits on the same machine).
//!
//! First, the codec: one AppendEntries RPC carrying a batch of 16 such writes (what the
//! leader sends under 16 clients), in format 0 (JSON) and format 1 (bincode, the current
//! one): bytes on the wire and time to encode and decode it, and the ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

struct Procs(Vec<Child>);

/// A cluster member: its client URL, its process (an index into `Procs`) and how to start
/// it again on its data.
struct Member {
    url: String,
    child: usize,
    restart: Box<dyn Fn() -> Command>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn base64(data: &[u8]) -> String {
    horcrux_core::ids::base64_encode(data)
}

/// One committed write: (agent, client number, sequence number); panics on failure.
type WriteFn = Arc<dyn Fn(&ureq::Agent, usize, usize) + Send + Sync>;

struct Stats {
    ops: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Stats {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Medians of several rounds, as one line of the table.
    fn summary(throughput: f64, p50_ms: f64, p99_ms: f64) -> Self {
        Stats { ops: (throughput * 1000.0) as usize, secs: 1000.0, p50_ms, p99_ms }
    }
}

/// `clients` threads each issue writes back to back for `dur`; `write(agent, client, seq)`
/// performs one committed write and panics on failure.
fn load(clients: usize, dur: Duration, write: WriteFn) -> Stats {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let write = write.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let mut lat = Vec::new();
                let mut seq = 0;
                while start.elapsed() < dur {
                    let t = Instant::now();
                    write(&agent, c, seq);
                    lat.push(t.elapsed());
                    seq += 1;
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Stats { ops: all.len(), secs, p50_ms: pct(0.50), p99_ms: pct(0.99) }
}

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        // Not `timeout_global`: a resolve timeout makes ureq resolve on a new thread for
        // every request, which cost the load generator a thread per write.
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out: {what}");
}

fn start_etcd(root: &Path, procs: &mut Procs) -> (String, Vec<Member>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_tcp(), free_tcp())).collect();
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().copied().enumerate() {
        let (dir, cluster) = (root.join(format!("etcd{i}")), cluster.join(","));
        let command = move || {
            let mut c = Command::new("etcd");
            c.args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(&dir)
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let child = command()
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed: bench/raft-vs-etcd installs it");
        procs.0.push(child);
        members.push(Member {
            url: format!("http://127.0.0.1:{client}"),
            child: procs.0.len() - 1,
            restart: Box::new(command),
        });
    }
    etcd_healthy(&members);
    // Send writes to the leader, as a client library would after its first redirect.
    let leader = etcd_leader(&members, None);
    (members[leader].url.clone(), members)
}

fn etcd_healthy(members: &[Member]) {
    let a = agent();
    wait_until("etcd healthy", || {
        members.iter().all(|m| a.get(format!("{}/health", m.url)).call().is_ok_and(|r| r.status() == 200))
    });
}

/// The index of etcd's leader, asking the members other than `dead`.
fn etcd_leader(members: &[Member], dead: Option<usize>) -> usize {
    let a = agent();
    for (i, m) in members.iter().enumerate().filter(|(i, _)| Some(*i) != dead) {
        let Ok(mut r) = a.post(format!("{}/v3/maintenance/status", m.url)).send_json(json!({})) else {
            continue;
        };
        let Ok(v) = r.body_mut().read_json::<serde_json::Value>() else { continue };
        if v["leader"] == v["header"]["member_id"] {
            return i;
        }
    }
    panic!("etcd has no leader")
}

fn start_horcrux(root: &Path, procs: &mut Procs) -> (String, String, Vec<Member>) {
    // `BENCH_HORCRUX_BIN`: another build of the daemon (an A/B comparison of two commits).
    let bin: &'static str = match std::env::var("BENCH_HORCRUX_BIN") {
        Ok(path) => Box::leak(path.into_boxed_str()),
        Err(_) => env!("CARGO_BIN_EXE_horcrux"),
    };
    let mut api = Vec::new();
    let mut admin_token = String::new();
    let mut members = Vec::new();
    for i in 0..3 {
        let dir = root.join(format!("h{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, qport) = (free_tcp(), free_udp());
        let data = dir.clone();
        let command = move || {
            let mut cmd = Command::new(bin);
            cmd.args(["serve", "--data-dir"])
                .arg(&data)
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--cluster-listen",
                    &format!("127.0.0.1:{qport}"),
                ])
                .args(["--node-name", &format!("h{i}"), "--accel", "tcg"])
                .env("HORCRUX_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(data.join("daemon.log"))
                        .unwrap(),
                );
            cmd
        };
        let mut cmd = command();
        if i > 0 {
            let mut r = agent()
                .post(format!("{}/api/v1/cluster/tokens", api[0]))
                .header("Authorization", format!("Bearer {admin_token}"))
                .send_json(json!({}))
                .unwrap();
            let t: serde_json::Value = r.body_mut().read_json().unwrap();
            cmd.args(["--join", t["token"].as_str().unwrap()]);
        }
        procs.0.push(cmd.spawn().unwrap());
        let url = format!("https://127.0.0.1:{port}");
        members.push(Member { url: url.clone(), child: procs.0.len() - 1, restart: Box::new(command) });
        let a = agent();
        wait_until("horcrux up", || {
            a.get(format!("{url}/api/v1/version")).call().is_ok_and(|r| r.status() == 200)
        });
        if i == 0 {
            admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
        }
        api.push(url);
    }
    horcrux_healthy(&members, &admin_token);
    (api[0].clone(), admin_token, members)
}

fn horcrux_status(url: &str, token: &str) -> Option<serde_json::Value> {
    agent()
        .get(format!("{url}/api/v1/cluster/status"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .ok()
        .filter(|r| r.status() == 200)
        .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
}

/// Three voters, every member online and agreeing on a leader.
fn horcrux_healthy(members: &[Member], token: &str) {
    wait_until("3 voters online", || {
        members.iter().all(|m| {
            horcrux_status(&m.url, token).is_some_and(|s| {
                s["votes"] == 3
                    && s["leader"].is_string()
                    && s["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["online"] == true))
            })
        })
    });
}

/// Kills the leader, then sends `write` to a follower every 5 ms until it is accepted;
/// answers the time from the kill. Restarts the killed member and waits until healthy.
fn leader_change(
    members: &[Member],
    procs: &mut Procs,
    leader: usize,
    write: &dyn Fn(&str) -> bool,
    healthy: &dyn Fn(),
) -> Duration {
    let m = &members[leader];
    let _ = procs.0[m.child].kill();
    let t0 = Instant::now();
    if std::env::var_os("BENCH_KEEP").is_some() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        println!("killed member {leader} ({}) at unix {:.3}", m.url, now.as_secs_f64());
    }
    let follower = &members[(leader + 1) % members.len()].url;
    while !write(follower) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no write accepted within 60 s of the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    let _ = procs.0[m.child].wait();
    procs.0[m.child] = (m.restart)().spawn().unwrap();
    healthy();
    took
}

/// Encodes and decodes `rpc` in `framing` `n` times; the frame's size and the mean time.
fn codec_run(
    rpc: &horcrux_raft::transport::RpcRequest,
    framing: horcrux_raft::transport::Framing,
    n: u32,
) -> (usize, Duration) {
    use horcrux_raft::transport::{decode_frame, encode_frame, RpcRequest, MAX_FRAME};
    let t0 = Instant::now();
    let mut len = 0;
    for _ in 0..n {
        let bytes = encode_frame(rpc, framing).unwrap();
        len = bytes.len();
        let (back, _) = decode_frame::<RpcRequest, MAX_FRAME>(&bytes).unwrap();
        std::hint::black_box(back);
    }
    (len, t0.elapsed() / n)
}

fn codec_figures() {
    use horcrux_core::{access::Actor, Command, Request, RequestId};
    use horcrux_raft::transport::{Framing, RpcRequest};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    let requests = (0..16u64)
        .map(|c| Request {
            ts_ms: 1_764_000_000_000 + c,
            cmd: Command::SetClusterOption { key: format!("bench-{c}-{}", 100 + c), value: "v".repeat(256) },
            actor: Some(Actor {
                userid: "root@pam".into(),
                token: Some("root@pam!bench".into()),
                privsep: false,
            }),
            id: Some(RequestId { client: 0x9e37_79b9_7f4a_7c15, seq: 1000 + c }),
        })
        .collect();
    let rpc = RpcRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 41_999)),
        entries: vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 42_000),
            payload: EntryPayload::Normal(horcrux_raft::Batch(requests)),
        }],
        leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 41_998)),
    });
    let n = 20_000;
    let (jl, jt) = codec_run(&rpc, Framing::Json, n);
    let (bl, bt) = codec_run(&rpc, Framing::Binary, n);
    println!("codec, one AppendEntries of 16 256-byte writes, encode + decode, mean of {n}:");
    println!("  format 0 (JSON)    {jl:>6} bytes {:>8.1} us", jt.as_secs_f64() * 1e6);
    println!("  format 1 (bincode) {bl:>6} bytes {:>8.1} us", bt.as_secs_f64() * 1e6);
    println!(
        "  ratio format 1 / JSON: size {:.2}x, time {:.2}x",
        bl as f64 / jl as f64,
        bt.as_secs_f64() / jt.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    codec_figures();
    if std::env::var_os("BENCH_CODEC_ONLY").is_some() {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dur = Duration::from_secs(secs);
    let rounds_n: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let tmp = std::env::temp_dir().join(format!("horcrux-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let root: PathBuf = tmp.clone();
    let mut procs = Procs(Vec::new());
    // `BENCH_ONLY=horcrux` (or `etcd`): load one system only, 16 clients, for profiling.
    let only = std::env::var("BENCH_ONLY").ok();
    let (etcd, etcd_members) = start_etcd(&root, &mut procs);
    let (horcrux, token, h_members) = start_horcrux(&root, &mut procs);
    let value = "v".repeat(256);

    let etcd_value = base64(value.as_bytes());
    let etcd_write: WriteFn = Arc::new(move |a, c, seq| {
        let key = base64(format!("bench/{c}/{}", seq % 1000).as_bytes());
        let mut r = a
            .post(format!("{etcd}/v3/kv/put"))
            .send_json(json!({ "key": key, "value": etcd_value }))
            .unwrap();
        assert_eq!(r.status(), 200);
        // Read the body, so the connection goes back to the pool (as for Horcrux below).
        r.body_mut().read_to_vec().unwrap();
    });
    let write_token = token.clone();
    let h_write: WriteFn = Arc::new(move |a, c, seq| {
        let mut r = a
            .put(format!("{horcrux}/api/v1/cluster/options/bench-{c}-{}", seq % 1000))
            .header("Authorization", format!("Bearer {write_token}"))
            .send_json(json!({ "value": value }))
            .unwrap();
        assert_eq!(r.status(), 200);
        r.body_mut().read_to_vec().unwrap();
    });

    if let Some(only) = only {
        let write = if only == "etcd" { etcd_write } else { h_write };
        let clients = std::env::var("BENCH_CLIENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
        let s = load(clients, dur, write);
        println!(
            "{only} {clients} clients: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms",
            s.throughput(),
            s.p50_ms,
            s.p99_ms
        );
        println!("data and daemon logs kept in {}", tmp.display());
        return;
    }
    println!("committed 256-byte writes, 3 nodes on loopback, {secs} s per run, median of {rounds_n} interleaved rounds");
    println!("{:<8} {:>7} {:>12} {:>9} {:>9}", "system", "clients", "writes/s", "p50 ms", "p99 ms");
    for clients in [1, 16] {
        // Interleaved rounds (etcd, Horcrux, etcd, ...): a slow spell of the machine hits
        // both systems; the medians are reported, and the ratio of each round.
        let mut rounds = Vec::new();
        for _ in 0..rounds_n {
            rounds.push((load(clients, dur, etcd_write.clone()), load(clients, dur, h_write.clone())));
        }
        let median = |f: &dyn Fn(&(Stats, Stats)) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let e =
            Stats::summary(median(&|r| r.0.throughput()), median(&|r| r.0.p50_ms), median(&|r| r.0.p99_ms));
        let h =
            Stats::summary(median(&|r| r.1.throughput()), median(&|r| r.1.p50_ms), median(&|r| r.1.p99_ms));
        for (name, s) in [("etcd", &e), ("horcrux", &h)] {
            println!(
                "{:<8} {:>7} {:>12.0} {:>9.2} {:>9.2}",
                name,
                clients,
                s.throughput(),
                s.p50_ms,
                s.p99_ms
            );
        }
        let per_round: Vec<String> =
            rounds.iter().map(|(e, h)| format!("{:.2}", h.throughput() / e.throughput())).collect();
        println!(
            "ratio horcrux/etcd at {clients} clients: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (rounds: {})",
            h.throughput() / e.throughput(),
            h.p50_ms / e.p50_ms,
            h.p99_ms / e.p99_ms,
            per_round.join(" ")
        );
    }

    let changes: usize = std::env::var("BENCH_LEADER_CHANGES").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    if changes > 0 {
        let a = agent();
        let ev = base64(b"after-kill");
        let etcd_put = |url: &str| {
            a.post(format!("{url}/v3/kv/put"))
                .send_json(json!({ "key": base64(b"leader-change"), "value": ev }))
                .is_ok_and(|r| r.status() == 200)
        };
        let h_put = |url: &str| {
            a.put(format!("{url}/api/v1/cluster/options/leader-change"))
                .header("Authorization", format!("Bearer {token}"))
                .send_json(json!({ "value": "after-kill" }))
                .is_ok_and(|r| r.status() == 200)
        };
        println!("leader killed (SIGKILL), a write sent at once to a follower: time until it is accepted");
        let (mut e_times, mut h_times) = (Vec::new(), Vec::new());
        for round in 0..changes {
            let leader = etcd_leader(&etcd_members, None);
            let e =
                leader_change(&etcd_members, &mut procs, leader, &etcd_put, &|| etcd_healthy(&etcd_members));
            let leader_name = horcrux_status(&h_members[0].url, &token)
                .and_then(|s| s["leader"].as_str().map(str::to_string))
                .expect("a Horcrux leader");
            let leader: usize =
                leader_name.trim_start_matches('h').parse().expect("members are named h0..h2");
            let h = leader_change(&h_members, &mut procs, leader, &h_put, &|| {
                horcrux_healthy(&h_members, &token)
            });
            println!(
                "round {round}: etcd {:.0} ms, horcrux {:.0} ms",
                e.as_secs_f64() * 1e3,
                h.as_secs_f64() * 1e3
            );
            e_times.push(e);
            h_times.push(h);
        }
        e_times.sort();
        h_times.sort();
        let (e, h) = (e_times[e_times.len() / 2], h_times[h_times.len() / 2]);
        println!(
            "leader change, median of {changes}: etcd {:.0} ms, horcrux {:.0} ms, ratio horcrux/etcd {:.2}x",
            e.as_secs_f64() * 1e3,
            h.as_secs_f64() * 1e3,
            h.as_secs_f64() / e.as_secs_f64()
        );
    }
    drop(procs);
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("data and daemon logs kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
