//! A ZFS storage (Proxmox's `zfspool`): a VM disk is a zvol `POOL/vm-VMID-disk-N`
//! (volume id `ID:vm-VMID-disk-N`, opened at `/dev/zvol/POOL/NAME`), a container volume a
//! dataset `POOL/subvol-VMID-disk-N` with a `refquota`; snapshots are ZFS snapshots,
//! rollback `zfs rollback -r` (ZFS rolls back to the latest only: later ones go), clones
//! `zfs clone`. Everything through the `zfs` tool's argv.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::common::{self, argv, Runner};
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DriverError};

pub struct ZfsPoolStorage {
    id: String,
    pool: String,
    runner: Arc<dyn Runner>,
    sparse: bool,
    blocksize: Option<String>,
    /// Where the pool's datasets are mounted (`mountpoint` option; default `/POOL`).
    mountpoint: PathBuf,
}

impl ZfsPoolStorage {
    pub fn new(
        id: impl Into<String>,
        pool: impl Into<String>,
        runner: Arc<dyn Runner>,
        options: &BTreeMap<String, String>,
    ) -> Self {
        let pool = pool.into();
        Self {
            id: id.into(),
            mountpoint: options
                .get("mountpoint")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("/{pool}"))),
            pool,
            runner,
            sparse: options.get("sparse").is_some_and(|v| v == "1"),
            blocksize: options.get("blocksize").cloned(),
        }
    }

    /// `POOL/NAME` of a volume id, its name checked (`vm-`, `base-` or `subvol-`).
    fn dataset(&self, volid: &str) -> Result<(String, String), DriverError> {
        let name = common::volume_name(&self.id, volid)?;
        if name.contains(['/', '@']) || common::vmid_of(name).is_none() {
            return Err(DriverError::Invalid(format!("volume {volid}: not a ZFS volume name")));
        }
        Ok((format!("{}/{name}", self.pool), name.to_string()))
    }

    async fn zfs(&self, args: &[&str]) -> Result<String, DriverError> {
        self.runner.run("zfs", &argv(args)).await
    }

    /// A container volume: dataset `subvol-VMID-disk-N` with a `refquota` of `size_mib`.
    pub async fn alloc_subvol(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let name = format!("subvol-{vmid}-disk-{index}");
        let volid = format!("{}:{name}", self.id);
        let (ds, _) = self.dataset(&volid)?;
        self.zfs(&["create", "-o", &format!("refquota={size_mib}M"), &ds]).await?;
        Ok(volid)
    }

    /// A writable clone `name` of `volid`'s snapshot `snap` (a linked clone).
    pub async fn clone_volume(&self, volid: &str, snap: &str, name: &str) -> Result<String, DriverError> {
        common::validate_snapshot_name(snap)?;
        let (src, _) = self.dataset(volid)?;
        let new = format!("{}:{name}", self.id);
        let (dst, _) = self.dataset(&new)?;
        self.zfs(&["clone", &format!("{src}@{snap}"), &dst]).await?;
        Ok(new)
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let volid = format!("{}:{}", self.id, common::disk_name(vmid, index));
        let (ds, _) = self.dataset(&volid)?;
        let size = format!("{size_mib}M");
        let mut args = vec!["create"];
        if self.sparse {
            args.push("-s");
        }
        if let Some(b) = &self.blocksize {
            args.extend(["-b", b]);
        }
        args.extend(["-V", &size, &ds]);
        self.zfs(&args).await?;
        Ok(volid)
    }

    async fn list_inner(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        let out = self.zfs(&["get", "-Hp", "-r", "-o", "name,property,value", ZFS_PROPS, &self.pool]).await?;
        Ok(parse_zfs_get(&self.id, &self.pool, &out))
    }
}

/// The properties [`parse_zfs_get`] reads, as `zfs get -Hp -r -o name,property,value`
/// asks for them (`zfs list -p` would do, but zfs-fuse's `list` has no `-p`).
pub const ZFS_PROPS: &str = "type,volsize,refquota,used,creation,origin";

/// `zfs get -Hp -r -o name,property,value ZFS_PROPS POOL`: the pool's direct children
/// named as guest volumes (zvols are images, datasets container volumes).
pub fn parse_zfs_get(id: &str, pool: &str, out: &str) -> Vec<VolumeInfo> {
    let mut props: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if let [name, prop, value] = f[..] {
            props.entry(name).or_default().insert(prop, value);
        }
    }
    let num = |p: &BTreeMap<&str, &str>, k: &str| p.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    props
        .iter()
        .filter_map(|(name, p)| {
            let short = name.strip_prefix(pool)?.strip_prefix('/')?;
            if short.contains(['/', '@']) {
                return None;
            }
            let vmid = common::vmid_of(short)?;
            let (format, size, content) = match p.get("type").copied() {
                Some("volume") => ("raw", num(p, "volsize"), "images"),
                Some("filesystem") => ("subvol", num(p, "refquota"), "rootdir"),
                _ => return None,
            };
            Some(VolumeInfo {
                volid: format!("{id}:{short}"),
                vmid,
                format: format.into(),
                size,
                used: num(p, "used"),
                content: content.into(),
                ctime: num(p, "creation"),
                // A clone's origin, `POOL/base-100-disk-0@__base__`: listed without the pool.
                parent: p
                    .get("origin")
                    .filter(|o| **o != "-")
                    .map(|o| o.strip_prefix(pool).and_then(|o| o.strip_prefix('/')).unwrap_or(o).to_string()),
            })
        })
        .collect()
}

