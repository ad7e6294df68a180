//! Storage configuration as Proxmox's `storage.cfg` holds it: a storage's type and the
//! keys that locate it (`path`, `pool`, `server`/`export`, `portal`/`target`, `vgname`,
//! `thinpool`, `monhost`), what it may hold (`content`), where it exists (`nodes`),
//! whether every listed node sees the same volumes (`shared`), `disable`, and the
//! type's other options. Parsing from and printing to Proxmox's flat parameter names is
//! here, so that the native API, `/api2/json` and the CLI agree on one spelling.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{self, ValidationError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StorageKind {
    /// A directory on each node's filesystem (Proxmox's `dir`).
    Dir { path: String },
    /// A btrfs filesystem mounted at `path`: images and container volumes in subvolumes.
    Btrfs { path: String },
    /// A ZFS pool or dataset: datasets for containers, zvols for VMs.
    #[serde(rename = "zfspool")]
    ZfsPool { pool: String },
    /// An NFS export; `path` is where a kernel mount would put it.
    Nfs { server: String, export: String, path: String },
    /// The LUNs of an iSCSI target, used as they are.
    Iscsi { portal: String, target: String },
    /// A Ceph RBD pool.
    Rbd { pool: String, monhost: String },
    /// An LVM volume group: a logical volume per disk.
    Lvm { vgname: String },
    /// An LVM thin pool.
    #[serde(rename = "lvmthin")]
    LvmThin { vgname: String, thinpool: String },
}

/// The content types Proxmox knows, in its order.
pub const CONTENT_TYPES: [&str; 7] = ["images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"];

/// The storage types Horcrux serves, as `type` names them.
pub const STORAGE_TYPES: [&str; 8] = ["dir", "btrfs", "zfspool", "nfs", "iscsi", "rbd", "lvm", "lvmthin"];

/// A secret a storage needs on every node (iSCSI CHAP password, Ceph keyring): kept in the
/// replicated state, never printed: `Debug` redacts it and API answers leave it out.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<secret>" })
    }
}

/// Everything of a storage but its type keys and id; `PUT /storage/{id}` changes these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// Allowed content; empty: the type's default ([`StorageKind::default_content`]).
    pub content: BTreeSet<String>,
    /// Nodes where the storage exists; empty: every node.
    pub nodes: BTreeSet<String>,
    pub shared: bool,
    pub disable: bool,
    /// The type's other options (`preallocation`, `format`, `username`, `sparse`, ...).
    pub options: BTreeMap<String, String>,
    /// `password` (iSCSI CHAP) or `keyring` (Ceph).
    pub secret: Secret,
}
crate::evolving!(StorageConfig { content, nodes, shared, disable, options, secret });

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePool {
    pub id: String,
    #[serde(flatten)]
    pub kind: StorageKind,
    pub revision: u64,
    #[serde(default)]
    pub config: StorageConfig,
}
crate::evolving!(StoragePool { id, kind, revision } added { config: StorageConfig::default() });

