//! Every mutation of cluster state, as it travels through the Raft log.

use serde::{Deserialize, Serialize};

use crate::ha::resources::{RequestedState, ServiceState};
use crate::ids::ValidationError;
use crate::model::{CorosyncConfig, DesiredPower, GuestConfig};
use crate::storage::{StorageConfig, StorageKind, StoragePool};

/// One log entry's payload: a command plus the wall-clock time the proposer assigned,
/// so that `apply` never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub ts_ms: u64,
    pub cmd: Command,
    /// Who asked, when an API caller did: `apply` then refuses a change of access control
    /// (users, credentials, ACL entries, roles, groups, pools) that would give anyone a
    /// right the caller does not hold (`state/authority.rs`). `None`: the daemon itself
    /// (bootstrap, login bookkeeping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::access::Actor>,
    /// The proposer's client id and sequence number: a request committed twice (a retry
    /// after an unknown outcome, a duplicated message) is applied once and answers the first
    /// result again (Raft dissertation §6.3). `None`: never retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}
crate::evolving!(Request { ts_ms, cmd, actor, id });

/// Who proposed a request (a random id per proposing process) and its sequence number.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Add a node or update its API address.
    RegisterNode {
        name: String,
        api_addr: String,
    },
    /// Add a `dir` storage with the type's defaults (the node's `local`); refused if the
    /// id exists. Kept for the records that hold it; `CreateStorage` is the general form.
    AddStorage {
        id: String,
        kind: StorageKind,
    },
    /// Create or rotate an API token (`USER@REALM!TOKENID`).
    SetApiToken {
        id: String,
        secret_sha256: String,
        /// The token's rights are what both its user and its own ACL entries grant.
        #[serde(default)]
        privsep: bool,
        /// Unix seconds after which the token is refused; 0: never.
        #[serde(default)]
        expire: u64,
    },
    /// Remove an API token (`USER@REALM!TOKENID`) and its ACL entries.
    DeleteApiToken {
        id: String,
    },
    /// Add a user (`NAME@pve` or `NAME@pam`); refused if it exists.
    CreateUser {
        userid: String,
        #[serde(default)]
        comment: String,
        #[serde(default)]
        groups: Vec<String>,
        /// Unix seconds after which the user cannot log in; 0: never.
        #[serde(default)]
        expire: u64,
    },
    /// Set a `@pve` user's password, as an Argon2id hash computed by the API node.
    SetPassword {
        userid: String,
        password_hash: String,
    },
    /// Enrol (or with `None`, remove) a user's TOTP second factor.
    SetTfa {
        userid: String,
        tfa: Option<crate::model::Tfa>,
    },
    /// A second factor was used at login: TOTP time step `step` (refused unless newer than
    /// the last one), or recovery code number `recovery` (refused if already used).
    UseTfa {
        userid: String,
        step: Option<u64>,
        recovery: Option<usize>,
    },
    /// Add or replace (or with `None`, remove) an authentication realm.
    SetRealm {
        realm: String,
        config: Option<crate::model::RealmConfig>,
    },
    /// Change a user's properties; `None` leaves one as it is. With `append`, `groups` are
    /// added to the user's groups instead of replacing them.
    UpdateUser {
        userid: String,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        groups: Option<Vec<String>>,
        #[serde(default)]
        append: bool,
        #[serde(default)]
        expire: Option<u64>,
        #[serde(default)]
        enable: Option<bool>,
    },
    /// Create or replace (or with `None`, delete) a custom role. Deleting a role also removes
    /// the ACL entries that grant it.
    SetRole {
        roleid: String,
        privs: Option<std::collections::BTreeSet<String>>,
    },
    /// Add a group; refused if it exists.
    CreateGroup {
        groupid: String,
        #[serde(default)]
        comment: String,
    },
    /// Remove a group, its members' membership and its ACL entries.
    DeleteGroup {
        groupid: String,
    },
    /// Add a resource pool; refused if it exists.
    CreatePool {
        poolid: String,
        #[serde(default)]
        comment: String,
    },
    /// Change a pool's comment, or add (with `delete`, remove) guests and storages. A guest
    /// belongs to at most one pool.
    UpdatePool {
        poolid: String,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        vms: Vec<u32>,
        #[serde(default)]
        storage: Vec<String>,
        #[serde(default)]
        delete: bool,
    },
    /// Remove an empty pool and the ACL entries on it.
    DeletePool {
        poolid: String,
    },
    /// Remove a user with its API tokens and ACL entries.
    DeleteUser {
        userid: String,
    },
    /// Grant (or with `delete`, revoke) a role on a path to a user, group or token.
    SetAcl {
        path: String,
        ugid: crate::access::Ugid,
        role: String,
        propagate: bool,
        #[serde(default)]
        delete: bool,
    },
    /// Create a guest, stopped. Disk volumes must already exist and be named in the config.
    CreateGuest {
        vmid: u32,
        name: String,
        node: String,
        config: GuestConfig,
        /// Also make it a member of this resource pool (which must exist).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// Replace a guest's name and config.
    UpdateGuest {
        vmid: u32,
        expected_revision: Option<u64>,
        name: String,
        config: GuestConfig,
    },
    /// Change the power state the cluster wants.
    SetDesiredPower {
        vmid: u32,
        expected_revision: Option<u64>,
        desired: DesiredPower,
    },
    /// Move a stopped guest to another node (offline migration). The owner proposes it
    /// after checking that the guest's process is gone, so it never runs on two nodes.
    MigrateGuest {
        vmid: u32,
        expected_revision: Option<u64>,
        target: String,
    },
    /// Remove a guest; refused while it is meant to run.
    DeleteGuest {
        vmid: u32,
        expected_revision: Option<u64>,
    },
    /// Record the cluster CA; set once, at cluster init.
    SetClusterCa {
        cert_pem: String,
        key_pem: String,
        /// SHA-256 of the certificate's DER (member records name their signer by it).
        #[serde(default)]
        fingerprint: String,
    },
    /// Start a CA roll: `cert_pem` becomes the CA that signs, the current one stays trusted
    /// until every member holds (and has confirmed) a certificate from the new one.
    RotateClusterCa {
        cert_pem: String,
        key_pem: String,
        fingerprint: String,
    },
    /// End a CA roll: the previous CA (and every certificate it signed) stops being trusted.
    /// Refused while a member has not confirmed a certificate from the current CA.
    FinishCaRotation,
    /// Create a join token valid until `expires_ms`.
    CreateJoinToken {
        id: String,
        secret_sha256: String,
        expires_ms: u64,
    },
    /// Use a join token for `node`: refused if unknown, wrong secret, used, revoked or expired.
    ConsumeJoinToken {
        id: String,
        secret_sha256: String,
        node: String,
    },
    RevokeJoinToken {
        id: String,
    },
    /// Record member `node_id`'s transport certificate (its SHA-256 fingerprint): the
    /// transport accepts a peer only with a recorded certificate of a current member.
    SetMemberCert {
        node_id: u64,
        name: String,
        fingerprint: String,
        /// A renewal: the member's current certificate stays accepted (until it expires).
        #[serde(default)]
        keep_previous: bool,
        /// Fingerprint of the CA that signed it.
        #[serde(default)]
        ca: String,
    },
    /// Set a cluster-wide option (Proxmox's datacenter.cfg keys such as `keyboard`,
    /// `migration`, `console`); an empty value removes it.
    SetClusterOption {
        key: String,
        value: String,
    },
    /// Forget a node that left the Raft membership; refused while it owns guests.
    RemoveNode {
        name: String,
    },
    /// Install a new ticket-signing key; the current one becomes the previous one. Refused
    /// unless `replaces` names the current key (`None`: there is none yet), so nodes that
    /// rotate at the same time install one key, not two.
    RotateTicketKey {
        secret_hex: String,
        replaces: Option<u64>,
    },
    /// Record an imported corosync.conf (node names and ids, votequorum settings).
    ImportCorosync {
        config: CorosyncConfig,
    },
    /// A node reports its hardware (architecture, emulators, CPUs, memory) for placement.
    ReportNodeFacts {
        name: String,
        facts: crate::model::NodeFacts,
    },
    /// Add (`create`; refused if it exists) or change an HA resource: what the user asks for.
    SetHaResource {
        sid: String,
        create: bool,
        state: RequestedState,
        max_restart: u32,
        max_relocate: u32,
        failback: bool,
        comment: String,
    },
    DeleteHaResource {
        sid: String,
    },
    /// Add (`create`; refused if it exists) or replace an HA rule; refused when it conflicts
    /// with the other enabled rules (Proxmox's feasibility checks).
    SetHaRule {
        create: bool,
        rule: crate::ha::rules::Rule,
    },
    DeleteHaRule {
        rule: String,
    },
    /// The HA manager (or the owner completing a move) changes a resource's service state,
    /// compare-and-set on its revision: optionally moving its guest to `node`, setting
    /// whether it should run, and recording the nodes it failed on and its move target.
    HaTransition {
        sid: String,
        expected_revision: u64,
        service: ServiceState,
        node: Option<String>,
        run: Option<bool>,
        failed_nodes: Vec<String>,
        target: Option<String>,
    },
    /// A user asks to move a resource to `node` (`relocate`: stop, move, start; `migrate`
    /// does the same until live migration exists).
    HaMove {
        sid: String,
        node: String,
        live: bool,
    },
    /// The owner reports that starting the resource's guest failed on `node`.
    HaStartFailed {
        sid: String,
        node: String,
    },
    /// Register (`create`; refused if it exists) or change a guest architecture; built-in
    /// names are reserved.
    SetArchitecture {
        create: bool,
        arch: crate::arch::Architecture,
    },
    /// Refused while a guest uses it.
    DeleteArchitecture {
        name: String,
    },
    /// Add a storage (`storage.cfg`'s entry); refused if the id exists.
    CreateStorage {
        pool: StoragePool,
    },
    /// Replace what `PUT /storage/{id}` changes; the type and its keys stay.
    UpdateStorage {
        id: String,
        config: StorageConfig,
    },
    /// Remove a storage's configuration (its volumes stay where they are); refused while
    /// a guest has a disk on it.
    DeleteStorage {
        id: String,
    },
    /// Record a snapshot its disks now have (taken by the owner); the guest's current
    /// state then grows from it.
    CreateSnapshot {
        vmid: u32,
        snapshot: crate::snapshot::Snapshot,
    },
    /// Forget a snapshot (its disks' snapshots are gone); its children take its parent.
    DeleteSnapshot {
        vmid: u32,
        name: String,
    },
    /// The disks are back at snapshot `name`: the config becomes its config, the current
    /// state grows from it, and a snapshot with RAM is what the next start resumes from.
    RollbackSnapshot {
        vmid: u32,
        name: String,
        expected_revision: Option<u64>,
    },
    /// Change a snapshot's description.
    SetSnapshotDescription {
        vmid: u32,
        name: String,
        description: String,
    },
    /// The guest runs from the saved state `tag` (a start after a rollback): forget it.
    ClearResume {
        vmid: u32,
        tag: String,
    },
    /// A disk handed from one guest to another (`move_disk` with `target-vmid`): both
    /// configurations in one entry, each compare-and-set on its revision, so the volume is
    /// never in both or in neither.
    ReassignDisk {
        from: u32,
        from_revision: u64,
        from_config: GuestConfig,
        to: u32,
        to_revision: u64,
        to_config: GuestConfig,
    },
}

