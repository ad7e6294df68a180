//! LVM storages (Proxmox's `lvm` and `lvmthin`): a disk is a logical volume
//! `VG/vm-VMID-disk-N` (volume id `ID:vm-VMID-disk-N`, opened at `/dev/VG/NAME`), in the
//! thin pool when there is one. Thin volumes take snapshots (`snap_NAME_SNAP`, read-only
//! thin snapshots, as Proxmox names them); plain LVM refuses them, as Proxmox does.

use std::path::PathBuf;
use std::sync::Arc;

use super::common::{self, argv, Runner};
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DriverError};

pub struct LvmStorage {
    id: String,
    vg: String,
    thinpool: Option<String>,
    runner: Arc<dyn Runner>,
}

/// The `lvs` report Proxmox reads: names, sizes in bytes, attributes, thin pool, data use.
const LVS_FIELDS: &str = "vg_name,lv_name,lv_size,lv_attr,pool_lv,data_percent,time";

/// One logical volume of an `lvs` report.
#[derive(Debug, Clone, PartialEq)]
pub struct Lv {
    pub vg: String,
    pub name: String,
    pub size: u64,
    pub attr: String,
    pub pool: String,
    pub data_percent: f64,
    pub ctime: u64,
}

/// `lvs --separator : --noheadings --units b --nosuffix -o LVS_FIELDS`.
pub fn parse_lvs(out: &str) -> Vec<Lv> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            let [vg, name, size, attr, pool, data, time] = f[..] else { return None };
            Some(Lv {
                vg: vg.into(),
                name: name.into(),
                size: size.parse().ok()?,
                attr: attr.into(),
                pool: pool.into(),
                data_percent: data.parse().unwrap_or(0.0),
                ctime: time.parse().unwrap_or(0),
            })
        })
        .collect()
}

impl LvmStorage {
    pub fn new(
        id: impl Into<String>,
        vg: impl Into<String>,
        thinpool: Option<String>,
        runner: Arc<dyn Runner>,
    ) -> Self {
        Self { id: id.into(), vg: vg.into(), thinpool, runner }
    }

    fn lv_name<'a>(&self, volid: &'a str) -> Result<&'a str, DriverError> {
        let name = common::volume_name(&self.id, volid)?;
        if name.contains(['/', '@']) || common::vmid_of(name).is_none() {
            return Err(DriverError::Invalid(format!("volume {volid}: not an LVM volume name")));
        }
        Ok(name)
    }

    fn snap_lv(name: &str, snap: &str) -> String {
        format!("snap_{name}_{snap}")
    }

    fn thin(&self) -> Result<&str, DriverError> {
        self.thinpool.as_deref().ok_or_else(|| {
            DriverError::Invalid(format!(
                "storage {}: snapshots need an LVM thin pool (lvmthin), not plain LVM",
                self.id
            ))
        })
    }

    async fn lvs(&self) -> Result<Vec<Lv>, DriverError> {
        let out = self
            .runner
            .run(
                "lvs",
                &argv(&[
                    "--separator",
                    ":",
                    "--noheadings",
                    "--units",
                    "b",
                    "--unbuffered",
                    "--nosuffix",
                    "--config",
                    "report/time_format=\"%s\"",
                    "-o",
                    LVS_FIELDS,
                    &self.vg,
                ]),
            )
            .await?;
        Ok(parse_lvs(&out))
    }

    async fn lvcreate(&self, args: &[&str]) -> Result<(), DriverError> {
        self.runner.run("lvcreate", &argv(args)).await.map(|_| ())
    }

    async fn lvremove(&self, lv: &str) -> Result<(), DriverError> {
        self.runner.run("lvremove", &argv(&["-f", &format!("{}/{lv}", self.vg)])).await.map(|_| ())
    }

    async fn alloc_inner(&self, vmid: u32, index: usize, size_mib: u64) -> Result<String, DriverError> {
        let name = common::disk_name(vmid, index);
        let size = format!("{size_mib}m");
        match &self.thinpool {
            Some(tp) => {
                let pool = format!("{}/{tp}", self.vg);
                self.lvcreate(&["-aly", "-V", &size, "--name", &name, "--thinpool", &pool]).await?
            }
            None => {
                self.lvcreate(&["-aly", "-Wy", "--yes", "--size", &size, "--name", &name, &self.vg]).await?
            }
        }
        Ok(format!("{}:{name}", self.id))
    }
}

