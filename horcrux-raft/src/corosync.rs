//! The Corosync compatibility shim: reads `corosync.conf` (nodelist, quorum, totem) to seed
//! membership, and renders `corosync-quorumtool -s` output from the Raft membership with
//! votequorum's rules (expected votes, two_node, wait_for_all).

use serde::{Deserialize, Serialize};

pub use horcrux_core::{CorosyncConfig, CorosyncLink, CorosyncNode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corosync.conf line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn perr(line: usize, message: impl Into<String>) -> ParseError {
    ParseError { line, message: message.into() }
}

/// One `{ ... }` section: its name, the line it opened on, its key/values and subsections.
#[derive(Debug, Default)]
struct Section {
    name: String,
    line: usize,
    values: Vec<(String, String, usize)>,
    children: Vec<Section>,
}

impl Section {
    fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.values.iter().rev().find(|(k, _, _)| k == key).map(|(_, v, l)| (v.as_str(), *l))
    }
    fn child(&self, name: &str) -> Option<&Section> {
        self.children.iter().find(|c| c.name == name)
    }
}

fn parse_sections(text: &str) -> Result<Section, ParseError> {
    let mut stack = vec![Section { name: "<top>".into(), ..Default::default() }];
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_suffix('{') {
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(perr(line_no, format!("bad section name {name:?}")));
            }
            stack.push(Section { name: name.into(), line: line_no, ..Default::default() });
        } else if line == "}" {
            if stack.len() < 2 {
                return Err(perr(line_no, "'}' without an open section"));
            }
            let done = stack.pop().ok_or_else(|| perr(line_no, "unbalanced braces"))?;
            stack.last_mut().ok_or_else(|| perr(line_no, "unbalanced braces"))?.children.push(done);
        } else if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(perr(line_no, format!("bad key {k:?}")));
            }
            stack.last_mut().ok_or_else(|| perr(line_no, "unbalanced braces"))?.values.push((
                k.into(),
                v.into(),
                line_no,
            ));
        } else {
            return Err(perr(line_no, format!("expected 'key: value', 'name {{' or '}}', got {line:?}")));
        }
    }
    if stack.len() != 1 {
        let open = stack.last().map(|s| (s.name.clone(), s.line)).unwrap_or_default();
        return Err(perr(open.1, format!("section {} is never closed", open.0)));
    }
    stack.pop().ok_or_else(|| perr(0, "empty"))
}

fn parse_u32(v: &str, line: usize, key: &str) -> Result<u32, ParseError> {
    v.parse().map_err(|_| perr(line, format!("{key}: {v:?} is not a number")))
}

fn parse_bool(v: &str, line: usize, key: &str) -> Result<bool, ParseError> {
    match v {
        "1" | "yes" | "on" => Ok(true),
        "0" | "no" | "off" => Ok(false),
        _ => Err(perr(line, format!("{key}: {v:?} is not 0 or 1"))),
    }
}

pub fn parse(text: &str) -> Result<CorosyncConfig, ParseError> {
    let top = parse_sections(text)?;
    let totem = top.child("totem").ok_or_else(|| perr(1, "no totem section"))?;
    let cluster_name = totem.get("cluster_name").map(|(v, _)| v.to_string()).unwrap_or_default();
    let nodelist = top.child("nodelist").ok_or_else(|| perr(1, "no nodelist section"))?;
    let mut nodes = Vec::new();
    for n in nodelist.children.iter() {
        if n.name != "node" {
            return Err(perr(n.line, format!("unexpected section {} in nodelist", n.name)));
        }
        let (nodeid, l) = n.get("nodeid").ok_or_else(|| perr(n.line, "node without nodeid"))?;
        let nodeid = parse_u32(nodeid, l, "nodeid")?;
        if nodeid == 0 {
            return Err(perr(l, "nodeid must be positive"));
        }
        let ring0_addr =
            n.get("ring0_addr").ok_or_else(|| perr(n.line, "node without ring0_addr"))?.0.to_string();
        let name = n.get("name").map(|(v, _)| v.to_string()).unwrap_or_else(|| ring0_addr.clone());
        let quorum_votes = match n.get("quorum_votes") {
            Some((v, l)) => parse_u32(v, l, "quorum_votes")?,
            None => 1,
        };
        if nodes.iter().any(|o: &CorosyncNode| o.nodeid == nodeid || o.name == name) {
            return Err(perr(n.line, format!("duplicate node {name} / nodeid {nodeid}")));
        }
        // knet has up to 8 links, each node's address on link N in ringN_addr.
        let mut links = Vec::new();
        for link in 0..8u8 {
            if let Some((addr, _)) = n.get(&format!("ring{link}_addr")) {
                links.push(CorosyncLink { link, addr: addr.to_string() });
            }
        }
        nodes.push(CorosyncNode { name, nodeid, ring0_addr, quorum_votes, links });
    }
    if nodes.is_empty() {
        return Err(perr(nodelist.line, "the nodelist has no node"));
    }
    let quorum = top.child("quorum");
    let get = |k: &str| quorum.and_then(|q| q.get(k));
    let expected_votes = get("expected_votes").map(|(v, l)| parse_u32(v, l, "expected_votes")).transpose()?;
    let two_node = get("two_node").map(|(v, l)| parse_bool(v, l, "two_node")).transpose()?.unwrap_or(false);
    let wait_for_all = get("wait_for_all").map(|(v, l)| parse_bool(v, l, "wait_for_all")).transpose()?;
    if let Some((p, l)) = get("provider") {
        if p != "corosync_votequorum" {
            return Err(perr(l, format!("quorum provider {p} is not supported (corosync_votequorum is)")));
        }
    }
    Ok(CorosyncConfig { cluster_name, nodes, expected_votes, two_node, wait_for_all })
}