/// Options each type takes besides its type keys and the common ones, with the values
/// each accepts (`None`: any value without newlines or NUL, up to 256 bytes).
type OptionSpec = (&'static str, Option<&'static [&'static str]>);
const BOOL: Option<&[&str]> = Some(&["0", "1"]);
const PREALLOC: OptionSpec = ("preallocation", Some(&["off", "metadata", "falloc", "full"]));
const FILE_OPTIONS: [OptionSpec; 3] =
    [PREALLOC, ("format", Some(&["raw", "qcow2", "vmdk"])), ("is_mountpoint", None)];

impl StorageKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StorageKind::Dir { .. } => "dir",
            StorageKind::Btrfs { .. } => "btrfs",
            StorageKind::ZfsPool { .. } => "zfspool",
            StorageKind::Nfs { .. } => "nfs",
            StorageKind::Iscsi { .. } => "iscsi",
            StorageKind::Rbd { .. } => "rbd",
            StorageKind::Lvm { .. } => "lvm",
            StorageKind::LvmThin { .. } => "lvmthin",
        }
    }

    /// The type's keys as Proxmox names them, with their values.
    pub fn keys(&self) -> Vec<(&'static str, &str)> {
        match self {
            StorageKind::Dir { path } | StorageKind::Btrfs { path } => vec![("path", path)],
            StorageKind::ZfsPool { pool } => vec![("pool", pool)],
            StorageKind::Nfs { server, export, path } => {
                vec![("server", server), ("export", export), ("path", path)]
            }
            StorageKind::Iscsi { portal, target } => vec![("portal", portal), ("target", target)],
            StorageKind::Rbd { pool, monhost } => vec![("pool", pool), ("monhost", monhost)],
            StorageKind::Lvm { vgname } => vec![("vgname", vgname)],
            StorageKind::LvmThin { vgname, thinpool } => vec![("vgname", vgname), ("thinpool", thinpool)],
        }
    }

    /// The content types this type can hold, and those it holds when `content` is unset.
    pub fn allowed_content(&self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            StorageKind::Dir { .. } | StorageKind::Btrfs { .. } => (&CONTENT_TYPES, &["images", "rootdir"]),
            StorageKind::Nfs { .. } => (&CONTENT_TYPES, &["images"]),
            StorageKind::Iscsi { .. } => (&["images"], &["images"]),
            StorageKind::Rbd { .. } => (&["images", "rootdir"], &["images"]),
            StorageKind::ZfsPool { .. } | StorageKind::Lvm { .. } | StorageKind::LvmThin { .. } => {
                (&["images", "rootdir"], &["images", "rootdir"])
            }
        }
    }

    /// Network storages: every node that has them sees the same volumes.
    pub fn always_shared(&self) -> bool {
        matches!(self, StorageKind::Nfs { .. } | StorageKind::Iscsi { .. } | StorageKind::Rbd { .. })
    }

    /// Whether `shared` may be set by hand (a directory on a cluster filesystem, an LVM
    /// volume group on a SAN LUN).
    fn may_be_shared(&self) -> bool {
        matches!(self, StorageKind::Dir { .. } | StorageKind::Btrfs { .. } | StorageKind::Lvm { .. })
    }

    fn options(&self) -> &'static [OptionSpec] {
        match self {
            StorageKind::Dir { .. } => &FILE_OPTIONS,
            StorageKind::Btrfs { .. } => &[PREALLOC, ("nocow", BOOL), ("is_mountpoint", None)],
            StorageKind::Nfs { .. } => {
                &[PREALLOC, ("format", Some(&["raw", "qcow2", "vmdk"])), ("options", None)]
            }
            StorageKind::ZfsPool { .. } => &[("sparse", BOOL), ("blocksize", None), ("mountpoint", None)],
            StorageKind::Iscsi { .. } => &[("username", None)],
            StorageKind::Rbd { .. } => &[("username", None), ("krbd", BOOL), ("namespace", None)],
            StorageKind::Lvm { .. } => &[("saferemove", BOOL), ("tagged_only", BOOL), ("base", None)],
            StorageKind::LvmThin { .. } => &[],
        }
    }

    /// The secret parameter this type takes, if any.
    fn secret_key(&self) -> Option<&'static str> {
        match self {
            StorageKind::Iscsi { .. } => Some("password"),
            StorageKind::Rbd { .. } => Some("keyring"),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            StorageKind::Dir { path } | StorageKind::Btrfs { path } => validate_storage_path("path", path),
            StorageKind::ZfsPool { pool } => validate_name("pool", pool, true),
            StorageKind::Nfs { server, export, path } => {
                validate_host("server", server)?;
                ids::validate_abs_path("export", export)?;
                ids::validate_abs_path("path", path)
            }
            StorageKind::Iscsi { portal, target } => {
                validate_portal("portal", portal)?;
                validate_iqn("target", target)
            }
            StorageKind::Rbd { pool, monhost } => {
                validate_name("pool", pool, false)?;
                monhost
                    .split([',', ';', ' '])
                    .filter(|m| !m.is_empty())
                    .try_for_each(|m| validate_portal("monhost", m))
            }
            StorageKind::Lvm { vgname } => validate_name("vgname", vgname, false),
            StorageKind::LvmThin { vgname, thinpool } => {
                validate_name("vgname", vgname, false)?;
                validate_name("thinpool", thinpool, false)
            }
        }
    }
}