impl Command {
    /// Whether applying it can change which guests exist, where, or how they should run:
    /// what the node's guest actors must react to.
    pub fn touches_guests(&self) -> bool {
        matches!(
            self,
            Command::CreateGuest { .. }
                | Command::UpdateGuest { .. }
                | Command::SetDesiredPower { .. }
                | Command::MigrateGuest { .. }
                | Command::DeleteGuest { .. }
                | Command::AddStorage { .. }
                | Command::CreateStorage { .. }
                | Command::UpdateStorage { .. }
                | Command::DeleteStorage { .. }
                | Command::RollbackSnapshot { .. }
                | Command::ReassignDisk { .. }
                | Command::SetHaResource { .. }
                | Command::DeleteHaResource { .. }
                | Command::HaTransition { .. }
                | Command::HaMove { .. }
        )
    }
}

/// What a successful apply reports back to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOk {
    /// The revision the touched object now has (the log index).
    pub revision: u64,
}
crate::evolving!(ApplyOk { revision });

/// Why `apply` refused a command; state is untouched when it does.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, bincode::Encode, bincode::Decode,
)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{message}")]
    Conflict { message: String },
    /// The caller lacks a right the change needs (HTTP 403).
    #[error("{message}")]
    Forbidden { message: String },
}

impl From<ValidationError> for ApplyError {
    fn from(e: ValidationError) -> Self {
        ApplyError::Invalid(e)
    }
}