impl VolumeStore for LvmStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.runner.run("vgs", &argv(&["--noheadings", "-o", "vg_name", &self.vg])).await.map_err(
                |e| {
                    DriverError::Invalid(format!(
                        "storage {}: volume group {} is not there: {e}",
                        self.id, self.vg
                    ))
                },
            )?;
            Ok(())
        })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(self.alloc_inner(vmid, index, size_mib))
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        Ok(PathBuf::from(format!("/dev/{}/{}", self.vg, self.lv_name(volid)?)))
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let name = self.lv_name(volid)?;
            let to = common::disk_name(vmid, index);
            self.runner.run("lvrename", &argv(&[&self.vg, name, &to])).await?;
            Ok(format!("{}:{to}", self.id))
        })
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let name = self.lv_name(volid)?;
            let lvs = self.lvs().await?;
            let prefix = format!("snap_{name}_");
            for snap in lvs.iter().filter(|l| l.name.starts_with(&prefix)) {
                self.lvremove(&snap.name).await?;
            }
            if lvs.iter().any(|l| l.name == name) {
                self.lvremove(name).await?;
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(async move {
            let mut out: Vec<VolumeInfo> = self
                .lvs()
                .await?
                .into_iter()
                .filter(|l| l.vg == self.vg)
                .filter(|l| self.thinpool.as_deref().is_none_or(|tp| l.pool == tp))
                .filter_map(|l| {
                    let vmid = common::vmid_of(&l.name)?;
                    let used = if self.thinpool.is_some() {
                        (l.size as f64 * l.data_percent / 100.0) as u64
                    } else {
                        l.size
                    };
                    Some(VolumeInfo {
                        volid: format!("{}:{}", self.id, l.name),
                        vmid,
                        format: "raw".into(),
                        size: l.size,
                        used,
                        content: "images".into(),
                        ctime: l.ctime,
                        parent: None,
                    })
                })
                .collect();
            out.sort_by(|a, b| a.volid.cmp(&b.volid));
            Ok(out)
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move {
            if let Some(tp) = &self.thinpool {
                let lvs = self.lvs().await?;
                let pool = lvs.iter().find(|l| &l.name == tp).ok_or_else(|| {
                    DriverError::Invalid(format!(
                        "storage {}: thin pool {}/{tp} is not there",
                        self.id, self.vg
                    ))
                })?;
                let used = (pool.size as f64 * pool.data_percent / 100.0) as u64;
                return Ok(Some(StoreUsage {
                    total: pool.size,
                    used,
                    avail: pool.size - used.min(pool.size),
                }));
            }
            let out = self
                .runner
                .run(
                    "vgs",
                    &argv(&[
                        "--separator",
                        ":",
                        "--noheadings",
                        "--units",
                        "b",
                        "--unbuffered",
                        "--nosuffix",
                        "-o",
                        "vg_size,vg_free",
                        &self.vg,
                    ]),
                )
                .await?;
            let v: Vec<u64> = out.trim().split(':').filter_map(|s| s.trim().parse().ok()).collect();
            let [total, free] = v[..] else {
                return Err(DriverError::Invalid(format!("vgs: unexpected output {out:?}")));
            };
            Ok(Some(StoreUsage { total, used: total - free, avail: free }))
        })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let lv = format!("{}/{}", self.vg, self.lv_name(volid)?);
            let kib = size.div_ceil(1024);
            self.runner.run("lvextend", &argv(&["-L", &format!("{kib}k"), &lv])).await.map(|_| ())
        })
    }

    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.thin()?;
            common::validate_snapshot_name(name)?;
            let lv = self.lv_name(volid)?;
            let origin = format!("{}/{lv}", self.vg);
            self.lvcreate(&["-n", &Self::snap_lv(lv, name), "-pr", "-s", &origin]).await
        })
    }

    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.thin()?;
            common::validate_snapshot_name(name)?;
            let lv = self.lv_name(volid)?;
            let snap = format!("{}/{}", self.vg, Self::snap_lv(lv, name));
            self.lvremove(lv).await?;
            self.lvcreate(&["-kn", "-n", lv, "-s", &snap]).await
        })
    }

    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.thin()?;
            common::validate_snapshot_name(name)?;
            let lv = self.lv_name(volid)?;
            self.lvremove(&Self::snap_lv(lv, name)).await
        })
    }

    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let lv = self.lv_name(volid)?;
            let prefix = format!("snap_{lv}_");
            let mut snaps: Vec<(u64, String)> = self
                .lvs()
                .await?
                .into_iter()
                .filter_map(|l| l.name.strip_prefix(&prefix).map(|s| (l.ctime, s.to_string())))
                .collect();
            snaps.sort();
            Ok(snaps.into_iter().map(|(_, s)| s).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::common::Recorder;

    /// No device mapper here: the data path is checked by argv (as Proxmox's LVMPlugin and
    /// LvmThinPlugin run them); the report parser reads real `lvs` output in
    /// `tests/storage_backends.rs`.
    #[tokio::test]
    async fn thin_volumes_and_snapshots_by_argv() {
        let rec = Arc::new(Recorder::default());
        let s = LvmStorage::new("lt", "pve", Some("data".into()), rec.clone());
        assert_eq!(s.alloc(100, 0, 1024).await.unwrap(), "lt:vm-100-disk-0");
        assert_eq!(s.path("lt:vm-100-disk-0").unwrap(), PathBuf::from("/dev/pve/vm-100-disk-0"));
        s.snapshot("lt:vm-100-disk-0", "pre").await.unwrap();
        s.rollback("lt:vm-100-disk-0", "pre").await.unwrap();
        s.delete_snapshot("lt:vm-100-disk-0", "pre").await.unwrap();
        let calls = rec.calls();
        assert_eq!(
            calls,
            [
                "lvcreate -aly -V 1024m --name vm-100-disk-0 --thinpool pve/data",
                "lvcreate -n snap_vm-100-disk-0_pre -pr -s pve/vm-100-disk-0",
                "lvremove -f pve/vm-100-disk-0",
                "lvcreate -kn -n vm-100-disk-0 -s pve/snap_vm-100-disk-0_pre",
                "lvremove -f pve/snap_vm-100-disk-0_pre",
            ]
        );
        let plain = LvmStorage::new("l", "pve", None, rec.clone());
        assert_eq!(plain.alloc(101, 1, 8).await.unwrap(), "l:vm-101-disk-1");
        assert_eq!(rec.calls().last().unwrap(), "lvcreate -aly -Wy --yes --size 8m --name vm-101-disk-1 pve");
        assert!(plain.snapshot("l:vm-101-disk-1", "pre").await.unwrap_err().to_string().contains("thin"));
        assert!(plain.path("l:../../dev/sda").is_err());
        plain.resize("l:vm-101-disk-1", 16 << 20).await.unwrap();
        assert_eq!(rec.calls().last().unwrap(), "lvextend -L 16384k pve/vm-101-disk-1");
    }
}
