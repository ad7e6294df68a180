//! Access control as Proxmox VE has it: privileges, roles (built-in and custom), and ACL
//! entries that grant a role to a user, a group or an API token on a path, optionally
//! propagating to the paths below. `effective_privileges` evaluates them the way
//! `pveum` does; every API route checks one privilege on one path with it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Every privilege Proxmox VE 8/9 knows (what `GET /access/roles` lists).
pub const PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Group.Allocate",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
    "User.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Replicate",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

fn privs(filter: impl Fn(&str) -> bool) -> BTreeSet<String> {
    PRIVILEGES.iter().filter(|p| filter(p)).map(|p| p.to_string()).collect()
}

/// The built-in roles, with Proxmox's names and privilege sets. They cannot be changed.
pub fn builtin_roles() -> &'static BTreeMap<String, BTreeSet<String>> {
    static ROLES: std::sync::OnceLock<BTreeMap<String, BTreeSet<String>>> = std::sync::OnceLock::new();
    ROLES.get_or_init(make_builtin_roles)
}

fn make_builtin_roles() -> BTreeMap<String, BTreeSet<String>> {
    let vm_user = [
        "VM.Audit",
        "VM.Backup",
        "VM.Config.CDROM",
        "VM.Config.Cloudinit",
        "VM.Console",
        "VM.PowerMgmt",
        "VM.GuestAgent.Audit",
    ];
    let roles: [(&str, BTreeSet<String>); 8] = [
        ("Administrator", privs(|_| true)),
        ("NoAccess", BTreeSet::new()),
        (
            "PVEAdmin",
            privs(|p| !matches!(p, "Permissions.Modify" | "Realm.Allocate" | "Sys.Modify" | "Sys.PowerMgmt")),
        ),
        ("PVEAuditor", privs(|p| p.ends_with(".Audit"))),
        ("PVEVMAdmin", privs(|p| p.starts_with("VM.") || p == "Datastore.AllocateSpace")),
        ("PVEVMUser", privs(|p| vm_user.contains(&p))),
        ("PVEDatastoreAdmin", privs(|p| p.starts_with("Datastore."))),
        ("PVEDatastoreUser", privs(|p| matches!(p, "Datastore.AllocateSpace" | "Datastore.Audit"))),
    ];
    roles.into_iter().map(|(n, p)| (n.to_string(), p)).collect()
}

/// The roles ACL entries can name: the built-in ones and the cluster's custom ones.
#[derive(Clone, Copy)]
pub struct Roles<'a> {
    pub custom: &'a BTreeMap<String, BTreeSet<String>>,
}

impl<'a> Roles<'a> {
    pub fn get(&self, roleid: &str) -> Option<&'a BTreeSet<String>> {
        builtin_roles().get(roleid).or_else(|| self.custom.get(roleid))
    }

    /// Every role, built-in first; `true` marks the built-in ones.
    pub fn all(&self) -> impl Iterator<Item = (&'a str, &'a BTreeSet<String>, bool)> {
        let builtin = builtin_roles().iter().map(|(k, v)| (k.as_str(), v, true));
        builtin.chain(self.custom.iter().map(|(k, v)| (k.as_str(), v, false)))
    }
}

/// Checks a custom role: a name that is not a built-in one, and known privileges.
pub fn validate_role(roleid: &str, privs: &BTreeSet<String>) -> Result<(), ValidationError> {
    let name_ok = !roleid.is_empty()
        && roleid.len() <= 64
        && roleid.starts_with(|c: char| c.is_ascii_alphabetic())
        && roleid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(ValidationError::new(
            "roleid",
            "1-64 letters, digits, '-', '_' or '.', starting with a letter",
        ));
    }
    if builtin_roles().contains_key(roleid) {
        return Err(ValidationError::new("roleid", format!("{roleid} is a built-in role")));
    }
    if let Some(p) = privs.iter().find(|p| !PRIVILEGES.contains(&p.as_str())) {
        return Err(ValidationError::new("privs", format!("unknown privilege {p:?}")));
    }
    Ok(())
}

/// Who an ACL entry is for.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(tag = "type", content = "id", rename_all = "lowercase")]
pub enum Ugid {
    /// `USER@REALM`
    User(String),
    Group(String),
    /// `USER@REALM!TOKENID`
    Token(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    /// `/`, `/vms/100`, `/storage/local`, `/nodes/n1`, `/pool/p`, `/access`, `/sdn/...`
    pub path: String,
    pub ugid: Ugid,
    pub role: String,
    /// Also applies to every path below `path`.
    pub propagate: bool,
}
crate::evolving!(AclEntry { path, ugid, role, propagate });

/// Checks an ACL path: absolute, no empty, `.` or `..` components, printable ASCII.
pub fn validate_acl_path(field: &str, path: &str) -> Result<(), ValidationError> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path.chars().all(|c| c.is_ascii_graphic())
        && (path == "/" || path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{path:?} is not an ACL path such as / or /vms/100")))
    }
}

