//! `horcrux storage ...`: Proxmox `pvesm`-like commands over the API.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum StorageCmd {
    /// The storages (configuration), or with `--node` their status on that node.
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// Add a storage: `horcrux storage add dir backup --path /srv/backup --content backup`.
    /// Any other Proxmox key as `--opt KEY=VALUE` (e.g. `--opt preallocation=full`).
    Add(Box<AddArgs>),
    /// Change options (`--opt KEY=VALUE`, `--delete KEY`).
    Set {
        storage: String,
        #[arg(long = "opt", value_name = "KEY=VALUE")]
        opts: Vec<String>,
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Status on a node (default: the node the API runs on).
    Status {
        storage: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// The volumes a storage holds on a node.
    Content {
        storage: String,
        #[arg(long)]
        node: Option<String>,
        /// Only this content type.
        #[arg(long)]
        content: Option<String>,
    },
    /// Remove a storage's configuration (refused while a guest has a disk on it).
    Remove { storage: String },
    /// Upload a file (streamed): `horcrux storage upload local debian.iso --content iso`.
    Upload {
        storage: String,
        file: std::path::PathBuf,
        /// iso, vztmpl or import.
        #[arg(long)]
        content: String,
        /// The name to store it as (default: the file's).
        #[arg(long)]
        filename: Option<String>,
        /// Expected checksum (hex), verified by the server.
        #[arg(long, requires = "checksum_algorithm")]
        checksum: Option<String>,
        /// md5, sha1, sha224, sha256, sha384 or sha512.
        #[arg(long)]
        checksum_algorithm: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// dir, btrfs, zfspool, nfs, iscsi, rbd, lvm or lvmthin.
    #[arg(value_name = "TYPE")]
    kind: String,
    storage: String,
    #[arg(long)]
    path: Option<String>,
    #[arg(long)]
    pool: Option<String>,
    #[arg(long)]
    server: Option<String>,
    #[arg(long)]
    export: Option<String>,
    #[arg(long)]
    portal: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    vgname: Option<String>,
    #[arg(long)]
    thinpool: Option<String>,
    #[arg(long)]
    monhost: Option<String>,
    /// Content types, as images,iso.
    #[arg(long)]
    content: Option<String>,
    /// Nodes where it exists, as n1,n2 (default: all).
    #[arg(long)]
    nodes: Option<String>,
    #[arg(long)]
    shared: bool,
    #[arg(long)]
    disable: bool,
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
}

fn key_values(opts: &[String], into: &mut Map<String, Value>) -> anyhow::Result<()> {
    for o in opts {
        let (k, v) = o.split_once('=').with_context(|| format!("--opt {o:?}: expected KEY=VALUE"))?;
        into.insert(k.to_string(), json!(v));
    }
    Ok(())
}

fn node_query(node: &Option<String>) -> String {
    node.as_deref().map(|n| format!("?node={n}")).unwrap_or_default()
}

pub fn run_storage(c: &ApiClient, cmd: StorageCmd) -> anyhow::Result<()> {
    match cmd {
        StorageCmd::List { node: None } => {
            println!("{:<16} {:<8} {:<40} {:<6} CONTENT", "NAME", "TYPE", "LOCATION", "SHARED");
            for s in c.get("/storage")?.as_array().into_iter().flatten() {
                let location = ["path", "pool", "export", "target", "vgname"]
                    .iter()
                    .filter_map(|k| s[*k].as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "{:<16} {:<8} {:<40} {:<6} {}",
                    s["storage"].as_str().unwrap_or(""),
                    s["type"].as_str().unwrap_or(""),
                    location,
                    if s["shared"] == 1 { "yes" } else { "no" },
                    s["content"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        StorageCmd::List { node: Some(node) } => {
            println!(
                "{:<16} {:<8} {:<8} {:>14} {:>14} {:>14}",
                "NAME", "TYPE", "STATUS", "TOTAL", "USED", "AVAIL"
            );
            for s in c.get("/storage")?.as_array().into_iter().flatten() {
                let id = s["storage"].as_str().unwrap_or("");
                let on = s["nodes"].as_str().is_none_or(|n| n.split(',').any(|n| n == node));
                if !on {
                    continue;
                }
                let st = c.get(&format!("/storage/{id}/status?node={node}"))?;
                let status = match (st["enabled"] == 1, st["active"] == 1) {
                    (false, _) => "disabled",
                    (true, true) => "active",
                    (true, false) => "inactive",
                };
                let n = |k: &str| st[k].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{id:<16} {:<8} {status:<8} {:>14} {:>14} {:>14}",
                    s["type"].as_str().unwrap_or(""),
                    n("total"),
                    n("used"),
                    n("avail")
                );
            }
            Ok(())
        }
        StorageCmd::Add(args) => {
            let AddArgs {
                kind,
                storage,
                path,
                pool,
                server,
                export,
                portal,
                target,
                vgname,
                thinpool,
                monhost,
                content,
                nodes,
                shared,
                disable,
                opts,
            } = *args;
            let mut body = Map::new();
            body.insert("storage".into(), json!(storage));
            body.insert("type".into(), json!(kind));
            let named = [
                ("path", path),
                ("pool", pool),
                ("server", server),
                ("export", export),
                ("portal", portal),
                ("target", target),
                ("vgname", vgname),
                ("thinpool", thinpool),
                ("monhost", monhost),
                ("content", content),
                ("nodes", nodes),
            ];
            for (k, v) in named {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if shared {
                body.insert("shared".into(), json!(true));
            }
            if disable {
                body.insert("disable".into(), json!(true));
            }
            key_values(&opts, &mut body)?;
            let r = c.post("/storage", &Value::Object(body))?;
            println!("added {} storage {storage}", r["type"].as_str().unwrap_or(""));
            Ok(())
        }
        StorageCmd::Set { storage, opts, delete } => {
            if opts.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --opt KEY=VALUE or --delete KEY");
            }
            let mut body = Map::new();
            key_values(&opts, &mut body)?;
            if !delete.is_empty() {
                body.insert("delete".into(), json!(delete.join(",")));
            }
            c.put(&format!("/storage/{storage}"), &Value::Object(body))?;
            println!("changed {storage}");
            Ok(())
        }
        StorageCmd::Status { storage, node } => {
            let st = c.get(&format!("/storage/{storage}/status{}", node_query(&node)))?;
            println!("{}", serde_json::to_string_pretty(&st)?);
            Ok(())
        }
        StorageCmd::Content { storage, node, content } => {
            let mut q = node_query(&node);
            if let Some(ct) = content {
                q.push(if q.is_empty() { '?' } else { '&' });
                q.push_str(&format!("content={ct}"));
            }
            println!("{:<60} {:<10} {:<8} {:>14} VMID", "VOLID", "CONTENT", "FORMAT", "SIZE");
            for v in c.get(&format!("/storage/{storage}/content{q}"))?.as_array().into_iter().flatten() {
                println!(
                    "{:<60} {:<10} {:<8} {:>14} {}",
                    v["volid"].as_str().unwrap_or(""),
                    v["content"].as_str().unwrap_or(""),
                    v["format"].as_str().unwrap_or(""),
                    v["size"],
                    v["vmid"].as_u64().map(|v| v.to_string()).unwrap_or_default()
                );
            }
            Ok(())
        }
        StorageCmd::Upload { storage, file, content, filename, checksum, checksum_algorithm, node } => {
            let name = match filename {
                Some(n) => n,
                None => {
                    file.file_name().and_then(|n| n.to_str()).context("the file has no name")?.to_string()
                }
            };
            let mut q = vec![("content", content), ("filename", name)];
            q.extend(checksum.map(|c| ("checksum", c)));
            q.extend(checksum_algorithm.map(|a| ("checksum-algorithm", a)));
            q.extend(node.map(|n| ("node", n)));
            let query: Vec<String> =
                q.iter().map(|(k, v)| format!("{k}={}", horcrux_core::ids::percent_encode(v))).collect();
            let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let r = c.post_file(&format!("/storage/{storage}/upload?{}", query.join("&")), f)?;
            println!("stored {} ({} bytes)", r["volid"].as_str().unwrap_or(""), r["size"]);
            Ok(())
        }
        StorageCmd::Remove { storage } => {
            c.delete(&format!("/storage/{storage}"))?;
            println!("removed {storage}");
            Ok(())
        }
    }
}
