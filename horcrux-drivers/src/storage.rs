//! A directory storage pool (Proxmox's `dir`): qcow2 images under
//! `PATH/images/VMID/vm-VMID-disk-N.qcow2`, created with qemu-img.

use std::path::PathBuf;

use horcrux_core::ids;
use tokio::process::Command;

use crate::hypervisor::{BoxFuture, DriverError, VolumeStore};

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
        Ok(volid)
    }
}

impl VolumeStore for DirStorage {
    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        let (storage, rel) = ids::parse_volume_id(volid).map_err(|e| DriverError::Invalid(e.to_string()))?;
        if storage != self.id {
            return Err(DriverError::Invalid(format!("volume {volid} is not on storage {}", self.id)));
        }
        Ok(self.root.join("images").join(rel))
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
