//! Users, groups, roles, ACL entries, API tokens, realms and second factors.

use super::ClusterState;
use crate::access::{self, Roles};
use crate::command::{ApplyError, Command};
use crate::ids::{self, ValidationError};
use crate::model::*;

/// Pool ids follow Proxmox: letters, digits, '-' and '_', at most 64.
fn validate_pool_id(id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("poolid", format!("{id:?}: 1-64 letters, digits, '-' or '_'")))
    }
}

fn check_comment(c: &str) -> Result<(), ValidationError> {
    if c.len() > 256 || c.contains(['\n', '\0']) {
        return Err(ValidationError::new("comment", "at most 256 characters, one line"));
    }
    Ok(())
}

impl ClusterState {
    /// What `subject` may do on `path`, as Proxmox evaluates it: the ACL entries along the
    /// path, and for a pool member (`/vms/{vmid}`, `/storage/{id}`) also those on its pool.
    pub fn privileges(
        &self,
        subject: &access::Subject<'_>,
        path: &str,
    ) -> std::collections::BTreeSet<String> {
        let mut privs = access::effective_privileges(&self.acl, self.roles(), subject, path);
        let mut parts = path.trim_start_matches('/').split('/');
        let pool = match (parts.next(), parts.next(), parts.next()) {
            (Some("vms"), Some(id), None) => {
                id.parse::<u32>().ok().and_then(|v| self.pools.values().find(|p| p.vms.contains(&v)))
            }
            (Some("storage"), Some(id), None) => self.pools.values().find(|p| p.storage.contains(id)),
            _ => None,
        };
        if let Some(p) = pool {
            privs.extend(access::effective_privileges(
                &self.acl,
                self.roles(),
                subject,
                &format!("/pool/{}", p.poolid),
            ));
        }
        privs
    }

