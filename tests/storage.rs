//! Storage through the daemon: configuration in Proxmox's keys (native API and CLI), the
//! pool actors' status, content listings, bad input refused by field with nothing left
//! behind, rights checked per storage, secrets never answered, and a guest booted with
//! its disk on a real btrfs storage, on nfs-ganesha and on a tgtd LUN (with a CD-ROM).

mod common;
#[path = "../horcrux-drivers/tests/lab/netstore.rs"]
mod netstore;

use std::process::Command;

use common::{free_port, Daemon};
use serde_json::{json, Value};

fn cli(d: &Daemon, dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_horcrux"))
        .args(["--api", &format!("https://127.0.0.1:{}", d.port), "--token-file"])
        .arg(dir.join("admin.token"))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn storage_config_status_content_rights_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hx");
    let mut d = Daemon::start(&dir, free_port(), &[]);
    let admin = d.client();

    // The CLI adds a dir storage; the pool actor makes Proxmox's layout and measures it.
    let extra = tmp.path().join("extra");
    let (ok, out) = cli(
        &d,
        &dir,
        &[
            "storage",
            "add",
            "dir",
            "extra",
            "--path",
            extra.to_str().unwrap(),
            "--content",
            "iso,vztmpl,images",
            "--opt",
            "format=raw",
        ],
    );
    assert!(ok, "{out}");
    let (code, st) = admin.get("/storage/extra/status");
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        (st["active"].clone(), st["enabled"].clone(), st["type"].clone()),
        (json!(1), json!(1), json!("dir")),
        "{st}"
    );
    assert!(st["total"].as_u64().unwrap() > 0, "{st}");
    assert!(extra.join("template/iso").is_dir() && extra.join("images").is_dir());
    std::fs::write(extra.join("template/iso/boot.iso"), b"x").unwrap();
    std::fs::write(extra.join("template/cache/deb.tar.zst"), b"y").unwrap();
    std::fs::write(extra.join("dump/vzdump-qemu-1-x.vma"), b"not listed: no backup content").unwrap();
    let (code, content) = admin.get("/storage/extra/content");
    assert_eq!(code, 200, "{content}");
    let volids: Vec<&str> =
        content.as_array().unwrap().iter().map(|v| v["volid"].as_str().unwrap()).collect();
    assert_eq!(volids, ["extra:iso/boot.iso", "extra:vztmpl/deb.tar.zst"], "{content}");
    let (_, isos) = admin.get("/storage/extra/content?content=iso");
    assert_eq!(isos.as_array().unwrap().len(), 1, "{isos}");
    assert_eq!(admin.get("/storage/extra/content?content=../x").1["field"], "content");
    let (ok, out) = cli(&d, &dir, &["storage", "list"]);
    assert!(ok && out.contains("extra") && out.contains("vztmpl,iso"), "{out}");
    let (ok, out) = cli(&d, &dir, &["storage", "content", "extra"]);
    assert!(ok && out.contains("extra:iso/boot.iso"), "{out}");
    let up = tmp.path().join("cli.iso");
    std::fs::write(&up, b"an iso").unwrap();
    let (ok, out) = cli(
        &d,
        &dir,
        &[
            "storage",
            "upload",
            "extra",
            up.to_str().unwrap(),
            "--content",
            "iso",
            "--checksum",
            "0",
            "--checksum-algorithm",
            "md5",
        ],
    );
    assert!(!ok && out.contains("checksum"), "{out}");
    let (ok, out) = cli(&d, &dir, &["storage", "upload", "extra", up.to_str().unwrap(), "--content", "iso"]);
    assert!(ok && out.contains("extra:iso/cli.iso"), "{out}");
    assert_eq!(std::fs::read(extra.join("template/iso/cli.iso")).unwrap(), b"an iso");

    // A disk on it is raw (the storage's format); while it is there the storage stays.
    let (code, vm) = admin.post(
        "/vms",
        &json!({"vmid": 100, "name": "s", "memory_mib": 64, "disks": [{"storage": "extra", "size_mib": 8}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let raw = extra.join("images/100/vm-100-disk-0.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 20);
    assert_eq!(admin.delete("/storage/extra").0, 409);

    // Resize: grow only, by or to a size; the new size is recorded.
    let resize = |b: Value| admin.request("PUT", "/vms/100/resize", Some(admin.token()), &b);
    let (code, r) = resize(json!({"disk": "virtio0", "size": "+8M"}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(admin.wait_task(r["upid"].as_str().unwrap()), "OK");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 16 << 20);
    assert_eq!(admin.get("/vms/100").1["disks"][0]["size_mib"], 16);
    assert_eq!(resize(json!({"disk": "virtio0", "size": "32M"})).0, 200);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 32 << 20);
    for (body, field) in [
        (json!({"disk": "virtio0", "size": "4M"}), "size"),
        (json!({"disk": "virtio0", "size": "+1Q"}), "size"),
        (json!({"disk": "virtio7", "size": "+1M"}), "disk"),
        (json!({"disk": "virtio0"}), "size"),
    ] {
        let (code, e) = resize(body.clone());
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 32 << 20, "nothing changed");

    // Disabled: still configured, not active, and placement leaves it out.
    let put = |b: Value| admin.request("PUT", "/storage/extra", Some(admin.token()), &b);
    assert_eq!(put(json!({"disable": true})).0, 200);
    let (_, st) = admin.get("/storage/extra/status");
    assert_eq!((st["enabled"].clone(), st["active"].clone()), (json!(0), json!(0)), "{st}");
    // Fixed keys, unknown options and stale digests are refused by name.
    assert_eq!(put(json!({"path": "/elsewhere"})).1["field"], "path");
    assert_eq!(put(json!({"type": "nfs"})).1["field"], "type");
    assert_eq!(put(json!({"pool": "x"})).1["field"], "pool");
    assert_eq!(put(json!({"digest": "0000"})).0, 409);
    let (_, conf) = admin.get("/storage/extra");
    assert_eq!(put(json!({"digest": conf["digest"], "delete": "disable"})).0, 200);

    // Bad input: each a 400 naming the field, nothing created.
    let bad = [
        (json!({"storage": "b1", "type": "cifs", "path": "/x"}), "type"),
        (json!({"storage": "b2", "type": "dir"}), "path"),
        (json!({"storage": "b3", "type": "nfs", "server": "10.0.0.1"}), "export"),
        (json!({"storage": "b4", "type": "dir", "path": "/srv/../etc"}), "path"),
        (json!({"storage": "b5", "type": "dir", "path": "/etc"}), "path"),
        (json!({"storage": "b6", "type": "zfspool", "pool": "-o mountpoint=/"}), "pool"),
        (json!({"storage": "b7", "type": "dir", "path": "/srv/b7", "content": "images,warez"}), "content"),
        (json!({"storage": "b8", "type": "iscsi", "portal": "10.0.0.1", "target": "not-an-iqn"}), "target"),
        (json!({"storage": "9bad", "type": "dir", "path": "/srv/x"}), "storage"),
        (json!({"storage": "b9", "type": "lvm", "vgname": "pve", "preallocation": "full"}), "preallocation"),
    ];
    for (body, field) in bad {
        let (code, e) = admin.post("/storage", &body);
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    assert_eq!(admin.post("/storage", &json!({"storage": "extra", "type": "dir", "path": "/srv/y"})).0, 409);
    let (_, all) = admin.get("/storage");
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|s| s["storage"].as_str().unwrap()).collect();
    assert_eq!(ids, ["extra", "local"]);

    // A CHAP password is kept but never answered or logged.
    let san = json!({"storage": "san", "type": "iscsi", "portal": "127.0.0.1:3260", "target": "iqn.2026-12.org.horcrux:t0", "username": "chap", "password": "s3cr3t-chap-pw"});
    assert_eq!(admin.post("/storage", &san).0, 200);
    let (_, conf) = admin.get("/storage/san");
    assert_eq!((conf["username"].clone(), conf["shared"].clone()), (json!("chap"), json!(1)), "{conf}");
    let (_, all) = admin.get("/storage");
    let (_, st) = admin.get("/storage/san/status");
    assert_eq!(st["active"], 0, "{st}");
    for text in [conf.to_string(), all.to_string(), st.to_string(), d.log()] {
        assert!(!text.contains("s3cr3t-chap-pw"), "the password leaked: {text}");
    }

    // Rights per storage: Datastore admin on /storage/extra only.
    assert_eq!(admin.post("/access/users", &json!({"userid": "dana@pve"})).0, 200);
    let (_, t) = admin.post("/access/users/dana@pve/token/t", &json!({"privsep": false}));
    let dana = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/storage/extra", "role": "PVEDatastoreAdmin", "user": "dana@pve"});
    assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    let as_dana = |m: &str, p: &str, b: Value| admin.request(m, p, Some(&dana), &b);
    let (code, seen) = as_dana("GET", "/storage", json!({}));
    assert_eq!(code, 200);
    let seen: Vec<&str> = seen.as_array().unwrap().iter().map(|s| s["storage"].as_str().unwrap()).collect();
    assert_eq!(seen, ["extra"], "only the storage she may audit");
    assert_eq!(as_dana("GET", "/storage/extra", json!({})).0, 200);
    assert_eq!(as_dana("GET", "/storage/san", json!({})).0, 403, "not over the target");
    assert_eq!(as_dana("GET", "/storage/san/status", json!({})).0, 403);
    assert_eq!(as_dana("GET", "/storage/local/content", json!({})).0, 403);
    // Changing storage.cfg needs Datastore.Allocate on /storage itself, as in Proxmox.
    assert_eq!(as_dana("PUT", "/storage/extra", json!({"disable": true})).0, 403);
    assert_eq!(as_dana("DELETE", "/storage/san", json!({})).0, 403);
    assert_eq!(
        as_dana("POST", "/storage", json!({"storage": "mine", "type": "dir", "path": "/srv/m"})).0,
        403
    );
    // Resizing needs the guest's VM.Config.Disk and space on the disk's storage.
    let acl = json!({"path": "/vms/100", "role": "PVEVMAdmin", "user": "dana@pve"});
    assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    assert_eq!(as_dana("PUT", "/vms/100/resize", json!({"disk": "virtio0", "size": "+1M"})).0, 200);
    let acl =
        json!({"path": "/storage/extra", "role": "PVEDatastoreAdmin", "user": "dana@pve", "delete": true});
    assert_eq!(admin.request("PUT", "/access/acl", Some(admin.token()), &acl).0, 200);
    let (code, e) = as_dana("PUT", "/vms/100/resize", json!({"disk": "virtio0", "size": "+1M"}));
    assert_eq!(code, 403, "no space on the storage: {e}");
    // Moving needs space on the target: she holds none on local.
    let (code, e) = as_dana("POST", "/vms/100/move_disk", json!({"disk": "virtio0", "storage": "local"}));
    assert_eq!(code, 403, "no space on the target storage: {e}");
    assert!(
        extra.join("images/100/vm-100-disk-0.raw").exists() && !dir.join("storage/local/images/100").exists()
    );

    // Removal: the guest first, then the storage; the CLI says so.
    assert_eq!(admin.delete("/vms/100").0, 200);
    let (ok, out) = cli(&d, &dir, &["storage", "remove", "extra"]);
    assert!(ok, "{out}");
    assert_eq!(admin.get("/storage/extra").0, 404);
    assert_eq!(admin.delete("/storage/san").0, 200);

    // The config survives a restart.
    assert_eq!(
        admin
            .post(
                "/storage",
                &json!({"storage": "keep", "type": "dir", "path": tmp.path().join("keep"), "nodes": "n1"})
            )
            .0,
        200
    );
    d.terminate();
    let d = Daemon::start(&dir, free_port(), &[]);
    let (_, conf) = d.client().get("/storage/keep");
    assert_eq!(conf["nodes"], "n1", "{conf}");
}

/// A btrfs file system on a loop device, unmounted and detached on drop.
struct BtrfsMount {
    dev: String,
    mnt: tempfile::TempDir,
    _img: tempfile::TempDir,
}

impl BtrfsMount {
    fn new() -> BtrfsMount {
        let run = |p: &str, a: &[&str]| {
            let out =
                Command::new(p).args(a).output().unwrap_or_else(|e| panic!("{p}: {e} (run scripts/deps.sh)"));
            assert!(out.status.success(), "{p} {a:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let img = tempfile::tempdir().unwrap();
        let file = img.path().join("btrfs.img");
        run("truncate", &["-s", "256M", file.to_str().unwrap()]);
        let dev = run("losetup", &["-f", "--show", file.to_str().unwrap()]);
        run("mkfs.btrfs", &["-q", &dev]);
        let mnt = tempfile::tempdir().unwrap();
        run("mount", &[&dev, mnt.path().to_str().unwrap()]);
        BtrfsMount { dev, mnt, _img: img }
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The tiny guest boots with its disk on a real btrfs storage and reads the bytes the
/// test wrote into the volume (QEMU opens the subvolume's `disk.raw` as raw).
#[test]
fn a_guest_boots_with_its_disk_on_btrfs() {
    let fs = BtrfsMount::new();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let (code, e) = api.post(
        "/storage",
        &json!({"storage": "bt", "type": "btrfs", "path": fs.mnt.path(), "content": "images"}),
    );
    assert_eq!(code, 200, "{e}");
    let (_, st) = api.get("/storage/bt/status");
    assert_eq!(st["active"], 1, "{st}");
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 showdisk stayup"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 120, "name": "bt", "memory_mib": 128, "boot": boot, "disks": [{"storage": "bt", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let disk = fs.mnt.path().join("images/120/vm-120-disk-0/disk.raw");
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(b"HX-BTRFS-OK!", 0)
            .unwrap();
    }
    let (_, content) = api.get("/storage/bt/content");
    assert_eq!(content[0]["volid"], "bt:120/vm-120-disk-0.raw", "{content}");
    let (_, body) = api.post("/vms/120/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let serial = tmp.path().join("log/qemu/120.serial.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("DISK:HX-BTRFS-OK!")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not print its disk's first bytes; serial:\n{}\nQEMU:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("log/qemu/120.qemu.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Online: QMP block_resize grows the running guest's disk.
    let (code, r) =
        api.request("PUT", "/vms/120/resize", Some(api.token()), &json!({"disk": "virtio0", "size": "+16M"}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    let (_, log) = api.get(&format!("/tasks/{}/log", r["upid"].as_str().unwrap()));
    assert!(log.to_string().contains("block_resize"), "{log}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 32 << 20);
    // A live snapshot on btrfs: the vCPUs paused around a read-only subvolume snapshot;
    // the RAM cannot be saved into a raw disk.
    let (code, e) = api.post("/vms/120/snapshots", &json!({"snapname": "ram", "vmstate": true}));
    assert_eq!((code, e["field"].as_str()), (400, Some("vmstate")), "{e}");
    let (code, r) = api.post("/vms/120/snapshots", &json!({"snapname": "live"}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    assert!(fs.mnt.path().join("images/120/vm-120-disk-0@live/disk.raw").is_file());
    assert_eq!(api.get("/vms/120").1["status"], "running", "resumed after the snapshot");
    let (_, body) = api.post("/vms/120/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    assert_eq!(api.delete("/vms/120").0, 200);
    assert!(!disk.exists(), "the subvolume went with the guest");
}

/// An upload streams to disk: whole and verified it is stored, cut off (the client killed
/// mid-way) nothing of it stays; a file of another content's name or a path is refused.
#[test]
fn uploads_are_whole_or_leave_nothing() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let api = d.client();
    let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    let curl = |query: &str| {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-T", "-"])
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .args(["-H", "Content-Type: application/octet-stream"])
            .arg(format!("https://127.0.0.1:{}/api/v1/storage/local/upload?{query}", d.port))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl (scripts/deps.sh installs it)")
    };
    let iso_dir = tmp.path().join("storage/local/template/iso");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let sha = {
        use std::process::Stdio;
        let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(&data).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };

    let mut whole = curl(&format!("content=iso&filename=whole.iso&checksum={sha}&checksum-algorithm=sha256"));
    whole.stdin.take().unwrap().write_all(&data).unwrap();
    let out = whole.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(std::fs::read(iso_dir.join("whole.iso")).unwrap(), data);

    // Half the file, then the client dies.
    let mut cut = curl("content=iso&filename=cut.iso");
    let mut stdin = cut.stdin.take().unwrap();
    stdin.write_all(&data[..4 << 20]).unwrap();
    stdin.flush().unwrap();
    let names = || -> Vec<String> {
        std::fs::read_dir(&iso_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    common::eventually("the upload is being written", std::time::Duration::from_secs(10), || {
        names().iter().any(|n| n.starts_with(".cut.iso.partial-"))
    });
    cut.kill().unwrap();
    let _ = cut.wait();
    drop(stdin);
    common::eventually("the cut upload left nothing", std::time::Duration::from_secs(10), || {
        names() == ["whole.iso"]
    });

    for (query, field) in [
        ("content=iso&filename=x.tar.zst", "filename"),
        ("content=iso&filename=..%2Fx.iso", "filename"),
        ("content=images&filename=x.raw", "content"),
        ("content=iso&filename=x.iso&checksum=00", "checksum-algorithm"),
        ("content=iso&filename=x.iso&checksum=00&checksum-algorithm=crc32", "checksum-algorithm"),
    ] {
        let (code, e) = api.post(&format!("/storage/local/upload?{query}"), &json!({}));
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{query}: {e}");
    }
    let (code, _) = api.post("/storage/local/upload?content=iso&filename=whole.iso", &json!({}));
    assert_eq!(code, 409, "an existing file stays");
}

/// Snapshots of a running tiny guest on qcow2: with its RAM (`vmstate`) the rollback
/// resumes it from the saved state (running, no new boot on its console); without, taken
/// live through QMP; of a stopped guest, by the backend. Bad names are refused by field.
#[test]
fn snapshots_with_ram_resume_the_guest_and_bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 130, "name": "snap", "memory_mib": 128, "boot": boot, "disks": [{"storage": "local", "size_mib": 32}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let task = |r: (u16, Value)| {
        assert_eq!(r.0, 200, "{}", r.1);
        let upid = r.1["upid"].as_str().unwrap().to_string();
        let status = api.wait_task(&upid);
        let (_, log) = api.get(&format!("/tasks/{upid}/log"));
        assert_eq!(status, "OK", "{log}");
        log.to_string()
    };
    task(api.post("/vms/130/start", &json!({})));
    let serial = tmp.path().join("log/qemu/130.serial.log");
    common::eventually("the guest booted", std::time::Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("GUEST-BOOTED"))
    });

    for (name, field) in
        [("a".repeat(41), "snapname"), ("current".into(), "snapname"), ("9lives".into(), "snapname")]
    {
        let (code, e) = api.post("/vms/130/snapshots", &json!({"snapname": name}));
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{name}: {e}");
    }
    let log = task(api.post(
        "/vms/130/snapshots",
        &json!({"snapname": "live", "vmstate": true, "description": "with RAM"}),
    ));
    assert!(log.contains("snapshot-save"), "{log}");
    let log = task(api.post("/vms/130/snapshots", &json!({"snapname": "disk-only"})));
    assert!(log.contains("internal snapshots"), "{log}");
    assert_eq!(api.post("/vms/130/snapshots", &json!({"snapname": "live"})).0, 409);
    let (_, list) = api.get("/vms/130/snapshots");
    let names: Vec<(&str, Value)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["vmstate"].clone()))
        .collect();
    assert_eq!(names, [("disk-only", json!(0)), ("live", json!(1)), ("current", Value::Null)], "{list}");
    assert_eq!(list[2]["parent"], "disk-only");
    assert_eq!(list[0]["parent"], "live");

    // Rollback to the RAM snapshot: the guest runs again without booting.
    let log = task(api.post("/vms/130/snapshots/live/rollback", &json!({})));
    assert!(log.contains("resuming from the saved RAM"), "{log}");
    assert_eq!(api.get("/vms/130").1["status"], "running");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(!console.contains("Linux version"), "the guest booted again instead of resuming:\n{console}");
    let cmdline = std::fs::read_to_string(tmp.path().join("run/qemu/130.pid"))
        .ok()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).ok())
        .unwrap_or_default()
        .replace('\0', " ");
    assert!(cmdline.contains("-loadvm live"), "{cmdline}");
    let (_, v) = api.get("/vms/130/snapshots");
    assert_eq!(v.as_array().unwrap().last().unwrap()["parent"], "live");
    let (ok, out) = cli(&d, tmp.path(), &["vm", "snapshot", "list", "130"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("`-> live (with RAM) with RAM\n"), "{out}");
    assert!(out.contains("\n  `-> disk-only") && out.contains("\n  `-> current You are here!"), "{out}");

    // Stopped: snapshots by qemu-img, rollback without start leaves it stopped.
    task(api.post("/vms/130/stop", &json!({})));
    task(api.post("/vms/130/snapshots", &json!({"snapname": "cold"})));
    task(api.post("/vms/130/snapshots/cold/rollback", &json!({})));
    assert_eq!(api.get("/vms/130").1["status"], "stopped");
    for name in ["live", "disk-only", "cold"] {
        task(api.delete(&format!("/vms/130/snapshots/{name}")));
    }
    let (_, list) = api.get("/vms/130/snapshots");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let img = tmp.path().join("storage/local/images/130/vm-130-disk-0.qcow2");
    let info = Command::new("qemu-img").args(["snapshot", "-l"]).arg(&img).output().unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
}

/// A disk moves between storages: offline (btrfs raw → qcow2 on a directory, the source
/// kept as unused0) and while the guest runs (blockdev-mirror onto a raw volume, the
/// source freed); the guest reads the same bytes after each move. Detached disks become
/// unusedN; deleting one frees its volume (refused while the guest runs).
#[test]
fn disks_move_between_storages_and_unused_volumes_are_freed() {
    let fs = BtrfsMount::new();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let extra = tmp.path().join("extra");
    for body in [
        json!({"storage": "bt", "type": "btrfs", "path": fs.mnt.path(), "content": "images"}),
        json!({"storage": "extra", "type": "dir", "path": extra, "content": "images", "format": "raw"}),
    ] {
        assert_eq!(api.post("/storage", &body).0, 200, "{body}");
    }
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 showdisk stayup"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 140, "name": "mv", "memory_mib": 128, "boot": boot, "disks": [{"storage": "bt", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let src = fs.mnt.path().join("images/140/vm-140-disk-0/disk.raw");
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&src).unwrap().write_all_at(b"HX-MOVED-OK!", 0).unwrap();
    }
    let task = |r: (u16, Value)| {
        assert_eq!(r.0, 200, "{}", r.1);
        let upid = r.1["upid"].as_str().unwrap().to_string();
        let status = api.wait_task(&upid);
        let (_, log) = api.get(&format!("/tasks/{upid}/log"));
        assert_eq!(status, "OK", "{log}");
        log.to_string()
    };
    let mv = |b: Value| api.post("/vms/140/move_disk", &b);
    for (body, field) in [
        (json!({"disk": "virtio0", "storage": "bt"}), "storage"),
        (json!({"disk": "virtio0", "storage": "nowhere"}), "storage"),
        (json!({"disk": "virtio5", "storage": "local"}), "disk"),
        (json!({"disk": "virtio0", "storage": "bt", "format": "qcow2"}), "format"),
    ] {
        let (code, e) = mv(body.clone());
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    // Offline, into qcow2 on local; the btrfs volume stays as unused0.
    task(mv(json!({"disk": "virtio0", "storage": "local", "format": "qcow2"})));
    let (_, v) = api.get("/vms/140");
    assert_eq!(v["disks"][0]["volume"], "local:140/vm-140-disk-1.qcow2", "{v}");
    assert_eq!(v["unused"], json!(["bt:140/vm-140-disk-0.raw"]), "{v}");

    task(api.post("/vms/140/start", &json!({})));
    let serial = tmp.path().join("log/qemu/140.serial.log");
    common::eventually("the guest reads the moved disk", std::time::Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("DISK:HX-MOVED-OK!"))
    });
    // A volume the running guest has attached is not freed (unused0, which it does not
    // use, could be).
    let (code, _) = api.request(
        "PUT",
        "/vms/140/config",
        Some(api.token()),
        &json!({"delete": ["virtio0"], "purge": true}),
    );
    assert_eq!(code, 409, "not while the guest runs with it");

    // Online, onto a raw volume on `extra`, the qcow2 source freed.
    let log = task(mv(json!({"disk": "virtio0", "storage": "extra", "delete": true})));
    assert!(log.contains("in sync"), "{log}");
    assert_eq!(api.get("/vms/140").1["status"], "running");
    let (_, v) = api.get("/vms/140");
    let vol = v["disks"][0]["volume"].as_str().unwrap().to_string();
    // Index 2: 0 (unused) and 1 (the source) were taken.
    assert_eq!(vol, "extra:140/vm-140-disk-2.raw", "{v}");
    let raw = extra.join("images/140/vm-140-disk-2.raw");
    let head = std::fs::read(&raw).unwrap();
    assert_eq!(&head[..12], b"HX-MOVED-OK!");
    assert!(
        !tmp.path().join("storage/local/images/140/vm-140-disk-1.qcow2").exists(),
        "the source was freed"
    );
    // A second online move of the same disk (onto btrfs, index 1 free again).
    task(mv(json!({"disk": "virtio0", "storage": "bt", "delete": true})));
    let (_, v) = api.get("/vms/140");
    let vol = v["disks"][0]["volume"].as_str().unwrap().to_string();
    assert_eq!(vol, "bt:140/vm-140-disk-1.raw", "{v}");
    assert!(!raw.exists(), "the raw source was freed");
    let raw = fs.mnt.path().join("images/140/vm-140-disk-1/disk.raw");
    assert_eq!(&std::fs::read(&raw).unwrap()[..12], b"HX-MOVED-OK!");

    // Stopped: unused0 is freed; a detached disk becomes unused0, then goes too.
    task(api.post("/vms/140/stop", &json!({})));
    let put = |b: Value| api.request("PUT", "/vms/140/config", Some(api.token()), &b);
    assert_eq!(put(json!({"delete": ["unused0"]})).0, 200);
    assert!(!fs.mnt.path().join("images/140/vm-140-disk-0").exists(), "the btrfs subvolume went");
    assert_eq!(put(json!({"delete": ["virtio0"]})).0, 200);
    let (_, v) = api.get("/vms/140");
    assert_eq!((v["disks"].clone(), v["unused"].clone()), (json!([]), json!([vol])), "{v}");
    assert!(raw.exists(), "detached, not freed");
    assert_eq!(put(json!({"delete": ["unused3"]})).1["field"], "delete");
    assert_eq!(put(json!({"delete": ["unused0"]})).0, 200);
    assert!(!raw.exists() && !fs.mnt.path().join("images/140/vm-140-disk-1").exists());
    assert_eq!(api.delete("/vms/140").0, 200);
}

/// `import-from`: a new disk is a copy of an image in a storage's import content, as large
/// as the image; a caller who may not read that storage is refused, and so is a name that
/// is not a disk image.
#[test]
fn disks_are_created_from_imported_images() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let api = d.client();
    let import = tmp.path().join("storage/local/import");
    std::fs::create_dir_all(&import).unwrap();
    let src = import.join("base.qcow2");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&src).arg("48M"));
    ok(Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x5a 1M 2M"]).arg(&src));
    let body = json!({"vmid": 160, "name": "imp", "memory_mib": 64,
        "disks": [{"storage": "local", "size_mib": 1, "import_from": "local:import/base.qcow2"}]});
    let (code, r) = api.post("/vms", &body);
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    let (_, v) = api.get("/vms/160");
    assert_eq!(v["disks"][0]["size_mib"], 48, "{v}");
    let new = tmp.path().join("storage/local/images/160/vm-160-disk-0.qcow2");
    let cmp = Command::new("qemu-img").arg("compare").arg(&src).arg(&new).output().unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stdout));
    for (from, field) in
        [("local:import/none.qcow2", "disks[0].import_from"), ("local:iso/x.iso", "disks[0].import_from")]
    {
        let body = json!({"vmid": 161, "name": "imp", "memory_mib": 64,
            "disks": [{"storage": "local", "size_mib": 1, "import_from": from}]});
        let (code, e) = api.post("/vms", &body);
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{from}: {e}");
    }
    assert_eq!(api.get("/vms/161").0, 404, "nothing created");
    // A VM administrator without rights on the storage cannot read the image through it.
    assert_eq!(api.post("/access/users", &json!({"userid": "erin@pve"})).0, 200);
    let (_, t) = api.post("/access/users/erin@pve/token/t", &json!({"privsep": false}));
    let erin = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/vms", "role": "PVEVMAdmin", "user": "erin@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let body = json!({"vmid": 162, "name": "imp", "memory_mib": 64,
        "disks": [{"storage": "local", "size_mib": 1, "import_from": "local:import/base.qcow2"}]});
    let (code, e) = api.request("POST", "/vms", Some(&erin), &body);
    assert_eq!(code, 403, "{e}");

    // On a config change (native and Proxmox's API), and from another guest's disk.
    let (code, r) = api.request(
        "PUT",
        "/vms/160/config",
        Some(api.token()),
        &json!({"add_disks": [{"storage": "local", "size_mib": 1, "import_from": "local:import/base.qcow2", "slot": "virtio1"}]}),
    );
    assert_eq!(code, 200, "{r}");
    let (_, v) = api.get("/vms/160");
    assert_eq!(
        (v["disks"][1]["size_mib"].clone(), v["disks"][1]["slot"].clone()),
        (json!(48), json!("virtio1")),
        "{v}"
    );
    let added = tmp.path().join("storage/local/images/160/vm-160-disk-1.qcow2");
    assert!(Command::new("qemu-img").arg("compare").arg(&src).arg(&added).status().unwrap().success());
    let (code, r) = api.post(
        "/api2/json/nodes/n1/qemu",
        &json!({"vmid": 163, "name": "copy", "memory": 64, "scsi0": "local:0,import-from=local:160/vm-160-disk-0.qcow2"}),
    );
    assert_eq!(code, 200, "{r}");
    let copy = tmp.path().join("storage/local/images/163/vm-163-disk-0.qcow2");
    assert!(Command::new("qemu-img").arg("compare").arg(&src).arg(&copy).status().unwrap().success());
    let (code, r) = api.post(
        "/api2/json/nodes/n1/qemu/163/config",
        &json!({"virtio1": "local:0,import-from=local:160/vm-160-disk-1.qcow2"}),
    );
    assert_eq!(code, 200, "{r}");
    let (_, cfg) = api.get("/api2/json/nodes/n1/qemu/163/config");
    assert!(cfg["data"]["virtio1"].as_str().unwrap().contains("size=48M"), "{cfg}");
    // A guest's disk only: not a volume that belongs to no disk of it.
    let (code, e) = api.request(
        "PUT",
        "/vms/163/config",
        Some(api.token()),
        &json!({"add_disks": [{"storage": "local", "size_mib": 1, "import_from": "local:160/vm-160-disk-9.qcow2"}]}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("add_disks[0].import_from")), "{e}");
    // Erin may make guests on the storage but may not clone guest 160: its disk is refused,
    // the import volume is not.
    let acl = json!({"path": "/storage", "role": "PVEDatastoreUser", "user": "erin@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let acl = json!({"path": "/vms", "role": "PVEVMAdmin", "user": "erin@pve", "delete": true});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let role = json!({"roleid": "VMMaker", "privs": "VM.Allocate,VM.Audit,VM.Config.Disk"});
    let (code, e) = api.post("/access/roles", &role);
    assert_eq!(code, 200, "{e}");
    let acl = json!({"path": "/vms", "role": "VMMaker", "user": "erin@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let body = |from: &str| {
        json!({"vmid": 165, "name": "erin", "memory_mib": 64,
        "disks": [{"storage": "local", "size_mib": 1, "import_from": from}]})
    };
    let (code, e) = api.request("POST", "/vms", Some(&erin), &body("local:160/vm-160-disk-0.qcow2"));
    assert!(code == 403 && e.to_string().contains("VM.Clone"), "{code} {e}");
    assert_eq!(api.get("/vms/165").0, 404, "nothing created");
    let (code, e) = api.request("POST", "/vms", Some(&erin), &body("local:import/base.qcow2"));
    assert_eq!(code, 200, "{e}");
}

/// Waits for `want` on the guest's serial console; ending in a newline, `want` is a whole
/// line (the console ends lines with CR LF).
fn wait_serial(dir: &std::path::Path, vmid: u32, want: &str) {
    let serial = dir.join(format!("log/qemu/{vmid}.serial.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let seen = |s: &str| match want.strip_suffix('\n') {
        Some(line) => s.lines().any(|l| l.trim_end() == line.trim_end()),
        None => s.contains(want),
    };
    while !std::fs::read_to_string(&serial).is_ok_and(|s| seen(&s)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{want} not on the serial console:\n{}\nQEMU:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default(),
            std::fs::read_to_string(dir.join(format!("log/qemu/{vmid}.qemu.log"))).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// nfs and iscsi storages through both APIs: status, content, a guest on an NFS image, a
/// guest on a whole LUN (CHAP password in the storage's secret, never answered) with an
/// ISO in its CD-ROM drive, a LUN used by one guest at a time and kept when the guest goes.
#[test]
fn guests_boot_from_nfs_images_and_iscsi_luns_with_a_cdrom() {
    let nfs = netstore::Ganesha::start();
    let san = netstore::Tgt::start("alice", "s3cretpass1", 32);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let export = nfs.export().display().to_string();
    let (code, e) = api.post(
        "/api2/json/storage",
        &json!({"storage": "nas", "type": "nfs", "server": "127.0.0.1", "export": export,
                "content": "images,iso", "options": "vers=3", "format": "raw"}),
    );
    assert_eq!(code, 200, "{e}");
    let (code, e) = api.post(
        "/api2/json/storage",
        &json!({"storage": "san", "type": "iscsi", "portal": netstore::TGT_PORTAL, "target": san.target,
                "username": "alice", "password": "s3cretpass1", "content": "images"}),
    );
    assert_eq!(code, 200, "{e}");
    let (_, cfg) = api.get("/api2/json/storage/san");
    assert!(!cfg.to_string().contains("s3cretpass1"), "{cfg}");
    for s in ["nas", "san"] {
        let (code, st) = api.get(&format!("/api2/json/nodes/n1/storage/{s}/status"));
        assert_eq!((code, st["data"]["active"].clone()), (200, json!(1)), "{s}: {st}");
    }
    let (_, luns) = api.get("/api2/json/nodes/n1/storage/san/content");
    assert_eq!(luns["data"][0]["volid"], "san:lun1", "{luns}");
    assert_eq!(luns["data"][0]["size"], 32 << 20, "{luns}");

    // Uploads onto the export: staged locally, copied in under a hidden name, renamed once
    // whole; a wrong checksum or an existing name leaves the export as it was.
    let up = tmp.path().join("up.iso");
    std::fs::write(&up, vec![3u8; 300_000]).unwrap();
    let upload = |extra: &[&str]| {
        let mut args = vec!["storage", "upload", "nas", up.to_str().unwrap(), "--content", "iso"];
        args.extend_from_slice(extra);
        cli(&d, tmp.path(), &args)
    };
    let (ok, out) = upload(&["--checksum", "0", "--checksum-algorithm", "md5"]);
    assert!(!ok && out.contains("checksum"), "{out}");
    let (ok, out) = upload(&[]);
    assert!(ok && out.contains("nas:iso/up.iso"), "{out}");
    assert_eq!(std::fs::read(nfs.export().join("template/iso/up.iso")).unwrap(), vec![3u8; 300_000]);
    let (ok, out) = upload(&[]);
    assert!(!ok && out.contains("exists"), "{out}");
    let names: Vec<String> = std::fs::read_dir(nfs.export().join("template/iso"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["up.iso"], "no partial file left on the export");
    // (`up.iso` stays: the server caches the directory it has listed.)
    assert_eq!(std::fs::read_dir(tmp.path().join("staging/nas")).unwrap().count(), 0, "nothing left staged");

    // An ISO on the NFS export; the guest's disk on the LUN, its CD-ROM holding the ISO.
    // (Through NFS: the server caches the directory it has listed.)
    let tools = tmp.path().join("tools.iso");
    std::fs::write(&tools, vec![7u8; 4096]).unwrap();
    let (ok, out) =
        cli(&d, tmp.path(), &["storage", "upload", "nas", tools.to_str().unwrap(), "--content", "iso"]);
    assert!(ok, "{out}");
    netstore::write_marker(&san.lun_file, b"HX-LUN-BOOT!");
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 showdisk stayup"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 140, "name": "lun", "memory_mib": 128, "boot": boot,
                "disks": [{"storage": "san", "volume": "san:lun1"}],
                "cdroms": [{"slot": "ide2", "volume": "nas:iso/tools.iso"}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let (_, cfg) = api.get("/api2/json/nodes/n1/qemu/140/config");
    assert_eq!(cfg["data"]["ide2"], "nas:iso/tools.iso,media=cdrom", "{cfg}");
    assert_eq!(cfg["data"]["virtio0"], "san:lun1,format=raw,size=32M", "{cfg}");
    // The LUN is this guest's alone.
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 141, "name": "lun2", "memory_mib": 128, "disks": [{"storage": "san", "volume": "san:lun1"}]}),
    );
    assert_eq!(code, 409, "{e}");
    // Only whole LUNs are used as they are, and only volumes that exist.
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 142, "name": "x", "memory_mib": 128, "disks": [{"storage": "nas", "volume": "nas:142/vm-142-disk-0.raw"}]}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("disks[0].volume")), "{e}");
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 142, "name": "x", "memory_mib": 128, "disks": [{"storage": "san", "volume": "san:lun7"}]}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("disks[0].volume")), "{e}");
    let (code, e) = api.post(
        "/vms",
        &json!({"vmid": 142, "name": "x", "memory_mib": 128, "cdroms": [{"slot": "ide2", "volume": "nas:iso/nope.iso"}]}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("cdroms[0].volume")), "{e}");

    let (_, body) = api.post("/vms/140/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    wait_serial(tmp.path(), 140, "DISK:HX-LUN-BOOT!");
    // QEMU logged in with CHAP itself: the password is in no argv.
    let pid = std::fs::read_to_string(tmp.path().join("run/qemu/140.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("file.driver=iscsi") && cmdline.contains("media=cdrom"), "{cmdline}");
    assert!(cmdline.contains("file.driver=nfs"), "the ISO through QEMU's NFS client: {cmdline}");
    assert!(!cmdline.contains("s3cretpass1"), "{cmdline}");
    assert!(!d.log().contains("s3cretpass1"));
    // The CD-ROM's medium changes while the guest runs: ejected, then the ISO again
    // (through QEMU's NFS client), nothing left pending.
    for (volume, said) in [
        (json!(null), "ide2 now holds nothing"),
        (json!("nas:iso/tools.iso"), "ide2 now holds nas:iso/tools.iso"),
    ] {
        let (code, r) = api.request(
            "PUT",
            "/vms/140/config",
            Some(api.token()),
            &json!({"cdroms": [{"slot": "ide2", "volume": volume}]}),
        );
        assert_eq!(code, 200, "{r}");
        let upid = r["upid"].as_str().unwrap().to_string();
        assert_eq!(api.wait_task(&upid), "OK");
        let (_, log) = api.get(&format!("/tasks/{upid}/log"));
        assert!(log.to_string().contains(said), "{log}");
        let (_, p) = api.get("/vms/140/pending");
        assert!(p.as_array().unwrap().iter().all(|e| e.get("pending").is_none()), "{p}");
    }
    let (_, body) = api.post("/vms/140/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");

    // Through Proxmox's API: an empty drive, then the guest deleted, the LUN kept.
    let (code, e) = api.post("/api2/json/nodes/n1/qemu/140/config", &json!({"ide2": "none,media=cdrom"}));
    assert_eq!(code, 200, "{e}");
    let (_, cfg) = api.get("/api2/json/nodes/n1/qemu/140/config");
    assert_eq!(cfg["data"]["ide2"], "none,media=cdrom", "{cfg}");
    let (code, _) = api.delete("/vms/140");
    assert_eq!(code, 200);
    let (_, luns) = api.get("/api2/json/nodes/n1/storage/san/content");
    assert_eq!(luns["data"][0]["volid"], "san:lun1", "{luns}");

    // A guest on an NFS image (raw, as the storage's format says), created through
    // Proxmox's API.
    let (code, e) = api.post(
        "/api2/json/nodes/n1/qemu",
        &json!({"vmid": 143, "name": "onnfs", "memory": 128, "virtio0": "nas:1", "ide2": "nas:iso/tools.iso,media=cdrom"}),
    );
    assert_eq!(code, 200, "{e}");
    let image = nfs.export().join("images/143/vm-143-disk-0.raw");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 30);
    let (code, _) = api.delete("/vms/143");
    assert_eq!(code, 200);
    assert!(!image.exists(), "the guest's own NFS image goes with it");

    // And a guest booting from an image on the export (QEMU's NFS client).
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 144, "name": "nfsboot", "memory_mib": 128, "boot": boot, "disks": [{"storage": "nas", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{vm}");
    netstore::write_marker(&nfs.export().join("images/144/vm-144-disk-0.raw"), b"HX-NFS-BOOT!");
    let (_, body) = api.post("/vms/144/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    wait_serial(tmp.path(), 144, "DISK:HX-NFS-BOOT!");
    let (_, body) = api.post("/vms/144/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
}

/// Disks and network cards hot-plugged into a running guest (which sees them come and
/// go), a SATA disk and everything with `hotplug: 0` left pending until the next start,
/// through both APIs.
#[test]
fn disks_and_nics_hot_plug_into_a_running_guest_and_the_rest_is_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let store = tmp.path().join("store");
    let (code, e) = api.post(
        "/storage",
        &json!({"storage": "hp", "type": "dir", "path": store, "content": "images", "format": "raw"}),
    );
    assert_eq!(code, 200, "{e}");
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"),
                      "cmdline": "console=ttyS0 stayup watchhotplug"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 150, "name": "hot", "memory_mib": 192, "boot": boot, "disks": [{"storage": "hp", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{vm}");
    let (_, body) = api.post("/vms/150/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    wait_serial(tmp.path(), 150, "DEVICES:vda \n");
    let (_, p) = api.get("/vms/150/pending");
    assert!(p.as_array().unwrap().iter().all(|e| e.get("pending").is_none()), "{p}");

    // A disk and a card, at once (hotplug defaults to network,disk,usb).
    let change = |body: Value| {
        let (code, r) = api.request("PUT", "/vms/150/config", Some(api.token()), &body);
        assert_eq!(code, 200, "{r}");
        let upid = r["upid"].as_str().unwrap().to_string();
        assert_eq!(api.wait_task(&upid), "OK");
        let (_, log) = api.get(&format!("/tasks/{upid}/log"));
        log.to_string()
    };
    let log = change(json!({"add_disks": [{"storage": "hp", "size_mib": 8, "slot": "virtio1"}],
                            "nets": [{"index": 0}]}));
    assert!(log.contains("hot-plugged virtio1") && log.contains("hot-plugged net0"), "{log}");
    wait_serial(tmp.path(), 150, "DEVICES:vda vdb eth0 \n");
    let (_, p) = api.get("/api2/json/nodes/n1/qemu/150/pending");
    let entry = |p: &Value, k: &str| p["data"].as_array().unwrap().iter().find(|e| e["key"] == k).cloned();
    let vdb = entry(&p, "virtio1").expect("virtio1 listed");
    assert!(vdb.get("pending").is_none() && vdb["value"].as_str().unwrap().starts_with("hp:150/"), "{p}");

    // SATA cannot hot-plug: pending, as a memory change is.
    let log =
        change(json!({"add_disks": [{"storage": "hp", "size_mib": 8, "slot": "sata0"}], "memory_mib": 256}));
    assert!(log.contains("sata0 is pending"), "{log}");
    let (_, p) = api.get("/api2/json/nodes/n1/qemu/150/pending");
    let sata = entry(&p, "sata0").unwrap();
    assert!(sata.get("value").is_none() && sata["pending"].as_str().unwrap().starts_with("hp:150/"), "{p}");
    assert_eq!(entry(&p, "memory").unwrap()["pending"], "256", "{p}");

    // Unplugged (the guest gives the devices up), the volume kept as unused; a volume
    // still attached cannot be freed.
    let (code, e) = api.request(
        "PUT",
        "/vms/150/config",
        Some(api.token()),
        &json!({"delete": ["virtio0"], "purge": true}),
    );
    assert_eq!(code, 409, "{e}");
    let log = change(json!({"delete": ["virtio1", "net0"]}));
    assert!(log.contains("hot-unplugged virtio1") && log.contains("hot-unplugged net0"), "{log}");
    wait_serial(tmp.path(), 150, "DEVICES:vda \n");
    let (_, vm) = api.get("/vms/150");
    let unused = vm["unused"][0].as_str().unwrap().to_string();
    let log = change(json!({"delete": ["unused0"]}));
    assert!(log.contains(&format!("freed {unused}")), "{log}");

    // hotplug 0: nothing changes while it runs.
    let log = change(json!({"options": {"hotplug": "0"}, "nets": [{"index": 1}]}));
    assert!(!log.contains("hot-plugged"), "{log}");
    let (_, p) = api.get("/vms/150/pending");
    let net1 = p.as_array().unwrap().iter().find(|e| e["key"] == "net1").cloned().unwrap();
    assert!(net1["pending"].as_str().unwrap().starts_with("virtio="), "{p}");
    let (code, e) = api.request(
        "PUT",
        "/vms/150/config",
        Some(api.token()),
        &json!({"options": {"hotplug": "disk,floppy"}}),
    );
    assert_eq!((code, e["field"].as_str()), (400, Some("hotplug")), "{e}");

    // After a restart nothing is pending.
    let (_, body) = api.post("/vms/150/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (_, body) = api.post("/vms/150/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (_, p) = api.get("/vms/150/pending");
    assert!(
        p.as_array().unwrap().iter().all(|e| e.get("pending").is_none() && e.get("delete").is_none()),
        "{p}"
    );
    let (_, body) = api.post("/vms/150/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");

    // The CLI: move a disk, detach (and free) another.
    let (ok, out) = cli(&d, tmp.path(), &["vm", "disk", "move", "150", "virtio0", "local", "--delete"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&d, tmp.path(), &["vm", "disk", "detach", "150", "sata0", "--purge"]);
    assert!(ok, "{out}");
    let (_, vm) = api.get("/vms/150");
    assert!(vm["disks"][0]["volume"].as_str().unwrap().starts_with("local:150/"), "{vm}");
    assert_eq!((vm["disks"].as_array().unwrap().len(), vm["unused"].clone()), (1, json!([])), "{vm}");
    assert_eq!(std::fs::read_dir(store.join("images/150")).map(|d| d.count()).unwrap_or(0), 0);
}

/// An rbd storage through Proxmox's API (the keyring never answered), a disk moved onto
/// it, the guest booting from it through librbd, a live snapshot on it, and the image
/// gone with the guest.
#[test]
fn a_guest_boots_from_an_rbd_image_moved_onto_ceph() {
    let ceph = netstore::Ceph::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let (code, e) = api.post(
        "/api2/json/storage",
        &json!({"storage": "ceph", "type": "rbd", "pool": "rbd", "monhost": netstore::CEPH_MON,
                "username": "admin", "keyring": ceph.keyring(), "content": "images"}),
    );
    assert_eq!(code, 200, "{e}");
    let (_, cfg) = api.get("/api2/json/storage/ceph");
    assert!(!cfg.to_string().contains(&ceph.key), "{cfg}");
    let (code, st) = api.get("/api2/json/nodes/n1/storage/ceph/status");
    assert_eq!((code, st["data"]["active"].clone()), (200, json!(1)), "{st}");

    let store = tmp.path().join("raw");
    let (code, e) = api.post(
        "/storage",
        &json!({"storage": "raw", "type": "dir", "path": store, "content": "images", "format": "raw"}),
    );
    assert_eq!(code, 200, "{e}");
    let g = common::tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 showdisk stayup"});
    let (code, vm) = api.post(
        "/vms",
        &json!({"vmid": 170, "name": "rbd", "memory_mib": 128, "boot": boot, "disks": [{"storage": "raw", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{vm}");
    netstore::write_marker(&store.join("images/170/vm-170-disk-0.raw"), b"HX-RBD-BOOT!");
    let (code, r) =
        api.post("/vms/170/move_disk", &json!({"disk": "virtio0", "storage": "ceph", "delete": true}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    let (_, content) = api.get("/api2/json/nodes/n1/storage/ceph/content");
    // Index 1: the source had 0.
    assert_eq!(content["data"][0]["volid"], "ceph:vm-170-disk-1", "{content}");

    let (_, body) = api.post("/vms/170/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    wait_serial(tmp.path(), 170, "DISK:HX-RBD-BOOT!");
    let pid = std::fs::read_to_string(tmp.path().join("run/qemu/170.pid")).unwrap();
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap())
        .replace('\0', " ");
    assert!(cmdline.contains("file.driver=rbd") && !cmdline.contains(&ceph.key), "{cmdline}");
    // A live snapshot: the vCPUs paused around `rbd snap create`.
    let (code, r) = api.post("/vms/170/snapshots", &json!({"snapname": "live"}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    assert_eq!(api.get("/vms/170").1["status"], "running");
    let (_, body) = api.post("/vms/170/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    assert!(!d.log().contains(&ceph.key));
    let (code, r) = api.request("DELETE", "/vms/170/snapshots/live", Some(api.token()), &json!({}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["upid"].as_str().unwrap()), "OK");
    let (code, _) = api.delete("/vms/170");
    assert_eq!(code, 200);
    let (_, content) = api.get("/api2/json/nodes/n1/storage/ceph/content");
    assert_eq!(content["data"], json!([]), "{content}");
}

/// A disk, and an unused volume, handed to another guest (`move_disk` with `target-vmid`):
/// renamed for it and both configs changed in one entry; refused without rights on the
/// target, onto a slot it has, to a guest that does not exist.
#[test]
fn disks_are_handed_to_another_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let api = d.client();
    for (vmid, disks) in [
        (180, json!([{"storage": "local", "size_mib": 16}, {"storage": "local", "size_mib": 8}])),
        (181, json!([])),
    ] {
        let (code, r) = api.post(
            "/vms",
            &json!({"vmid": vmid, "name": format!("g{vmid}"), "memory_mib": 64, "disks": disks}),
        );
        assert_eq!(code, 200, "{r}");
    }
    let images = tmp.path().join("storage/local/images");
    let (code, e) =
        api.post("/api2/json/nodes/n1/qemu/180/move_disk", &json!({"disk": "virtio0", "target-vmid": 182}));
    assert_eq!((code, e["errors"]["target-vmid"].is_string()), (400, true), "{e}");
    let (code, r) = api.post(
        "/api2/json/nodes/n1/qemu/180/move_disk",
        &json!({"disk": "virtio0", "target-vmid": 181, "target-disk": "scsi1"}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["data"].as_str().unwrap()), "OK");
    let (_, to) = api.get("/api2/json/nodes/n1/qemu/181/config");
    assert!(to["data"]["scsi1"].as_str().unwrap().starts_with("local:181/vm-181-disk-0.qcow2,"), "{to}");
    let (_, from) = api.get("/api2/json/nodes/n1/qemu/180/config");
    assert!(from["data"].get("virtio0").is_none(), "{from}");
    assert!(
        images.join("181/vm-181-disk-0.qcow2").is_file() && !images.join("180/vm-180-disk-0.qcow2").exists()
    );
    // Onto a slot the target has: refused, nothing renamed.
    let (code, e) = api
        .post("/vms/180/move_disk", &json!({"disk": "virtio1", "target_vmid": 181, "target_disk": "scsi1"}));
    assert_eq!((code, e["field"].as_str()), (400, Some("target-disk")), "{e}");
    assert!(images.join("180/vm-180-disk-1.qcow2").is_file());
    // An unused volume is attached again as it is (Proxmox's re-attach), then detached.
    let (code, _) = api.request("PUT", "/vms/180/config", Some(api.token()), &json!({"delete": ["virtio1"]}));
    assert_eq!(code, 200);
    let (code, r) =
        api.post("/api2/json/nodes/n1/qemu/180/config", &json!({"scsi2": "local:180/vm-180-disk-1.qcow2"}));
    assert_eq!(code, 200, "{r}");
    let (_, from) = api.get("/api2/json/nodes/n1/qemu/180/config");
    assert!(
        from["data"]["scsi2"].as_str().unwrap().contains("size=8M") && from["data"].get("unused0").is_none(),
        "{from}"
    );
    // Another guest's disk is not attached by name.
    let (code, e) =
        api.post("/api2/json/nodes/n1/qemu/181/config", &json!({"scsi3": "local:180/vm-180-disk-1.qcow2"}));
    assert_eq!(code, 400, "{e}");
    // An unused volume goes to the target's unused list.
    let (code, _) = api.request("PUT", "/vms/180/config", Some(api.token()), &json!({"delete": ["scsi2"]}));
    assert_eq!(code, 200);
    // Without VM.Config.Disk on the target: refused.
    assert_eq!(api.post("/access/users", &json!({"userid": "fay@pve"})).0, 200);
    let (_, t) = api.post("/access/users/fay@pve/token/t", &json!({"privsep": false}));
    let fay = t["value"].as_str().unwrap().to_string();
    for (path, role) in [("/vms/180", "PVEVMAdmin"), ("/storage", "PVEDatastoreUser")] {
        let acl = json!({"path": path, "role": role, "user": "fay@pve"});
        assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    }
    let hand = json!({"disk": "unused0", "target_vmid": 181});
    let (code, e) = api.request("POST", "/vms/180/move_disk", Some(&fay), &hand);
    assert!(code == 403 && e.to_string().contains("/vms/181"), "{code} {e}");
    let (code, r) = api.post("/vms/180/move_disk", &hand);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["volume"], "local:181/vm-181-disk-1.qcow2", "{r}");
    let (_, to) = api.get("/vms/181");
    assert_eq!(to["unused"], json!(["local:181/vm-181-disk-1.qcow2"]), "{to}");
    let (_, from) = api.get("/vms/180");
    assert_eq!((from["disks"].clone(), from["unused"].clone()), (json!([]), json!([])), "{from}");

    // Gus may change guest 181's disks but holds nothing on the storage: no ISO in its
    // CD-ROM drive (refused before the ISO is even looked up), no disk on it.
    assert_eq!(api.post("/access/users", &json!({"userid": "gus@pve"})).0, 200);
    let (_, t) = api.post("/access/users/gus@pve/token/t", &json!({"privsep": false}));
    let gus = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/vms/181", "role": "PVEVMAdmin", "user": "gus@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let cd = json!({"cdroms": [{"slot": "ide2", "volume": "local:iso/any.iso"}]});
    let (code, e) = api.request("PUT", "/vms/181/config", Some(&gus), &cd);
    assert!(code == 403 && e.to_string().contains("cdroms[0].volume"), "{code} {e}");
    let disk = json!({"add_disks": [{"storage": "local", "size_mib": 1}]});
    let (code, e) = api.request("PUT", "/vms/181/config", Some(&gus), &disk);
    assert!(code == 403 && e.to_string().contains("/storage/local"), "{code} {e}");
    let (code, e) = api.request("PUT", "/vms/181/config", Some(&gus), &json!({"cdroms": [{"slot": "ide2"}]}));
    assert_eq!(code, 200, "an empty drive needs no storage: {e}");
}

/// One volume through both APIs: its attributes, notes and protection, allocation
/// (`pvesm alloc`), removal refused while a guest uses it or it is protected, and rights.
#[test]
fn volumes_are_read_annotated_allocated_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let api = d.client();
    std::fs::write(tmp.path().join("storage/local/template/iso/a.iso"), b"iso!").unwrap();
    // Proxmox's clients send the volume id with its `/` as is, or escaped.
    for path in ["local:iso/a.iso", "local%3Aiso%2Fa.iso", "iso/a.iso"] {
        let (code, v) = api.get(&format!("/api2/json/nodes/n1/storage/local/content/{path}"));
        assert_eq!(code, 200, "{path}: {v}");
        assert_eq!((v["data"]["size"].clone(), v["data"]["format"].clone()), (json!(4), json!("iso")), "{v}");
        assert!(v["data"]["path"].as_str().unwrap().ends_with("template/iso/a.iso"), "{v}");
    }
    let (code, _) = api.request(
        "PUT",
        "/api2/json/nodes/n1/storage/local/content/local:iso/a.iso",
        Some(api.token()),
        &json!({"notes": "installer", "protected": 1}),
    );
    assert_eq!(code, 200);
    let (_, v) = api.get("/storage/local/content/local:iso%2Fa.iso");
    assert_eq!((v["notes"].clone(), v["protected"].clone()), (json!("installer"), json!(true)), "{v}");
    let (_, list) = api.get("/api2/json/nodes/n1/storage/local/content?content=iso");
    let a =
        list["data"].as_array().unwrap().iter().find(|e| e["volid"] == "local:iso/a.iso").cloned().unwrap();
    assert_eq!((a["notes"].clone(), a["protected"].clone()), (json!("installer"), json!(1)), "{list}");
    let (code, e) = api.delete("/api2/json/nodes/n1/storage/local/content/local:iso/a.iso");
    assert!(code == 409 && e.to_string().contains("protected"), "{code} {e}");

    // pvesm alloc, then a guest that uses it: not removable until it is gone.
    let (code, v) = api.post(
        "/api2/json/nodes/n1/storage/local/content",
        &json!({"vmid": 190, "filename": "vm-190-disk-3.qcow2", "size": "16M"}),
    );
    assert_eq!((code, v["data"].clone()), (200, json!("local:190/vm-190-disk-3.qcow2")), "{v}");
    let image = tmp.path().join("storage/local/images/190/vm-190-disk-3.qcow2");
    assert!(image.is_file());
    for (body, field) in [
        (json!({"vmid": 190, "filename": "vm-191-disk-0.qcow2", "size": "16M"}), "filename"),
        (json!({"vmid": 190, "filename": "vm-190-disk-4.qcow2", "size": "16T"}), "size"),
    ] {
        let (code, e) = api.post("/storage/local/content", &body);
        assert_eq!((code, e["field"].as_str()), (400, Some(field)), "{e}");
    }
    let (code, r) = api.post(
        "/vms",
        &json!({"vmid": 191, "name": "iso", "memory_mib": 64,
        "cdroms": [{"slot": "ide2", "volume": "local:iso/a.iso"}]}),
    );
    assert_eq!(code, 200, "{r}");
    let (code, _) = api.request(
        "PUT",
        "/storage/local/content/local:iso%2Fa.iso",
        Some(api.token()),
        &json!({"protected": false}),
    );
    assert_eq!(code, 200);
    let (code, e) = api.delete("/storage/local/content/local:iso%2Fa.iso");
    assert!(code == 409 && e.to_string().contains("guest 191"), "{code} {e}");

    // Without Datastore.Allocate on the storage: not removed.
    assert_eq!(api.post("/access/users", &json!({"userid": "hal@pve"})).0, 200);
    let (_, t) = api.post("/access/users/hal@pve/token/t", &json!({"privsep": false}));
    let hal = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/storage/local", "role": "PVEDatastoreUser", "user": "hal@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let (code, _) = api.request(
        "DELETE",
        "/storage/local/content/local:190%2Fvm-190-disk-3.qcow2",
        Some(&hal),
        &json!({}),
    );
    assert_eq!(code, 403);
    assert!(image.is_file());
    let (code, r) = api.delete("/api2/json/nodes/n1/storage/local/content/local:190/vm-190-disk-3.qcow2");
    assert_eq!(code, 200, "{r}");
    assert_eq!(api.wait_task(r["data"].as_str().unwrap()), "OK");
    assert!(!image.exists());
    let (code, _) = api.get("/storage/local/content/local:190%2Fvm-190-disk-3.qcow2");
    assert_eq!(code, 404);
}