/// `/vms/100` -> [`/`, `/vms`, `/vms/100`].
fn path_chain(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

/// The API caller a command was proposed by: a user (logged in with a ticket) or one of
/// its API tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub userid: String,
    /// `USER@REALM!TOKENID` when the caller used a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The token's rights are separated from (and at most) its user's.
    #[serde(default)]
    pub privsep: bool,
}
crate::evolving!(Actor { userid, token, privsep });

impl Actor {
    pub fn user(userid: &str) -> Self {
        Actor { userid: userid.to_string(), token: None, privsep: false }
    }

    /// `root@pam` acting with its full rights (not through a privilege-separated token).
    pub fn is_root(&self) -> bool {
        self.userid == "root@pam" && !self.privsep
    }
}

/// Everything access control needs to know about the caller.
pub struct Subject<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    /// The API token used, if any, and whether its rights are separated from the user's.
    pub token: Option<(&'a str, bool)>,
}

/// The privileges `subject` holds on `path`, as Proxmox evaluates them: walking from `/`
/// down to `path`, entries on a parent count only if they propagate; at each level the
/// user's own entries replace what was inherited, else its groups' entries do, and a role
/// without privileges (`NoAccess`) there takes everything away. `root@pam` holds all. A
/// privilege-separated token holds what both the user and the token's own entries grant.
pub fn effective_privileges(
    acl: &[AclEntry],
    roles: Roles<'_>,
    subject: &Subject<'_>,
    path: &str,
) -> BTreeSet<String> {
    let user = Ugid::User(subject.user.to_string());
    let user_privs = if subject.user == "root@pam" {
        privs(|_| true)
    } else {
        walk(acl, roles, path, |here| {
            let mine: Vec<&AclEntry> = here.iter().copied().filter(|e| e.ugid == user).collect();
            if !mine.is_empty() {
                return mine;
            }
            here.iter()
                .copied()
                .filter(|e| matches!(&e.ugid, Ugid::Group(g) if subject.groups.contains(g)))
                .collect()
        })
    };
    match subject.token {
        Some((token, true)) => {
            let token = Ugid::Token(token.to_string());
            let token_privs =
                walk(acl, roles, path, |here| here.iter().copied().filter(|e| e.ugid == token).collect());
            user_privs.intersection(&token_privs).cloned().collect()
        }
        _ => user_privs,
    }
}

