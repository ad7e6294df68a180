//! An NFS storage (Proxmox's `nfs`) without a kernel mount: this host's kernel has no NFS
//! client, so every access is userspace. QEMU opens disk images with its own NFS client
//! (libnfs: `-drive file.driver=nfs`), qemu-img creates, resizes and snapshots them through
//! `nfs://` URLs, `nfs-ls` lists the export and reports its free space, and libnfs makes
//! and removes directories and files. The layout on the export is the directory
//! storage's (`images/VMID/`, `template/iso/`, ...). NFSv3 (what QEMU's client speaks):
//! the server's portmapper and mount service must answer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::common::{self, argv, Runner};
use super::dir::{self, LAYOUT_DIRS};
use super::libnfs::Export;
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DiskSource, DriverError, NetDisk};

pub struct NfsStorage {
    id: String,
    server: String,
    /// The exported directory, absolute (`/srv/nfs/pve`).
    export: String,
    format: String,
    preallocation: Option<String>,
    runner: Arc<dyn Runner>,
    /// Where uploads are written before `nfs-cp` copies them onto the export.
    staging: Option<PathBuf>,
}

impl NfsStorage {
    pub fn new(
        id: impl Into<String>,
        server: impl Into<String>,
        export: impl Into<String>,
        runner: Arc<dyn Runner>,
        options: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            id: id.into(),
            server: server.into(),
            export: export.into().trim_end_matches('/').to_string(),
            format: options.get("format").cloned().unwrap_or_else(|| "qcow2".into()),
            preallocation: options.get("preallocation").cloned(),
            runner,
            staging: None,
        }
    }

    /// Uploads are staged in `dir` (a local directory) before they are copied in.
    pub fn with_staging(mut self, dir: PathBuf) -> Self {
        self.staging = Some(dir);
        self
    }

    /// `nfs://SERVER/EXPORT/REL` (an IPv6 server in brackets).
    fn url(&self, rel: &str) -> String {
        let host = if self.server.contains(':') { format!("[{}]", self.server) } else { self.server.clone() };
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            format!("nfs://{host}{}", self.export)
        } else {
            format!("nfs://{host}{}/{rel}", self.export)
        }
    }

    /// Runs `f` on the mounted export, in a blocking task (libnfs's calls block).
    async fn on_export<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Export) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        let (server, export) = (self.server.clone(), self.export.clone());
        tokio::task::spawn_blocking(move || f(&Export::mount(&server, &export)?))
            .await
            .map_err(|e| DriverError::Io(e.to_string()))?
    }

    fn image(&self, volid: &str) -> Result<String, DriverError> {
        match dir::locate(&self.id, volid)? {
            ("images", rel) => Ok(rel),
            _ => Err(DriverError::Invalid(format!("volume {volid} is not a disk image"))),
        }
    }

    fn qcow2(&self, volid: &str) -> Result<String, DriverError> {
        let rel = self.image(volid)?;
        if !volid.ends_with(".qcow2") {
            return Err(DriverError::Invalid(format!(
                "volume {volid}: snapshots on an NFS storage need a qcow2 image"
            )));
        }
        Ok(self.url(&rel))
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let volid = format!("{}:{vmid}/{}.{}", self.id, common::disk_name(vmid, index), self.format);
        let rel = self.image(&volid)?;
        let listed = self.ls(&format!("images/{vmid}"), false).await?;
        if listed.iter().any(|e| e.name == rel.rsplit('/').next().unwrap_or_default()) {
            return Err(DriverError::Invalid(format!("volume {volid} already exists")));
        }
        let mut args = argv(&["create", "-q", "-f", &self.format]);
        if let (Some(p), "qcow2" | "raw") = (&self.preallocation, self.format.as_str()) {
            if !(self.format == "raw" && p == "metadata") {
                args.extend(["-o".into(), format!("preallocation={p}")]);
            }
        }
        args.extend([self.url(&rel), format!("{size_mib}M")]);
        self.runner.run("qemu-img", &args).await?;
        Ok(volid)
    }

    /// `nfs-ls` of directory `rel` of the export (recursively with `recursive`); a missing
    /// directory is empty.
    async fn ls(&self, rel: &str, recursive: bool) -> Result<Vec<LsEntry>, DriverError> {
        let mut args = Vec::new();
        if recursive {
            args.push("-R".to_string());
        }
        args.push(self.url(rel));
        let dir_exists = rel.is_empty() || {
            // nfs-ls fails on a missing directory; its parent's listing tells.
            let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let parent_args = vec![self.url(parent)];
            let out = self.runner.run("nfs-ls", &parent_args).await?;
            parse_nfs_ls(&out).iter().any(|e| e.name == name && e.dir)
        };
        if !dir_exists {
            return Ok(Vec::new());
        }
        Ok(parse_nfs_ls(&self.runner.run("nfs-ls", &args).await?))
    }

    async fn list_inner(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        let mut out = Vec::new();
        for e in self.ls("", true).await? {
            if e.dir {
                continue;
            }
            let Some((dir, name)) = e.name.rsplit_once('/') else { continue };
            let info = if let Some(vmid) = dir.strip_prefix("images/").and_then(|v| v.parse::<u32>().ok()) {
                let volid = format!("{}:{vmid}/{name}", self.id);
                if dir::locate(&self.id, &volid).is_err() {
                    continue;
                }
                let format = name.rsplit('.').next().unwrap_or_default().to_string();
                let size = if format == "raw" { e.size } else { self.virtual_size(&e.name).await? };
                VolumeInfo {
                    volid,
                    vmid,
                    format,
                    size,
                    used: e.size,
                    content: "images".into(),
                    ctime: 0,
                    parent: None,
                }
            } else {
                let Some((content, format)) = dir::classify(dir, name) else { continue };
                let volid = format!("{}:{content}/{name}", self.id);
                if horcrux_core::ids::parse_volume_id(&volid).is_err() {
                    continue;
                }
                let size = if content == "import" { self.virtual_size(&e.name).await? } else { e.size };
                let vmid = if content == "rootdir" { common::vmid_of(name).unwrap_or(0) } else { 0 };
                VolumeInfo {
                    volid,
                    vmid,
                    format,
                    size,
                    used: e.size,
                    content: content.into(),
                    ctime: 0,
                    parent: None,
                }
            };
            out.push(info);
        }
        out.sort_by(|a, b| a.volid.cmp(&b.volid));
        Ok(out)
    }

    async fn virtual_size(&self, rel: &str) -> Result<u64, DriverError> {
        let out = self.runner.run("qemu-img", &argv(&["info", "--output=json", &self.url(rel)])).await?;
        let info: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| DriverError::Invalid(format!("qemu-img info: {e}")))?;
        Ok(info["virtual-size"].as_u64().unwrap_or(0))
    }

    async fn qemu_img_snapshot(&self, flag: &str, volid: &str, name: &str) -> Result<(), DriverError> {
        common::validate_snapshot_name(name)?;
        let url = self.qcow2(volid)?;
        self.runner.run("qemu-img", &argv(&["snapshot", flag, name, &url])).await.map(|_| ())
    }
}