/// Directories a storage must not be (its layout would be made inside them): the root
/// and the system's own trees.
const SYSTEM_DIRS: [&str; 13] = [
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr",
    "/var/run",
];

/// An absolute path for a directory storage: not `/`, not in a system directory.
fn validate_storage_path(field: &str, s: &str) -> Result<(), ValidationError> {
    ids::validate_abs_path(field, s)?;
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty()
        || SYSTEM_DIRS.iter().any(|d| trimmed == *d || trimmed.starts_with(&format!("{d}/")))
    {
        return Err(ValidationError::new(field, format!("{s:?} is the root or a system directory")));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A ZFS dataset path (`tank/vm`, with `/` when `slashes`), an RBD pool, an LVM name:
/// letters, digits, `-_.+`, not starting with `-` (it would read as an option).
fn validate_name(field: &str, s: &str, slashes: bool) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['-', '/'])
        && !s.ends_with('/')
        && !s.contains("//")
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+') || (slashes && b == b'/')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{s:?} is not a valid name")))
    }
}

/// A host name or IPv4/IPv6 address (brackets allowed around IPv6).
fn validate_host(field: &str, s: &str) -> Result<(), ValidationError> {
    let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    let ok = inner.parse::<std::net::IpAddr>().is_ok()
        || (!inner.is_empty()
            && inner.len() <= 253
            && !inner.starts_with(['-', '.'])
            && inner.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{s:?} is not a host name or address")))
    }
}

/// `HOST[:PORT]` (`[v6]:PORT` for IPv6 with a port).
fn validate_portal(field: &str, s: &str) -> Result<(), ValidationError> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(ValidationError::new(field, format!("{s:?} has an invalid port")));
        }
    }
    validate_host(field, host)
}

/// An iSCSI qualified name (`iqn.2003-01.org.example:target0`) or an EUI.
fn validate_iqn(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = (s.starts_with("iqn.") || s.starts_with("eui.") || s.starts_with("naa."))
        && s.len() <= 223
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{s:?} is not an iSCSI name (iqn.YYYY-MM.domain:name)")))
    }
}

fn parse_bool(field: &str, v: &str) -> Result<bool, ValidationError> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ValidationError::new(field, format!("{v:?} is not a boolean"))),
    }
}

/// Proxmox's list separators: `,`, `;`, spaces.
fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ';', ' ', '\t']).filter(|s| !s.is_empty())
}

