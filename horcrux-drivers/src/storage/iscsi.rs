//! An iSCSI storage (Proxmox's `iscsi`, reached as its `iscsidirect` does): the LUNs a
//! target already exports, used whole as guest disks (`san:lun1`). This host's kernel has
//! no iSCSI initiator, so QEMU logs in with its own (libiscsi: `-drive file.driver=iscsi`)
//! and libiscsi's `iscsi-ls` lists the LUNs. A CHAP password reaches QEMU as a `secret`
//! object read from a descriptor and the tools through `LIBISCSI_CHAP_PASSWORD`, never an
//! argument vector. LUNs are made on the target, not here: allocation, freeing and
//! snapshots are refused.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::common::{argv, Runner};
use super::{VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DiskSource, DriverError, NetDisk, NetSecret};

pub struct IscsiStorage {
    id: String,
    /// `HOST[:PORT]` (port 3260 when left out).
    portal: String,
    target: String,
    username: Option<String>,
    password: Option<String>,
    runner: Arc<dyn Runner>,
}

/// The environment variable libiscsi's tools (and qemu-img's iSCSI client) read the CHAP
/// password from when the URL names a user without one.
const CHAP_ENV: &str = "LIBISCSI_CHAP_PASSWORD";

impl IscsiStorage {
    pub fn new(
        id: impl Into<String>,
        portal: impl Into<String>,
        target: impl Into<String>,
        username: Option<String>,
        password: Option<String>,
        runner: Arc<dyn Runner>,
    ) -> Self {
        let password = password.filter(|p| !p.is_empty());
        Self { id: id.into(), portal: portal.into(), target: target.into(), username, password, runner }
    }

    fn portal_with_port(&self) -> String {
        let has_port = match self.portal.rsplit_once(':') {
            // `[v6]:port` or `host:port`; a bare IPv6 address has more colons.
            Some((host, port)) => port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')),
            None => false,
        };
        if has_port {
            self.portal.clone()
        } else {
            format!("{}:3260", self.portal)
        }
    }

    /// `iscsi://[USER@]PORTAL[/TARGET/LUN]`: a user but never a password.
    fn url(&self, lun: Option<u32>) -> String {
        let user = self
            .username
            .as_ref()
            .map(|u| format!("{}@", horcrux_core::ids::percent_encode(u)))
            .unwrap_or_default();
        let base = format!("iscsi://{user}{}", self.portal_with_port());
        match lun {
            Some(l) => format!("{base}/{}/{l}", self.target),
            None => base,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.password.iter().map(|p| (CHAP_ENV, p.clone())).collect()
    }

    fn lun(&self, volid: &str) -> Result<u32, DriverError> {
        let name = super::common::volume_name(&self.id, volid)?;
        name.strip_prefix("lun")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| DriverError::Invalid(format!("volume {volid}: an iSCSI volume is lunN")))
    }

    async fn luns(&self) -> Result<Vec<(u32, u64)>, DriverError> {
        let out = self.runner.run_env("iscsi-ls", &argv(&["-s", &self.url(None)]), &self.env()).await?;
        let listed = parse_iscsi_ls(&out);
        let Some((_, luns)) = listed.into_iter().find(|(t, _)| *t == self.target) else {
            return Err(DriverError::Invalid(format!(
                "storage {}: portal {} does not export target {}",
                self.id, self.portal, self.target
            )));
        };
        let mut out = Vec::new();
        for lun in luns {
            // iscsi-ls rounds sizes (63M); READ CAPACITY gives the bytes.
            let size = self
                .runner
                .run_env("iscsi-readcapacity16", &argv(&["-s", &self.url(Some(lun))]), &self.env())
                .await?;
            out.push((lun, size.trim().parse().unwrap_or(0)));
        }
        Ok(out)
    }

    fn refuse(&self, what: &str) -> DriverError {
        DriverError::Invalid(format!(
            "storage {}: iSCSI storage uses the LUNs target {} exports; {what} on the target",
            self.id, self.target
        ))
    }
}

/// `iscsi-ls -s` output: each target and its disk LUNs (`Type:DIRECT_ACCESS`).
pub fn parse_iscsi_ls(out: &str) -> Vec<(String, Vec<u32>)> {
    let mut targets: Vec<(String, Vec<u32>)> = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Target:") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            targets.push((name.to_string(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("Lun:") {
            let mut f = rest.split_whitespace();
            let lun = f.next().and_then(|n| n.parse().ok());
            let disk = f.next().is_some_and(|t| t == "Type:DIRECT_ACCESS");
            if let (Some(lun), true, Some(t)) = (lun, disk, targets.last_mut()) {
                t.1.push(lun);
            }
        }
    }
    targets
}

