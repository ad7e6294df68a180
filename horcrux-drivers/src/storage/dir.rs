//! A directory storage (Proxmox's `dir`) in Proxmox's layout: disk images under
//! `images/VMID/vm-VMID-disk-N.{qcow2,raw,vmdk}` (made with qemu-img, `format` and
//! `preallocation` as configured), ISO images in `template/iso/`, container templates in
//! `template/cache/`, backups in `dump/`, `snippets/`, `import/`, container volumes in
//! `private/`. qcow2 images take internal snapshots (qemu-img while the guest is off).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::common::{self, argv, Runner, SystemRunner};
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DriverError};

pub struct DirStorage {
    id: String,
    root: PathBuf,
    format: String,
    preallocation: Option<String>,
    runner: Arc<dyn Runner>,
}

/// Each content type's subdirectory and the file names it holds.
const LAYOUT: [(&str, &str, &[&str]); 6] = [
    ("iso", "template/iso", &[".iso", ".img"]),
    ("vztmpl", "template/cache", &[".tar.gz", ".tar.xz", ".tar.zst", ".tgz"]),
    ("backup", "dump", &[".vma", ".vma.zst", ".vma.gz", ".vma.lzo", ".tar", ".tar.zst", ".tar.gz", ".tgz"]),
    ("snippets", "snippets", &[""]),
    ("import", "import", &[".ova", ".ovf", ".qcow2", ".raw", ".vmdk"]),
    ("rootdir", "private", &[""]),
];

const IMAGE_FORMATS: [&str; 3] = ["qcow2", "raw", "vmdk"];

/// Which content a volume of storage `id` is, and its path in Proxmox's layout relative
/// to the storage's root (`images/100/vm-100-disk-0.qcow2`, `template/iso/x.iso`): the
/// layout of every file-based storage (`dir`, `nfs`).
pub(super) fn locate(id: &str, volid: &str) -> Result<(&'static str, String), DriverError> {
    let rel = common::volume_name(id, volid)?;
    let (head, name) = rel.split_once('/').ok_or_else(|| {
        DriverError::Invalid(format!("volume {volid}: expected VMID/NAME or CONTENT/NAME after the storage"))
    })?;
    if head.parse::<u32>().is_ok() {
        if name.contains('/') || !IMAGE_FORMATS.iter().any(|f| name.ends_with(&format!(".{f}"))) {
            return Err(DriverError::Invalid(format!("volume {volid}: not a disk image name")));
        }
        return Ok(("images", format!("images/{head}/{name}")));
    }
    let (content, dir, _) = LAYOUT
        .iter()
        .find(|(c, _, _)| *c == head)
        .ok_or_else(|| DriverError::Invalid(format!("volume {volid}: {head:?} is not a content type")))?;
    Ok((content, format!("{dir}/{name}")))
}

/// A file's content type and format by where it is in the layout (`template/iso/x.iso`:
/// iso), and its volume name; `None` for files the layout does not hold.
pub(super) fn classify(dir: &str, name: &str) -> Option<(&'static str, String)> {
    let (content, _, suffixes) = LAYOUT.iter().find(|(_, d, _)| *d == dir)?;
    let suffix = suffixes.iter().find(|s| name.ends_with(*s))?;
    let format = match (*content, suffix.trim_start_matches('.')) {
        ("rootdir", _) => "subvol".to_string(),
        ("snippets", _) => "snippet".to_string(),
        ("vztmpl", s) => s.replace("tar.", "t"),
        (_, s) => s.to_string(),
    };
    Some((content, format))
}

/// The directories of the layout, made when a storage is activated.
pub(super) const LAYOUT_DIRS: [&str; 7] =
    ["images", "template/iso", "template/cache", "dump", "snippets", "import", "private"];

impl DirStorage {
    pub fn new(id: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self::with_options(id, root, &BTreeMap::new())
    }

