//! `horcrux ha ...`: ha-manager-like commands over the API.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum HaCmd {
    /// The manager, each node's lease and each resource's state.
    Status,
    /// Make a guest an HA resource (`vm:ID`).
    Add {
        sid: String,
        /// started, stopped, disabled or ignored.
        #[arg(long, default_value = "started")]
        state: String,
        #[arg(long)]
        max_restart: Option<u32>,
        #[arg(long)]
        max_relocate: Option<u32>,
        /// Do not move back to a preferred node when it returns.
        #[arg(long)]
        no_failback: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Change an HA resource's requested state.
    Set {
        sid: String,
        #[arg(long)]
        state: String,
    },
    /// Remove a guest from HA (it keeps running or stays stopped as it is).
    Remove { sid: String },
    /// Move a resource to another node (stop, move, start).
    Relocate { sid: String, node: String },
    /// Where a resource would go now, with the reasons.
    Placement { sid: String },
    /// HA rules (Proxmox VE 9: node-affinity, resource-affinity).
    #[command(subcommand)]
    Rule(RuleCmd),
}

#[derive(Subcommand)]
pub enum RuleCmd {
    /// List the rules.
    List,
    /// Create a rule.
    Add {
        name: String,
        /// node-affinity or resource-affinity.
        #[arg(long = "type")]
        kind: String,
        /// Resources, as vm:100,vm:101.
        #[arg(long)]
        resources: String,
        /// node-affinity: nodes with priorities, as h1:2,h2.
        #[arg(long)]
        nodes: Option<String>,
        /// node-affinity: only these nodes (otherwise a preference).
        #[arg(long)]
        strict: bool,
        /// resource-affinity: positive (together) or negative (apart).
        #[arg(long)]
        affinity: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Delete a rule.
    Remove { name: String },
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn status(c: &ApiClient) -> anyhow::Result<()> {
    let s = c.get("/cluster/ha/status")?;
    let quorum = if s["quorate"].as_bool() == Some(true) { "OK" } else { "NO QUORUM" };
    println!("quorum {quorum}");
    println!(
        "master {} (lease {} ms, margin {} ms)",
        s["manager"]["node"].as_str().unwrap_or("?"),
        s["lease_ms"],
        s["margin_ms"]
    );
    for n in s["nodes"].as_array().into_iter().flatten() {
        println!(
            "lrm {} ({}, lease {} ms left)",
            n["name"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["lease_remaining_ms"]
        );
    }
    for r in s["resources"].as_array().into_iter().flatten() {
        println!(
            "service {} ({}, {}; requested {})",
            r["sid"].as_str().unwrap_or("?"),
            r["node"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["request_state"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

pub fn run_ha(c: &ApiClient, cmd: HaCmd) -> anyhow::Result<()> {
    match cmd {
        HaCmd::Status => status(c),
        HaCmd::Add { sid, state, max_restart, max_relocate, no_failback, comment } => {
            let mut body = json!({ "sid": sid, "state": state, "failback": !no_failback });
            if let Some(n) = max_restart {
                body["max_restart"] = json!(n);
            }
            if let Some(n) = max_relocate {
                body["max_relocate"] = json!(n);
            }
            if let Some(cm) = comment {
                body["comment"] = json!(cm);
            }
            c.post("/cluster/ha/resources", &body).context("adding the HA resource")?;
            println!("{sid} added");
            Ok(())
        }
        HaCmd::Set { sid, state } => {
            c.put(&format!("/cluster/ha/resources/{sid}"), &json!({ "state": state }))?;
            println!("{sid} requested {state}");
            Ok(())
        }
        HaCmd::Remove { sid } => {
            c.delete(&format!("/cluster/ha/resources/{sid}"))?;
            println!("{sid} removed");
            Ok(())
        }
        HaCmd::Relocate { sid, node } => {
            c.post(&format!("/cluster/ha/resources/{sid}/relocate"), &json!({ "node": node }))?;
            println!("{sid} relocating to {node}");
            Ok(())
        }
        HaCmd::Placement { sid } => {
            let d = c.get(&format!("/cluster/ha/placement?sid={sid}"))?;
            for line in d["explanation"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            Ok(())
        }
        HaCmd::Rule(RuleCmd::List) => print(&c.get("/cluster/ha/rules")?),
        HaCmd::Rule(RuleCmd::Add { name, kind, resources, nodes, strict, affinity, comment }) => {
            let mut body = json!({ "rule": name, "type": kind, "resources": resources });
            if let Some(n) = nodes {
                body["nodes"] = json!(n);
                body["strict"] = json!(strict);
            } else if strict {
                anyhow::bail!("--strict is for node-affinity rules (with --nodes)");
            }
            if let Some(a) = affinity {
                body["affinity"] = json!(a);
            }
            if let Some(cm) = comment {
                body["comment"] = json!(cm);
            }
            c.post("/cluster/ha/rules", &body).context("creating the rule")?;
            println!("rule {name} created");
            Ok(())
        }
        HaCmd::Rule(RuleCmd::Remove { name }) => {
            c.delete(&format!("/cluster/ha/rules/{name}"))?;
            println!("rule {name} removed");
            Ok(())
        }
    }
}