    /// The roles ACL entries may name: built-in and custom.
    pub fn roles(&self) -> Roles<'_> {
        Roles { custom: &self.roles }
    }

    fn check_groups(&self, groups: &[String]) -> Result<(), ApplyError> {
        for g in groups {
            if !self.groups.contains_key(g) {
                return Err(ValidationError::new("groups", format!("unknown group {g:?}")).into());
            }
        }
        Ok(())
    }

    pub(super) fn apply_access(&mut self, index: u64, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
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
                check_comment(comment)?;
                self.check_groups(groups)?;
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
                    enable: true,
                    email: String::new(),
                    credentials_revision: index,
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
                u.credentials_revision = index;
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
                u.credentials_revision = index;
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
                    Some(RealmConfig::Ldap { server, base_dn, user_attr, domain, .. }) => {
                        if let Some(d) = domain {
                            let ok = d.split('.').all(|l| ids::validate_dns_label("domain", l).is_ok());
                            if !ok {
                                return Err(ValidationError::new(
                                    "domain",
                                    "a DNS domain such as example.org",
                                )
                                .into());
                            }
                        }
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
                    access::Ugid::User(u) => u != userid,
                    access::Ugid::Token(t) => !t.starts_with(&prefix),
                    access::Ugid::Group(_) => true,
                });
            }
            Command::SetAcl { path, ugid, role, propagate, delete } => {
                access::validate_acl_path("path", path)?;
                if self.roles().get(role).is_none() {
                    return Err(ValidationError::new("roles", format!("unknown role {role:?}")).into());
                }
                match ugid {
                    access::Ugid::User(u) if !self.user_exists(u) => {
                        return Err(ApplyError::NotFound { what: format!("user {u}") })
                    }
                    access::Ugid::Token(t) if !self.api_tokens.contains_key(t) => {
                        return Err(ApplyError::NotFound { what: format!("token {t}") })
                    }
                    access::Ugid::Group(g) if !self.groups.contains_key(g) => {
                        return Err(ApplyError::NotFound { what: format!("group {g}") })
                    }
                    _ => {}
                }
                let same = |e: &access::AclEntry| e.path == *path && e.ugid == *ugid && e.role == *role;
                self.acl.retain(|e| !same(e));
                if !*delete {
                    self.acl.push(access::AclEntry {
                        path: path.clone(),
                        ugid: ugid.clone(),
                        role: role.clone(),
                        propagate: *propagate,
                    });
                }
            }
            Command::CreatePool { poolid, comment } => {
                validate_pool_id(poolid)?;
                check_comment(comment)?;
                if self.pools.contains_key(poolid) {
                    return Err(ApplyError::Conflict { message: format!("pool {poolid} already exists") });
                }
                let pool = Pool {
                    poolid: poolid.clone(),
                    comment: comment.clone(),
                    vms: Default::default(),
                    storage: Default::default(),
                    revision: index,
                };
                self.pools.insert(poolid.clone(), pool);
            }
            Command::UpdatePool { poolid, comment, vms, storage, delete } => {
                if let Some(c) = comment {
                    check_comment(c)?;
                }
                if !self.pools.contains_key(poolid) {
                    return Err(ApplyError::NotFound { what: format!("pool {poolid}") });
                }
                for vmid in vms {
                    if !self.guests.contains_key(vmid) {
                        return Err(
                            ValidationError::new("vms", format!("guest {vmid} does not exist")).into()
                        );
                    }
                    let elsewhere = self.pools.values().find(|p| p.poolid != *poolid && p.vms.contains(vmid));
                    if let (false, Some(p)) = (*delete, elsewhere) {
                        return Err(ApplyError::Conflict {
                            message: format!("guest {vmid} is already in pool {}", p.poolid),
                        });
                    }
                }
                for s in storage {
                    if !self.storage.contains_key(s) {
                        return Err(ValidationError::new("storage", format!("unknown storage {s:?}")).into());
                    }
                }
                let p = self.pools.get_mut(poolid).expect("checked above");
                if let Some(c) = comment {
                    p.comment = c.clone();
                }
                if *delete {
                    vms.iter().for_each(|v| {
                        p.vms.remove(v);
                    });
                    storage.iter().for_each(|s| {
                        p.storage.remove(s);
                    });
                } else {
                    p.vms.extend(vms.iter().copied());
                    p.storage.extend(storage.iter().cloned());
                }
                p.revision = index;
            }
            Command::DeletePool { poolid } => {
                let Some(p) = self.pools.get(poolid) else {
                    return Err(ApplyError::NotFound { what: format!("pool {poolid}") });
                };
                if !p.vms.is_empty() || !p.storage.is_empty() {
                    return Err(ApplyError::Conflict { message: format!("pool {poolid} is not empty") });
                }
                self.pools.remove(poolid);
                let path = format!("/pool/{poolid}");
                self.acl.retain(|e| e.path != path);
            }
            Command::DeleteApiToken { id } => {
                if self.api_tokens.remove(id).is_none() {
                    return Err(ApplyError::NotFound { what: format!("token {id}") });
                }
                self.acl.retain(|e| e.ugid != access::Ugid::Token(id.clone()));
            }
            Command::UpdateUser { userid, comment, email, groups, append, expire, enable } => {
                if let Some(c) = comment {
                    check_comment(c)?;
                }
                if let Some(e) = email {
                    if e.len() > 256 || (!e.is_empty() && !e.contains('@')) || e.contains(char::is_whitespace)
                    {
                        return Err(ValidationError::new("email", "an e-mail address").into());
                    }
                }
                if let Some(g) = groups {
                    self.check_groups(g)?;
                }
                if userid == "root@pam" && *enable == Some(false) {
                    return Err(ApplyError::Conflict { message: "root@pam cannot be disabled".into() });
                }
                let Some(u) = self.users.get_mut(userid) else {
                    return Err(ApplyError::NotFound { what: format!("user {userid}") });
                };
                if let Some(c) = comment {
                    u.comment = c.clone();
                }
                if let Some(e) = email {
                    u.email = e.clone();
                }
                if let Some(g) = groups {
                    if *append {
                        for x in g {
                            if !u.groups.contains(x) {
                                u.groups.push(x.clone());
                            }
                        }
                    } else {
                        u.groups = g.clone();
                    }
                }
                if let Some(e) = expire {
                    u.expire = *e;
                }
                if let Some(e) = enable {
                    u.enable = *e;
                }
                if expire.is_some() || enable.is_some() {
                    u.credentials_revision = index;
                }
                u.revision = index;
            }
            Command::SetRole { roleid, privs } => match privs {
                Some(p) => {
                    access::validate_role(roleid, p)?;
                    self.roles.insert(roleid.clone(), p.clone());
                }
                None => {
                    if access::builtin_roles().contains_key(roleid) {
                        return Err(
                            ValidationError::new("roleid", format!("{roleid} is a built-in role")).into()
                        );
                    }
                    if self.roles.remove(roleid).is_none() {
                        return Err(ApplyError::NotFound { what: format!("role {roleid}") });
                    }
                    self.acl.retain(|e| e.role != *roleid);
                }
            },
            Command::CreateGroup { groupid, comment } => {
                ids::validate_dns_label("groupid", groupid)?;
                check_comment(comment)?;
                if self.groups.contains_key(groupid) {
                    return Err(ApplyError::Conflict { message: format!("group {groupid} already exists") });
                }
                let g = Group { groupid: groupid.clone(), comment: comment.clone(), revision: index };
                self.groups.insert(groupid.clone(), g);
            }
            Command::DeleteGroup { groupid } => {
                if self.groups.remove(groupid).is_none() {
                    return Err(ApplyError::NotFound { what: format!("group {groupid}") });
                }
                for u in self.users.values_mut() {
                    u.groups.retain(|g| g != groupid);
                }
                self.acl.retain(|e| e.ugid != access::Ugid::Group(groupid.clone()));
            }
            _ => unreachable!("apply only routes access commands here"),
        }
        Ok(())
    }
}