    /// With the storage's `format` (default qcow2) and `preallocation` options.
    pub fn with_options(
        id: impl Into<String>,
        root: impl Into<PathBuf>,
        options: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            id: id.into(),
            root: root.into(),
            format: options.get("format").cloned().unwrap_or_else(|| "qcow2".into()),
            preallocation: options.get("preallocation").cloned(),
            runner: Arc::new(SystemRunner),
        }
    }

    /// Which content a volume is and where it lives.
    fn locate(&self, volid: &str) -> Result<(&'static str, PathBuf), DriverError> {
        let (content, rel) = locate(&self.id, volid)?;
        Ok((content, self.root.join(rel)))
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let volid = format!("{}:{vmid}/{}.{}", self.id, common::disk_name(vmid, index), self.format);
        let (_, path) = self.locate(&volid)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        if tokio::fs::try_exists(&path).await? {
            return Err(DriverError::Invalid(format!("volume {volid} already exists at {}", path.display())));
        }
        common::qemu_img_create(&*self.runner, &path, &self.format, size_mib, self.preallocation.as_deref())
            .await?;
        Ok(volid)
    }

    async fn list_inner(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for (vmid_dir, vmid) in read_dir_names(&self.root.join("images")).await? {
            let Ok(vmid) = vmid.parse::<u32>() else { continue };
            for (f, name) in read_dir_names(&vmid_dir).await? {
                let volid = format!("{}:{vmid}/{name}", self.id);
                if self.locate(&volid).is_err() {
                    continue;
                }
                let meta = tokio::fs::metadata(&f).await?;
                let (size, parent) = common::image_info(&f).await?;
                out.push(VolumeInfo {
                    volid,
                    vmid,
                    format: name.rsplit('.').next().unwrap_or_default().to_string(),
                    size,
                    used: meta.blocks() * 512,
                    content: "images".into(),
                    ctime: meta.mtime().max(0) as u64,
                    parent,
                });
            }
        }
        for (_, dir, _) in LAYOUT {
            for (f, name) in read_dir_names(&self.root.join(dir)).await? {
                let Some((content, format)) = classify(dir, &name) else { continue };
                let volid = format!("{}:{content}/{name}", self.id);
                if horcrux_core::ids::parse_volume_id(&volid).is_err() {
                    continue;
                }
                let meta = tokio::fs::metadata(&f).await?;
                let vmid = if content == "rootdir" { common::vmid_of(&name).unwrap_or(0) } else { 0 };
                // An image to import: its virtual size (a qcow2's header), not the file's.
                let size = if content == "import" { common::image_size(&f).await? } else { meta.len() };
                out.push(VolumeInfo {
                    volid,
                    vmid,
                    format,
                    size,
                    used: meta.blocks() * 512,
                    content: content.into(),
                    ctime: meta.mtime().max(0) as u64,
                    parent: None,
                });
            }
        }
        out.sort_by(|a, b| a.volid.cmp(&b.volid));
        Ok(out)
    }

    /// A qcow2 image's path, or a refusal naming why it cannot take snapshots.
    fn qcow2(&self, volid: &str) -> Result<PathBuf, DriverError> {
        let (content, path) = self.locate(volid)?;
        if content != "images" || !volid.ends_with(".qcow2") {
            return Err(DriverError::Invalid(format!(
                "volume {volid}: snapshots on a directory storage need a qcow2 image"
            )));
        }
        Ok(path)
    }

    async fn qemu_img_snapshot(&self, flag: &str, volid: &str, name: &str) -> Result<(), DriverError> {
        common::validate_snapshot_name(name)?;
        let path = self.qcow2(volid)?;
        self.runner.run("qemu-img", &argv(&["snapshot", flag, name, &path.display().to_string()])).await?;
        Ok(())
    }
}

/// The entries of `dir` with their names; a missing directory has none.
async fn read_dir_names(dir: &std::path::Path) -> Result<Vec<(PathBuf, String)>, DriverError> {
    let mut out = Vec::new();
    let mut d = match tokio::fs::read_dir(dir).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    while let Some(e) = d.next_entry().await? {
        out.push((e.path(), e.file_name().to_string_lossy().into_owned()));
    }
    Ok(out)
}

