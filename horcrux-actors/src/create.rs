//! Creating a guest with disks: allocate its volumes on this node, commit the guest, and
//! leave nothing behind if the commit is refused. Shared by the API and the simulation.

use std::collections::BTreeMap;

use horcrux_core::{ApplyError, ApplyOk, Command, GuestConfig, StoragePool, VmSpec};
use horcrux_raft::ProposeError;

use crate::port::{read, ClusterPort};
use crate::runtime::VolumeFactory;

/// What to create: the guest's id, name, hardware, and the resource pool it joins.
pub struct NewGuest {
    pub vmid: u32,
    pub name: String,
    pub spec: VmSpec,
    pub pool: Option<String>,
    /// The API caller creating it (checked by the state machine when `pool` is set: the
    /// pool's entries must not hand anyone rights on the guest the caller lacks).
    pub actor: Option<horcrux_core::access::Actor>,
    /// Images copied into new disks, by disk index (`import-from`).
    pub imports: BTreeMap<usize, String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CreateError {
    /// A disk could not be allocated; nothing is left behind.
    #[error("disks[{index}]: {message}")]
    Alloc { index: usize, message: String },
    /// The cluster refused or could not commit; the disks were freed.
    #[error(transparent)]
    Cluster(ProposeError),
    /// Whether the guest was created is unknown (no quorum to ask); its disks are kept
    /// rather than risk a guest without them.
    #[error("could not tell whether guest {vmid} was created ({why}); its disks are kept")]
    Unknown { vmid: u32, why: String },
}

/// Allocates `spec`'s disks through `volumes` (filling in their volume ids), proposes the
/// guest with this node as its owner, and frees the disks if the commit surely failed.
/// When the commit's outcome is unknown it asks the cluster (a linearizable read) before
/// freeing anything. `log` receives one line per step.
pub async fn create_with_disks(
    cluster: &dyn ClusterPort,
    volumes: &VolumeFactory,
    pools: &BTreeMap<String, StoragePool>,
    guest: NewGuest,
    log: &(dyn Fn(String) + Sync),
) -> Result<ApplyOk, CreateError> {
    let NewGuest { vmid, name, mut spec, pool, actor, imports } = guest;
    let mut allocated: Vec<(String, String)> = Vec::new();
    let mut failure = None;
    for (index, d) in spec.disks.iter_mut().enumerate() {
        if let Some(v) = &d.volume {
            // An existing volume used as it is (a LUN): nothing to allocate or free.
            log(format!("using {v}"));
            continue;
        }
        let Some(pool) = pools.get(&d.storage) else {
            failure = Some(CreateError::Alloc { index, message: format!("unknown storage {}", d.storage) });
            break;
        };
        let pool = match pool.for_format(&format!("disks[{index}].format"), d.format.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(CreateError::Alloc { index, message: e.to_string() });
                break;
            }
        };
        match volumes(&pool).alloc(vmid, index, d.size_mib).await {
            Ok(volid) => {
                log(format!("allocated {volid} ({} MiB)", d.size_mib));
                allocated.push((d.storage.clone(), volid.clone()));
                d.volume = Some(volid.clone());
                if let Some(src) = imports.get(&index) {
                    let copied = match src.split(':').next().and_then(|s| pools.get(s)) {
                        None => Err(format!("the storage of {src} is gone")),
                        Some(src_pool) => match volumes(src_pool).source(src) {
                            Err(e) => Err(e.to_string()),
                            Ok(from) => {
                                volumes(&pool).import_from(&volid, &from).await.map_err(|e| e.to_string())
                            }
                        },
                    };
                    match copied {
                        Ok(()) => log(format!("imported {src} into {volid}")),
                        Err(message) => {
                            failure = Some(CreateError::Alloc {
                                index,
                                message: format!("importing {src}: {message}"),
                            });
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                failure = Some(CreateError::Alloc { index, message: e.to_string() });
                break;
            }
        }
    }
    if failure.is_none() {
        let node = cluster.node_name().to_string();
        let cmd =
            Command::CreateGuest { vmid, name, node: node.clone(), config: GuestConfig::Qemu(spec), pool };
        match cluster.propose_as(actor.clone(), cmd).await {
            Ok(ok) => return Ok(ok),
            // A refusal that cannot come from our own earlier attempt: nothing committed.
            Err(e @ ProposeError::Rejected(ApplyError::Invalid(_) | ApplyError::NotFound { .. })) => {
                failure = Some(CreateError::Cluster(e))
            }
            // Unknown outcome, or "already exists", which may be our own proposal
            // committed by an attempt whose answer was lost and then retried: freeing the
            // disks then would leave a guest without them. Ask the cluster.
            Err(e) => {
                let ours: Vec<&str> = allocated.iter().map(|(_, v)| v.as_str()).collect();
                match cluster.read_barrier().await {
                    Ok(()) => {
                        let created = read(cluster, |s| {
                            s.guests.get(&vmid).filter(|g| g.node == node).and_then(|g| {
                                let vols: Vec<&str> =
                                    g.vm_spec().disks.iter().filter_map(|d| d.volume.as_deref()).collect();
                                (vols == ours).then_some(g.revision)
                            })
                        });
                        if let Some(revision) = created {
                            log("the create committed after all".into());
                            return Ok(ApplyOk { revision });
                        }
                        failure = Some(CreateError::Cluster(e));
                    }
                    Err(b) => return Err(CreateError::Unknown { vmid, why: format!("{e}; {b}") }),
                }
            }
        }
    }
    // Leave nothing behind: free what was allocated.
    for (storage, volid) in &allocated {
        if let Some(pool) = pools.get(storage) {
            if let Err(e) = volumes(pool).free(volid).await {
                log(format!("could not free {volid}: {e}"));
            }
        }
    }
    Err(failure.expect("set on every path that gets here"))
}
