//! The replicated domain objects: nodes, storage pools, guests and API tokens.

use serde::{Deserialize, Serialize};

use crate::ids::{self, ValidationError};

/// Smallest and largest guest memory accepted, in MiB (Proxmox's lower bound is 16).
pub const MEMORY_MIB_MIN: u64 = 16;
pub const MEMORY_MIB_MAX: u64 = 4 * 1024 * 1024;
pub const CORES_MAX: u32 = 512;
pub const DISK_MIB_MAX: u64 = 64 * 1024 * 1024;
pub const DISKS_MAX: usize = 16;
pub const CMDLINE_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// Address of the node's HTTPS API, as other nodes reach it.
    pub api_addr: String,
    pub revision: u64,
    /// What the node reported of itself (`ReportNodeFacts`); placement reads them.
    #[serde(default)]
    pub facts: NodeFacts,
}
crate::evolving!(NodeInfo { name, api_addr, revision } added { facts: NodeFacts::default() });

/// A node's hardware as placement sees it: CPU architecture (`uname -m`), the
/// architectures it can emulate (its `qemu-system-*` binaries), CPUs and memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub arch: String,
    pub emulates: std::collections::BTreeSet<String>,
    pub cpus: u32,
    pub mem_mib: u64,
}
crate::evolving!(NodeFacts { arch, emulates, cpus, mem_mib });

/// The power state the cluster wants a guest in, and how to get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum DesiredPower {
    Running,
    /// `graceful_timeout_s: Some(n)` asks the guest to power off and stops it hard after n s;
    /// `None` stops it hard at once.
    Stopped {
        graceful_timeout_s: Option<u32>,
    },
}

impl DesiredPower {
    pub fn is_running(&self) -> bool {
        matches!(self, DesiredPower::Running)
    }
}

/// Direct kernel boot: how tests boot a real guest in seconds. `kernel` and `initrd` are
/// volumes (`local:snippets/vmlinuz`) or, set by root@pam only, host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
}
crate::evolving!(KernelBoot { kernel, initrd, cmdline });

impl KernelBoot {
    /// The files it boots from, each with the field that names it.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("boot.kernel", self.kernel.as_str())];
        out.extend(self.initrd.as_deref().map(|i| ("boot.initrd", i)));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub storage: String,
    pub size_mib: u64,
    /// Set once the volume exists: `local:101/vm-101-disk-0.qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Where the disk is attached (`virtio0`, `scsi1`, `sata0`, `ide2`); `None` is
    /// `virtio<position in the list>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The image format asked for when it is allocated (`raw`, `qcow2`, `vmdk`; on
    /// directory storages); `None`: the storage's. Once allocated the volume's name says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}
crate::evolving!(DiskSpec { storage, size_mib, volume, slot } added { format: None });

/// A CD-ROM drive (Proxmox's `ideN: STORAGE:iso/NAME,media=cdrom`, or `none,media=cdrom`
/// for an empty drive): read-only, shared by any number of guests, never freed with one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdromSpec {
    /// `ide2`, `sata1`, `scsi3`: not a virtio slot (those are disks only).
    pub slot: String,
    /// An ISO image (`local:iso/debian.iso`); none: the drive is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}
crate::evolving!(CdromSpec { slot, volume });

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub memory_mib: u64,
    pub cores: u32,
    #[serde(default = "one_socket")]
    pub sockets: u32,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<KernelBoot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<crate::vmconfig::NetSpec>,
    /// Proxmox options kept as given (`vmconfig::KEPT_OPTIONS`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
    /// The guest's CPU architecture (`crate::arch`); none: x86_64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Whether it may run emulated (TCG) on a node of another architecture.
    #[serde(default, skip_serializing_if = "is_allowed")]
    pub emulation: crate::arch::Emulation,
    /// Volumes of the guest attached to nothing (Proxmox's `unusedN`, N the position): a
    /// detached disk, the source a `move_disk` kept. Deleting one frees its volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unused: Vec<String>,
    /// CD-ROM drives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdroms: Vec<CdromSpec>,
}
crate::evolving!(VmSpec { memory_mib, cores, sockets, disks, boot, nets, options } added {
    arch: None,
    emulation: crate::arch::Emulation::Allowed,
    unused: Vec::new(),
    cdroms: Vec::new(),
});

fn is_allowed(e: &crate::arch::Emulation) -> bool {
    e.is_allowed()
}

fn one_socket() -> u32 {
    1
}

