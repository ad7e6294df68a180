//! A btrfs storage (Proxmox's `btrfs`): each disk is a subvolume
//! `images/VMID/vm-VMID-disk-N/` holding `disk.raw` (volume id `ID:VMID/vm-VMID-disk-N.raw`),
//! so that a snapshot is a read-only subvolume snapshot `vm-VMID-disk-N@SNAP` beside it.
//! ISO images, templates, backups and snippets live as on a `dir` storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::common::{self, argv, Runner};
use super::dir::DirStorage;
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DriverError};

/// `statfs`'s `f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

pub struct BtrfsStorage {
    id: String,
    root: PathBuf,
    runner: Arc<dyn Runner>,
    preallocation: Option<String>,
    nocow: bool,
    /// The non-image content, laid out as a directory storage.
    files: DirStorage,
}

impl BtrfsStorage {
    pub fn new(
        id: impl Into<String>,
        root: impl Into<PathBuf>,
        runner: Arc<dyn Runner>,
        options: &BTreeMap<String, String>,
    ) -> Self {
        let (id, root) = (id.into(), root.into());
        Self {
            files: DirStorage::new(id.clone(), root.clone()),
            id,
            root,
            runner,
            preallocation: options.get("preallocation").cloned(),
            nocow: options.get("nocow").is_some_and(|v| v == "1"),
        }
    }

    /// The subvolume of an image volume (`ID:VMID/vm-VMID-disk-N.raw`).
    fn subvol(&self, volid: &str) -> Result<PathBuf, DriverError> {
        let rel = common::volume_name(&self.id, volid)?;
        let parsed = rel.split_once('/').and_then(|(vmid, name)| {
            let name = name.strip_suffix(".raw")?;
            (vmid.parse::<u32>().ok()? == common::vmid_of(name)? && !name.contains(['/', '@']))
                .then_some((vmid, name))
        });
        let (vmid, name) = parsed
            .ok_or_else(|| DriverError::Invalid(format!("volume {volid}: not a btrfs disk image name")))?;
        Ok(self.root.join("images").join(vmid).join(name))
    }

    async fn btrfs(&self, args: &[&str], paths: &[&Path]) -> Result<String, DriverError> {
        let mut a = argv(args);
        a.extend(paths.iter().map(|p| p.display().to_string()));
        self.runner.run("btrfs", &a).await
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let volid = format!("{}:{vmid}/{}.raw", self.id, common::disk_name(vmid, index));
        let sub = self.subvol(&volid)?;
        if tokio::fs::try_exists(&sub).await? {
            return Err(DriverError::Invalid(format!("volume {volid} already exists at {}", sub.display())));
        }
        tokio::fs::create_dir_all(sub.parent().expect("images/VMID")).await?;
        self.btrfs(&["subvolume", "create"], &[&sub]).await?;
        let disk = sub.join("disk.raw");
        let made = async {
            if self.nocow {
                // An empty file takes No_COW; qemu-img then fills it.
                tokio::fs::File::create(&disk).await?;
                self.runner.run("chattr", &argv(&["+C", &disk.display().to_string()])).await?;
            }
            common::qemu_img_create(&*self.runner, &disk, "raw", size_mib, self.preallocation.as_deref())
                .await
        };
        if let Err(e) = made.await {
            let _ = self.btrfs(&["subvolume", "delete"], &[&sub]).await;
            return Err(e);
        }
        Ok(volid)
    }