/// One line of `nfs-ls`: `MODE NLINK UID GID SIZE NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsEntry {
    pub name: String,
    pub dir: bool,
    pub size: u64,
}

/// `nfs-ls [-R]` output; names with spaces (which no volume has) are skipped.
pub fn parse_nfs_ls(out: &str) -> Vec<LsEntry> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [mode, _, _, _, size, name] if mode.len() == 10 => Some(LsEntry {
                    name: name.to_string(),
                    dir: mode.starts_with('d'),
                    size: size.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// `nfs-ls -s`'s last line: `FREE of TOTAL bytes free.`
pub fn parse_nfs_free(out: &str) -> Option<StoreUsage> {
    let line = out.lines().rev().find(|l| l.ends_with("bytes free."))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (avail, total): (u64, u64) = (f.first()?.parse().ok()?, f.get(2)?.parse().ok()?);
    Some(StoreUsage { total, used: total.saturating_sub(avail), avail })
}

impl VolumeStore for NfsStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.on_export(|e| LAYOUT_DIRS.iter().try_for_each(|d| e.mkdir_p(&format!("/{d}")))))
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(async move {
            self.on_export(move |e| e.mkdir_p(&format!("/images/{vmid}"))).await?;
            self.alloc_inner(vmid, index, size_mib).await
        })
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        Err(DriverError::Invalid(format!(
            "volume {volid} is on NFS storage {}, which this host reaches in userspace (no host path)",
            self.id
        )))
    }

    fn source(&self, volid: &str) -> Result<DiskSource, DriverError> {
        // Guest disks, images to import from, ISO images for CD-ROM drives.
        let rel = match dir::locate(&self.id, volid)? {
            ("images" | "import" | "iso", rel) => rel,
            _ => return Err(DriverError::Invalid(format!("volume {volid} is not a disk image"))),
        };
        let host = self.server.clone();
        // QEMU runs as its own user; the images are root's (created by qemu-img as root),
        // so its client speaks as uid 0, as the daemon's tools do.
        let options = json!({
            "driver": "nfs",
            "server": { "type": "inet", "host": host },
            "path": format!("{}/{rel}", self.export),
            "user": 0,
            "group": 0,
        });
        let serde_json::Value::Object(options) = options else { unreachable!() };
        Ok(DiskSource::Net(NetDisk {
            options,
            url: self.url(&rel),
            format: common::volume_format(volid).to_string(),
            secret: None,
        }))
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let from = self.image(volid)?;
            let new = format!(
                "{}:{vmid}/{}.{}",
                self.id,
                common::disk_name(vmid, index),
                common::volume_format(volid)
            );
            let to = self.image(&new)?;
            let name = to.rsplit('/').next().unwrap_or_default().to_string();
            self.on_export(move |e| e.mkdir_p(&format!("/images/{vmid}"))).await?;
            if self.ls(&format!("images/{vmid}"), false).await?.iter().any(|e| e.name == name) {
                return Err(DriverError::Invalid(format!("volume {new} already exists")));
            }
            self.on_export(move |e| {
                e.rename(&format!("/{from}"), &format!("/{to}"))?;
                if let Some((parent, _)) = from.rsplit_once('/') {
                    let _ = e.rmdir(&format!("/{parent}"));
                }
                Ok(())
            })
            .await?;
            Ok(new)
        })
    }

    fn staging_path(&self, volid: &str) -> Option<PathBuf> {
        let (content, rel) = dir::locate(&self.id, volid).ok()?;
        let name = rel.rsplit('/').next()?;
        (content != "images").then(|| self.staging.as_ref().map(|d| d.join(name)))?
    }

    fn store_file<'a>(
        &'a self,
        volid: &'a str,
        staged: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let result = async {
                let (_, rel) = dir::locate(&self.id, volid)?;
                let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
                if self.ls(parent, false).await?.iter().any(|e| e.name == name) {
                    return Err(DriverError::Invalid(format!("volume {volid} already exists")));
                }
                // Copied under a hidden name, renamed once whole: never half a file.
                let tmp = format!("{parent}/.{name}.partial-{}", std::process::id());
                let src = staged.display().to_string();
                if let Err(e) = self.runner.run("nfs-cp", &argv(&[&src, &self.url(&tmp)])).await {
                    let t = tmp.clone();
                    let _ = self.on_export(move |e| e.unlink(&format!("/{t}"))).await;
                    return Err(e);
                }
                let to = rel.clone();
                self.on_export(move |e| e.rename(&format!("/{tmp}"), &format!("/{to}"))).await
            }
            .await;
            let _ = tokio::fs::remove_file(staged).await;
            result
        })
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (content, rel) = dir::locate(&self.id, volid)?;
            self.on_export(move |e| {
                e.unlink(&format!("/{rel}"))?;
                // Drop the per-guest directory once it is empty, as Proxmox does.
                if content == "images" {
                    if let Some((parent, _)) = rel.rsplit_once('/') {
                        let _ = e.rmdir(&format!("/{parent}"));
                    }
                }
                Ok(())
            })
            .await
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(self.list_inner())
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move {
            let out = self.runner.run("nfs-ls", &argv(&["-s", &self.url("")])).await?;
            Ok(parse_nfs_free(&out))
        })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let url = self.url(&self.image(volid)?);
            let format = common::volume_format(volid);
            self.runner
                .run("qemu-img", &argv(&["resize", "-q", "-f", format, &url, &size.to_string()]))
                .await?;
            Ok(())
        })
    }

    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.qemu_img_snapshot("-c", volid, name))
    }

    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.qemu_img_snapshot("-a", volid, name))
    }

    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.qemu_img_snapshot("-d", volid, name))
    }

    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let Ok(url) = self.qcow2(volid) else { return Ok(Vec::new()) };
            let out = self.runner.run("qemu-img", &argv(&["snapshot", "-l", &url])).await?;
            Ok(dir::parse_qemu_img_snapshots(&out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nfs_ls_output() {
        // libnfs-utils 4.0's `nfs-ls -R` and `nfs-ls -s` against nfs-ganesha 4.3.
        let out = "drwxr-xr-x  3     0     0         4096 template\n\
                   drwxr-xr-x  2     0     0         4096 template/iso\n\
                   -rw-r--r--  1     0     0            3 template/iso/a.iso\n\
                   -rw-------  1     0     0       196616 images/100/vm-100-disk-0.qcow2\n";
        let e = parse_nfs_ls(out);
        assert_eq!(e.len(), 4);
        assert_eq!(e[2], LsEntry { name: "template/iso/a.iso".into(), dir: false, size: 3 });
        assert!(e[0].dir);
        let s = "drwxr-xr-x  3     0     0         4096 images\n\n256385167360 of 270553174016 bytes free.\n";
        assert_eq!(
            parse_nfs_free(s),
            Some(StoreUsage { total: 270553174016, used: 270553174016 - 256385167360, avail: 256385167360 })
        );
        assert_eq!(parse_nfs_free("nothing"), None);
    }

    #[test]
    fn urls_and_qemu_options_carry_no_shell_and_name_the_export() {
        let s = NfsStorage::new(
            "nas",
            "10.0.0.5",
            "/srv/pve/",
            Arc::new(common::Recorder::default()),
            &BTreeMap::new(),
        );
        assert_eq!(
            s.url("images/100/vm-100-disk-0.qcow2"),
            "nfs://10.0.0.5/srv/pve/images/100/vm-100-disk-0.qcow2"
        );
        let DiskSource::Net(n) = s.source("nas:100/vm-100-disk-0.qcow2").unwrap() else { panic!() };
        assert_eq!(n.options["path"], "/srv/pve/images/100/vm-100-disk-0.qcow2");
        assert_eq!(n.options["server"]["host"], "10.0.0.5");
        assert_eq!(n.format, "qcow2");
        assert!(s.source("nas:snippets/x.yaml").is_err());
        assert!(s.source("nas:iso/x.iso").is_ok(), "an ISO for a CD-ROM drive");
        assert!(s.source("nas:100/../../etc/shadow").is_err());
        assert!(s.path("nas:100/vm-100-disk-0.qcow2").is_err());
        let v6 =
            NfsStorage::new("n6", "fd00::5", "/e", Arc::new(common::Recorder::default()), &BTreeMap::new());
        assert_eq!(v6.url(""), "nfs://[fd00::5]/e");
    }
}
