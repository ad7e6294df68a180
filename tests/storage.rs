//! Storage through the daemon: configuration in Proxmox's keys (native API and CLI), the
//! pool actors' status, content listings, bad input refused by field with nothing left
//! behind, rights checked per storage, secrets never answered, and a guest booted with
//! its disk on a real btrfs storage; disks moved, imported and handed to other guests; one
//! volume's routes. Network storages, hot-plug and disks handed between guests are in
//! `storage_guests.rs`.

mod common;

use std::process::Command;

use common::{cli, free_port, Daemon};
use serde_json::{json, Value};

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
