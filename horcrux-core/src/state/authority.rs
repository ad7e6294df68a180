//! Who may change access control. `apply` runs these checks for every access-control
//! command an API caller proposed, against the state the command meets in the log, so two
//! racing requests cannot add up to an escalation. Two rules:
//!
//! 1. Acting on another user's credentials (password, tokens, second factor), account
//!    (enable, expiry, groups) or existence needs `User.Modify` on `/access/groups` or on
//!    the path of one of that user's groups, as Proxmox has it, *and* every privilege the
//!    user holds, on every path: a user manager cannot take over an administrator. Only
//!    `root@pam` itself acts on `root@pam`. A user changes their own password, tokens and
//!    second factor (not through a privilege-separated token).
//! 2. No change gives anyone a privilege on a path that the caller does not hold there.
//!    Checked by applying the command to a copy and comparing every principal's
//!    privileges on every path that decides them (`representative_paths`).

use std::collections::{BTreeMap, BTreeSet};

use super::ClusterState;
use crate::access::{Actor, Subject};
use crate::command::{ApplyError, Command};

/// Marks "any path below" in a representative path: not a valid ACL path component, so
/// it never names a real path.
const BELOW: &str = "\u{1}";

fn forbidden(message: String) -> ApplyError {
    ApplyError::Forbidden { message: format!("permission check failed: {message}") }
}

/// A representative path as users read it: `/vms/*` for "any path below /vms".
pub fn show_path(p: &str) -> String {
    p.replace(BELOW, "*")
}

/// Someone whose privileges access control decides: a user, or a privilege-separated
/// API token (a token that shares its user's rights is covered by the user).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Principal {
    pub userid: String,
    pub token: Option<String>,
}

impl Principal {
    pub fn name(&self) -> &str {
        self.token.as_deref().unwrap_or(&self.userid)
    }
}

impl ClusterState {
    /// The privileges of `userid` (its own and its groups' entries) on `path`.
    pub fn user_privileges(&self, userid: &str, path: &str) -> BTreeSet<String> {
        let groups = self.users.get(userid).map(|u| u.groups.as_slice()).unwrap_or_default();
        self.privileges(&Subject { user: userid, groups, token: None }, path)
    }

    /// What the caller `actor` may do on `path`.
    pub fn actor_privileges(&self, actor: &Actor, path: &str) -> BTreeSet<String> {
        let groups = self.users.get(&actor.userid).map(|u| u.groups.as_slice()).unwrap_or_default();
        let token = actor.token.as_deref().map(|t| (t, actor.privsep));
        self.privileges(&Subject { user: &actor.userid, groups, token }, path)
    }

    fn principal_privileges(&self, p: &Principal, path: &str) -> BTreeSet<String> {
        match &p.token {
            None => self.user_privileges(&p.userid, path),
            Some(t) => {
                let groups = self.users.get(&p.userid).map(|u| u.groups.as_slice()).unwrap_or_default();
                self.privileges(&Subject { user: &p.userid, groups, token: Some((t, true)) }, path)
            }
        }
    }

    /// Every user but `root@pam` (who holds everything) and every privilege-separated
    /// token (root@pam's too: those hold only what their own entries grant).
    pub fn principals(&self) -> Vec<Principal> {
        let users = self.users.keys().map(|u| Principal { userid: u.clone(), token: None });
        let tokens = self
            .api_tokens
            .values()
            .filter(|t| t.privsep)
            .map(|t| Principal { userid: t.user().to_string(), token: Some(t.id.clone()) });
        users.chain(tokens).collect()
    }

    /// Paths that together decide everyone's privileges everywhere: `/`, each ACL entry's
    /// path and a path just below it (where only propagating entries count), each pool's
    /// path, and each pool member's path (which the pool's entries also reach). Every other
    /// path has the privileges of the "just below" path of its longest ACL-path prefix.
    pub fn representative_paths(&self) -> BTreeSet<String> {
        let below = |p: &str| if p == "/" { format!("/{BELOW}") } else { format!("{p}/{BELOW}") };
        let mut out = BTreeSet::from(["/".to_string(), below("/")]);
        for e in &self.acl {
            out.insert(e.path.clone());
            out.insert(below(&e.path));
        }
        for p in self.pools.values() {
            let path = format!("/pool/{}", p.poolid);
            out.insert(below(&path));
            out.insert(path);
            out.extend(p.vms.iter().map(|v| format!("/vms/{v}")));
            out.extend(p.storage.iter().map(|s| format!("/storage/{s}")));
        }
        out
    }

    fn require(&self, actor: &Actor, privilege: &str, path: &str) -> Result<(), ApplyError> {
        if self.actor_privileges(actor, path).contains(privilege) {
            return Ok(());
        }
        Err(forbidden(format!("{} needs {privilege} on {path}", actor_name(actor))))
    }