impl Default for VmSpec {
    /// 512 MiB, one core, nothing attached.
    fn default() -> Self {
        Self {
            memory_mib: 512,
            cores: 1,
            sockets: 1,
            disks: Vec::new(),
            boot: None,
            nets: Vec::new(),
            options: Default::default(),
            arch: None,
            emulation: Default::default(),
            unused: Vec::new(),
            cdroms: Vec::new(),
        }
    }
}

pub const SOCKETS_MAX: u32 = 4;

impl VmSpec {
    /// Each disk's slot (`virtio0`, `scsi1`, ...), in the order of `disks`.
    pub fn disk_slots(&self) -> Vec<String> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| d.slot.clone().unwrap_or_else(|| format!("virtio{i}")))
            .collect()
    }

    /// The lowest disk index (`vm-VMID-disk-N`) none of the guest's disks or unused volumes
    /// has, nor any of `also`: each storage names its volumes its own way, the index is
    /// what they share.
    pub fn free_disk_index(&self, also: &[&str]) -> usize {
        let used: Vec<usize> = self
            .disks
            .iter()
            .filter_map(|d| d.volume.as_deref())
            .chain(self.unused.iter().map(String::as_str))
            .chain(also.iter().copied())
            .filter_map(ids::disk_index)
            .collect();
        (0..).find(|n| !used.contains(n)).unwrap_or(0)
    }

    /// Checks everything that does not depend on cluster state.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(MEMORY_MIB_MIN..=MEMORY_MIB_MAX).contains(&self.memory_mib) {
            return Err(ValidationError::new(
                "memory_mib",
                format!("{} out of range {MEMORY_MIB_MIN}..={MEMORY_MIB_MAX}", self.memory_mib),
            ));
        }
        if !(1..=CORES_MAX).contains(&self.cores) {
            return Err(ValidationError::new(
                "cores",
                format!("{} out of range 1..={CORES_MAX}", self.cores),
            ));
        }
        if !(1..=SOCKETS_MAX).contains(&self.sockets) || self.cores * self.sockets > CORES_MAX {
            return Err(ValidationError::new(
                "sockets",
                format!("1..={SOCKETS_MAX}, and at most {CORES_MAX} cores in all"),
            ));
        }
        let mut slots = std::collections::BTreeSet::new();
        for (i, slot) in self.disk_slots().iter().enumerate() {
            crate::vmconfig::parse_disk_slot(&format!("disks[{i}].slot"), slot)?;
            if !slots.insert(slot.clone()) {
                return Err(ValidationError::new(
                    format!("disks[{i}].slot"),
                    format!("{slot} is used twice"),
                ));
            }
        }
        for (i, c) in self.cdroms.iter().enumerate() {
            let field = format!("cdroms[{i}].slot");
            crate::vmconfig::parse_disk_slot(&field, &c.slot)?;
            if c.slot.starts_with("virtio") {
                return Err(ValidationError::new(field, "a CD-ROM drive is on ide, sata or scsi"));
            }
            if !slots.insert(c.slot.clone()) {
                return Err(ValidationError::new(field, format!("{} is used twice", c.slot)));
            }
            if let Some(v) = &c.volume {
                ids::parse_iso_volume(&format!("cdroms[{i}].volume"), v)?;
            }
        }
        let mut nets = std::collections::BTreeSet::new();
        for n in &self.nets {
            let field = format!("net{}", n.index);
            n.validate(&field)?;
            if !nets.insert(n.index) {
                return Err(ValidationError::new(field, "given twice"));
            }
        }
        crate::vmconfig::validate_options(&self.options)?;
        if let Some(a) = &self.arch {
            crate::arch::validate_name("arch", a)?;
        }
        if self.disks.len() > DISKS_MAX {
            return Err(ValidationError::new("disks", format!("at most {DISKS_MAX} disks")));
        }
        for (i, d) in self.disks.iter().enumerate() {
            ids::validate_storage_id(&format!("disks[{i}].storage"), &d.storage)?;
            if d.format.as_deref().is_some_and(|f| !matches!(f, "raw" | "qcow2" | "vmdk")) {
                return Err(ValidationError::new(format!("disks[{i}].format"), "raw, qcow2 or vmdk"));
            }
            if !(1..=DISK_MIB_MAX).contains(&d.size_mib) {
                return Err(ValidationError::new(
                    format!("disks[{i}].size_mib"),
                    format!("{} out of range 1..={DISK_MIB_MAX}", d.size_mib),
                ));
            }
            if let Some(v) = &d.volume {
                let (storage, _) = ids::parse_volume_id(v)
                    .map_err(|e| ValidationError::new(format!("disks[{i}].volume"), e.message))?;
                if storage != d.storage {
                    return Err(ValidationError::new(
                        format!("disks[{i}].volume"),
                        "volume is on another storage than the disk",
                    ));
                }
            }
        }
        if let Some(b) = &self.boot {
            ids::parse_boot_file("boot.kernel", &b.kernel)?;
            if let Some(initrd) = &b.initrd {
                ids::parse_boot_file("boot.initrd", initrd)?;
            }
            if b.cmdline.len() > CMDLINE_MAX || b.cmdline.contains(['\0', '\n']) {
                return Err(ValidationError::new(
                    "boot.cmdline",
                    format!("at most {CMDLINE_MAX} bytes, no NUL or newline"),
                ));
            }
        }
        Ok(())
    }
}

