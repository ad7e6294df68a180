//! `horcrux`: the daemon (`horcrux serve`) and the CLI that talks to its API.

mod cli;
mod cli_cluster;
mod cli_disk;
mod cli_ha;
mod cli_storage;
mod client;
mod daemon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The write path allocates per request and per Raft entry; mimalloc spends about half
/// the CPU glibc's malloc does there (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where Horcrux keeps its state when no `--data-dir` is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/horcrux";

#[derive(Parser)]
#[command(name = "horcrux", version, about = "Virtualization platform: VMs on an embedded Raft cluster")]
struct Cli {
    /// API base URL of the server the CLI talks to.
    #[arg(long, global = true, env = "HORCRUX_API", default_value = "https://127.0.0.1:8006")]
    api: String,
    /// File holding the API token (the server writes DATA_DIR/admin.token on first start).
    #[arg(long, global = true, env = "HORCRUX_TOKEN_FILE", default_value = "/var/lib/horcrux/admin.token")]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run the daemon: Raft node, guest actors and the HTTPS API.
    Serve(daemon::ServeArgs),
    /// Manage virtual machines (like Proxmox's `qm`).
    #[command(subcommand)]
    Vm(cli::VmCmd),
    /// Cluster membership, quorum and join tokens.
    #[command(subcommand)]
    Cluster(cli_cluster::ClusterCmd),
    /// The node's fence (started by the daemon): holds the HA guests and kills them when
    /// the daemon stops renewing the node's lease (`docs/ha.md`).
    Fence {
        /// Where it listens (the daemon's `run/fence.sock`).
        #[arg(long)]
        socket: PathBuf,
    },
    /// High availability: resources, rules, status (like Proxmox's `ha-manager`).
    #[command(subcommand)]
    Ha(cli_ha::HaCmd),
    /// Storages: configuration, status, content (like Proxmox's `pvesm`).
    #[command(subcommand)]
    Storage(cli_storage::StorageCmd),
    /// Quorum status in corosync-quorumtool's format.
    Quorumtool {
        /// Show quorum status (the only mode).
        #[arg(short = 's')]
        status: bool,
    },
}

fn main() -> std::process::ExitCode {
    // Two rustls providers can end up in the graph; pick ring once for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Serve(args) => daemon::run(args),
        Top::Fence { socket } => horcrux_drivers::fence::run(&socket).map_err(anyhow::Error::from),
        Top::Ha(cmd) => {
            client::ApiClient::new(&cli.api, &cli.token_file).and_then(|c| cli_ha::run_ha(&c, cmd))
        }
        Top::Storage(cmd) => {
            client::ApiClient::new(&cli.api, &cli.token_file).and_then(|c| cli_storage::run_storage(&c, cmd))
        }
        Top::Vm(cmd) => client::ApiClient::new(&cli.api, &cli.token_file).and_then(|c| cli::run_vm(&c, cmd)),
        Top::Quorumtool { status } => client::ApiClient::new(&cli.api, &cli.token_file)
            .and_then(|c| cli_cluster::quorumtool(&c, status)),
        Top::Cluster(cmd) => {
            client::ApiClient::new(&cli.api, &cli.token_file).and_then(|c| cli_cluster::run_cluster(&c, cmd))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
