//! The replicated state machine: `ClusterState::apply` validates a command against the
//! current state and applies it, or refuses it and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{ApplyError, ApplyOk, Command, Request};
use crate::ids::{self, ValidationError, VMID_MAX, VMID_MIN};
use crate::model::*;
use crate::storage::StoragePool;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub storage: BTreeMap<String, StoragePool>,
    pub guests: BTreeMap<u32, Guest>,
    pub api_tokens: BTreeMap<String, ApiToken>,
    #[serde(default)]
    pub cluster_ca: Option<ClusterCaRecord>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Raft node ids are handed out here, in log order, so concurrent joins never collide.
    /// Node 1 is the node that initialised the cluster.
    #[serde(default = "first_joined_node_id")]
    pub next_node_id: u64,
    #[serde(default)]
    pub corosync: Option<CorosyncConfig>,
    /// Cluster-wide options (datacenter.cfg).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub acl: Vec<crate::access::AclEntry>,
    #[serde(default)]
    pub realms: BTreeMap<String, RealmConfig>,
    /// Custom roles (the built-in ones are in `access::builtin_roles`).
    #[serde(default)]
    pub roles: BTreeMap<String, std::collections::BTreeSet<String>>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub ticket_keys: Option<TicketKeys>,
    /// Each member's transport certificate (by Raft node id): the only certificates the
    /// cluster transport accepts.
    #[serde(default)]
    pub member_certs: BTreeMap<u64, MemberCert>,
    /// Per proposing client, the results of its latest requests (see `Request::id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sessions: BTreeMap<u64, ClientSession>,
    /// HA resources by id (`vm:100`), with the manager's service status.
    #[serde(default)]
    pub ha_resources: BTreeMap<String, crate::ha::resources::HaResource>,
    /// HA rules by id.
    #[serde(default)]
    pub ha_rules: BTreeMap<String, crate::ha::rules::Rule>,
    /// Guest architectures registered beyond the built-in ones (`crate::arch`), by name.
    #[serde(default)]
    pub architectures: BTreeMap<String, crate::arch::Architecture>,
    /// The latest HA service-state changes and moves, oldest first (at most
    /// `ha::resources::HA_HISTORY`).
    #[serde(default)]
    pub ha_history: std::collections::VecDeque<crate::ha::resources::HaEvent>,
}
crate::evolving!(ClusterState {
    nodes,
    storage,
    guests,
    api_tokens,
    cluster_ca,
    join_tokens,
    next_node_id,
    corosync,
    options,
    users,
    acl,
    realms,
    roles,
    groups,
    pools,
    ticket_keys,
    member_certs,
    sessions
} added {
    ha_resources: BTreeMap::new(),
    ha_rules: BTreeMap::new(),
    architectures: BTreeMap::new(),
    ha_history: std::collections::VecDeque::new(),
});

/// Results kept per client: enough for every request a node can have in flight at once.
pub const SESSION_WINDOW: usize = 1024;
/// A client not heard from for this long (by its requests' timestamps) is forgotten.
pub const SESSION_TTL_MS: u64 = 3_600_000;

/// One proposing client's latest requests and what they answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub last_ts_ms: u64,
    pub results: BTreeMap<u64, Result<ApplyOk, ApplyError>>,
}
crate::evolving!(ClientSession { last_ts_ms, results });

fn first_joined_node_id() -> u64 {
    2
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            storage: BTreeMap::new(),
            guests: BTreeMap::new(),
            api_tokens: BTreeMap::new(),
            cluster_ca: None,
            join_tokens: BTreeMap::new(),
            next_node_id: first_joined_node_id(),
            corosync: None,
            options: BTreeMap::new(),
            users: BTreeMap::new(),
            acl: Vec::new(),
            realms: BTreeMap::new(),
            roles: BTreeMap::new(),
            groups: BTreeMap::new(),
            pools: BTreeMap::new(),
            ticket_keys: None,
            member_certs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            ha_resources: BTreeMap::new(),
            ha_rules: BTreeMap::new(),
            architectures: BTreeMap::new(),
            ha_history: std::collections::VecDeque::new(),
        }
    }
}

