//! Storage backends, one file each, behind one trait ([`VolumeStore`]); what they share
//! (running a host tool from an argument vector, qemu-img, file system usage, volume
//! names) is in [`common`]. [`open`] builds the backend of a configured storage.
//!
//! | type | here | how it is tested |
//! |---|---|---|
//! | `dir` | [`dir`] | real files and qemu-img |
//! | `btrfs` | [`btrfs`] | real btrfs on a loop file |
//! | `zfspool` | [`zfs`] | zfs-fuse for datasets and snapshots; zvols by argv and recorded output |
//! | `lvm`, `lvmthin` | [`lvm`] | a real volume group's metadata; data paths by argv and recorded output |
//! | `nfs` | [`nfs`] | nfs-ganesha (NFSv3), libnfs, qemu-img and QEMU's NFS client |
//! | `iscsi` | [`iscsi`] | tgtd with CHAP, libiscsi's tools and QEMU's iSCSI initiator |
//! | `rbd` | [`rbd`] | a one-host Ceph (one monitor, one memstore OSD) with cephx, librbd in QEMU |

pub mod btrfs;
pub mod common;
pub mod dir;
pub mod iscsi;
mod libnfs;
pub mod lvm;
pub mod nfs;
pub mod rbd;
pub mod zfs;

use std::path::PathBuf;
use std::sync::Arc;

use horcrux_core::{StorageKind, StoragePool};

pub use btrfs::BtrfsStorage;
pub use common::{Runner, SystemRunner};
pub use dir::DirStorage;
pub use iscsi::IscsiStorage;
pub use lvm::LvmStorage;
pub use nfs::NfsStorage;
pub use rbd::RbdStorage;
pub use zfs::ZfsPoolStorage;

use crate::hypervisor::{BoxFuture, DiskSource, DriverError};

/// One storage as seen from this node. Volume ids are Proxmox's (`local:100/vm-100-disk-0.qcow2`,
/// `local:iso/x.iso`, `tank:vm-100-disk-0`).
pub trait VolumeStore: Send + Sync + 'static {
    /// Makes the storage usable on this node (checks the mount, the pool, the volume
    /// group) and creates what its layout needs; idempotent.
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
    /// Creates disk `index` of guest `vmid`; returns its volume id. Refuses to overwrite.
    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>>;
    /// The host path of a volume of this store (an error for network volumes, which
    /// have none: see [`VolumeStore::source`]).
    fn path(&self, volid: &str) -> Result<PathBuf, DriverError>;
    /// Where QEMU and qemu-img find a volume: its host path, or how to reach it over
    /// the network.
    fn source(&self, volid: &str) -> Result<DiskSource, DriverError> {
        self.path(volid).map(DiskSource::File)
    }
    /// Removes a volume and its snapshots; a missing volume is not an error.
    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>>;
    /// The volumes this store holds on this host.
    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>>;
    /// Size, use and free space of the store on this host, if it can tell.
    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async { Ok(None) })
    }
    /// Fills volume `volid` (just allocated, as large as the source) with the image at
    /// `src`: `qemu-img convert` into it, for move_disk and import-from.
    fn import_from<'a>(
        &'a self,
        volid: &'a str,
        src: &'a DiskSource,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let dst = self.source(volid)?;
            let ((from, mut env), (to, to_env)) = (src.qemu_img(), dst.qemu_img());
            env.extend(to_env);
            let args = common::argv(&["convert", "-n", "-f", src.format(), "-O", dst.format(), &from, &to]);
            common::SystemRunner.run_env("qemu-img", &args, &env).await.map(|_| ())
        })
    }
    /// Grows a volume to `size` bytes (of a stopped guest's disk: a running guest's disks
    /// grow through QMP `block_resize`).
    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volid, size);
        Box::pin(async { Err(DriverError::Invalid("this storage cannot resize volumes".into())) })
    }
    /// Takes snapshot `name` of a volume (of a stopped guest's disk: a running guest's
    /// disks are snapshotted through QMP).
    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volid, name);
        Box::pin(async { Err(DriverError::Invalid("this storage cannot take snapshots".into())) })
    }
    /// Returns the volume to snapshot `name`; later snapshots are removed where the
    /// backend can only roll back to the latest (zfs).
    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volid, name);
        Box::pin(async { Err(DriverError::Invalid("this storage cannot roll back snapshots".into())) })
    }
    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volid, name);
        Box::pin(async { Err(DriverError::Invalid("this storage cannot take snapshots".into())) })
    }
    /// Gives volume `volid` to guest `vmid` as its disk `index` (`vm-VMID-disk-N`, in the
    /// backend's naming): `move_disk` to another guest. Answers the new volume id; refused
    /// while the volume has snapshots (they are the first guest's history).
    fn rename<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            if !self.snapshots(volid).await?.is_empty() {
                return Err(DriverError::Invalid(format!("volume {volid} has snapshots")));
            }
            self.rename_volume(volid, vmid, index).await
        })
    }
    /// Where a file uploaded as `volid` is written first when the store has no host path
    /// for it (a local staging file [`VolumeStore::store_file`] then copies in); `None`:
    /// uploads go to [`VolumeStore::path`].
    fn staging_path(&self, volid: &str) -> Option<PathBuf> {
        let _ = volid;
        None
    }
    /// Copies the staged upload `staged` into the store as `volid` (refused if it exists),
    /// whole or not at all; removes the staged file.
    fn store_file<'a>(
        &'a self,
        volid: &'a str,
        staged: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = (volid, staged);
        Box::pin(async { Err(DriverError::Invalid("this storage takes no staged files".into())) })
    }
    /// The backend's part of [`VolumeStore::rename`] (snapshots already ruled out).
    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        let _ = (volid, vmid, index);
        Box::pin(async { Err(DriverError::Invalid("this storage cannot rename volumes".into())) })
    }
    /// Whether `rollback` to an older snapshot keeps the later ones (zfs destroys them: it
    /// only rolls back to the latest).
    fn rolls_back_past_later_snapshots(&self) -> bool {
        true
    }
    /// The snapshots of a volume, oldest first.
    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = volid;
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A store's capacity in bytes, as Proxmox's storage status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreUsage {
    pub total: u64,
    pub used: u64,
    pub avail: u64,
}