impl VolumeStore for IscsiStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        // Logs in (CHAP) and lists: a wrong password or an unknown target fails here.
        Box::pin(async move { self.luns().await.map(|_| ()) })
    }

    fn alloc(&self, _: u32, _: usize, _: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(async move { Err(self.refuse("create LUNs")) })
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        Err(DriverError::Invalid(format!(
            "volume {volid} is a LUN of iSCSI storage {}, which this host reaches in userspace (no host path)",
            self.id
        )))
    }

    fn source(&self, volid: &str) -> Result<DiskSource, DriverError> {
        let lun = self.lun(volid)?;
        let mut options = json!({
            "driver": "iscsi",
            "transport": "tcp",
            "portal": self.portal_with_port(),
            "target": self.target,
            "lun": lun,
        });
        if let Some(u) = &self.username {
            options["user"] = json!(u);
        }
        let serde_json::Value::Object(options) = options else { unreachable!() };
        let secret = self.password.as_ref().map(|p| NetSecret {
            value: p.clone(),
            format: "raw",
            option: "password-secret",
            env: (CHAP_ENV, p.clone()),
        });
        Ok(DiskSource::Net(NetDisk { options, url: self.url(Some(lun)), format: "raw".into(), secret }))
    }

    fn free<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { Err(self.refuse("remove LUNs")) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(async move {
            Ok(self
                .luns()
                .await?
                .into_iter()
                .map(|(lun, size)| VolumeInfo {
                    volid: format!("{}:lun{lun}", self.id),
                    vmid: 0,
                    format: "raw".into(),
                    size,
                    used: size,
                    content: "images".into(),
                    ctime: 0,
                    parent: None,
                })
                .collect())
        })
    }

    /// A LUN belongs to no guest by name: it is handed over as it is.
    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        _: u32,
        _: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move { self.lun(volid).map(|_| volid.to_string()) })
    }

    fn snapshot<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { Err(self.refuse("LUNs have no snapshots here: take them")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::common::Recorder;

    /// tgt 1.0.85's target as libiscsi 1.19's `iscsi-ls -s` lists it.
    const LS: &str = "Target:iqn.2026-12.org.horcrux:test Portal:127.0.0.1:3260,1\n\
                      Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
                      Lun:1    Type:DIRECT_ACCESS (Size:63M)\n\
                      Lun:2    Type:DIRECT_ACCESS (Size:1G)\n\
                      Target:iqn.2026-12.org.horcrux:other Portal:127.0.0.1:3260,1\n";

    #[test]
    fn parses_targets_and_disk_luns() {
        let t = parse_iscsi_ls(LS);
        assert_eq!(t[0], ("iqn.2026-12.org.horcrux:test".to_string(), vec![1, 2]));
        assert_eq!(t[1], ("iqn.2026-12.org.horcrux:other".to_string(), vec![]));
    }

    #[tokio::test]
    async fn the_password_is_never_in_an_argv_or_a_url() {
        let r = Arc::new(Recorder::default());
        r.reply(&["iscsi-ls"], Ok(LS));
        r.reply(&["iscsi-readcapacity16"], Ok("67108864"));
        r.reply(&["iscsi-readcapacity16"], Ok("1073741824"));
        let s = IscsiStorage::new(
            "san",
            "127.0.0.1",
            "iqn.2026-12.org.horcrux:test",
            Some("alice".into()),
            Some("s3cretpass1".into()),
            r.clone(),
        );
        let v = s.list().await.unwrap();
        assert_eq!(
            v.iter().map(|v| (v.volid.as_str(), v.size)).collect::<Vec<_>>(),
            [("san:lun1", 67108864), ("san:lun2", 1073741824)]
        );
        let calls = r.calls();
        assert_eq!(calls[0], "LIBISCSI_CHAP_PASSWORD=<set> iscsi-ls -s iscsi://alice@127.0.0.1:3260");
        assert_eq!(
            calls[1],
            "LIBISCSI_CHAP_PASSWORD=<set> iscsi-readcapacity16 -s \
             iscsi://alice@127.0.0.1:3260/iqn.2026-12.org.horcrux:test/1"
        );
        assert!(calls.iter().all(|c| !c.contains("s3cretpass1")));
        let DiskSource::Net(n) = s.source("san:lun2").unwrap() else { panic!() };
        assert_eq!((n.options["lun"].as_u64(), n.options["user"].as_str()), (Some(2), Some("alice")));
        assert!(!serde_json::to_string(&n.options).unwrap().contains("s3cretpass1"));
        assert!(!n.url.contains("s3cretpass1") && !format!("{n:?}").contains("s3cretpass1"));
        assert!(s.source("san:vm-100-disk-0").is_err());
        assert!(s.alloc(100, 0, 1024).await.unwrap_err().to_string().contains("on the target"));
        let other = IscsiStorage::new("x", "[fd00::1]:3261", "iqn.2026-12.org.horcrux:test", None, None, r);
        assert_eq!(other.url(Some(0)), "iscsi://[fd00::1]:3261/iqn.2026-12.org.horcrux:test/0");
    }
}
