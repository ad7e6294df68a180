//! A Ceph RBD storage (Proxmox's `rbd`, external cluster): images `POOL/vm-VMID-disk-N`
//! (`ID:vm-VMID-disk-N`), made, listed, resized, snapshotted, cloned and removed with the
//! `rbd` tool, opened by QEMU with librbd (`-drive file.driver=rbd`; this host has no
//! kernel RBD, so `krbd` is not honoured). The cephx key (the storage's `keyring` secret:
//! a keyring file's text or the bare key) reaches the tools through `CEPH_ARGS` in their
//! environment and QEMU as a `secret` object read from a descriptor, never an argument
//! vector. No configuration file is needed: the monitors, user and key are given.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::common::{self, argv, Runner};
use super::{StoreUsage, VolumeInfo, VolumeStore};
use crate::hypervisor::{BoxFuture, DiskSource, DriverError, NetDisk, NetSecret};

pub struct RbdStorage {
    id: String,
    pool: String,
    /// Monitors as `HOST[:PORT]` (port 6789 when left out).
    monitors: Vec<String>,
    user: String,
    key: Option<String>,
    namespace: Option<String>,
    runner: Arc<dyn Runner>,
}

/// The key in a keyring's text (`[client.admin]\n\tkey = AQ...==`), or the text itself
/// when it is a bare key.
pub fn key_of(secret: &str) -> Option<String> {
    let s = secret.trim();
    if s.is_empty() {
        return None;
    }
    let from_keyring = s.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "key").then(|| v.trim().to_string())
    });
    Some(from_keyring.unwrap_or_else(|| s.to_string()))
}

impl RbdStorage {
    pub fn new(
        id: impl Into<String>,
        pool: impl Into<String>,
        monhost: &str,
        username: Option<String>,
        keyring: Option<&str>,
        namespace: Option<String>,
        runner: Arc<dyn Runner>,
    ) -> Self {
        let monitors = monhost.split([',', ';', ' ']).filter(|m| !m.is_empty()).map(str::to_string).collect();
        Self {
            id: id.into(),
            pool: pool.into(),
            monitors,
            user: username.unwrap_or_else(|| "admin".into()),
            key: keyring.and_then(key_of),
            namespace,
            runner,
        }
    }