    /// The snapshot subvolumes of an image's subvolume, by name.
    async fn snapshot_dirs(&self, sub: &Path) -> Result<Vec<(String, PathBuf)>, DriverError> {
        let prefix = format!("{}@", sub.file_name().unwrap_or_default().to_string_lossy());
        let mut out: Vec<(i64, String, PathBuf)> = Vec::new();
        let mut d = match tokio::fs::read_dir(sub.parent().expect("images/VMID")).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = d.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(snap) = name.strip_prefix(&prefix) {
                let ctime = std::os::unix::fs::MetadataExt::ctime(&e.metadata().await?);
                out.push((ctime, snap.to_string(), e.path()));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, n, p)| (n, p)).collect())
    }

    fn snap_path(sub: &Path, name: &str) -> PathBuf {
        let mut s = sub.as_os_str().to_owned();
        s.push(format!("@{name}"));
        PathBuf::from(s)
    }

    async fn list_inner(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        use std::os::unix::fs::MetadataExt;
        let mut out: Vec<VolumeInfo> =
            self.files.list().await?.into_iter().filter(|v| v.content != "images").collect();
        let images = self.root.join("images");
        let Ok(mut guests) = tokio::fs::read_dir(&images).await else { return Ok(out) };
        while let Some(g) = guests.next_entry().await? {
            let Some(vmid) = g.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let mut subs = tokio::fs::read_dir(g.path()).await?;
            while let Some(s) = subs.next_entry().await? {
                let name = s.file_name().to_string_lossy().into_owned();
                let volid = format!("{}:{vmid}/{name}.raw", self.id);
                if name.contains('@') || self.subvol(&volid).is_err() {
                    continue;
                }
                let Ok(meta) = tokio::fs::metadata(s.path().join("disk.raw")).await else { continue };
                out.push(VolumeInfo {
                    volid,
                    vmid,
                    format: "raw".into(),
                    size: meta.len(),
                    used: meta.blocks() * 512,
                    content: "images".into(),
                    ctime: meta.mtime().max(0) as u64,
                    parent: None,
                });
            }
        }
        out.sort_by(|a, b| a.volid.cmp(&b.volid));
        Ok(out)
    }
}

impl VolumeStore for BtrfsStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let ty = common::fs_type(&self.root)?;
            if ty != BTRFS_SUPER_MAGIC {
                return Err(DriverError::Invalid(format!(
                    "storage {}: {} is not on a btrfs file system",
                    self.id,
                    self.root.display()
                )));
            }
            self.files.activate().await
        })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        match self.subvol(volid) {
            Ok(sub) => Ok(sub.join("disk.raw")),
            Err(e) if volid.contains(".raw") => Err(e),
            Err(_) => self.files.path(volid),
        }
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let Ok(from) = self.subvol(volid) else {
                return self.files.rename_volume(volid, vmid, index).await;
            };
            let new = format!("{}:{vmid}/{}.raw", self.id, common::disk_name(vmid, index));
            let to = self.subvol(&new)?;
            // A subvolume moves like a directory within its file system.
            common::move_volume(&from, &to, new).await
        })
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let Ok(sub) = self.subvol(volid) else { return self.files.free(volid).await };
            for (_, snap) in self.snapshot_dirs(&sub).await? {
                self.btrfs(&["subvolume", "delete"], &[&snap]).await?;
            }
            if tokio::fs::try_exists(&sub).await? {
                self.btrfs(&["subvolume", "delete"], &[&sub]).await?;
            }
            let _ = tokio::fs::remove_dir(sub.parent().expect("images/VMID")).await;
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(self.list_inner())
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move { common::fs_usage(&self.root) })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let disk = self.subvol(volid)?.join("disk.raw");
            let args = argv(&["resize", "-q", "-f", "raw", &disk.display().to_string(), &size.to_string()]);
            self.runner.run("qemu-img", &args).await.map(|_| ())
        })
    }

    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let sub = self.subvol(volid)?;
            self.btrfs(&["subvolume", "snapshot", "-r"], &[&sub, &Self::snap_path(&sub, name)]).await?;
            Ok(())
        })
    }

    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let sub = self.subvol(volid)?;
            let snap = Self::snap_path(&sub, name);
            if !tokio::fs::try_exists(&snap).await? {
                return Err(DriverError::Invalid(format!("volume {volid} has no snapshot {name}")));
            }
            // A writable snapshot of the snapshot takes the subvolume's place; the
            // subvolume goes only once its replacement exists.
            let tmp = Self::snap_path(&sub, &format!("{name}.rollback"));
            self.btrfs(&["subvolume", "snapshot"], &[&snap, &tmp]).await?;
            self.btrfs(&["subvolume", "delete"], &[&sub]).await?;
            tokio::fs::rename(&tmp, &sub).await?;
            Ok(())
        })
    }

    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let sub = self.subvol(volid)?;
            let snap = Self::snap_path(&sub, name);
            if tokio::fs::try_exists(&snap).await? {
                self.btrfs(&["subvolume", "delete"], &[&snap]).await?;
            }
            Ok(())
        })
    }

    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let sub = self.subvol(volid)?;
            Ok(self.snapshot_dirs(&sub).await?.into_iter().map(|(n, _)| n).collect())
        })
    }
}