/// What a guest is. Containers join as a second variant with the same envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GuestConfig {
    Qemu(VmSpec),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    pub vmid: u32,
    pub name: String,
    /// The node that owns and runs the guest.
    pub node: String,
    pub config: GuestConfig,
    pub desired: DesiredPower,
    /// Log index of the last change; updates are compare-and-set on it.
    pub revision: u64,
    pub created_ms: u64,
    /// Its snapshots, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub snapshots: std::collections::BTreeMap<String, crate::snapshot::Snapshot>,
    /// The snapshot the current state grew from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A snapshot whose saved RAM the next start resumes from (set by a rollback to a
    /// snapshot with `vmstate`, cleared once the guest runs from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}
crate::evolving!(Guest { vmid, name, node, config, desired, revision, created_ms } added {
    snapshots: Default::default(),
    parent: None,
    resume: None,
});

impl Guest {
    pub fn vm_spec(&self) -> &VmSpec {
        match &self.config {
            GuestConfig::Qemu(s) => s,
        }
    }
}

/// An API token; only a hash of its secret is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// `USER@REALM!TOKENID`, e.g. `root@pam!admin`.
    pub id: String,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    #[serde(default)]
    pub privsep: bool,
    /// Unix seconds after which the token is refused; 0: never.
    #[serde(default)]
    pub expire: u64,
    pub revision: u64,
}
crate::evolving!(ApiToken { id, secret_sha256, privsep, expire, revision });

impl ApiToken {
    /// `alice@pve!ci` -> `alice@pve`.
    pub fn user(&self) -> &str {
        self.id.split('!').next().unwrap_or(&self.id)
    }
}

/// A user of the built-in `pve` realm or of `pam`. `root@pam` always exists implicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub userid: String,
    pub comment: String,
    pub groups: Vec<String>,
    pub expire: u64,
    pub revision: u64,
    /// Argon2id PHC string of the password (`@pve` users); never the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Second factor, when enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tfa: Option<Tfa>,
    /// A disabled user can neither log in nor use its API tokens.
    #[serde(default = "yes")]
    pub enable: bool,
    #[serde(default)]
    pub email: String,
    /// The log index of the last change to the user's credentials or account (password,
    /// second factor, enable, expiry): tickets are signed over it, so such a change ends
    /// every ticket issued before it.
    #[serde(default)]
    pub credentials_revision: u64,
}
crate::evolving!(User {
    userid,
    comment,
    groups,
    expire,
    revision,
    password_hash,
    tfa,
    enable,
    email,
    credentials_revision
});

fn yes() -> bool {
    true
}

impl User {
    /// Whether the user may authenticate at Unix time `now_s`.
    pub fn active(&self, now_s: u64) -> bool {
        self.enable && (self.expire == 0 || self.expire > now_s)
    }
}

/// A resource pool: guests and storages grouped so that rights granted on `/pool/{id}`
/// apply to each member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub poolid: String,
    pub comment: String,
    pub vms: std::collections::BTreeSet<u32>,
    pub storage: std::collections::BTreeSet<String>,
    pub revision: u64,
}
crate::evolving!(Pool { poolid, comment, vms, storage, revision });

/// A group of users, named in ACL entries (`@group` in Proxmox's UI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub groupid: String,
    pub comment: String,
    pub revision: u64,
}
crate::evolving!(Group { groupid, comment, revision });

/// A TOTP second factor: the shared secret (base32, replicated like Proxmox's
/// `priv/tfa.cfg`), the last time step accepted (no code is accepted twice), and the
/// SHA-256 hashes of the recovery codes (`None` once used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tfa {
    pub totp_secret: String,
    pub last_step: u64,
    pub recovery: Vec<Option<String>>,
}
crate::evolving!(Tfa { totp_secret, last_step, recovery });

