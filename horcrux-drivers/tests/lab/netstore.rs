//! Network storage servers started by the tests that need them (../shared/LAB.md): an
//! NFSv3 export served by nfs-ganesha (with rpcbind, which QEMU's NFS client needs) and an
//! iSCSI target served by tgtd with CHAP. Each is stopped when dropped. Both listen on
//! fixed ports (2049, 3260): the test binaries using them run one at a time (nextest's
//! `heavy` group).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tool(program: &str) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').any(|d| Path::new(d).join(program).exists());
    assert!(found, "{program} is not installed: run scripts/lab.sh");
    Command::new(program)
}

fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} not ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// nfs-ganesha exporting a fresh directory over NFSv3 and v4 on 127.0.0.1.
pub struct Ganesha {
    child: Child,
    dir: tempfile::TempDir,
}

impl Ganesha {
    pub fn start() -> Self {
        // QEMU's NFS client (libnfs, NFSv3) finds the mount service through the portmapper.
        let rpcbind_up =
            || Command::new("rpcinfo").args(["-p", "127.0.0.1"]).output().is_ok_and(|o| o.status.success());
        if !rpcbind_up() {
            let s = tool("rpcbind").arg("-w").status().unwrap();
            assert!(s.success(), "rpcbind did not start");
            until("rpcbind", Duration::from_secs(10), rpcbind_up);
        }
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir(&export).unwrap();
        let conf = dir.path().join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{ Protocols = 3,4; NFS_Port = 2049; MNT_Port = 20048; Bind_addr = 127.0.0.1; \
                 Enable_NLM = false; Enable_RQUOTA = false; }}\n\
                 NFSV4 {{ Graceless = true; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {p}; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash; \
                 Protocols = 3,4; Transports = TCP; SecType = sys; FSAL {{ Name = VFS; }} }}\n\
                 LOG {{ Default_Log_Level = WARN; }}\n",
                p = export.display()
            ),
        )
        .unwrap();
        let child = tool("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(dir.path().join("ganesha.log"))
            .arg("-p")
            .arg(dir.path().join("ganesha.pid"))
            .args(["-N", "NIV_WARN"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let me = Ganesha { child, dir };
        let url = me.url("");
        until("nfs-ganesha", Duration::from_secs(30), || {
            Command::new("nfs-ls").arg(&url).output().is_ok_and(|o| o.status.success())
        });
        me
    }

    /// The exported directory on this host (what the server's clients see).
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    pub fn url(&self, rel: &str) -> String {
        format!("nfs://127.0.0.1{}/{rel}", self.export().display())
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tgtd exporting one target with one LUN (a sparse file) to CHAP user `user`.
pub struct Tgt {
    child: Child,
    pub target: String,
    pub lun_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub const TGT_PORTAL: &str = "127.0.0.1:3260";

impl Tgt {
    pub fn start(user: &str, password: &str, lun_mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lun_file = dir.path().join("lun1.img");
        std::fs::File::create(&lun_file).unwrap().set_len(lun_mib << 20).unwrap();
        let child = tool("tgtd")
            .args(["-f", "--iscsi", &format!("portal={TGT_PORTAL}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let target = "iqn.2026-12.org.horcrux:lab".to_string();
        let adm = |args: &[&str]| {
            Command::new("tgtadm")
                .args(["--lld", "iscsi"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        until("tgtd", Duration::from_secs(10), || adm(&["--op", "show", "--mode", "target"]));
        let lun = lun_file.display().to_string();
        for step in [
            vec!["--op", "new", "--mode", "target", "--tid", "1", "-T", &target],
            vec!["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", &lun],
            vec!["--op", "new", "--mode", "account", "--user", user, "--password", password],
            vec!["--op", "bind", "--mode", "account", "--tid", "1", "--user", user],
            vec!["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"],
        ] {
            assert!(adm(&step), "tgtadm {step:?} failed");
        }
        Tgt { child, target, lun_file, _dir: dir }
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` at offset 0 of `path` (a marker the tiny guest's `showdisk` prints).
pub fn write_marker(path: &Path, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(data, 0).unwrap();
}

/// A one-host Ceph cluster with cephx: one monitor on 127.0.0.1:6789 (msgr v1), one OSD
/// on memstore (in memory, 256 MiB), no manager (so pool usage figures are unknown), and
/// an `rbd` pool of size 1.
pub struct Ceph {
    mon: Child,
    osd: Child,
    pub key: String,
    pub dir: tempfile::TempDir,
}

pub const CEPH_MON: &str = "127.0.0.1:6789";

impl Ceph {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["mon", "osd0", "run"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let fsid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_string();
        let conf = d.join("ceph.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nfsid = {fsid}\nmon host = {CEPH_MON}\nms bind msgr2 = false\n\
                 auth cluster required = cephx\nauth service required = cephx\nauth client required = cephx\n\
                 osd pool default size = 1\nosd pool default min size = 1\nmon allow pool size one = true\n\
                 mon allow pool delete = true\nosd crush chooseleaf type = 0\nmon data avail warn = 1\n\
                 mon data avail crit = 0\nrun dir = {d}/run\nadmin socket = {d}/run/$name.asok\n\
                 log file = {d}/$name.log\nmon data = {d}/mon\nosd data = {d}/osd0\n\
                 osd objectstore = memstore\nmemstore device bytes = 268435456\n",
                d = d.display()
            ),
        )
        .unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = tool(program).args(args).output().unwrap();
            assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let p = |name: &str| d.join(name).display().to_string();
        let (conf_s, mon_kr, admin_kr, osd_kr) =
            (p("ceph.conf"), p("mon.keyring"), p("admin.keyring"), p("osd0/keyring"));
        run(
            "ceph-authtool",
            &["--create-keyring", &mon_kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"],
        );
        run(
            "ceph-authtool",
            &[
                "--create-keyring",
                &admin_kr,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        );
        run("ceph-authtool", &[&mon_kr, "--import-keyring", &admin_kr]);
        run("monmaptool", &["--create", "--add", "a", CEPH_MON, "--fsid", &fsid, &p("monmap")]);
        run(
            "ceph-mon",
            &["-c", &conf_s, "--mkfs", "-i", "a", "--monmap", &p("monmap"), "--keyring", &mon_kr],
        );
        let quiet = |mut c: Command| {
            c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        };
        let mut mon_cmd = tool("ceph-mon");
        mon_cmd.args(["-f", "-c", &conf_s, "-i", "a"]);
        let mon = quiet(mon_cmd);
        let ceph = |args: &[&str]| {
            let mut all = vec!["-c", &conf_s, "-k", &admin_kr, "--connect-timeout", "10"];
            all.extend_from_slice(args);
            run("ceph", &all)
        };
        until("ceph-mon", Duration::from_secs(30), || {
            Command::new("ceph")
                .args(["-c", &conf_s, "-k", &admin_kr, "--connect-timeout", "3", "mon", "stat"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_string();
        ceph(&["osd", "new", &uuid]);
        run("ceph-authtool", &["--create-keyring", &osd_kr, "--gen-key", "-n", "osd.0"]);
        ceph(&["auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd", "-i", &osd_kr]);
        ceph(&["osd", "crush", "add-bucket", "localhost", "host"]);
        ceph(&["osd", "crush", "move", "localhost", "root=default"]);
        ceph(&["osd", "crush", "add", "osd.0", "1.0", "host=localhost"]);
        run("ceph-osd", &["-c", &conf_s, "-i", "0", "--mkfs", "--osd-uuid", &uuid, "--keyring", &osd_kr]);
        let mut osd_cmd = tool("ceph-osd");
        osd_cmd.args(["-f", "-c", &conf_s, "-i", "0", "--keyring", &osd_kr]);
        let osd = quiet(osd_cmd);
        until("ceph-osd", Duration::from_secs(60), || ceph(&["osd", "stat"]).contains("1 up"));
        ceph(&["osd", "pool", "create", "rbd", "8"]);
        ceph(&["osd", "pool", "application", "enable", "rbd", "rbd"]);
        let keyring = std::fs::read_to_string(&admin_kr).unwrap();
        let key = keyring.lines().find_map(|l| l.trim().strip_prefix("key = ")).unwrap().trim().to_string();
        Ceph { mon, osd, key, dir }
    }

    /// The admin keyring's text (what a Proxmox `keyring` parameter holds).
    pub fn keyring(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin.keyring")).unwrap()
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        for c in [&mut self.osd, &mut self.mon] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