impl StorageConfig {
    /// Applies `params` (Proxmox's names and string values) on top of `self` for a storage
    /// of `kind`; `delete` lists keys to reset. Unknown keys, keys of another type and bad
    /// values are refused naming the key.
    pub fn apply_params(
        &mut self,
        kind: &StorageKind,
        params: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), ValidationError> {
        let type_keys: Vec<&str> = kind.keys().iter().map(|(k, _)| *k).collect();
        for key in delete {
            match key.as_str() {
                "content" => self.content.clear(),
                "nodes" => self.nodes.clear(),
                "shared" => self.shared = false,
                "disable" => self.disable = false,
                k if Some(k) == kind.secret_key() => self.secret = Secret::default(),
                k if kind.options().iter().any(|(o, _)| *o == k) => {
                    self.options.remove(k);
                }
                k if type_keys.contains(&k) => {
                    return Err(ValidationError::new(
                        k,
                        "is a fixed property of the storage and cannot be deleted",
                    ))
                }
                k => {
                    return Err(ValidationError::new(
                        "delete",
                        format!("{k:?} is not an option of this storage"),
                    ))
                }
            }
        }
        for (key, value) in params {
            let key = key.as_str();
            // A keyring is a file's text (lines); every other value is one line.
            if value.contains('\0') || (key != "keyring" && value.contains('\n')) {
                return Err(ValidationError::new(key, "must not contain a newline or NUL"));
            }
            match key {
                "content" => {
                    let (allowed, _) = kind.allowed_content();
                    let mut set = BTreeSet::new();
                    for c in split_list(value).filter(|c| *c != "none") {
                        if !allowed.contains(&c) {
                            return Err(ValidationError::new(
                                "content",
                                format!(
                                    "{} storages cannot hold {c:?} (they hold {})",
                                    kind.type_name(),
                                    allowed.join(", ")
                                ),
                            ));
                        }
                        set.insert(c.to_string());
                    }
                    self.content = set;
                }
                "nodes" => {
                    let mut set = BTreeSet::new();
                    for n in split_list(value) {
                        ids::validate_dns_label("nodes", n)?;
                        set.insert(n.to_string());
                    }
                    self.nodes = set;
                }
                "shared" => {
                    let shared = parse_bool("shared", value)?;
                    if shared && !kind.may_be_shared() && !kind.always_shared() {
                        return Err(ValidationError::new(
                            "shared",
                            format!("a {} storage is local to each node", kind.type_name()),
                        ));
                    }
                    self.shared = shared;
                }
                "disable" => self.disable = parse_bool("disable", value)?,
                k if Some(k) == kind.secret_key() => {
                    if value.len() > 4096 {
                        return Err(ValidationError::new(k, "is longer than 4096 bytes"));
                    }
                    self.secret = Secret(value.clone());
                }
                k if type_keys.contains(&k) => {
                    if kind.keys().iter().any(|(tk, tv)| *tk == k && *tv != value) {
                        return Err(ValidationError::new(
                            k,
                            "is a fixed property of the storage and cannot change",
                        ));
                    }
                }
                k => {
                    let Some((_, values)) = kind.options().iter().find(|(o, _)| *o == k) else {
                        return Err(ValidationError::new(
                            k,
                            format!("is not an option of {} storages", kind.type_name()),
                        ));
                    };
                    let value = match values {
                        Some(v) if *v == BOOL.unwrap() => u8::from(parse_bool(k, value)?).to_string(),
                        Some(v) if !v.contains(&value.as_str()) => {
                            return Err(ValidationError::new(
                                k,
                                format!("{value:?} is not one of {}", v.join(", ")),
                            ))
                        }
                        _ if value.len() > 256 => {
                            return Err(ValidationError::new(k, "is longer than 256 bytes"))
                        }
                        _ => value.clone(),
                    };
                    self.options.insert(k.to_string(), value);
                }
            }
        }
        Ok(())
    }

    /// The content this storage holds: `content`, or the type's default.
    pub fn effective_content(&self, kind: &StorageKind) -> BTreeSet<String> {
        if self.content.is_empty() {
            kind.allowed_content().1.iter().map(|c| c.to_string()).collect()
        } else {
            self.content.clone()
        }
    }
}