/// The cluster CA, replicated so whichever node leads can sign a joining node's
/// certificate (Proxmox keeps its CA key in the replicated /etc/pve/priv the same way).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCaRecord {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of `cert_pem`'s DER.
    #[serde(default)]
    pub fingerprint: String,
    /// During a CA roll: the CA being replaced, still trusted (certificate only; its key is
    /// not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_cert_pem: Option<String>,
}
crate::evolving!(ClusterCaRecord { cert_pem, key_pem, fingerprint, previous_cert_pem });

impl ClusterCaRecord {
    /// The CA certificates members trust: the current one, and the previous during a roll.
    pub fn trusted_pems(&self) -> Vec<&str> {
        std::iter::once(self.cert_pem.as_str()).chain(self.previous_cert_pem.as_deref()).collect()
    }
}

impl std::fmt::Debug for ClusterCaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCaRecord { .. }")
    }
}

/// A key tickets and CSRF tokens are signed with (HMAC-SHA256), of its own: not derived
/// from any other secret. Replicated so every node accepts every node's tickets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    /// The log index that installed it.
    pub id: u64,
    /// 32 random bytes, lower-case hex.
    pub secret_hex: String,
    pub created_ms: u64,
}
crate::evolving!(TicketKey { id, secret_hex, created_ms });

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey {{ id: {}, created_ms: {}, .. }}", self.id, self.created_ms)
    }
}

/// The current ticket key and the one it replaced: tickets signed with either are accepted,
/// so a rotation (every 24 h) never logs anyone out (tickets live 2 h).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKeys {
    pub current: TicketKey,
    #[serde(default)]
    pub previous: Option<TicketKey>,
}
crate::evolving!(TicketKeys { current, previous });

/// A member's transport certificate, named by its SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCert {
    pub name: String,
    pub fingerprint: String,
    /// The certificate this one renewed: still accepted until it expires (TLS refuses it
    /// then), so a member that crashed before saving its new certificate is not locked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Fingerprint of the CA that signed it (empty: recorded before CA rolls existed).
    #[serde(default)]
    pub ca: String,
}
crate::evolving!(MemberCert { name, fingerprint, previous, ca });

/// A single-use bootstrap token for joining the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The node that used it; a used token is refused.
    pub used_by: Option<String>,
    /// The Raft node id given to that node.
    #[serde(default)]
    pub node_id: Option<u64>,
    pub revoked: bool,
}
crate::evolving!(JoinToken { id, secret_sha256, created_ms, expires_ms, used_by, node_id, revoked });

/// A node of an imported `corosync.conf` nodelist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorosyncNode {
    pub name: String,
    pub nodeid: u32,
    pub ring0_addr: String,
    #[serde(default = "one_vote")]
    pub quorum_votes: u32,
    /// Every link's address (`ringN_addr`, N the link number), ring 0 first.
    #[serde(default)]
    pub links: Vec<CorosyncLink>,
}
crate::evolving!(CorosyncNode { name, nodeid, ring0_addr, quorum_votes, links });

/// One of a node's corosync links: `ringN_addr` with N = `link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorosyncLink {
    pub link: u8,
    pub addr: String,
}
crate::evolving!(CorosyncLink { link, addr });

fn one_vote() -> u32 {
    1
}

/// What `horcrux cluster import-corosync` records from a `corosync.conf`: node names and
/// ids, and the votequorum settings that quorum reporting follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorosyncConfig {
    pub cluster_name: String,
    pub nodes: Vec<CorosyncNode>,
    pub expected_votes: Option<u32>,
    pub two_node: bool,
    /// Explicit setting; `None` means votequorum's default (on iff two_node).
    pub wait_for_all: Option<bool>,
}
crate::evolving!(CorosyncConfig { cluster_name, nodes, expected_votes, two_node, wait_for_all });

/// An authentication realm besides the built-in `pam` and `pve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RealmConfig {
    /// LDAP (or Active Directory over LDAP): find the user's entry by `user_attr` under
    /// `base_dn` (binding as `bind_dn` first if set), then bind as that entry.
    Ldap {
        server: String,
        port: u16,
        base_dn: String,
        user_attr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bind_dn: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bind_password: Option<String>,
        /// Active Directory: the domain; a user is then also found by its
        /// `userPrincipalName` `NAME@DOMAIN`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
}

/// What the host says about a guest right now (reported by the hypervisor driver, shown by
/// the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "lowercase")]
pub enum ObservedPower {
    Running,
    /// The process exists but the CPUs are stopped (QMP `stop`, or an error state).
    Paused,
    Stopped,
}
