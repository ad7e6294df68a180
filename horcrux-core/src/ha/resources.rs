//! HA resources as Proxmox's ha-manager keeps them: what the user asks for (`resources.cfg`:
//! the requested `state`, `max_restart`, `max_relocate`, `failback`) and where the manager
//! has got to (its service status: `state`, `failed_nodes`), both in the replicated state,
//! changed only by committed entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ValidationError;

/// The state a user asks for (`enabled` is an alias of `started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "lowercase")]
pub enum RequestedState {
    Started,
    Stopped,
    /// Stopped, and the way out of `error`.
    Disabled,
    /// The manager leaves the guest alone (as if it were not HA).
    Ignored,
}

impl RequestedState {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        Ok(match s {
            "started" | "enabled" => Self::Started,
            "stopped" => Self::Stopped,
            "disabled" => Self::Disabled,
            "ignored" => Self::Ignored,
            _ => {
                return Err(ValidationError::new(
                    field,
                    format!("{s:?}: must be started, stopped, enabled, disabled or ignored"),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Stopped => "stopped",
            Self::Disabled => "disabled",
            Self::Ignored => "ignored",
        }
    }
}

/// One committed change of an HA resource's service state or node: the failover history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaEvent {
    /// When the manager proposed it (its wall clock, milliseconds since the epoch).
    pub ts_ms: u64,
    /// The log index it was committed at.
    pub index: u64,
    pub sid: String,
    pub from: ServiceState,
    pub to: ServiceState,
    /// The guest's node before and after.
    pub from_node: String,
    pub node: String,
}
crate::evolving!(HaEvent { ts_ms, index, sid, from, to, from_node, node });

/// How many HA events the state keeps (oldest dropped first).
pub const HA_HISTORY: usize = 200;

/// The manager's view of a resource (Proxmox's service states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Started,
    RequestStop,
    Stopped,
    /// Its node's lease ran out: the node's fence has stopped it; it is to be recovered.
    Fence,
    /// Fenced, waiting for a node that can take it.
    Recovery,
    Migrate,
    Relocate,
    Freeze,
    /// Failed to start on every node it may run on; left only through `disabled`.
    Error,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::RequestStop => "request_stop",
            Self::Stopped => "stopped",
            Self::Fence => "fence",
            Self::Recovery => "recovery",
            Self::Migrate => "migrate",
            Self::Relocate => "relocate",
            Self::Freeze => "freeze",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaResource {
    /// `vm:VMID` (`ct:VMID` once containers exist).
    pub sid: String,
    pub state: RequestedState,
    /// Failed starts retried on the same node before relocating.
    pub max_restart: u32,
    /// Relocations after failed starts before `error`.
    pub max_relocate: u32,
    /// Go back to a higher-priority node of its node-affinity rule when one comes online.
    pub failback: bool,
    pub comment: String,
    pub service: ServiceState,
    /// Where a relocation or migration is taking it.
    pub target: Option<String>,
    /// Nodes it failed to start on (relocations after failed starts).
    pub failed_nodes: Vec<String>,
    /// Failed starts on its current node.
    pub restarts: u32,
    /// Log index of the last change; the manager's transitions are compare-and-set on it.
    pub revision: u64,
}
crate::evolving!(HaResource {
    sid,
    state,
    max_restart,
    max_relocate,
    failback,
    comment,
    service,
    target,
    failed_nodes,
    restarts,
    revision
});

/// Proxmox's defaults.
pub const MAX_RESTART_DEFAULT: u32 = 1;
pub const MAX_RELOCATE_DEFAULT: u32 = 1;
/// Proxmox's schema bounds for both limits.
pub const MAX_RETRIES: u32 = 10;

/// The guest an HA resource id names, if it is a VM (`vm:ID`).
pub fn vmid_of(sid: &str) -> Option<u32> {
    sid.strip_prefix("vm:")?.parse().ok()
}

/// The HA resource id of VM `vmid`.
pub fn vm_sid(vmid: u32) -> String {
    format!("vm:{vmid}")
}

/// Accepts a bare VMID as Proxmox does (`100` = `vm:100`) and checks the id; containers are
/// refused until they exist.
pub fn normalize_sid(field: &str, sid: &str) -> Result<String, ValidationError> {
    let sid = if sid.bytes().all(|b| b.is_ascii_digit()) && !sid.is_empty() {
        format!("vm:{sid}")
    } else {
        sid.to_string()
    };
    super::rules::validate_sid(field, &sid)?;
    if sid.starts_with("ct:") {
        return Err(ValidationError::new(field, "containers are not supported yet; only vm:VMID"));
    }
    Ok(sid)
}

/// The cluster options the HA manager reads, with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaOptions {
    pub lease_ms: u64,
    pub margin_ms: u64,
    pub crs: super::placement::Crs,
    pub rebalance_on_start: bool,
    /// Nodes whose loss every HA guest must survive (0: no admission control).
    pub tolerate: u32,
}

pub const LEASE_OPTION: &str = "ha.lease";
pub const MARGIN_OPTION: &str = "ha.margin";
pub const TOLERATE_OPTION: &str = "ha.tolerate";
pub const CRS_OPTION: &str = "crs";
pub const LEASE_DEFAULT_MS: u64 = 4_000;
pub const MARGIN_DEFAULT_MS: u64 = 2_000;
/// The clock-rate drift the margin must cover, per mille (1%; `docs/ha.md`).
pub const DRIFT_PER_MILLE: u64 = 10;

impl Default for HaOptions {
    fn default() -> Self {
        HaOptions {
            lease_ms: LEASE_DEFAULT_MS,
            margin_ms: MARGIN_DEFAULT_MS,
            crs: super::placement::Crs::Basic,
            rebalance_on_start: false,
            tolerate: 0,
        }
    }
}

/// A duration option in seconds, with decimals (`4`, `2.5`), as milliseconds.
fn parse_seconds(field: &str, v: &str, lo_ms: u64, hi_ms: u64) -> Result<u64, ValidationError> {
    let secs: f64 =
        v.parse().map_err(|_| ValidationError::new(field, format!("{v:?} is not a number of seconds")))?;
    let ms = (secs * 1000.0).round();
    if !(lo_ms as f64..=hi_ms as f64).contains(&ms) {
        return Err(ValidationError::new(
            field,
            format!("{v} s is out of range ({} to {} s)", lo_ms as f64 / 1000.0, hi_ms as f64 / 1000.0),
        ));
    }
    Ok(ms as u64)
}

/// Proxmox's `crs` option: `ha=basic|static[,ha-rebalance-on-start=0|1]`.
fn parse_crs(v: &str) -> Result<(super::placement::Crs, bool), ValidationError> {
    use super::placement::Crs;
    let (mut crs, mut rebalance) = (Crs::Basic, false);
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("ha", "basic")) => crs = Crs::Basic,
            Some(("ha", "static")) => crs = Crs::Static,
            Some(("ha-rebalance-on-start", b @ ("0" | "1"))) => rebalance = b == "1",
            _ => {
                return Err(ValidationError::new(
                    CRS_OPTION,
                    format!("{part:?}: expected ha=basic|static or ha-rebalance-on-start=0|1"),
                ))
            }
        }
    }
    Ok((crs, rebalance))
}