pub(super) fn check_revision(vmid: u32, expected: Option<u64>, actual: u64) -> Result<(), ApplyError> {
    match expected {
        Some(e) if e != actual => Err(ApplyError::Conflict {
            message: format!("guest {vmid} changed: revision is {actual}, request expected {e}"),
        }),
        _ => Ok(()),
    }
}

const MAX_OPTION_BYTES: usize = 64 * 1024;

/// The cluster option bounding how long a login lasts through ticket renewals (seconds).
pub const TICKET_MAX_AGE_OPTION: &str = "ticket-max-age";
/// The cluster option: how many finished tasks each node keeps.
pub const TASK_HISTORY_OPTION: &str = "task-history";
/// Its default: a day, after which the user logs in again.
pub const TICKET_MAX_AGE_DEFAULT_S: u64 = 86_400;

fn check_hex_sha256(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be 64 lower-case hex digits"))
    }
}

fn check_ca_pems(cert_pem: &str, key_pem: &str) -> Result<(), ValidationError> {
    if !cert_pem.contains("BEGIN CERTIFICATE") || !key_pem.contains("PRIVATE KEY") {
        return Err(ValidationError::new("cluster_ca", "expected a PEM certificate and key"));
    }
    Ok(())
}

impl ClusterState {
    /// Applies one committed entry at log `index`. Deterministic: the result depends only on
    /// the state, the index and the request. An access-control change an API caller
    /// proposed is first authorized against this state (`authority.rs`).
    ///
    /// A request carrying an id is applied once: committed again (a retry after an unknown
    /// outcome, a duplicated message), it answers the first result and changes nothing.
    pub fn apply(&mut self, index: u64, req: &Request) -> Result<ApplyOk, ApplyError> {
        let Some(id) = req.id else { return self.apply_once(index, req) };
        if let Some(session) = self.sessions.get(&id.client) {
            if let Some(first) = session.results.get(&id.seq) {
                return first.clone();
            }
            let oldest = session.results.keys().next().copied().unwrap_or(0);
            if session.results.len() >= SESSION_WINDOW && id.seq < oldest {
                return Err(ApplyError::Conflict {
                    message: "the request is too old to tell whether it was applied; check and retry".into(),
                });
            }
        }
        let result = self.apply_once(index, req);
        let session = self.sessions.entry(id.client).or_default();
        session.last_ts_ms = session.last_ts_ms.max(req.ts_ms);
        session.results.insert(id.seq, result.clone());
        while session.results.len() > SESSION_WINDOW {
            session.results.pop_first();
        }
        let now = req.ts_ms;
        self.sessions.retain(|_, s| now.saturating_sub(s.last_ts_ms) < SESSION_TTL_MS);
        result
    }

    fn apply_once(&mut self, index: u64, req: &Request) -> Result<ApplyOk, ApplyError> {
        let checked = req.actor.as_ref().filter(|a| !a.is_root() && authority::is_access_change(&req.cmd));
        let Some(actor) = checked else {
            return self.apply_command(index, req);
        };
        self.authorize(actor, &req.cmd)?;
        if matches!(req.cmd, Command::SetPassword { .. } | Command::SetTfa { .. }) {
            // Credentials only: nobody's privileges change.
            return self.apply_command(index, req);
        }
        let mut next = self.clone();
        let ok = next.apply_command(index, req)?;
        self.check_no_gain(&next, actor)?;
        *self = next;
        Ok(ok)
    }