impl StoragePool {
    /// A storage from Proxmox's flat parameters (`POST /storage`): `storage`, `type`, the
    /// type's keys and any common or type option. Missing keys are refused by name.
    pub fn from_params(params: &BTreeMap<String, String>) -> Result<StoragePool, ValidationError> {
        let id = params.get("storage").ok_or_else(|| ValidationError::new("storage", "is required"))?;
        ids::validate_storage_id("storage", id)?;
        let ty = params.get("type").ok_or_else(|| ValidationError::new("type", "is required"))?;
        let get = |k: &str| {
            params
                .get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| ValidationError::new(k, format!("is required for a {ty} storage")))
        };
        let kind = match ty.as_str() {
            "dir" => StorageKind::Dir { path: get("path")? },
            "btrfs" => StorageKind::Btrfs { path: get("path")? },
            "zfspool" => StorageKind::ZfsPool { pool: get("pool")? },
            "nfs" => {
                let (server, export) = (get("server")?, get("export")?);
                let path = params.get("path").cloned().unwrap_or_else(|| format!("/mnt/pve/{id}"));
                StorageKind::Nfs { server, export, path }
            }
            "iscsi" => StorageKind::Iscsi { portal: get("portal")?, target: get("target")? },
            "rbd" => StorageKind::Rbd {
                pool: params.get("pool").cloned().unwrap_or("rbd".into()),
                monhost: get("monhost")?,
            },
            "lvm" => StorageKind::Lvm { vgname: get("vgname")? },
            "lvmthin" => StorageKind::LvmThin { vgname: get("vgname")?, thinpool: get("thinpool")? },
            other => {
                return Err(ValidationError::new(
                    "type",
                    format!("{other:?} is not a storage type Horcrux serves ({})", STORAGE_TYPES.join(", ")),
                ))
            }
        };
        let mut config = StorageConfig { shared: kind.always_shared(), ..StorageConfig::default() };
        let rest: BTreeMap<String, String> = params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "storage" | "type"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        config.apply_params(&kind, &rest, &[])?;
        let pool = StoragePool { id: id.clone(), kind, revision: 0, config };
        pool.validate()?;
        Ok(pool)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        ids::validate_storage_id("storage", &self.id)?;
        self.kind.validate()?;
        if self.kind.always_shared() && !self.config.shared {
            return Err(ValidationError::new(
                "shared",
                format!("a {} storage is always shared", self.kind.type_name()),
            ));
        }
        let (allowed, _) = self.kind.allowed_content();
        if let Some(c) = self.config.content.iter().find(|c| !allowed.contains(&c.as_str())) {
            return Err(ValidationError::new("content", format!("{c:?} is not allowed here")));
        }
        Ok(())
    }

    /// The pool as an allocation of a disk in `format` sees it: a directory storage with that
    /// `format` option; other types hold raw volumes only, so anything else is refused.
    pub fn for_format(&self, field: &str, format: Option<&str>) -> Result<StoragePool, ValidationError> {
        let Some(f) = format else { return Ok(self.clone()) };
        match &self.kind {
            StorageKind::Dir { .. } | StorageKind::Nfs { .. } => {
                let mut p = self.clone();
                p.config.options.insert("format".into(), f.to_string());
                Ok(p)
            }
            _ if f == "raw" => Ok(self.clone()),
            _ => Err(ValidationError::new(field, format!("storage {} holds raw volumes only", self.id))),
        }
    }

    /// Whether the storage exists on `node` (`nodes` unset: everywhere).
    pub fn on_node(&self, node: &str) -> bool {
        self.config.nodes.is_empty() || self.config.nodes.contains(node)
    }

    /// Whether every node it exists on sees the same volumes.
    pub fn shared(&self) -> bool {
        self.config.shared || self.kind.always_shared()
    }

    pub fn holds(&self, content: &str) -> bool {
        self.config.effective_content(&self.kind).contains(content)
    }

    /// The storage as `GET /storage/{storage}` answers it: Proxmox's keys, the secret left
    /// out, booleans as 0/1, lists comma-separated.
    pub fn to_params(&self) -> BTreeMap<String, serde_json::Value> {
        use serde_json::json;
        let mut out = BTreeMap::new();
        out.insert("storage".into(), json!(self.id));
        out.insert("type".into(), json!(self.kind.type_name()));
        for (k, v) in self.kind.keys() {
            out.insert(k.into(), json!(v));
        }
        let content: Vec<&str> = CONTENT_TYPES
            .iter()
            .copied()
            .filter(|c| self.config.effective_content(&self.kind).contains(*c))
            .collect();
        out.insert("content".into(), json!(content.join(",")));
        if !self.config.nodes.is_empty() {
            out.insert(
                "nodes".into(),
                json!(self.config.nodes.iter().cloned().collect::<Vec<_>>().join(",")),
            );
        }
        if self.shared() {
            out.insert("shared".into(), json!(1));
        }
        if self.config.disable {
            out.insert("disable".into(), json!(1));
        }
        for (k, v) in &self.config.options {
            let is_bool = self.kind.options().iter().any(|(o, vals)| o == k && *vals == BOOL);
            out.insert(k.clone(), if is_bool { json!(v.parse::<u8>().unwrap_or(0)) } else { json!(v) });
        }
        out.insert(
            "digest".into(),
            json!(crate::ids::sha256_hex(&format!("{}:{}", self.id, self.revision))[..40]),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_type_parses_its_keys_and_refuses_missing_ones_by_name() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[("type", "dir"), ("path", "/srv/d")], "path"),
            (&[("type", "btrfs"), ("path", "/srv/b")], "path"),
            (&[("type", "zfspool"), ("pool", "tank/vm")], "pool"),
            (&[("type", "nfs"), ("server", "10.0.0.1"), ("export", "/export")], "export"),
            (&[("type", "iscsi"), ("portal", "10.0.0.2:3260"), ("target", "iqn.2003-01.org.x:t0")], "target"),
            (&[("type", "rbd"), ("monhost", "10.0.0.3 10.0.0.4:6789")], "monhost"),
            (&[("type", "lvm"), ("vgname", "pve")], "vgname"),
            (&[("type", "lvmthin"), ("vgname", "pve"), ("thinpool", "data")], "thinpool"),
        ];
        for (kv, required) in cases {
            let mut p = params(kv);
            p.insert("storage".into(), "s1".into());
            let pool = StoragePool::from_params(&p).unwrap();
            assert_eq!(pool.kind.type_name(), p["type"]);
            assert_eq!(pool.shared(), matches!(p["type"].as_str(), "nfs" | "iscsi" | "rbd"));
            let printed = pool.to_params();
            assert_eq!(printed["type"], p["type"].as_str());
            p.remove(required);
            assert_eq!(StoragePool::from_params(&p).unwrap_err().field, required, "{p:?}");
        }
        let e = StoragePool::from_params(&params(&[("storage", "x"), ("type", "cifs")])).unwrap_err();
        assert_eq!(e.field, "type");
    }

    #[test]
    fn options_and_content_are_checked_per_type() {
        let base = [("storage", "z"), ("type", "zfspool"), ("pool", "tank")];
        let with = |extra: (&str, &str)| {
            let mut p = params(&base);
            p.insert(extra.0.into(), extra.1.into());
            StoragePool::from_params(&p)
        };
        assert_eq!(with(("content", "iso")).unwrap_err().field, "content");
        assert_eq!(with(("path", "/x")).unwrap_err().field, "path");
        assert_eq!(with(("shared", "1")).unwrap_err().field, "shared");
        assert_eq!(with(("sparse", "maybe")).unwrap_err().field, "sparse");
        assert_eq!(with(("pool", "-o evil")).unwrap_err().field, "pool");
        let p = with(("sparse", "true")).unwrap();
        assert_eq!(p.to_params()["sparse"], 1);
        assert_eq!(p.to_params()["content"], "images,rootdir");
        let d = StoragePool::from_params(&params(&[
            ("storage", "d"),
            ("type", "dir"),
            ("path", "/d"),
            ("content", "iso,images;vztmpl"),
            ("nodes", "n1,n2"),
            ("preallocation", "full"),
        ]))
        .unwrap();
        assert_eq!(d.to_params()["content"], "images,vztmpl,iso");
        assert!(d.on_node("n2") && !d.on_node("n3"));
        for bad in ["/d/../etc", "/", "/etc/pve", "/proc", "rel"] {
            let p = params(&[("storage", "d"), ("type", "dir"), ("path", bad)]);
            assert_eq!(StoragePool::from_params(&p).unwrap_err().field, "path", "{bad}");
        }
    }

    #[test]
    fn updates_keep_type_keys_and_secrets_never_print() {
        let mut p = StoragePool::from_params(&params(&[
            ("storage", "san"),
            ("type", "iscsi"),
            ("portal", "192.0.2.1"),
            ("target", "iqn.2003-01.org.x:t0"),
            ("username", "chap"),
            ("password", "hunter2"),
        ]))
        .unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&p.to_params()).unwrap().contains("hunter2"));
        let kind = p.kind.clone();
        let e = p.config.apply_params(&kind, &params(&[("portal", "192.0.2.9")]), &[]).unwrap_err();
        assert_eq!(e.field, "portal");
        let e = p.config.apply_params(&kind, &BTreeMap::new(), &["target".into()]).unwrap_err();
        assert_eq!(e.field, "target");
        p.config.apply_params(&kind, &params(&[("disable", "1")]), &["password".into()]).unwrap();
        assert!(p.config.disable && p.config.secret.0.is_empty());
    }
}
