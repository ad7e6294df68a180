//! A directory storage pool (Proxmox's `dir`): qcow2 images under
//! `PATH/images/VMID/vm-VMID-disk-N.qcow2`, created with qemu-img; boot files under
//! `PATH/snippets/`, ISO images under `PATH/template/iso/`.

use std::path::PathBuf;

use horcrux_core::ids;
use tokio::process::Command;

use crate::hypervisor::{BoxFuture, DriverError, VolumeInfo, VolumeStore};

pub struct DirStorage {
    id: String,
    root: PathBuf,
}

impl DirStorage {
    pub fn new(id: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self { id: id.into(), root: root.into() }
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let volid = ids::volume_id(&self.id, vmid, index);
        let path = self.path(&volid)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        if tokio::fs::try_exists(&path).await? {
            return Err(DriverError::Invalid(format!("volume {volid} already exists at {}", path.display())));
        }
        let out = Command::new("qemu-img")
            .arg("create")
            .args(["-q", "-f", "qcow2"])
            .arg(&path)
            .arg(format!("{size_mib}M"))
            .output()
            .await
            .map_err(|e| DriverError::Command { program: "qemu-img".into(), message: e.to_string() })?;
        if !out.status.success() {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(DriverError::Command {
                program: "qemu-img create".into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // Root's alone: QEMU gets the guest's disks as descriptors, nobody else reads them.
        tokio::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).await?;
        Ok(volid)
    }
}

/// The virtual size recorded in a qcow2 header (big-endian u64 at offset 24, after the
/// magic `QFI\xfb`), or `None` if `head` is not a qcow2 header.
pub fn qcow2_virtual_size(head: &[u8]) -> Option<u64> {
    if head.len() < 32 || &head[..4] != b"QFI\xfb" {
        return None;
    }
    Some(u64::from_be_bytes(head[24..32].try_into().ok()?))
}

impl DirStorage {
    async fn list_inner(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let images = self.root.join("images");
        let mut guests = match tokio::fs::read_dir(&images).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(dir) = guests.next_entry().await? {
            let Some(vmid) = dir.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let mut files = tokio::fs::read_dir(dir.path()).await?;
            while let Some(f) = files.next_entry().await? {
                let name = f.file_name().to_string_lossy().into_owned();
                let volid = format!("{}:{vmid}/{name}", self.id);
                if !name.ends_with(".qcow2") || ids::parse_volume_id(&volid).is_err() {
                    continue;
                }
                let mut head = [0u8; 32];
                let mut file = tokio::fs::File::open(f.path()).await?;
                tokio::io::AsyncReadExt::read_exact(&mut file, &mut head).await?;
                let meta = f.metadata().await?;
                out.push(VolumeInfo {
                    volid,
                    vmid,
                    format: "qcow2".into(),
                    size: qcow2_virtual_size(&head).unwrap_or(0),
                    used: meta.blocks() * 512,
                });
            }
        }
        out.sort_by(|a, b| a.volid.cmp(&b.volid));
        Ok(out)
    }
}

impl VolumeStore for DirStorage {
    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(self.list_inner())
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<crate::StoreUsage>, DriverError>> {
        Box::pin(async move {
            // The file system holding the directory (its nearest existing ancestor).
            let mut dir = self.root.as_path();
            while !dir.exists() {
                match dir.parent() {
                    Some(p) => dir = p,
                    None => return Ok(None),
                }
            }
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|e| DriverError::Invalid(e.to_string()))?;
            let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is a NUL-terminated path and `vfs` a valid out-pointer.
            if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let frsize = vfs.f_frsize as u64;
            let total = vfs.f_blocks as u64 * frsize;
            let free = vfs.f_bfree as u64 * frsize;
            let avail = vfs.f_bavail as u64 * frsize;
            Ok(Some(crate::StoreUsage { total, used: total - free, avail }))
        })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        let (storage, rel) = ids::parse_volume_id(volid).map_err(|e| DriverError::Invalid(e.to_string()))?;
        if storage != self.id {
            return Err(DriverError::Invalid(format!("volume {volid} is not on storage {}", self.id)));
        }
        // Proxmox's layout: boot files in `snippets/`, ISO images in `template/iso/`.
        Ok(match rel.split_once('/') {
            Some(("snippets", name)) => self.root.join("snippets").join(name),
            Some(("iso", name)) => self.root.join("template/iso").join(name),
            _ => self.root.join("images").join(rel),
        })
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let path = self.path(volid)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            // Drop the per-guest directory once it is empty, as Proxmox does.
            if let Some(dir) = path.parent() {
                let _ = tokio::fs::remove_dir(dir).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the real qemu-img.
    #[tokio::test]
    async fn allocates_qcow2_refuses_overwrite_and_frees() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStorage::new("local", tmp.path());
        let vol = s.alloc(101, 0, 64).await.unwrap();
        // qemu-img's header carries the virtual size the listing reports.
        let listed = s.list().await.unwrap();
        assert_eq!((listed.len(), listed[0].vmid, listed[0].size), (1, 101, 64 * 1024 * 1024));
        assert_eq!(listed[0].volid, vol);
        assert_eq!(vol, "local:101/vm-101-disk-0.qcow2");
        let path = s.path(&vol).unwrap();
        assert_eq!(path, tmp.path().join("images/101/vm-101-disk-0.qcow2"));
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&path)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], 64 * 1024 * 1024);
        assert!(s.alloc(101, 0, 64).await.is_err(), "must not overwrite an existing image");
        assert!(s.path("other:101/vm-101-disk-0.qcow2").is_err());
        s.free(&vol).await.unwrap();
        assert!(!path.exists());
        assert!(!tmp.path().join("images/101").exists());
        s.free(&vol).await.unwrap();
    }
}