/// `qemu-img snapshot -l` (its table: ID, TAG, VM SIZE, DATE, VM CLOCK, ICOUNT): the tags.
pub fn parse_qemu_img_snapshots(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

impl VolumeStore for DirStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            for dir in LAYOUT_DIRS {
                tokio::fs::create_dir_all(self.root.join(dir)).await?;
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(self.list_inner())
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move { common::fs_usage(&self.root) })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        Ok(self.locate(volid)?.1)
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (content, path) = self.locate(volid)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            // Drop the per-guest directory once it is empty, as Proxmox does.
            if content == "images" {
                if let Some(dir) = path.parent() {
                    let _ = tokio::fs::remove_dir(dir).await;
                }
            }
            Ok(())
        })
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let (content, from) = self.locate(volid)?;
            if content != "images" {
                return Err(DriverError::Invalid(format!("volume {volid} is not a disk image")));
            }
            let ext = common::volume_format(volid);
            let new = format!("{}:{vmid}/{}.{ext}", self.id, common::disk_name(vmid, index));
            let (_, to) = self.locate(&new)?;
            common::move_volume(&from, &to, new).await
        })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (content, path) = self.locate(volid)?;
            let format = volid.rsplit('.').next().unwrap_or("raw");
            if content != "images" {
                return Err(DriverError::Invalid(format!("volume {volid} is not a disk image")));
            }
            let args = argv(&["resize", "-q", "-f", format, &path.display().to_string(), &size.to_string()]);
            self.runner.run("qemu-img", &args).await.map(|_| ())
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
            let Ok(path) = self.qcow2(volid) else { return Ok(Vec::new()) };
            let out =
                self.runner.run("qemu-img", &argv(&["snapshot", "-l", &path.display().to_string()])).await?;
            Ok(parse_qemu_img_snapshots(&out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the real qemu-img.
    #[tokio::test]
    async fn allocates_qcow2_refuses_overwrite_snapshots_and_frees() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStorage::new("local", tmp.path());
        s.activate().await.unwrap();
        let vol = s.alloc(101, 0, 64).await.unwrap();
        // qemu-img's header carries the virtual size the listing reports.
        let listed = s.list().await.unwrap();
        assert_eq!((listed.len(), listed[0].vmid, listed[0].size), (1, 101, 64 * 1024 * 1024));
        assert_eq!((listed[0].volid.as_str(), listed[0].content.as_str()), (vol.as_str(), "images"));
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
        assert!(s.path("local:101/../../etc/passwd").is_err());
        assert!(s.path("local:nope/x").is_err());

        s.snapshot(&vol, "first").await.unwrap();
        s.snapshot(&vol, "second").await.unwrap();
        assert_eq!(s.snapshots(&vol).await.unwrap(), ["first", "second"]);
        s.rollback(&vol, "first").await.unwrap();
        s.delete_snapshot(&vol, "second").await.unwrap();
        assert_eq!(s.snapshots(&vol).await.unwrap(), ["first"]);
        assert!(s.snapshot(&vol, "x/y").await.is_err());

        // A linked clone (qcow2 over a backing file, as qemu-img makes it): its parent is
        // the backing file its header names, as Proxmox lists it.
        let clone = tmp.path().join("images/102/vm-102-disk-0.qcow2");
        std::fs::create_dir_all(clone.parent().unwrap()).unwrap();
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "qcow2", "-b", "../101/vm-101-disk-0.qcow2"])
            .arg(&clone)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let listed = s.list().await.unwrap();
        let parents: Vec<_> =
            listed.iter().map(|v| (v.volid.as_str(), v.parent.as_deref(), v.size)).collect();
        assert_eq!(
            parents,
            [
                ("local:101/vm-101-disk-0.qcow2", None, 64 << 20),
                ("local:102/vm-102-disk-0.qcow2", Some("../101/vm-101-disk-0.qcow2"), 64 << 20)
            ]
        );
        std::fs::remove_dir_all(tmp.path().join("images/102")).unwrap();

        s.free(&vol).await.unwrap();
        assert!(!path.exists());
        assert!(!tmp.path().join("images/101").exists());
        s.free(&vol).await.unwrap();
    }

    #[tokio::test]
    async fn content_of_every_type_is_listed_where_proxmox_puts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = [("format".to_string(), "raw".to_string())].into_iter().collect();
        let s = DirStorage::with_options("d", tmp.path(), &opts);
        s.activate().await.unwrap();
        std::fs::write(tmp.path().join("template/iso/boot.iso"), b"iso").unwrap();
        std::fs::write(tmp.path().join("template/cache/debian.tar.zst"), b"t").unwrap();
        std::fs::write(tmp.path().join("dump/vzdump-qemu-100-2026_01_01-00_00_00.vma.zst"), b"b").unwrap();
        std::fs::write(tmp.path().join("snippets/user.yaml"), b"s").unwrap();
        std::fs::write(tmp.path().join("template/iso/notes.txt"), b"ignored").unwrap();
        let raw = s.alloc(100, 1, 8).await.unwrap();
        assert_eq!(raw, "d:100/vm-100-disk-1.raw");
        assert_eq!(std::fs::metadata(s.path(&raw).unwrap()).unwrap().len(), 8 << 20);
        let got: Vec<(String, String, String)> =
            s.list().await.unwrap().into_iter().map(|v| (v.volid, v.content, v.format)).collect();
        let want = [
            ("d:100/vm-100-disk-1.raw", "images", "raw"),
            ("d:backup/vzdump-qemu-100-2026_01_01-00_00_00.vma.zst", "backup", "vma.zst"),
            ("d:iso/boot.iso", "iso", "iso"),
            ("d:snippets/user.yaml", "snippets", "snippet"),
            ("d:vztmpl/debian.tar.zst", "vztmpl", "tzst"),
        ];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(s.path("d:iso/boot.iso").unwrap(), tmp.path().join("template/iso/boot.iso"));
        assert!(s.snapshot(&raw, "snap1").await.unwrap_err().to_string().contains("qcow2"));
    }

    #[test]
    fn parses_qemu_img_snapshot_lists() {
        // qemu-img 7.2's `snapshot -l` of an image with two snapshots.
        let out = "Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n\
                   1         first                 0 B 2026-12-03 09:00:00 00:00:00.000          0\n\
                   2         second                0 B 2026-12-03 09:00:01 00:00:00.000          0\n";
        assert_eq!(parse_qemu_img_snapshots(out), ["first", "second"]);
        assert!(parse_qemu_img_snapshots("").is_empty());
    }
}