impl VolumeStore for ZfsPoolStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.zfs(&["list", "-H", "-o", "name", &self.pool]).await.map_err(|e| {
                DriverError::Invalid(format!("storage {}: ZFS pool {} is not there: {e}", self.id, self.pool))
            })?;
            Ok(())
        })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        let (ds, name) = self.dataset(volid)?;
        Ok(if name.starts_with("subvol-") {
            self.mountpoint.join(name)
        } else {
            PathBuf::from(format!("/dev/zvol/{ds}"))
        })
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let (from, name) = self.dataset(volid)?;
            let kind = if name.starts_with("subvol-") { "subvol" } else { "vm" };
            let new = format!("{}:{kind}-{vmid}-disk-{index}", self.id);
            let (to, _) = self.dataset(&new)?;
            self.zfs(&["rename", &from, &to]).await?;
            Ok(new)
        })
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (ds, _) = self.dataset(volid)?;
            // A dataset just used (a udev probe of a zvol, a FUSE mount's cache) is busy
            // for a moment: retry, as Proxmox does.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.zfs(&["destroy", "-r", &ds]).await {
                    Err(DriverError::Command { message, .. }) if message.contains("does not exist") => {
                        return Ok(())
                    }
                    Err(DriverError::Command { message, .. }) if message.contains("busy") && attempt < 6 => {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    r => return r.map(|_| ()),
                }
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(self.list_inner())
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move {
            let out = self.zfs(&["get", "-o", "value", "-Hp", "available,used", &self.pool]).await?;
            let v: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
            let [avail, used] = v[..] else {
                return Err(DriverError::Invalid(format!("zfs get: unexpected output {out:?}")));
            };
            Ok(Some(StoreUsage { total: avail + used, used, avail }))
        })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let (ds, name) = self.dataset(volid)?;
            let prop = if name.starts_with("subvol-") { "refquota" } else { "volsize" };
            self.zfs(&["set", &format!("{prop}={size}"), &ds]).await.map(|_| ())
        })
    }

    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let (ds, _) = self.dataset(volid)?;
            self.zfs(&["snapshot", &format!("{ds}@{name}")]).await.map(|_| ())
        })
    }

    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let (ds, _) = self.dataset(volid)?;
            self.zfs(&["rollback", "-r", &format!("{ds}@{name}")]).await.map(|_| ())
        })
    }

    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let (ds, _) = self.dataset(volid)?;
            self.zfs(&["destroy", &format!("{ds}@{name}")]).await.map(|_| ())
        })
    }

    fn rolls_back_past_later_snapshots(&self) -> bool {
        false
    }

    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let (ds, _) = self.dataset(volid)?;
            let out = self
                .zfs(&["list", "-H", "-o", "name", "-s", "creation", "-t", "snapshot", "-r", &ds])
                .await?;
            let prefix = format!("{ds}@");
            Ok(out.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::common::Recorder;

    /// zvols cannot exist under zfs-fuse (`zfs create -V` aborts: "Function not
    /// implemented"): their commands are checked by argv.
    #[tokio::test]
    async fn zvols_by_argv_and_recorded_listing() {
        let rec = Arc::new(Recorder::default());
        let opts = [("sparse".to_string(), "1".to_string()), ("blocksize".to_string(), "16k".to_string())];
        let s = ZfsPoolStorage::new("tank", "rpool/data", rec.clone(), &opts.into_iter().collect());
        assert_eq!(s.alloc(100, 0, 4096).await.unwrap(), "tank:vm-100-disk-0");
        assert_eq!(
            s.path("tank:vm-100-disk-0").unwrap(),
            PathBuf::from("/dev/zvol/rpool/data/vm-100-disk-0")
        );
        s.snapshot("tank:vm-100-disk-0", "pre").await.unwrap();
        s.rollback("tank:vm-100-disk-0", "pre").await.unwrap();
        s.resize("tank:vm-100-disk-0", 8 << 30).await.unwrap();
        s.free("tank:vm-100-disk-0").await.unwrap();
        assert_eq!(
            rec.calls(),
            [
                "zfs create -s -b 16k -V 4096M rpool/data/vm-100-disk-0",
                "zfs snapshot rpool/data/vm-100-disk-0@pre",
                "zfs rollback -r rpool/data/vm-100-disk-0@pre",
                "zfs set volsize=8589934592 rpool/data/vm-100-disk-0",
                "zfs destroy -r rpool/data/vm-100-disk-0",
            ]
        );
        assert!(s.path("tank:../x").is_err() && s.path("tank:vm-1-disk-0@x").is_err());
        // The zvol in `zfs get`'s columns (zfs-fuse's real output for datasets is read in
        // tests/storage_backends.rs).
        let recorded = "rpool/data\ttype\tfilesystem\nrpool/data/vm-100-disk-0\ttype\tvolume\n\
                        rpool/data/vm-100-disk-0\tvolsize\t4294967296\nrpool/data/vm-100-disk-0\trefquota\t-\n\
                        rpool/data/vm-100-disk-0\tused\t57344\nrpool/data/vm-100-disk-0@pre\ttype\tsnapshot\n";
        let l = parse_zfs_get("tank", "rpool/data", recorded);
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].volid.as_str(), l[0].content.as_str(), l[0].size, l[0].vmid),
            ("tank:vm-100-disk-0", "images", 4 << 30, 100)
        );
    }
}
