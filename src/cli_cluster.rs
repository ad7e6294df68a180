//! `horcrux cluster ...`: status and join tokens.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Members, leader and quorum.
    Status,
    /// Join tokens for adding nodes.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Remove a node from the cluster (it must own no guests).
    RemoveNode { name: String },
    /// Take the node the CLI talks to out of the cluster (it must own no guests); stop its
    /// daemon afterwards.
    Leave,
    /// Seed membership and quorum settings from an existing corosync.conf.
    ImportCorosync { path: std::path::PathBuf },
    /// Roll the cluster CA without downtime: a new CA signs from now on, every member
    /// renews its certificate from it, then the old CA stops being trusted.
    RotateCa {
        /// Return once the roll has started instead of waiting for it to complete.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for every member to renew (seconds, or 90s, 30m, 1h).
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Print a single-use join token.
    Create {
        /// Lifetime: seconds, or with a unit: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    List,
    Revoke {
        id: String,
    },
}

/// Parses `90`, `90s`, `30m`, `1h`, `2d` into seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("--ttl {s:?}: expected e.g. 90s, 30m, 1h"))?;
    if n == 0 {
        bail!("--ttl must be positive");
    }
    Ok(n * mult)
}

pub fn run_cluster(c: &ApiClient, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let s = c.get("/cluster/status")?;
            println!("leader:   {}", s["leader"].as_str().unwrap_or("(none)"));
            println!("quorate:  {}", if s["quorate"] == true { "yes" } else { "no" });
            println!("votes:    {} of {} (quorum {})", s["votes"], s["expected_votes"], s["quorum"]);
            println!("{:>4} {:<20} {:<8} {:<8} ADDRESS", "ID", "NAME", "ROLE", "ONLINE");
            for n in s["nodes"].as_array().into_iter().flatten() {
                println!(
                    "{:>4} {:<20} {:<8} {:<8} {}",
                    n["id"].as_u64().unwrap_or(0),
                    n["name"].as_str().unwrap_or(""),
                    if n["voter"] == true { "voter" } else { "learner" },
                    if n["online"] == true { "yes" } else { "no" },
                    n["address"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        ClusterCmd::RemoveNode { name } => {
            c.delete(&format!("/cluster/nodes/{name}"))?;
            println!("removed {name}");
            Ok(())
        }
        ClusterCmd::Leave => {
            let s = c.get("/cluster/status")?;
            let me = s["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["local"] == true))
                .and_then(|n| n["name"].as_str())
                .context("the server did not say which node it is")?
                .to_string();
            c.delete(&format!("/cluster/nodes/{me}"))?;
            println!("{me} left the cluster; stop its daemon now");
            Ok(())
        }
        ClusterCmd::ImportCorosync { path } => {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let c = c.post("/cluster/corosync", &json!({ "config": text }))?;
            println!(
                "imported cluster {:?}: {} nodes",
                c["cluster_name"].as_str().unwrap_or(""),
                c["nodes"].as_array().map(|n| n.len()).unwrap_or(0)
            );
            Ok(())
        }
        ClusterCmd::RotateCa { no_wait, timeout } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(parse_ttl(&timeout)?);
            let r = c.post("/cluster/ca/rotate", &json!({}))?;
            let new = r["fingerprint"].as_str().context("no fingerprint in the reply")?.to_string();
            println!("new CA {new}; the previous CA stays trusted until every member renewed");
            if no_wait {
                return Ok(());
            }
            let mut last = String::new();
            loop {
                // Members swap certificates during the roll: a poll may briefly fail; keep
                // asking until the deadline.
                let s = match c.reopen().and_then(|c| c.get("/cluster/ca")) {
                    Ok(s) => s,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("(retrying: {e})");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if s["rotating"] != true && s["fingerprint"] == new.as_str() {
                    println!("done: every member holds a certificate from the new CA; the old CA is no longer trusted");
                    return Ok(());
                }
                let pending: Vec<&str> = s["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["current_ca"] != true || m["confirmed"] != true)
                    .filter_map(|m| m["name"].as_str())
                    .collect();
                let line = format!("waiting for: {}", pending.join(", "));
                if std::time::Instant::now() >= deadline {
                    bail!("the CA roll has not completed yet ({line}); it goes on in the background");
                }
                if line != last {
                    println!("{line}");
                    last = line;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        ClusterCmd::Token(TokenCmd::Create { ttl }) => {
            let r = c.post("/cluster/tokens", &json!({ "ttl_s": parse_ttl(&ttl)? }))?;
            println!("{}", r["token"].as_str().context("no token in the reply")?);
            Ok(())
        }
        ClusterCmd::Token(TokenCmd::List) => {
            let list = c.get("/cluster/tokens")?;
            println!("{:<14} {:<8} {:<8} USED BY", "ID", "EXPIRED", "REVOKED");
            for t in list.as_array().into_iter().flatten() {
                println!(
                    "{:<14} {:<8} {:<8} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["expired"] == true,
                    t["revoked"] == true,
                    t["used_by"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        ClusterCmd::Token(TokenCmd::Revoke { id }) => {
            let r: Value = c.delete(&format!("/cluster/tokens/{id}"))?;
            println!("revoked {}", r["id"].as_str().unwrap_or(&id));
            Ok(())
        }
    }
}

/// `horcrux quorumtool -s`: the same sections and fields as `corosync-quorumtool -s`.
pub fn quorumtool(c: &ApiClient, status: bool) -> anyhow::Result<()> {
    if !status {
        bail!("only -s is supported: horcrux quorumtool -s");
    }
    let v: horcrux_raft::corosync::QuorumView = serde_json::from_value(c.get("/cluster/quorum")?)?;
    print!("{}", horcrux_raft::corosync::render_quorumtool_s(&v));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl_units() {
        assert_eq!(super::parse_ttl("90").unwrap(), 90);
        assert_eq!(super::parse_ttl("30m").unwrap(), 1800);
        assert_eq!(super::parse_ttl("1h").unwrap(), 3600);
        assert_eq!(super::parse_ttl("2d").unwrap(), 172_800);
        assert!(super::parse_ttl("0s").is_err());
        assert!(super::parse_ttl("soon").is_err());
    }
}
