//! Storage through the daemon on network storages and with hot-plug: guests booting from
//! an image on nfs-ganesha, from a tgtd LUN (CHAP) with a CD-ROM whose medium changes live,
//! from an RBD image on a one-host Ceph; disks and NICs hot-plugged into a running guest,
//! the rest pending; disks handed from one guest to another.

mod common;
#[path = "../horcrux-drivers/tests/lab/netstore.rs"]
mod netstore;

use common::{cli, free_port, Daemon};
use serde_json::{json, Value};

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