    /// Rule 1: may `actor` act on `target`'s credentials or account?
    fn control_user(&self, actor: &Actor, target: &str, self_service: bool) -> Result<(), ApplyError> {
        if target == "root@pam" {
            return if actor.is_root() {
                Ok(())
            } else {
                Err(forbidden("only root@pam itself changes root@pam's credentials and tokens".into()))
            };
        }
        if self_service && actor.userid == target && !actor.privsep {
            return Ok(());
        }
        let groups = self.users.get(target).map(|u| u.groups.clone()).unwrap_or_default();
        let paths = std::iter::once("/access/groups".to_string())
            .chain(groups.iter().map(|g| format!("/access/groups/{g}")));
        let manages = paths.into_iter().any(|p| self.actor_privileges(actor, &p).contains("User.Modify"));
        if !manages {
            let where_ = match groups.first() {
                Some(g) => format!("/access/groups/{g}"),
                None => "/access/groups".to_string(),
            };
            return Err(forbidden(format!(
                "{} needs User.Modify on {where_} to manage {target}",
                actor_name(actor)
            )));
        }
        for path in self.representative_paths() {
            let mine = self.actor_privileges(actor, &path);
            if let Some(p) = self.user_privileges(target, &path).difference(&mine).next() {
                return Err(forbidden(format!(
                    "{target} holds {p} on {}, which {} does not; a user cannot take over a user with rights it lacks",
                    show_path(&path),
                    actor_name(actor)
                )));
            }
        }
        Ok(())
    }

    /// Whether `actor` may change `target`'s password, tokens or second factor (rule 1):
    /// what `apply` will check, asked early by handlers that have costly work to do first
    /// (hashing a password).
    pub fn check_credentials_change(&self, actor: &Actor, target: &str) -> Result<(), ApplyError> {
        if actor.is_root() {
            return Ok(());
        }
        self.control_user(actor, target, true)
    }

    /// The checks that depend on the command's target, before it is applied.
    pub(super) fn authorize(&self, actor: &Actor, cmd: &Command) -> Result<(), ApplyError> {
        let owner = |id: &str| id.split('!').next().unwrap_or(id).to_string();
        match cmd {
            Command::SetApiToken { id, .. } | Command::DeleteApiToken { id } => {
                self.control_user(actor, &owner(id), true)
            }
            Command::SetPassword { userid, .. } | Command::SetTfa { userid, .. } => {
                self.control_user(actor, userid, true)
            }
            Command::DeleteUser { userid } => self.control_user(actor, userid, false),
            Command::UpdateUser { userid, groups, .. } => {
                self.control_user(actor, userid, false)?;
                let current = self.users.get(userid).map(|u| u.groups.clone()).unwrap_or_default();
                for g in groups.iter().flatten().filter(|g| !current.contains(g)) {
                    self.require(actor, "User.Modify", &format!("/access/groups/{g}"))?;
                }
                Ok(())
            }
            Command::CreateUser { groups, .. } => {
                if groups.is_empty() {
                    return self.require(actor, "User.Modify", "/access/groups");
                }
                groups
                    .iter()
                    .try_for_each(|g| self.require(actor, "User.Modify", &format!("/access/groups/{g}")))
            }
            Command::SetAcl { path, .. } => self.require(actor, "Permissions.Modify", path),
            _ => Ok(()),
        }
    }

    /// Rule 2: `after` (this state with the command applied) gives nobody a privilege on a
    /// path that `actor` does not hold there in this state.
    pub(super) fn check_no_gain(&self, after: &ClusterState, actor: &Actor) -> Result<(), ApplyError> {
        let mut paths = self.representative_paths();
        paths.extend(after.representative_paths());
        let mut mine: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let before: BTreeSet<Principal> = self.principals().into_iter().collect();
        for who in after.principals() {
            for path in &paths {
                let now = after.principal_privileges(&who, path);
                let was = if before.contains(&who) {
                    self.principal_privileges(&who, path)
                } else {
                    BTreeSet::new()
                };
                let held = mine.entry(path).or_insert_with(|| self.actor_privileges(actor, path));
                if let Some(p) = now.iter().find(|p| !was.contains(*p) && !held.contains(*p)) {
                    return Err(forbidden(format!(
                        "this change would give {} {p} on {}, which {} does not hold there",
                        who.name(),
                        show_path(path),
                        actor_name(actor)
                    )));
                }
            }
        }
        Ok(())
    }
}

fn actor_name(a: &Actor) -> &str {
    a.token.as_deref().unwrap_or(&a.userid)
}

/// Commands that change who may do what, or whose credentials they are: applied on a
/// copy and compared when an API caller proposed them.
pub(super) fn is_access_change(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::SetApiToken { .. }
            | Command::DeleteApiToken { .. }
            | Command::CreateUser { .. }
            | Command::UpdateUser { .. }
            | Command::SetPassword { .. }
            | Command::SetTfa { .. }
            | Command::DeleteUser { .. }
            | Command::SetAcl { .. }
            | Command::SetRole { .. }
            | Command::CreateGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::CreatePool { .. }
            | Command::UpdatePool { .. }
            | Command::DeletePool { .. }
            | Command::CreateGuest { pool: Some(_), .. }
    )
}

#[cfg(test)]
mod tests;