/// Walks from `/` to `path`; at each level `pick` chooses which of the applicable entries
/// count; a level with chosen entries replaces what was inherited.
fn walk<'a>(
    acl: &'a [AclEntry],
    roles: Roles<'_>,
    path: &str,
    pick: impl Fn(&[&'a AclEntry]) -> Vec<&'a AclEntry>,
) -> BTreeSet<String> {
    let chain = path_chain(path);
    let mut current = BTreeSet::new();
    for (depth, level) in chain.iter().enumerate() {
        let last = depth + 1 == chain.len();
        let here: Vec<&AclEntry> = acl.iter().filter(|e| e.path == *level && (last || e.propagate)).collect();
        let chosen = pick(&here);
        if !chosen.is_empty() {
            current = chosen.iter().flat_map(|e| roles.get(&e.role).cloned().unwrap_or_default()).collect();
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, ugid: Ugid, role: &str, propagate: bool) -> AclEntry {
        AclEntry { path: path.into(), ugid, role: role.into(), propagate }
    }

    fn user(u: &str) -> Ugid {
        Ugid::User(u.into())
    }

    fn has(acl: &[AclEntry], s: &Subject<'_>, path: &str, p: &str) -> bool {
        effective_privileges(acl, NO_CUSTOM, s, path).contains(p)
    }

    const NOBODY: &[String] = &[];

    static EMPTY: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    const NO_CUSTOM: Roles<'static> = Roles { custom: &EMPTY };

    #[test]
    fn builtin_roles_match_proxmox() {
        let r = builtin_roles();
        assert_eq!(r["Administrator"].len(), PRIVILEGES.len());
        assert!(r["NoAccess"].is_empty());
        assert!(!r["PVEAdmin"].contains("Permissions.Modify") && r["PVEAdmin"].contains("VM.Allocate"));
        assert!(
            r["PVEAuditor"].iter().all(|p| p.ends_with(".Audit")) && r["PVEAuditor"].contains("Sys.Audit")
        );
        assert!(r["PVEVMUser"].contains("VM.PowerMgmt") && !r["PVEVMUser"].contains("VM.Allocate"));
        assert!(r["PVEVMAdmin"].contains("VM.Allocate") && !r["PVEVMAdmin"].contains("Sys.Audit"));
    }

    #[test]
    fn propagation_and_specific_paths() {
        let alice = Subject { user: "alice@pve", groups: NOBODY, token: None };
        let acl = vec![entry("/vms", user("alice@pve"), "PVEVMUser", true)];
        assert!(has(&acl, &alice, "/vms/100", "VM.PowerMgmt"));
        assert!(has(&acl, &alice, "/vms", "VM.PowerMgmt"));
        assert!(!has(&acl, &alice, "/", "VM.PowerMgmt"));
        assert!(!has(&acl, &alice, "/storage/local", "VM.PowerMgmt"));
        // Without propagation only the path itself.
        let acl = vec![entry("/vms", user("alice@pve"), "PVEVMUser", false)];
        assert!(has(&acl, &alice, "/vms", "VM.Audit"));
        assert!(!has(&acl, &alice, "/vms/100", "VM.Audit"));
        // A more specific entry replaces the inherited one, NoAccess removes everything.
        let acl = vec![
            entry("/", user("alice@pve"), "PVEAdmin", true),
            entry("/vms/100", user("alice@pve"), "NoAccess", true),
            entry("/vms/200", user("alice@pve"), "PVEAuditor", true),
        ];
        assert!(has(&acl, &alice, "/vms/300", "VM.Allocate"));
        assert!(!has(&acl, &alice, "/vms/100", "VM.Audit"));
        assert!(has(&acl, &alice, "/vms/200", "VM.Audit") && !has(&acl, &alice, "/vms/200", "VM.PowerMgmt"));
    }

    #[test]
    fn user_entries_override_group_entries_at_the_same_level() {
        let groups = vec!["ops".to_string()];
        let bob = Subject { user: "bob@pve", groups: &groups, token: None };
        let acl = vec![entry("/", Ugid::Group("ops".into()), "PVEVMAdmin", true)];
        assert!(has(&acl, &bob, "/vms/1", "VM.Allocate"));
        let mut acl = acl;
        acl.push(entry("/", user("bob@pve"), "PVEAuditor", true));
        assert!(!has(&acl, &bob, "/vms/1", "VM.Allocate"));
        assert!(has(&acl, &bob, "/vms/1", "VM.Audit"));
        // Not in the group: nothing.
        let carol = Subject { user: "carol@pve", groups: NOBODY, token: None };
        assert!(effective_privileges(&acl, NO_CUSTOM, &carol, "/vms/1").is_empty());
    }

    #[test]
    fn tokens_with_privilege_separation_hold_at_most_their_users_rights() {
        let acl = vec![
            entry("/", user("alice@pve"), "PVEVMUser", true),
            entry("/", Ugid::Token("alice@pve!ci".into()), "Administrator", true),
        ];
        let sep = Subject { user: "alice@pve", groups: NOBODY, token: Some(("alice@pve!ci", true)) };
        assert!(has(&acl, &sep, "/vms/1", "VM.PowerMgmt"));
        assert!(!has(&acl, &sep, "/vms/1", "VM.Allocate"), "a token never exceeds its user");
        let shared = Subject { user: "alice@pve", groups: NOBODY, token: Some(("alice@pve!ci", false)) };
        assert!(has(&acl, &shared, "/vms/1", "VM.Console"));
        let bare = Subject { user: "alice@pve", groups: NOBODY, token: Some(("alice@pve!other", true)) };
        assert!(effective_privileges(&acl, NO_CUSTOM, &bare, "/").is_empty());
        let root = Subject { user: "root@pam", groups: NOBODY, token: Some(("root@pam!admin", false)) };
        assert!(has(&[], &root, "/access", "Permissions.Modify"));
    }

    #[test]
    fn acl_paths_are_validated() {
        for ok in ["/", "/vms/100", "/storage/local", "/sdn/zones/z1"] {
            validate_acl_path("path", ok).unwrap();
        }
        for bad in ["", "vms", "/vms/", "//", "/vms/../x", "/a b"] {
            assert_eq!(validate_acl_path("path", bad).unwrap_err().field, "path", "{bad:?}");
        }
    }
}