    fn apply_command(&mut self, index: u64, req: &Request) -> Result<ApplyOk, ApplyError> {
        match &req.cmd {
            Command::RegisterNode { name, api_addr } => {
                ids::validate_dns_label("node", name)?;
                if api_addr.is_empty() {
                    return Err(ValidationError::new("api_addr", "must not be empty").into());
                }
                let facts = self.nodes.get(name).map(|n| n.facts.clone()).unwrap_or_default();
                self.nodes.insert(
                    name.clone(),
                    NodeInfo { name: name.clone(), api_addr: api_addr.clone(), revision: index, facts },
                );
            }
            c @ (Command::AddStorage { .. }
            | Command::CreateStorage { .. }
            | Command::UpdateStorage { .. }
            | Command::DeleteStorage { .. }) => self.apply_storage(index, c)?,
            c @ (Command::SetApiToken { .. }
            | Command::DeleteApiToken { .. }
            | Command::CreateUser { .. }
            | Command::UpdateUser { .. }
            | Command::SetPassword { .. }
            | Command::SetTfa { .. }
            | Command::UseTfa { .. }
            | Command::SetRealm { .. }
            | Command::DeleteUser { .. }
            | Command::SetAcl { .. }
            | Command::SetRole { .. }
            | Command::CreateGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::CreatePool { .. }
            | Command::UpdatePool { .. }
            | Command::DeletePool { .. }) => self.apply_access(index, c)?,
            Command::CreateGuest { vmid, name, node, config, pool } => {
                ids::validate_vmid("vmid", *vmid as u64)?;
                if let Some(p) = pool {
                    if !self.pools.contains_key(p) {
                        return Err(ValidationError::new("pool", format!("unknown pool {p:?}")).into());
                    }
                }
                ids::validate_dns_label("name", name)?;
                self.validate_config(*vmid, config)?;
                if !self.nodes.contains_key(node) {
                    return Err(ValidationError::new("node", format!("unknown node {node:?}")).into());
                }
                if self.guests.contains_key(vmid) {
                    return Err(ApplyError::Conflict { message: format!("VMID {vmid} already exists") });
                }
                self.guests.insert(
                    *vmid,
                    Guest {
                        vmid: *vmid,
                        name: name.clone(),
                        node: node.clone(),
                        config: config.clone(),
                        desired: DesiredPower::Stopped { graceful_timeout_s: None },
                        revision: index,
                        created_ms: req.ts_ms,
                        snapshots: Default::default(),
                        parent: None,
                        resume: None,
                    },
                );
                if let Some(p) = pool.as_ref().and_then(|p| self.pools.get_mut(p)) {
                    p.vms.insert(*vmid);
                    p.revision = index;
                }
            }
            Command::UpdateGuest { vmid, expected_revision, name, config } => {
                ids::validate_dns_label("name", name)?;
                self.validate_config(*vmid, config)?;
                let g = self.guest_mut(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                g.name = name.clone();
                g.config = config.clone();
                g.revision = index;
            }
            Command::ReassignDisk { from, from_revision, from_config, to, to_revision, to_config } => {
                if from == to {
                    return Err(ValidationError::new("target-vmid", "the disk's own guest").into());
                }
                check_revision(*from, Some(*from_revision), self.guest(*from)?.revision)?;
                check_revision(*to, Some(*to_revision), self.guest(*to)?.revision)?;
                if self.guest(*from)?.node != self.guest(*to)?.node {
                    return Err(ApplyError::Conflict {
                        message: format!("guests {from} and {to} are on different nodes"),
                    });
                }
                self.validate_config(*from, from_config)?;
                // The target's config is checked with the source's new one in place (a LUN
                // may be in one guest only).
                let old = std::mem::replace(&mut self.guest_mut(*from)?.config, from_config.clone());
                if let Err(e) = self.validate_config(*to, to_config) {
                    self.guest_mut(*from)?.config = old;
                    return Err(e);
                }
                self.guest_mut(*from)?.revision = index;
                let g = self.guest_mut(*to)?;
                g.config = to_config.clone();
                g.revision = index;
            }
            Command::SetDesiredPower { vmid, expected_revision, desired } => {
                let g = self.guest_mut(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                g.desired = *desired;
                g.revision = index;
                // Starting or stopping an HA guest is a request to the HA manager, as
                // `qm start` of an HA guest is in Proxmox: it then keeps it that way.
                self.ha_follow_power(index, *vmid, desired.is_running());
            }
            Command::MigrateGuest { vmid, expected_revision, target } => {
                let g = self.guest(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                if !self.nodes.contains_key(target) {
                    return Err(ValidationError::new("target", format!("unknown node {target:?}")).into());
                }
                if g.node == *target {
                    return Err(ValidationError::new(
                        "target",
                        format!("guest {vmid} is already on {target}"),
                    )
                    .into());
                }
                if g.desired.is_running() {
                    return Err(ApplyError::Conflict {
                        message: format!("guest {vmid} is meant to run; stop it before an offline migration"),
                    });
                }
                if let Some(d) = g.vm_spec().disks.first() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "guest {vmid} has disks on node-local storage {}; moving disks is not supported yet",
                            d.storage
                        ),
                    });
                }
                let g = self.guests.get_mut(vmid).expect("checked above");
                g.node = target.clone();
                g.revision = index;
            }
            Command::DeleteGuest { vmid, expected_revision } => {
                let g = self.guest(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                let sid = crate::ha::resources::vm_sid(*vmid);
                if self.ha_resources.contains_key(&sid) {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "guest {vmid} is HA resource {sid}; remove it from HA first (or purge)"
                        ),
                    });
                }
                if g.desired.is_running() {
                    return Err(ApplyError::Conflict {
                        message: format!("guest {vmid} is running; stop it before deleting it"),
                    });
                }
                self.guests.remove(vmid);
                for p in self.pools.values_mut() {
                    p.vms.remove(vmid);
                }
            }
            c @ (Command::CreateSnapshot { .. }
            | Command::DeleteSnapshot { .. }
            | Command::RollbackSnapshot { .. }
            | Command::SetSnapshotDescription { .. }
            | Command::ClearResume { .. }) => self.apply_snapshot(index, c)?,
            Command::SetClusterCa { cert_pem, key_pem, fingerprint } => {
                if self.cluster_ca.is_some() {
                    return Err(ApplyError::Conflict { message: "the cluster CA is already set".into() });
                }
                check_ca_pems(cert_pem, key_pem)?;
                if !fingerprint.is_empty() {
                    check_hex_sha256("fingerprint", fingerprint)?;
                }
                self.cluster_ca = Some(ClusterCaRecord {
                    cert_pem: cert_pem.clone(),
                    key_pem: key_pem.clone(),
                    fingerprint: fingerprint.clone(),
                    previous_cert_pem: None,
                });
            }
            Command::RotateClusterCa { cert_pem, key_pem, fingerprint } => {
                let Some(current) = &self.cluster_ca else {
                    return Err(ApplyError::Conflict { message: "the cluster has no CA".into() });
                };
                if current.previous_cert_pem.is_some() {
                    return Err(ApplyError::Conflict {
                        message: "a CA rotation is already under way; it ends once every member holds a \
                                  certificate from the new CA"
                            .into(),
                    });
                }
                check_ca_pems(cert_pem, key_pem)?;
                check_hex_sha256("fingerprint", fingerprint)?;
                if *fingerprint == current.fingerprint {
                    return Err(ValidationError::new("fingerprint", "that is the current CA").into());
                }
                self.cluster_ca = Some(ClusterCaRecord {
                    cert_pem: cert_pem.clone(),
                    key_pem: key_pem.clone(),
                    fingerprint: fingerprint.clone(),
                    previous_cert_pem: Some(current.cert_pem.clone()),
                });
            }
            Command::FinishCaRotation => {
                let Some(ca) = &mut self.cluster_ca else {
                    return Err(ApplyError::Conflict { message: "the cluster has no CA".into() });
                };
                if ca.previous_cert_pem.is_none() {
                    return Err(ApplyError::Conflict { message: "no CA rotation is under way".into() });
                }
                let pending: Vec<&str> = self
                    .member_certs
                    .values()
                    .filter(|c| c.ca != ca.fingerprint || c.previous.is_some())
                    .map(|c| c.name.as_str())
                    .collect();
                if !pending.is_empty() {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "members without a confirmed certificate from the new CA: {}",
                            pending.join(", ")
                        ),
                    });
                }
                ca.previous_cert_pem = None;
            }
            Command::CreateJoinToken { id, secret_sha256, expires_ms } => {
                check_hex_sha256("secret_sha256", secret_sha256)?;
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(ValidationError::new("id", "1-64 letters or digits").into());
                }
                if *expires_ms <= req.ts_ms {
                    return Err(ValidationError::new("ttl_s", "the token would be expired already").into());
                }
                if self.join_tokens.contains_key(id) {
                    return Err(ApplyError::Conflict { message: format!("join token {id} exists") });
                }
                // Forget tokens that can no longer be used, so the map does not grow forever.
                self.join_tokens.retain(|_, t| t.expires_ms > req.ts_ms && t.used_by.is_none() && !t.revoked);
                self.join_tokens.insert(
                    id.clone(),
                    JoinToken {
                        id: id.clone(),
                        secret_sha256: secret_sha256.clone(),
                        created_ms: req.ts_ms,
                        expires_ms: *expires_ms,
                        used_by: None,
                        node_id: None,
                        revoked: false,
                    },
                );
            }
            Command::ConsumeJoinToken { id, secret_sha256, node } => {
                self.check_join(id, secret_sha256, node, req.ts_ms)?;
                let t = self.join_tokens.get_mut(id).expect("checked above");
                t.used_by = Some(node.clone());
                t.node_id = Some(self.next_node_id);
                self.next_node_id += 1;
            }
            Command::SetMemberCert { node_id, name, fingerprint, keep_previous, ca } => {
                ids::validate_dns_label("name", name)?;
                check_hex_sha256("fingerprint", fingerprint)?;
                if !ca.is_empty() {
                    check_hex_sha256("ca", ca)?;
                }
                if self.member_by_fingerprint(fingerprint).is_some_and(|id| id != *node_id) {
                    return Err(ApplyError::Conflict {
                        message: "that certificate is another member's".into(),
                    });
                }
                let previous = match (keep_previous, self.member_certs.get(node_id)) {
                    (true, Some(c)) if c.name == *name && c.fingerprint != *fingerprint => {
                        Some(c.fingerprint.clone())
                    }
                    _ => None,
                };
                let cert = MemberCert {
                    name: name.clone(),
                    fingerprint: fingerprint.clone(),
                    previous,
                    ca: ca.clone(),
                };
                self.member_certs.insert(*node_id, cert);
            }
            Command::SetClusterOption { key, value } => {
                if let Some(checked) = crate::ha::resources::check_option(&self.options, key, value) {
                    checked?;
                }
                let key_ok = !key.is_empty()
                    && key.len() <= 64
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !key_ok {
                    return Err(ValidationError::new("key", "1-64 letters, digits, '-', '_' or '.'").into());
                }
                if value.len() > MAX_OPTION_BYTES {
                    return Err(
                        ValidationError::new("value", format!("at most {MAX_OPTION_BYTES} bytes")).into()
                    );
                }
                let range = match key.as_str() {
                    TICKET_MAX_AGE_OPTION => Some((60, 30 * 86_400, "seconds")),
                    TASK_HISTORY_OPTION => Some((1, 1_000_000, "finished tasks per node")),
                    _ => None,
                };
                if let (Some((lo, hi, what)), false) = (range, value.is_empty()) {
                    if !value.parse::<u64>().is_ok_and(|v| (lo..=hi).contains(&v)) {
                        return Err(ValidationError::new("value", format!("{what}, {lo} to {hi}")).into());
                    }
                }
                if value.is_empty() {
                    self.options.remove(key);
                } else {
                    self.options.insert(key.clone(), value.clone());
                }
            }
            Command::RotateTicketKey { secret_hex, replaces } => {
                check_hex_sha256("secret_hex", secret_hex)?;
                let current = self.ticket_keys.as_ref().map(|k| k.current.id);
                if current != *replaces {
                    return Err(ApplyError::Conflict {
                        message: format!("the ticket key changed (now {current:?}, expected {replaces:?})"),
                    });
                }
                let key = TicketKey { id: index, secret_hex: secret_hex.clone(), created_ms: req.ts_ms };
                let previous = self.ticket_keys.take().map(|k| k.current);
                self.ticket_keys = Some(TicketKeys { current: key, previous });
            }
            Command::RemoveNode { name } => {
                if !self.nodes.contains_key(name) {
                    return Err(ApplyError::NotFound { what: format!("node {name}") });
                }
                if let Some(g) = self.guests.values().find(|g| g.node == *name) {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "node {name} still owns guest {}; migrate or delete its guests first",
                            g.vmid
                        ),
                    });
                }
                self.nodes.remove(name);
                // Its transport certificate stops working at once.
                self.member_certs.retain(|_, c| c.name != *name);
            }
            Command::ImportCorosync { config } => {
                if config.nodes.is_empty() {
                    return Err(ValidationError::new("config", "the nodelist has no node").into());
                }
                for n in &config.nodes {
                    ids::validate_dns_label("config", &n.name)?;
                }
                self.corosync = Some(config.clone());
            }
            c @ (Command::ReportNodeFacts { .. }
            | Command::SetHaResource { .. }
            | Command::DeleteHaResource { .. }
            | Command::SetHaRule { .. }
            | Command::DeleteHaRule { .. }
            | Command::HaTransition { .. }
            | Command::HaMove { .. }
            | Command::HaStartFailed { .. }
            | Command::SetArchitecture { .. }
            | Command::DeleteArchitecture { .. }) => self.apply_ha(index, req.ts_ms, c)?,
            Command::RevokeJoinToken { id } => {
                let t = self
                    .join_tokens
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound { what: format!("join token {id}") })?;
                t.revoked = true;
            }
        }
        Ok(ApplyOk { revision: index })
    }

    fn validate_config(&self, vmid: u32, config: &GuestConfig) -> Result<(), ApplyError> {
        match config {
            GuestConfig::Qemu(spec) => {
                spec.validate()?;
                crate::arch::resolve(&self.architectures, "arch", spec.arch.as_deref())?;
                for (i, d) in spec.disks.iter().enumerate() {
                    if !self.storage.contains_key(&d.storage) {
                        return Err(ValidationError::new(
                            format!("disks[{i}].storage"),
                            format!("unknown storage {:?}", d.storage),
                        )
                        .into());
                    }
                    let Some(volume) = &d.volume else {
                        return Err(ValidationError::new(
                            format!("disks[{i}].volume"),
                            "the volume must be allocated before the guest is created",
                        )
                        .into());
                    };
                    ids::parse_volume_id(volume)?;
                    // A LUN of an iSCSI storage is used whole, by one guest at a time.
                    let whole_lun = ids::volume_owner(volume).is_none()
                        && matches!(self.storage[&d.storage].kind, crate::StorageKind::Iscsi { .. });
                    if ids::volume_owner(volume) != Some(vmid) && !whole_lun {
                        return Err(ValidationError::new(
                            format!("disks[{i}].volume"),
                            format!("volume {volume:?} does not belong to guest {vmid}"),
                        )
                        .into());
                    }
                    if let Some(other) = self.guests.values().find(|g| {
                        g.vmid != vmid
                            && g.vm_spec().disks.iter().any(|o| o.volume.as_deref() == Some(volume))
                    }) {
                        return Err(ApplyError::Conflict {
                            message: format!("disks[{i}].volume: {volume} is a disk of guest {}", other.vmid),
                        });
                    }
                }
                for (i, c) in spec.cdroms.iter().enumerate() {
                    let Some(volume) = &c.volume else { continue };
                    let storage = ids::parse_iso_volume(&format!("cdroms[{i}].volume"), volume)?;
                    if !self.storage.contains_key(storage) {
                        return Err(ValidationError::new(
                            format!("cdroms[{i}].volume"),
                            format!("unknown storage {storage:?}"),
                        )
                        .into());
                    }
                }
                for (i, volume) in spec.unused.iter().enumerate() {
                    let field = format!("unused{i}");
                    let (storage, _) =
                        ids::parse_volume_id(volume).map_err(|e| ValidationError::new(&field, e.message))?;
                    if !self.storage.contains_key(storage) {
                        return Err(
                            ValidationError::new(field, format!("unknown storage {storage:?}")).into()
                        );
                    }
                    if ids::volume_owner(volume) != Some(vmid) {
                        return Err(ValidationError::new(
                            field,
                            format!("volume {volume:?} does not belong to guest {vmid}"),
                        )
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether join token `id` would admit `node` with this secret at `now_ms`: what
    /// `ConsumeJoinToken` checks, asked before proposing so that a wrong guess writes
    /// nothing to the log.
    pub fn check_join(
        &self,
        id: &str,
        secret_sha256: &str,
        node: &str,
        now_ms: u64,
    ) -> Result<(), ApplyError> {
        ids::validate_dns_label("node", node)?;
        let refused = |why: &str| ApplyError::Conflict { message: format!("join token refused: {why}") };
        let t = self.join_tokens.get(id).ok_or_else(|| refused("unknown token"))?;
        if !ids::ct_eq(t.secret_sha256.as_bytes(), secret_sha256.as_bytes()) {
            return Err(refused("wrong secret"));
        }
        if t.revoked {
            return Err(refused("revoked"));
        }
        if t.used_by.is_some() {
            return Err(refused("already used"));
        }
        if now_ms >= t.expires_ms {
            return Err(refused("expired"));
        }
        if self.nodes.contains_key(node) {
            return Err(ApplyError::Conflict { message: format!("a node named {node} is already a member") });
        }
        Ok(())
    }

    /// The member whose transport certificate has this SHA-256 fingerprint.
    pub fn member_by_fingerprint(&self, fingerprint: &str) -> Option<u64> {
        let is = |f: &str| ids::ct_eq(f.as_bytes(), fingerprint.as_bytes());
        self.member_certs
            .iter()
            .find(|(_, c)| is(&c.fingerprint) || c.previous.as_deref().is_some_and(is))
            .map(|(id, _)| *id)
    }

    /// How long a login may be renewed for, in seconds (the `ticket-max-age` option).
    pub fn ticket_max_age_s(&self) -> u64 {
        self.options
            .get(TICKET_MAX_AGE_OPTION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(TICKET_MAX_AGE_DEFAULT_S)
    }

    /// What a user's tickets are signed over: changing it ends them (`root@pam`: 0).
    pub fn credentials_revision(&self, userid: &str) -> u64 {
        self.users.get(userid).map(|u| u.credentials_revision).unwrap_or(0)
    }

    /// `root@pam` always exists; other users once created.
    pub fn user_exists(&self, userid: &str) -> bool {
        userid == "root@pam" || self.users.contains_key(userid)
    }

    pub fn guest(&self, vmid: u32) -> Result<&Guest, ApplyError> {
        self.guests.get(&vmid).ok_or_else(|| ApplyError::NotFound { what: format!("guest {vmid}") })
    }

    fn guest_mut(&mut self, vmid: u32) -> Result<&mut Guest, ApplyError> {
        self.guests.get_mut(&vmid).ok_or_else(|| ApplyError::NotFound { what: format!("guest {vmid}") })
    }

    /// The lowest free VMID, as Proxmox's `/cluster/nextid` answers.
    pub fn next_vmid(&self) -> Option<u32> {
        let mut candidate = VMID_MIN;
        for &used in self.guests.range(VMID_MIN..).map(|(k, _)| k) {
            if used != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate <= VMID_MAX).then_some(candidate)
    }
}

mod access;
pub mod authority;
mod ha;
mod snapshots;
mod storage;
#[cfg(test)]
mod tests;