/// One volume, as Proxmox's storage content lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolumeInfo {
    pub volid: String,
    /// The guest it belongs to; 0 for ISO images, templates, snippets.
    pub vmid: u32,
    /// `qcow2`, `raw`, `vmdk`, `subvol`, `iso`, `tzst`, ...
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes allocated on the host.
    pub used: u64,
    /// `images`, `rootdir`, `iso`, `vztmpl`, `backup`, `snippets`, `import`.
    pub content: String,
    /// Creation (or last change) time, Unix seconds.
    pub ctime: u64,
    /// What a linked clone is based on, as Proxmox lists it: a qcow2's backing file as
    /// recorded in its header, a ZFS clone's origin (`base-100-disk-0@__base__`, the pool
    /// left out), an RBD clone's parent (`image@snapshot`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The backend of `pool` on this node, running host tools through `runner`; a store
/// without host paths stages uploads under `staging/ID`.
pub fn open(pool: &StoragePool, runner: Arc<dyn Runner>, staging: &std::path::Path) -> Arc<dyn VolumeStore> {
    let options = &pool.config.options;
    let id = pool.id.clone();
    match &pool.kind {
        StorageKind::Dir { path } => Arc::new(DirStorage::with_options(id, path, options)),
        StorageKind::Btrfs { path } => Arc::new(BtrfsStorage::new(id, path, runner, options)),
        StorageKind::ZfsPool { pool: zpool } => Arc::new(ZfsPoolStorage::new(id, zpool, runner, options)),
        StorageKind::Lvm { vgname } => Arc::new(LvmStorage::new(id, vgname, None, runner)),
        StorageKind::LvmThin { vgname, thinpool } => {
            Arc::new(LvmStorage::new(id, vgname, Some(thinpool.clone()), runner))
        }
        StorageKind::Nfs { server, export, .. } => {
            let staging = staging.join(&id);
            Arc::new(NfsStorage::new(id, server, export, runner, options).with_staging(staging))
        }
        StorageKind::Iscsi { portal, target } => Arc::new(IscsiStorage::new(
            id,
            portal,
            target,
            options.get("username").cloned(),
            Some(pool.config.secret.0.clone()),
            runner,
        )),
        StorageKind::Rbd { pool: rbd_pool, monhost } => Arc::new(RbdStorage::new(
            id,
            rbd_pool,
            monhost,
            options.get("username").cloned(),
            Some(pool.config.secret.0.as_str()),
            options.get("namespace").cloned(),
            runner,
        )),
    }
}
