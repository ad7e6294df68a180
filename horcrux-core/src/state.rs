//! The replicated state machine: `ClusterState::apply` validates a command against the
//! current state and applies it, or refuses it and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{ApplyError, ApplyOk, Command, Request};
use crate::ids::{self, ValidationError, VMID_MAX, VMID_MIN};
use crate::model::*;

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
}

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
        }
    }
}

fn check_revision(vmid: u32, expected: Option<u64>, actual: u64) -> Result<(), ApplyError> {
    match expected {
        Some(e) if e != actual => Err(ApplyError::Conflict {
            message: format!("guest {vmid} changed: revision is {actual}, request expected {e}"),
        }),
        _ => Ok(()),
    }
}

const MAX_OPTION_BYTES: usize = 64 * 1024;

fn check_hex_sha256(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be 64 lower-case hex digits"))
    }
}

impl ClusterState {
    /// Applies one committed entry at log `index`. Deterministic: the result depends only on
    /// the state, the index and the request.
    pub fn apply(&mut self, index: u64, req: &Request) -> Result<ApplyOk, ApplyError> {
        match &req.cmd {
            Command::RegisterNode { name, api_addr } => {
                ids::validate_dns_label("node", name)?;
                if api_addr.is_empty() {
                    return Err(ValidationError::new("api_addr", "must not be empty").into());
                }
                self.nodes.insert(
                    name.clone(),
                    NodeInfo { name: name.clone(), api_addr: api_addr.clone(), revision: index },
                );
            }
            Command::AddStorage { id, kind } => {
                let pool = StoragePool { id: id.clone(), kind: kind.clone(), revision: index };
                pool.validate()?;
                if self.storage.contains_key(id) {
                    return Err(ApplyError::Conflict { message: format!("storage {id:?} already exists") });
                }
                self.storage.insert(id.clone(), pool);
            }
            Command::SetApiToken { id, secret_sha256, privsep, expire } => {
                let hex_ok = secret_sha256.len() == 64
                    && secret_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex_ok {
                    return Err(
                        ValidationError::new("secret_sha256", "must be 64 lower-case hex digits").into()
                    );
                }
                let Some((user, tokenid)) = id.split_once('!') else {
                    return Err(ValidationError::new("id", "must look like USER@REALM!TOKENID").into());
                };
                ids::validate_userid("id", user)?;
                ids::validate_token_name("tokenid", tokenid)?;
                if !self.user_exists(user) {
                    return Err(ApplyError::NotFound { what: format!("user {user}") });
                }
                let token = ApiToken {
                    id: id.clone(),
                    secret_sha256: secret_sha256.clone(),
                    privsep: *privsep,
                    expire: *expire,
                    revision: index,
                };
                self.api_tokens.insert(id.clone(), token);
            }
            Command::CreateUser { userid, comment, groups, expire } => {
                ids::validate_userid("userid", userid)?;
                let realm = userid.rsplit_once('@').map(|(_, r)| r).unwrap_or_default();
                if !matches!(realm, "pam" | "pve") && !self.realms.contains_key(realm) {
                    return Err(ValidationError::new("userid", format!("unknown realm {realm:?}")).into());
                }
                if comment.len() > 256 {
                    return Err(ValidationError::new("comment", "at most 256 characters").into());
                }
                for g in groups {
                    ids::validate_dns_label("groups", g)?;
                }
                if self.user_exists(userid) {
                    return Err(ApplyError::Conflict { message: format!("user {userid} already exists") });
                }
                let user = User {
                    userid: userid.clone(),
                    comment: comment.clone(),
                    groups: groups.clone(),
                    expire: *expire,
                    revision: index,
                    password_hash: None,
                    tfa: None,
                };
                self.users.insert(userid.clone(), user);
            }
            Command::SetPassword { userid, password_hash } => {
                if !password_hash.starts_with("$argon2id$") || password_hash.len() > 512 {
                    return Err(ValidationError::new("password", "expected an Argon2id hash").into());
                }
                if !userid.ends_with("@pve") {
                    return Err(ValidationError::new(
                        "userid",
                        "only @pve users have passwords here; @pam users authenticate against the host",
                    )
                    .into());
                }
                let Some(u) = self.users.get_mut(userid) else {
                    return Err(ApplyError::NotFound { what: format!("user {userid}") });
                };
                u.password_hash = Some(password_hash.clone());
                u.revision = index;
            }
            Command::SetTfa { userid, tfa } => {
                if let Some(t) = tfa {
                    if crate::totp::base32_decode(&t.totp_secret).is_none_or(|b| b.len() < 16) {
                        return Err(ValidationError::new("totp_secret", "base32, at least 128 bits").into());
                    }
                }
                let Some(u) = self.users.get_mut(userid) else {
                    return Err(ApplyError::NotFound { what: format!("user {userid}") });
                };
                u.tfa = tfa.clone();
                u.revision = index;
            }
            Command::UseTfa { userid, step, recovery } => {
                let Some(t) = self.users.get_mut(userid).and_then(|u| u.tfa.as_mut()) else {
                    return Err(ApplyError::NotFound { what: format!("second factor of {userid}") });
                };
                if let Some(step) = step {
                    if *step <= t.last_step {
                        return Err(ApplyError::Conflict { message: "this code was already used".into() });
                    }
                    t.last_step = *step;
                }
                if let Some(i) = recovery {
                    match t.recovery.get_mut(*i) {
                        Some(slot @ Some(_)) => *slot = None,
                        _ => {
                            return Err(ApplyError::Conflict { message: "recovery code already used".into() })
                        }
                    }
                }
            }
            Command::SetRealm { realm, config } => {
                ids::validate_dns_label("realm", realm)?;
                if matches!(realm.as_str(), "pam" | "pve") {
                    return Err(ValidationError::new("realm", "pam and pve are built in").into());
                }
                match config {
                    Some(RealmConfig::Ldap { server, base_dn, user_attr, .. }) => {
                        if server.is_empty() || server.contains(['/', ' ']) {
                            return Err(ValidationError::new("server1", "a host name or address").into());
                        }
                        if !base_dn.contains('=') {
                            return Err(
                                ValidationError::new("base_dn", "a DN such as dc=example,dc=org").into()
                            );
                        }
                        if user_attr.is_empty()
                            || !user_attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        {
                            return Err(
                                ValidationError::new("user_attr", "an attribute name such as uid").into()
                            );
                        }
                        self.realms.insert(realm.clone(), config.clone().expect("matched Some"));
                    }
                    None => {
                        if self.realms.remove(realm).is_none() {
                            return Err(ApplyError::NotFound { what: format!("realm {realm}") });
                        }
                    }
                }
            }
            Command::DeleteUser { userid } => {
                if userid == "root@pam" {
                    return Err(ApplyError::Conflict { message: "root@pam cannot be deleted".into() });
                }
                if self.users.remove(userid).is_none() {
                    return Err(ApplyError::NotFound { what: format!("user {userid}") });
                }
                let prefix = format!("{userid}!");
                self.api_tokens.retain(|id, _| !id.starts_with(&prefix));
                self.acl.retain(|e| match &e.ugid {
                    crate::access::Ugid::User(u) => u != userid,
                    crate::access::Ugid::Token(t) => !t.starts_with(&prefix),
                    crate::access::Ugid::Group(_) => true,
                });
            }
            Command::SetAcl { path, ugid, role, propagate, delete } => {
                crate::access::validate_acl_path("path", path)?;
                if !crate::access::builtin_roles().contains_key(role) {
                    return Err(ValidationError::new("roles", format!("unknown role {role:?}")).into());
                }
                match ugid {
                    crate::access::Ugid::User(u) if !self.user_exists(u) => {
                        return Err(ApplyError::NotFound { what: format!("user {u}") })
                    }
                    crate::access::Ugid::Token(t) if !self.api_tokens.contains_key(t) => {
                        return Err(ApplyError::NotFound { what: format!("token {t}") })
                    }
                    crate::access::Ugid::Group(g) => ids::validate_dns_label("groups", g)?,
                    _ => {}
                }
                let same =
                    |e: &crate::access::AclEntry| e.path == *path && e.ugid == *ugid && e.role == *role;
                self.acl.retain(|e| !same(e));
                if !*delete {
                    self.acl.push(crate::access::AclEntry {
                        path: path.clone(),
                        ugid: ugid.clone(),
                        role: role.clone(),
                        propagate: *propagate,
                    });
                }
            }
            Command::CreateGuest { vmid, name, node, config } => {
                ids::validate_vmid("vmid", *vmid as u64)?;
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
                    },
                );
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
            Command::SetDesiredPower { vmid, expected_revision, desired } => {
                let g = self.guest_mut(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                g.desired = *desired;
                g.revision = index;
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
                if g.desired.is_running() {
                    return Err(ApplyError::Conflict {
                        message: format!("guest {vmid} is running; stop it before deleting it"),
                    });
                }
                self.guests.remove(vmid);
            }
            Command::SetClusterCa { cert_pem, key_pem } => {
                if self.cluster_ca.is_some() {
                    return Err(ApplyError::Conflict { message: "the cluster CA is already set".into() });
                }
                if !cert_pem.contains("BEGIN CERTIFICATE") || !key_pem.contains("PRIVATE KEY") {
                    return Err(
                        ValidationError::new("cluster_ca", "expected a PEM certificate and key").into()
                    );
                }
                self.cluster_ca =
                    Some(ClusterCaRecord { cert_pem: cert_pem.clone(), key_pem: key_pem.clone() });
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
                ids::validate_dns_label("node", node)?;
                let refused =
                    |why: &str| ApplyError::Conflict { message: format!("join token refused: {why}") };
                let t = self.join_tokens.get_mut(id).ok_or_else(|| refused("unknown token"))?;
                if t.secret_sha256 != *secret_sha256 {
                    return Err(refused("wrong secret"));
                }
                if t.revoked {
                    return Err(refused("revoked"));
                }
                if t.used_by.is_some() {
                    return Err(refused("already used"));
                }
                if req.ts_ms >= t.expires_ms {
                    return Err(refused("expired"));
                }
                if self.nodes.contains_key(node) {
                    return Err(ApplyError::Conflict {
                        message: format!("a node named {node} is already a member"),
                    });
                }
                t.used_by = Some(node.clone());
                t.node_id = Some(self.next_node_id);
                self.next_node_id += 1;
            }
            Command::SetClusterOption { key, value } => {
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
                if value.is_empty() {
                    self.options.remove(key);
                } else {
                    self.options.insert(key.clone(), value.clone());
                }
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
                    let (_, rel) = ids::parse_volume_id(volume)?;
                    if !rel.starts_with(&format!("{vmid}/")) {
                        return Err(ValidationError::new(
                            format!("disks[{i}].volume"),
                            format!("volume {volume:?} does not belong to guest {vmid}"),
                        )
                        .into());
                    }
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests;
