//! Applying the storage commands: `storage.cfg`'s entries, created, changed and removed
//! (refused while a guest has a disk or an unused volume on it).

use super::ClusterState;
use crate::command::{ApplyError, Command};
use crate::storage::StoragePool;

impl ClusterState {
    pub(super) fn apply_storage(&mut self, index: u64, cmd: &Command) -> Result<(), ApplyError> {
        match cmd {
            Command::AddStorage { id, kind } => {
                let pool = StoragePool {
                    id: id.clone(),
                    kind: kind.clone(),
                    revision: index,
                    config: Default::default(),
                };
                self.create_storage(pool)?;
            }
            Command::CreateStorage { pool } => {
                self.create_storage(StoragePool { revision: index, ..pool.clone() })?;
            }
            Command::UpdateStorage { id, config } => {
                let old = self
                    .storage
                    .get(id)
                    .ok_or_else(|| ApplyError::NotFound { what: format!("storage {id}") })?;
                let pool = StoragePool { config: config.clone(), revision: index, ..old.clone() };
                pool.validate()?;
                self.storage.insert(id.clone(), pool);
            }
            Command::DeleteStorage { id } => {
                if !self.storage.contains_key(id) {
                    return Err(ApplyError::NotFound { what: format!("storage {id}") });
                }
                if let Some(g) = self.guests.values().find(|g| {
                    let spec = g.vm_spec();
                    spec.disks.iter().any(|d| d.storage == *id)
                        || spec.unused.iter().any(|v| v.split(':').next() == Some(id.as_str()))
                }) {
                    return Err(ApplyError::Conflict {
                        message: format!(
                            "storage {id} holds a disk of guest {}; move or remove it first",
                            g.vmid
                        ),
                    });
                }
                self.storage.remove(id);
                for p in self.pools.values_mut() {
                    p.storage.remove(id);
                }
            }
            _ => unreachable!("apply_storage is called with storage commands only"),
        }
        Ok(())
    }

    fn create_storage(&mut self, pool: StoragePool) -> Result<(), ApplyError> {
        pool.validate()?;
        if self.storage.contains_key(&pool.id) {
            return Err(ApplyError::Conflict { message: format!("storage {:?} already exists", pool.id) });
        }
        self.storage.insert(pool.id.clone(), pool);
        Ok(())
    }

    /// The storages that exist on `node`, enabled or not.
    pub fn storages_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a StoragePool> + 'a {
        self.storage.values().filter(move |p| p.on_node(node))
    }
}