impl HaOptions {
    /// Reads the options; a value `check_option` would refuse falls back to the default.
    pub fn from_options(options: &BTreeMap<String, String>) -> Self {
        let mut o = HaOptions::default();
        if let Some(ms) =
            options.get(LEASE_OPTION).and_then(|v| parse_seconds(LEASE_OPTION, v, 1_000, 60_000).ok())
        {
            o.lease_ms = ms;
        }
        if let Some(ms) =
            options.get(MARGIN_OPTION).and_then(|v| parse_seconds(MARGIN_OPTION, v, 100, 60_000).ok())
        {
            o.margin_ms = ms;
        }
        if o.margin_ms < min_margin_ms(o.lease_ms) {
            o.margin_ms = MARGIN_DEFAULT_MS.max(min_margin_ms(o.lease_ms));
        }
        if let Some((crs, r)) = options.get(CRS_OPTION).and_then(|v| parse_crs(v).ok()) {
            o.crs = crs;
            o.rebalance_on_start = r;
        }
        if let Some(n) = options.get(TOLERATE_OPTION).and_then(|v| v.parse().ok()) {
            o.tolerate = n;
        }
        o
    }
}

/// The smallest safe margin for a lease: `M >= 2ρL / (1 - ρ)` (`docs/ha.md`), rounded up.
pub fn min_margin_ms(lease_ms: u64) -> u64 {
    (2 * DRIFT_PER_MILLE * lease_ms).div_ceil(1000 - DRIFT_PER_MILLE)
}

