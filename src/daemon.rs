//! `horcrux serve`: opens (or initialises) the single-node cluster in the data dir, makes
//! sure the `local` storage and the admin token exist, starts the actors and serves HTTPS.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use horcrux_actors::{NodeRuntime, TaskRegistry, VolumeFactory};
use horcrux_core::{Command, StoragePool};
use horcrux_drivers::{resolve_accel, Accel, QemuDriver};
use horcrux_raft::{ClusterHandle, ClusterOptions, OpenOptions};

use crate::DEFAULT_DATA_DIR;

const ADMIN_TOKEN_ID: &str = "root@pam!admin";

#[derive(Args)]
pub struct ServeArgs {
    /// State directory: Raft log, certificates, disks of the `local` storage, tasks.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// HTTPS listen address.
    #[arg(long, default_value = "0.0.0.0:8006")]
    listen: SocketAddr,
    /// This node's name (defaults to the host name). Fixed at first start.
    #[arg(long)]
    node_name: Option<String>,
    /// QUIC address for the cluster transport (Raft, joins, forwarding). Without it the node
    /// runs standalone.
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// Join an existing cluster with a token from `horcrux cluster token create` (first start only).
    #[arg(long, requires = "cluster_listen")]
    join: Option<String>,
    /// Snapshot the state machine and compact the Raft log every N entries (default 5000).
    #[arg(long, env = "HORCRUX_SNAPSHOT_LOGS")]
    snapshot_logs: Option<u64>,
    /// QEMU accelerator: auto picks KVM only where a probe guest really runs under it.
    #[arg(long, default_value = "auto", env = "HORCRUX_ACCEL")]
    accel: Accel,
    /// Each guest's QEMU runs as uid and gid BASE + VMID (no account needed); 0 runs QEMU as
    /// the daemon's user instead.
    #[arg(long, default_value_t = horcrux_drivers::qemu::DEFAULT_GUEST_UID_BASE, env = "HORCRUX_QEMU_UID_BASE")]
    qemu_uid_base: u32,
    /// Serve the web UI from this directory instead of the copy built into the binary
    /// (for working on the UI: a reload shows the change).
    #[arg(long)]
    web_dir: Option<PathBuf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        // A node name is a DNS label: the host name up to its first dot.
        .map(|s| s.trim().split('.').next().unwrap_or("").to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// How long start-up waits to see the cluster's committed state before deciding on the
/// admin token and the `local` storage.
const STARTUP_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// `f` on the cluster's committed state, or `None` if it cannot be confirmed in time (no
/// quorum yet). A restarted node's own copy may lag behind what was committed (its last
/// commit point is written without fsync), so start-up decisions are not taken on it.
async fn committed<R>(
    cluster: &ClusterHandle,
    f: impl FnOnce(&horcrux_core::ClusterState) -> R,
) -> Option<R> {
    match tokio::time::timeout(STARTUP_READ, cluster.read_linearizable(f)).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            tracing::warn!("start-up: cluster state not confirmed: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("start-up: cluster state not confirmed within {STARTUP_READ:?}");
            None
        }
    }
}

async fn ensure_admin_token(cluster: &ClusterHandle, path: &Path) -> anyhow::Result<()> {
    let file = std::fs::read_to_string(path).ok();
    if let Some(secret) = &file {
        let hash = horcrux_http::token_sha256(secret.trim());
        let matches = |s: &horcrux_core::ClusterState| {
            s.api_tokens.get(ADMIN_TOKEN_ID).map(|t| t.secret_sha256 == hash)
        };
        if cluster.read_local(matches) == Some(true) {
            return Ok(());
        }
        match committed(cluster, matches).await {
            Some(Some(true)) => return Ok(()),
            Some(_) => {}
            // Unconfirmed: never replace a token on a possibly stale view.
            None => return Ok(()),
        }
    }
    // In a cluster of several nodes the admin token is shared (replicated): a joined node
    // must not replace it, or the first node's token would stop working.
    let Some((exists, members)) =
        committed(cluster, |s| (s.api_tokens.contains_key(ADMIN_TOKEN_ID), s.nodes.len())).await
    else {
        tracing::warn!("no admin token written: the cluster state could not be confirmed");
        return Ok(());
    };
    if exists && members > 1 {
        tracing::info!(
            "the cluster's admin token already exists; use the admin.token of the node that created it"
        );
        return Ok(());
    }
    let secret = horcrux_core::ids::random_secret();
    cluster
        .propose(Command::SetApiToken {
            id: ADMIN_TOKEN_ID.into(),
            secret_sha256: horcrux_http::token_sha256(&secret),
            privsep: false,
            expire: 0,
        })
        .await?;
    // Written only after the hash is committed: a crash in between just makes a new one.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    tracing::info!(path = %path.display(), "wrote the admin API token");
    Ok(())
}

async fn ensure_local_storage(cluster: &ClusterHandle, data_dir: &Path) -> anyhow::Result<()> {
    if cluster.read_local(|s| s.storage.contains_key("local")) {
        return Ok(());
    }
    match committed(cluster, |s| s.storage.contains_key("local")).await {
        Some(false) => {}
        Some(true) => return Ok(()),
        None => {
            tracing::warn!("the local storage is not added yet: the cluster state could not be confirmed");
            return Ok(());
        }
    }
    let path = data_dir.join("storage/local");
    std::fs::create_dir_all(&path)?;
    // Proxmox's `local`, holding every content type (Horcrux has no separate `local-lvm`).
    let params = [
        ("storage", "local".to_string()),
        ("type", "dir".into()),
        ("path", path.display().to_string()),
        ("content", horcrux_core::storage::CONTENT_TYPES.join(",")),
    ];
    let pool = StoragePool::from_params(&params.into_iter().map(|(k, v)| (k.to_string(), v)).collect())?;
    cluster.propose(Command::CreateStorage { pool }).await?;
    Ok(())
}

/// Each storage's backend; files uploaded to a storage without host paths (NFS here) are
/// staged under the data dir first.
fn volume_factory(data_dir: &Path) -> VolumeFactory {
    let runner: Arc<dyn horcrux_drivers::Runner> = Arc::new(horcrux_drivers::SystemRunner);
    let staging = data_dir.join("staging");
    Arc::new(move |pool: &StoragePool| horcrux_drivers::storage::open(pool, runner.clone(), &staging))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HORCRUX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    if horcrux_core::ids::validate_dns_label("node-name", &node_name).is_err() {
        bail!("--node-name {node_name:?} is not a DNS label");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let cluster = ClusterHandle::open(OpenOptions {
        dir: data_dir.join("raft"),
        node_name: node_name.clone(),
        api_addr: args.listen.to_string(),
        cluster: args.cluster_listen.map(|listen| ClusterOptions { listen, join: args.join.clone() }),
        snapshot_logs: args.snapshot_logs,
    })
    .await?;
    // Whatever happens next, Raft and its store are stopped before the process exits (a
    // start-up error used to drop the store under the running Raft thread: a segfault).
    let served = serve_node(&cluster, &args, &data_dir, listener).await;
    cluster.shutdown().await;
    served
}

async fn serve_node(
    cluster: &ClusterHandle,
    args: &ServeArgs,
    data_dir: &std::path::Path,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let cluster = cluster.clone();
    let data_dir = data_dir.to_path_buf();
    ensure_local_storage(&cluster, &data_dir).await?;
    ensure_admin_token(&cluster, &data_dir.join("admin.token")).await?;
    // Logins need a ticket key from the first request on; then it is kept and rotated.
    for attempt in 0.. {
        match horcrux_http::login::rotate_ticket_key_if_due(&cluster).await {
            Ok(_) => break,
            Err(e) if attempt < 25 => {
                tracing::debug!("ticket key not installed yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!("no ticket key yet ({e}); logins answer 503 until one is installed");
                break;
            }
        }
    }
    tokio::spawn(horcrux_http::login::keep_ticket_key(cluster.clone()));

    let accel = resolve_accel(args.accel).await;
    tracing::info!(?accel, "QEMU accelerator");
    // The fence holds the HA guests (`horcrux fence`; it outlives daemon restarts).
    let fence = horcrux_actors::FenceLauncher {
        client: horcrux_drivers::fence::FenceClient::new(data_dir.join("run/fence.sock")),
        program: std::env::current_exe()?,
        log: data_dir.join("log/fence.log"),
    };
    let log_dir = data_dir.join("log");
    std::fs::create_dir_all(&log_dir).map_err(|e| anyhow::anyhow!("{}: {e}", log_dir.display()))?;
    let qemu = QemuDriver::new(data_dir.join("run/qemu"), data_dir.join("log/qemu"), accel)?
        .with_guest_uid_base((args.qemu_uid_base != 0).then_some(args.qemu_uid_base))
        .with_fence(fence.client.clone());
    {
        let f = fence.clone();
        tokio::task::spawn_blocking(move || f.ensure_running()).await?.map_err(anyhow::Error::msg)?;
    }
    let options = cluster.clone();
    let history = move || {
        options.read_local(|s| {
            let v = s.options.get(horcrux_core::state::TASK_HISTORY_OPTION);
            v.and_then(|v| v.parse().ok()).unwrap_or(horcrux_actors::DEFAULT_TASK_HISTORY)
        })
    };
    let tasks = TaskRegistry::open(cluster.node_name(), data_dir.join("tasks"))?
        .with_history_limit(Arc::new(history));
    let runtime = NodeRuntime::start(
        cluster.clone(),
        Arc::new(qemu),
        volume_factory(&args.data_dir),
        tasks,
        Some(fence),
    )?
    .with_metrics(args.data_dir.join("rrd"), args.data_dir.clone());

    let mut names =
        vec![cluster.node_name().to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    names.dedup();
    let ca = cluster.read_local(|s| s.cluster_ca.clone());
    let (tls, https_cert) =
        horcrux_http::load_or_create_tls(horcrux_http::TlsFiles::in_dir(&data_dir), names, ca.as_ref())?;
    tokio::spawn(horcrux_http::keep_https_cert(cluster.clone(), https_cert));
    tracing::info!(listen = %args.listen, node = cluster.node_name(), "serving HTTPS");
    let web = match &args.web_dir {
        Some(d) => horcrux_http::WebRoot::Dir(
            std::fs::canonicalize(d).with_context(|| format!("--web-dir {}", d.display()))?,
        ),
        None => horcrux_http::WebRoot::Embedded,
    };
    horcrux_http::serve(listener, horcrux_http::router(runtime, web), tls, shutdown_signal()).await?;
    tracing::info!("shutting down; guests keep running and are adopted on the next start");
    Ok(())
}
