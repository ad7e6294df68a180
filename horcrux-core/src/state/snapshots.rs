//! Applying the snapshot commands: the tree of a guest's snapshots, rollback to one (its
//! config back, the saved RAM to resume from), and the resume state once used.

use super::{check_revision, ClusterState};
use crate::command::{ApplyError, Command};
use crate::model::GuestConfig;

impl ClusterState {
    pub(super) fn apply_snapshot(&mut self, index: u64, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
            Command::CreateSnapshot { vmid, snapshot } => {
                crate::snapshot::validate_name("snapname", &snapshot.name)?;
                crate::snapshot::validate_description("description", &snapshot.description)?;
                let g = self.guest_mut(*vmid)?;
                if g.snapshots.contains_key(&snapshot.name) {
                    return Err(ApplyError::Conflict {
                        message: format!("guest {vmid} already has a snapshot {}", snapshot.name),
                    });
                }
                if g.snapshots.len() >= crate::snapshot::SNAPSHOTS_MAX {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "guest {vmid} has {} snapshots already",
                            crate::snapshot::SNAPSHOTS_MAX
                        ),
                    });
                }
                let snap = crate::snapshot::Snapshot { parent: g.parent.clone(), ..snapshot.clone() };
                g.parent = Some(snap.name.clone());
                g.snapshots.insert(snap.name.clone(), snap);
                g.revision = index;
            }
            Command::DeleteSnapshot { vmid, name } => {
                let g = self.guest_mut(*vmid)?;
                let gone = g.snapshots.remove(name).ok_or_else(|| ApplyError::NotFound {
                    what: format!("snapshot {name} of guest {vmid}"),
                })?;
                for s in g.snapshots.values_mut().filter(|s| s.parent.as_deref() == Some(name)) {
                    s.parent = gone.parent.clone();
                }
                if g.parent.as_deref() == Some(name) {
                    g.parent = gone.parent.clone();
                }
                if g.resume.as_deref() == Some(name) {
                    g.resume = None;
                }
                g.revision = index;
            }
            Command::RollbackSnapshot { vmid, name, expected_revision } => {
                let g = self.guest_mut(*vmid)?;
                check_revision(*vmid, *expected_revision, g.revision)?;
                let snap = g.snapshots.get(name).cloned().ok_or_else(|| ApplyError::NotFound {
                    what: format!("snapshot {name} of guest {vmid}"),
                })?;
                if g.desired.is_running() {
                    return Err(ApplyError::Conflict {
                        message: format!("guest {vmid} is running; stop it first"),
                    });
                }
                g.config = GuestConfig::Qemu(snap.spec.clone());
                g.parent = Some(name.clone());
                g.resume = snap.vmstate.then(|| name.clone());
                g.revision = index;
            }
            Command::SetSnapshotDescription { vmid, name, description } => {
                crate::snapshot::validate_description("description", description)?;
                let g = self.guest_mut(*vmid)?;
                let s = g.snapshots.get_mut(name).ok_or_else(|| ApplyError::NotFound {
                    what: format!("snapshot {name} of guest {vmid}"),
                })?;
                s.description = description.clone();
                g.revision = index;
            }
            Command::ClearResume { vmid, tag } => {
                let g = self.guest_mut(*vmid)?;
                if g.resume.as_deref() == Some(tag.as_str()) {
                    g.resume = None;
                    g.revision = index;
                }
            }
            _ => unreachable!("apply_snapshot is called with snapshot commands only"),
        }
        Ok(())
    }
}
