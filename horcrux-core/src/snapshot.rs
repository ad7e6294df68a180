//! Guest snapshots as Proxmox keeps them: a tree of named snapshots, each with the config
//! it was taken of, its time, description and whether it holds the RAM (`vmstate`); the
//! guest's `parent` is the snapshot its current state grew from. The disks' own snapshots
//! are the storage backends' business; this is the record every node shares.

use serde::{Deserialize, Serialize};

use crate::ids::ValidationError;
use crate::model::VmSpec;

/// At most this many snapshots per guest.
pub const SNAPSHOTS_MAX: usize = 64;
pub const DESCRIPTION_MAX: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Unix seconds.
    pub snaptime: u64,
    /// Holds the RAM and device state (restored by the rollback, which resumes the guest).
    #[serde(default)]
    pub vmstate: bool,
    /// The snapshot this one was taken after (its parent in the tree).
    #[serde(default)]
    pub parent: Option<String>,
    /// The guest's configuration when it was taken.
    pub spec: VmSpec,
}
crate::evolving!(Snapshot { name, description, snaptime, vmstate, parent, spec });

/// A snapshot name as Proxmox takes it (`pve-configid`): a letter, then letters, digits,
/// `-` and `_`, 2 to 40 characters; `current` is the guest's own state.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = (2..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{name:?}: 2 to 40 letters, digits, '-' or '_', starting with a letter"),
        ));
    }
    if name == "current" || name == "vzdump" {
        return Err(ValidationError::new(field, format!("{name:?} is reserved")));
    }
    Ok(())
}

pub fn validate_description(field: &str, d: &str) -> Result<(), ValidationError> {
    if d.len() > DESCRIPTION_MAX || d.contains('\0') {
        return Err(ValidationError::new(field, format!("at most {DESCRIPTION_MAX} bytes, no NUL")));
    }
    Ok(())
}