/// Checks an HA cluster option as `SetClusterOption` is applied, given the other options
/// (the margin must cover the lease's drift). `None`: not an HA option.
pub fn check_option(
    options: &BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> Option<Result<(), ValidationError>> {
    let lease_of = |o: &BTreeMap<String, String>| {
        o.get(LEASE_OPTION)
            .and_then(|v| parse_seconds(LEASE_OPTION, v, 1_000, 60_000).ok())
            .unwrap_or(LEASE_DEFAULT_MS)
    };
    let margin_of = |o: &BTreeMap<String, String>| {
        o.get(MARGIN_OPTION)
            .and_then(|v| parse_seconds(MARGIN_OPTION, v, 100, 60_000).ok())
            .unwrap_or(MARGIN_DEFAULT_MS)
    };
    let check = || -> Result<(), ValidationError> {
        let mut next = options.clone();
        if value.is_empty() {
            next.remove(key);
        } else {
            next.insert(key.to_string(), value.to_string());
        }
        match key {
            LEASE_OPTION if !value.is_empty() => drop(parse_seconds(key, value, 1_000, 60_000)?),
            MARGIN_OPTION if !value.is_empty() => drop(parse_seconds(key, value, 100, 60_000)?),
            CRS_OPTION => drop(parse_crs(value)?),
            TOLERATE_OPTION if !value.is_empty() && !value.parse::<u32>().is_ok_and(|n| n <= 16) => {
                return Err(ValidationError::new(key, "a number of nodes, 0 to 16"));
            }
            _ => {}
        }
        let (lease, margin) = (lease_of(&next), margin_of(&next));
        if matches!(key, LEASE_OPTION | MARGIN_OPTION) && margin < min_margin_ms(lease) {
            return Err(ValidationError::new(
                key,
                format!(
                    "a margin of {margin} ms does not cover a {lease} ms lease's clock drift (at least {} ms)",
                    min_margin_ms(lease)
                ),
            ));
        }
        Ok(())
    };
    matches!(key, LEASE_OPTION | MARGIN_OPTION | CRS_OPTION | TOLERATE_OPTION).then(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_and_states_parse_as_proxmox_writes_them() {
        assert_eq!(normalize_sid("sid", "100").unwrap(), "vm:100");
        assert_eq!(normalize_sid("sid", "vm:101").unwrap(), "vm:101");
        assert!(normalize_sid("sid", "ct:101").unwrap_err().to_string().contains("containers"));
        assert_eq!(normalize_sid("sid", "vm:1").unwrap_err().field, "sid");
        assert_eq!(RequestedState::parse("state", "enabled").unwrap(), RequestedState::Started);
        assert_eq!(RequestedState::parse("state", "on").unwrap_err().field, "state");
        assert_eq!(vmid_of("vm:301"), Some(301));
    }

    #[test]
    fn options_keep_the_margin_above_the_drift_bound() {
        let o = HaOptions::from_options(&BTreeMap::new());
        assert_eq!((o.lease_ms, o.margin_ms), (4_000, 2_000));
        assert_eq!(min_margin_ms(4_000), 81);
        let mut opts = BTreeMap::new();
        assert!(check_option(&opts, LEASE_OPTION, "3.5").unwrap().is_ok());
        assert!(check_option(&opts, "keyboard", "de").is_none());
        assert_eq!(check_option(&opts, LEASE_OPTION, "0.5").unwrap().unwrap_err().field, LEASE_OPTION);
        opts.insert(LEASE_OPTION.to_string(), "60".to_string());
        let e = check_option(&opts, MARGIN_OPTION, "1").unwrap().unwrap_err();
        assert!(e.to_string().contains("drift"), "{e}");
        assert!(check_option(&opts, MARGIN_OPTION, "2").unwrap().is_ok());
        assert!(check_option(&opts, CRS_OPTION, "ha=static,ha-rebalance-on-start=1").unwrap().is_ok());
        assert!(check_option(&opts, CRS_OPTION, "ha=fancy").unwrap().is_err());
        opts.insert(CRS_OPTION.to_string(), "ha=static,ha-rebalance-on-start=1".to_string());
        let o = HaOptions::from_options(&opts);
        assert_eq!(
            (o.crs, o.rebalance_on_start, o.lease_ms),
            (super::super::placement::Crs::Static, true, 60_000)
        );
    }
}