/// The addresses a member with Raft address `raft_addr` (`HOST:PORT`) is also reachable at:
/// each of its corosync links' address with the same port, other than the Raft one.
pub fn link_addrs(raft_addr: &str, links: &[CorosyncLink]) -> Vec<String> {
    let Some((host, port)) = raft_addr.rsplit_once(':') else { return Vec::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    links
        .iter()
        .map(|l| l.addr.trim())
        .filter(|a| !a.is_empty() && *a != host)
        .map(|a| if a.contains(':') { format!("[{a}]:{port}") } else { format!("{a}:{port}") })
        .collect()
}

/// One member as `corosync-quorumtool` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumMember {
    pub nodeid: u32,
    pub votes: u32,
    pub name: String,
    pub local: bool,
}

/// Everything `corosync-quorumtool -s` prints, computed with votequorum's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumView {
    pub date_unix: u64,
    pub node_id: u32,
    pub ring_id: String,
    pub expected_votes: u32,
    pub highest_expected: u32,
    pub total_votes: u32,
    pub quorum: u32,
    pub quorate: bool,
    pub two_node: bool,
    pub wait_for_all: bool,
    /// Members currently online, by nodeid.
    pub members: Vec<QuorumMember>,
}

/// Votequorum parameters for a membership.
#[derive(Debug, Clone, Copy)]
pub struct Votequorum {
    /// Configured expected votes, or the sum of all members' votes.
    pub expected_votes: u32,
    pub two_node: bool,
    pub wait_for_all: bool,
}

impl Votequorum {
    pub fn from_config(c: &CorosyncConfig) -> Self {
        let sum: u32 = c.nodes.iter().map(|n| n.quorum_votes).sum();
        let expected_votes = c.expected_votes.unwrap_or(sum);
        // two_node only applies to exactly two votes, and turns wait_for_all on by default.
        let two_node = c.two_node && expected_votes == 2;
        Self { expected_votes, two_node, wait_for_all: c.wait_for_all.unwrap_or(two_node) }
    }

    /// The whole `corosync-quorumtool -s` view for the `members` online (sorted by the
    /// caller), as seen by `node_id` at `date_unix`.
    pub fn view(
        &self,
        members: Vec<QuorumMember>,
        all_seen: bool,
        date_unix: u64,
        node_id: u32,
        ring_id: String,
    ) -> QuorumView {
        let total: u32 = members.iter().map(|m| m.votes).sum();
        let (quorum, quorate) = self.evaluate(total, all_seen);
        QuorumView {
            date_unix,
            node_id,
            ring_id,
            expected_votes: self.expected_votes,
            highest_expected: self.expected_votes.max(total),
            total_votes: total,
            quorum,
            quorate,
            two_node: self.two_node,
            wait_for_all: self.wait_for_all,
            members,
        }
    }

    /// Quorum and quorate for `total_votes` online; `all_seen` says whether every node has
    /// been online at once since start (what wait_for_all waits for).
    pub fn evaluate(&self, total_votes: u32, all_seen: bool) -> (u32, bool) {
        let highest = self.expected_votes.max(total_votes);
        let quorum = if self.two_node { 1 } else { highest / 2 + 1 };
        let quorate = total_votes >= quorum && (!self.wait_for_all || all_seen);
        (quorum, quorate)
    }
}

/// `Fri Nov 27 00:26:22 2026`, as ctime(3) writes it (UTC).
pub fn ctime(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(month - 1) as usize],
        day,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        year
    )
}

/// Renders the view exactly as `corosync-quorumtool -s` does.
pub fn render_quorumtool_s(v: &QuorumView) -> String {
    let mut o = String::from("Quorum information\n------------------\n");
    let kv = |o: &mut String, label: &str, value: String| o.push_str(&format!("{:<18}{}\n", label, value));
    kv(&mut o, "Date:", ctime(v.date_unix));
    kv(&mut o, "Quorum provider:", "corosync_votequorum".into());
    kv(&mut o, "Nodes:", v.members.len().to_string());
    kv(&mut o, "Node ID:", v.node_id.to_string());
    kv(&mut o, "Ring ID:", v.ring_id.clone());
    kv(&mut o, "Quorate:", if v.quorate { "Yes" } else { "No" }.into());
    o.push_str("\nVotequorum information\n----------------------\n");
    kv(&mut o, "Expected votes:", v.expected_votes.to_string());
    kv(&mut o, "Highest expected:", v.highest_expected.to_string());
    kv(&mut o, "Total votes:", v.total_votes.to_string());
    kv(&mut o, "Quorum:", format!("{}{}", v.quorum, if v.quorate { "  " } else { " Activity blocked" }));
    let mut flags = String::new();
    for (on, word) in [(v.two_node, "2Node"), (v.quorate, "Quorate"), (v.wait_for_all, "WaitForAll")] {
        if on {
            flags.push_str(word);
            flags.push(' ');
        }
    }
    kv(&mut o, "Flags:", flags);
    o.push_str("\nMembership information\n----------------------\n");
    o.push_str("    Nodeid      Votes Name\n");
    for m in &v.members {
        o.push_str(&format!(
            "{:>10} {:>10} {}{}\n",
            m.nodeid,
            m.votes,
            m.name,
            if m.local { " (local)" } else { "" }
        ));
    }
    o
}

#[cfg(test)]
mod tests;