    fn with_port(m: &str) -> (String, String) {
        match m.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => {
                (h.trim_matches(['[', ']']).to_string(), p.to_string())
            }
            _ => (m.trim_matches(['[', ']']).to_string(), "6789".into()),
        }
    }

    /// `CEPH_ARGS`: user, key and monitors, for the tools and qemu-img.
    fn ceph_args(&self) -> (&'static str, String) {
        let mons: Vec<String> = self
            .monitors
            .iter()
            .map(|m| {
                let (h, p) = Self::with_port(m);
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        let mut args = format!("--id={} --mon-host={}", self.user, mons.join(","));
        if let Some(k) = &self.key {
            args.push_str(&format!(" --key={k}"));
        }
        ("CEPH_ARGS", args)
    }

    async fn rbd(&self, args: &[&str]) -> Result<String, DriverError> {
        let mut a = argv(&["-c", "/dev/null"]);
        if let Some(ns) = &self.namespace {
            a.extend(argv(&["--namespace", ns]));
        }
        a.extend(argv(args));
        self.runner.run_env("rbd", &a, &[self.ceph_args()]).await
    }

    fn image(&self, volid: &str) -> Result<String, DriverError> {
        let name = common::volume_name(&self.id, volid)?;
        let ok = (name.starts_with("vm-") || name.starts_with("base-")) && common::vmid_of(name).is_some();
        if !ok || name.contains('/') || name.contains('@') {
            return Err(DriverError::Invalid(format!(
                "volume {volid}: not an RBD image name (vm-VMID-disk-N)"
            )));
        }
        Ok(name.to_string())
    }

    fn spec(&self, name: &str) -> String {
        format!("{}/{name}", self.pool)
    }

    /// A linked clone `new` (`vm-VMID-disk-N`) of snapshot `snap` of `volid` (the snapshot
    /// protected first, as RBD's clones need); answers the clone's volume id.
    pub async fn clone_snapshot(&self, volid: &str, snap: &str, new: &str) -> Result<String, DriverError> {
        common::validate_snapshot_name(snap)?;
        let (src, dst) = (self.image(volid)?, self.image(&format!("{}:{new}", self.id))?);
        let at = format!("{}@{snap}", self.spec(&src));
        if let Err(e) = self.rbd(&["snap", "protect", &at]).await {
            if !e.to_string().contains("already protected") {
                return Err(e);
            }
        }
        self.rbd(&["clone", &at, &self.spec(&dst)]).await?;
        Ok(format!("{}:{dst}", self.id))
    }
}

/// `rbd ls -l --format json`: the images (entries naming a snapshot are left out).
pub fn parse_rbd_ls(out: &str) -> Result<Vec<(String, u64, Option<String>)>, DriverError> {
    let v: Value = serde_json::from_str(out.trim().trim_start_matches('\u{feff}'))
        .or_else(|_| serde_json::from_str(out.lines().last().unwrap_or("[]")))
        .map_err(|e| DriverError::Invalid(format!("rbd ls: {e}")))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|i| i.get("snapshot").is_none())
        .filter_map(|i| {
            // A clone's parent, `{"pool","image","snapshot"}`: listed as `image@snapshot`.
            let p = &i["parent"];
            let parent = p["image"].as_str().zip(p["snapshot"].as_str()).map(|(im, sn)| format!("{im}@{sn}"));
            Some((i["image"].as_str()?.to_string(), i["size"].as_u64().unwrap_or(0), parent))
        })
        .collect())
}

/// The JSON document in a tool's output (after any warnings it printed first).
fn json_in(out: &str) -> Result<Value, DriverError> {
    let start = out.find(['[', '{']).unwrap_or(0);
    serde_json::from_str(&out[start..])
        .map_err(|e| DriverError::Invalid(format!("rbd answered no JSON: {e}")))
}

impl VolumeStore for RbdStorage {
    fn activate(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        // Connects (cephx) and reads the pool: a wrong key or a missing pool fails here.
        Box::pin(async move { self.rbd(&["ls", "--format", "json", &self.pool]).await.map(|_| ()) })
    }

    fn alloc(&self, vmid: u32, index: usize, size_mib: u64) -> BoxFuture<'_, Result<String, DriverError>> {
        Box::pin(async move {
            let name = common::disk_name(vmid, index);
            let size = format!("{size_mib}M");
            // `rbd create` refuses an existing name.
            self.rbd(&["create", "--image-format", "2", "--size", &size, &self.spec(&name)]).await?;
            Ok(format!("{}:{name}", self.id))
        })
    }

    fn path(&self, volid: &str) -> Result<PathBuf, DriverError> {
        Err(DriverError::Invalid(format!(
            "volume {volid} is an RBD image of storage {}, which QEMU opens with librbd (no host path)",
            self.id
        )))
    }

    fn source(&self, volid: &str) -> Result<DiskSource, DriverError> {
        let name = self.image(volid)?;
        let servers: Vec<Value> = self
            .monitors
            .iter()
            .map(|m| {
                let (host, port) = Self::with_port(m);
                json!({ "host": host, "port": port })
            })
            .collect();
        let mut options = json!({
            "driver": "rbd", "pool": self.pool, "image": name, "server": servers, "user": self.user,
        });
        if let Some(ns) = &self.namespace {
            options["namespace"] = json!(ns);
        }
        let Value::Object(options) = options else { unreachable!() };
        // qemu-img's legacy name (no key in it: that is in CEPH_ARGS).
        let mons: Vec<String> = self
            .monitors
            .iter()
            .map(|m| {
                let (h, p) = Self::with_port(m);
                format!("{h}\\:{p}")
            })
            .collect();
        let url = format!("rbd:{}:id={}:mon_host={}", self.spec(&name), self.user, mons.join("\\;"));
        let secret = self.key.as_ref().map(|k| NetSecret {
            value: k.clone(),
            format: "base64",
            option: "key-secret",
            env: self.ceph_args(),
        });
        Ok(DiskSource::Net(NetDisk { options, url, format: "raw".into(), secret }))
    }

    fn free<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let spec = self.spec(&self.image(volid)?);
            let missing = |e: &DriverError| e.to_string().contains("No such file or directory");
            let snaps = match self.rbd(&["snap", "ls", "--format", "json", &spec]).await {
                Err(e) if missing(&e) => return Ok(()),
                other => json_in(&other?)?,
            };
            // A protected snapshot is a clone's base: unprotected once no clone uses it.
            for snap in snaps.as_array().into_iter().flatten().filter(|s| s["protected"] == "true") {
                let at = format!("{spec}@{}", snap["name"].as_str().unwrap_or_default());
                if let Err(e) = self.rbd(&["snap", "unprotect", &at]).await {
                    return Err(if e.to_string().contains("child") {
                        DriverError::Invalid(format!(
                            "volume {volid} is the base of a linked clone: remove its clones first"
                        ))
                    } else {
                        e
                    });
                }
            }
            self.rbd(&["snap", "purge", &spec]).await?;
            match self.rbd(&["rm", &spec]).await {
                Err(e) if missing(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        })
    }

    fn rename_volume<'a>(
        &'a self,
        volid: &'a str,
        vmid: u32,
        index: usize,
    ) -> BoxFuture<'a, Result<String, DriverError>> {
        Box::pin(async move {
            let from = self.spec(&self.image(volid)?);
            let name = common::disk_name(vmid, index);
            self.rbd(&["mv", &from, &self.spec(&name)]).await?;
            Ok(format!("{}:{name}", self.id))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VolumeInfo>, DriverError>> {
        Box::pin(async move {
            let out = self.rbd(&["ls", "-l", "--format", "json", &self.pool]).await?;
            let start = out.find('[').unwrap_or(0);
            let mut v: Vec<VolumeInfo> = parse_rbd_ls(&out[start..])?
                .into_iter()
                .filter_map(|(name, size, parent)| {
                    Some(VolumeInfo {
                        volid: format!("{}:{name}", self.id),
                        vmid: common::vmid_of(&name)?,
                        format: "raw".into(),
                        size,
                        used: size,
                        content: "images".into(),
                        ctime: 0,
                        parent,
                    })
                })
                .collect();
            v.sort_by(|a, b| a.volid.cmp(&b.volid));
            Ok(v)
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<Option<StoreUsage>, DriverError>> {
        Box::pin(async move {
            // The pool's figures come from the cluster's manager (ceph-mgr); without one
            // they are zero: unknown.
            let out = self
                .runner
                .run_env("ceph", &argv(&["-c", "/dev/null", "df", "--format", "json"]), &[self.ceph_args()])
                .await?;
            let v = json_in(&out)?;
            let pool = v["pools"].as_array().into_iter().flatten().find(|p| p["name"] == self.pool.as_str());
            let Some(stats) = pool.map(|p| &p["stats"]) else { return Ok(None) };
            let used = stats["bytes_used"].as_u64().unwrap_or(0);
            let avail = stats["max_avail"].as_u64().unwrap_or(0);
            Ok((used + avail > 0).then_some(StoreUsage { total: used + avail, used, avail }))
        })
    }

    fn resize<'a>(&'a self, volid: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let spec = self.spec(&self.image(volid)?);
            let mib = format!("{}M", size.div_ceil(1 << 20));
            self.rbd(&["resize", "--size", &mib, &spec]).await.map(|_| ())
        })
    }

    fn snapshot<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let at = format!("{}@{name}", self.spec(&self.image(volid)?));
            self.rbd(&["snap", "create", &at]).await.map(|_| ())
        })
    }

    fn rollback<'a>(&'a self, volid: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let at = format!("{}@{name}", self.spec(&self.image(volid)?));
            self.rbd(&["snap", "rollback", &at]).await.map(|_| ())
        })
    }

    fn delete_snapshot<'a>(
        &'a self,
        volid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            common::validate_snapshot_name(name)?;
            let at = format!("{}@{name}", self.spec(&self.image(volid)?));
            self.rbd(&["snap", "rm", &at]).await.map(|_| ())
        })
    }

    fn snapshots<'a>(&'a self, volid: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            let spec = self.spec(&self.image(volid)?);
            let v = json_in(&self.rbd(&["snap", "ls", "--format", "json", &spec]).await?)?;
            Ok(v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::common::Recorder;

    #[test]
    fn keys_from_keyrings_or_bare() {
        let keyring = "[client.admin]\n\tkey = AQBbS29nAAAAABAAq9p5c0ZRZ0N5bG5tR0VzVnQ9PQ==\n\tcaps mon = \"allow *\"\n";
        assert_eq!(key_of(keyring).as_deref(), Some("AQBbS29nAAAAABAAq9p5c0ZRZ0N5bG5tR0VzVnQ9PQ=="));
        assert_eq!(key_of(" AQBbS29n== ").as_deref(), Some("AQBbS29n=="));
        assert_eq!(key_of(""), None);
    }

    #[tokio::test]
    async fn argv_carries_no_key_and_qemu_gets_a_secret_object() {
        let r = Arc::new(Recorder::default());
        // rbd 16.2's `ls -l --format json` (an image and its snapshot).
        r.reply(&["rbd", "-c", "/dev/null", "ls"], Ok(
            "[{\"image\":\"vm-100-disk-0\",\"id\":\"101de2b84269\",\"size\":16777216,\"format\":2},\
             {\"image\":\"vm-100-disk-0\",\"id\":\"101de2b84269\",\"snapshot\":\"s1\",\"snapshot_id\":4,\"size\":16777216,\"format\":2,\"protected\":\"false\"}]",
        ));
        let s = RbdStorage::new(
            "ceph",
            "rbd",
            "10.0.0.1 10.0.0.2:3300",
            None,
            Some("AQSECRETKEY=="),
            None,
            r.clone(),
        );
        let v = s.list().await.unwrap();
        assert_eq!((v.len(), v[0].volid.as_str(), v[0].size), (1, "ceph:vm-100-disk-0", 16 << 20));
        s.alloc(100, 1, 64).await.unwrap();
        s.snapshot("ceph:vm-100-disk-1", "first").await.unwrap();
        let calls = r.calls();
        assert_eq!(
            calls[1],
            "CEPH_ARGS=<set> rbd -c /dev/null create --image-format 2 --size 64M rbd/vm-100-disk-1"
        );
        assert_eq!(calls[2], "CEPH_ARGS=<set> rbd -c /dev/null snap create rbd/vm-100-disk-1@first");
        assert!(calls.iter().all(|c| !c.contains("AQSECRETKEY")));
        assert_eq!(s.ceph_args().1, "--id=admin --mon-host=10.0.0.1:6789,10.0.0.2:3300 --key=AQSECRETKEY==");
        let DiskSource::Net(n) = s.source("ceph:vm-100-disk-1").unwrap() else { panic!() };
        assert_eq!(n.options["server"][1], json!({"host": "10.0.0.2", "port": "3300"}));
        assert_eq!(n.url, "rbd:rbd/vm-100-disk-1:id=admin:mon_host=10.0.0.1\\:6789\\;10.0.0.2\\:3300");
        assert!(!n.url.contains("AQSECRET") && !format!("{n:?}").contains("AQSECRET"));
        assert!(s.source("ceph:../x").is_err() && s.source("ceph:vm-1-disk-0@snap").is_err());
    }
}
