//! End to end: the tiny guest boots under TCG through the API, survives a daemon restart
//! (same QEMU process, still controllable), stops, and is deleted with its disk.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn tiny_guest_boots_survives_daemon_restart_and_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // The default accelerator choice (auto) is what users get; keep it here.
    let mut d = Daemon::start(tmp.path(), port, &[]);
    let api = d.client();
    let g = tiny_guest();
    // The guest boots from volumes of the `local` storage (Proxmox's snippets directory).
    let snippets = tmp.path().join("storage/local/snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    std::fs::copy(g.join("vmlinuz"), snippets.join("vmlinuz")).unwrap();
    std::fs::copy(g.join("initrd.gz"), snippets.join("initrd.gz")).unwrap();
    let (code, body) = api.post(
        "/vms",
        &json!({
            "vmid": 101, "name": "t1", "memory_mib": 256, "cores": 1,
            "disks": [{"storage": "local", "size_mib": 64}],
            "boot": {"kernel": "local:snippets/vmlinuz", "initrd": "local:snippets/initrd.gz", "cmdline": "console=ttyS0 stayup"}
        }),
    );
    assert_eq!(code, 200, "{body}");
    let disk = tmp.path().join("storage/local/images/101/vm-101-disk-0.qcow2");
    assert!(disk.exists());

    let (code, body) = api.post("/vms/101/start", &json!({}));
    assert_eq!(code, 200, "{body}");
    let upid = body["upid"].as_str().unwrap().to_string();
    assert!(upid.starts_with("UPID:n1:") && upid.contains(":qmstart:101:root@pam:"), "{upid}");
    assert_eq!(api.wait_task(&upid), "OK");
    let serial = tmp.path().join("log/qemu/101.serial.log");
    eventually("GUEST-BOOTED on the serial console", Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("GUEST-BOOTED"))
    });
    let (_, vm) = api.get("/vms/101");
    assert_eq!(vm["status"], "running");
    assert_eq!(vm["qmpstatus"], "running");
    assert_eq!(vm["serial_log"], serial.display().to_string());
    let console = api.get_text("/vms/101/serial");
    assert!(console.contains("GUEST-BOOTED"), "{console}");
    let pid = std::fs::read_to_string(tmp.path().join("run/qemu/101.pid")).unwrap().trim().to_string();
    // Confined QEMU: seccomp sandbox on, no VNC socket (a console is handed over QMP), its
    // own user, and no path to any file on its command line.
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let after = |flag: &str| argv.iter().position(|a| a == flag).map(|i| argv[i + 1].clone());
    assert!(after("-sandbox").is_some_and(|s| s.starts_with("on,")), "{argv:?}");
    assert_eq!(after("-vnc").as_deref(), Some("none"), "{argv:?}");
    assert!(
        !argv.iter().any(|a| a.contains(&tmp.path().display().to_string())),
        "a path reaches QEMU: {argv:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = horcrux_drivers::qemu::DEFAULT_GUEST_UID_BASE + 101;
    assert!(status.contains(&format!("Uid:\t{uid}\t")), "QEMU does not run as its own user: {status}");

    // Restart the daemon the hard way; the guest keeps running and is adopted, not relaunched.
    d.kill9();
    let d = Daemon::start(tmp.path(), port, &[]);
    let api = d.client();
    eventually("adopted guest reported running", Duration::from_secs(30), || {
        api.get("/vms/101").1["status"] == "running"
    });
    assert_eq!(std::fs::read_to_string(tmp.path().join("run/qemu/101.pid")).unwrap().trim(), pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        std::fs::read_to_string(&serial).unwrap().matches("GUEST-BOOTED").count(),
        1,
        "guest was rebooted"
    );

    // Deleting a running guest is refused and changes nothing.
    let (code, _) = api.delete("/vms/101");
    assert_eq!(code, 409);
    assert!(disk.exists());

    let (code, body) = api.post("/vms/101/stop", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (_, vm) = api.get("/vms/101");
    assert_eq!(vm["status"], "stopped");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "QEMU still running after stop: {stat}");

    let (code, body) = api.delete("/vms/101");
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    assert_eq!(api.get("/vms/101").0, 404);
    assert!(!disk.exists(), "disk left behind");
    let (_, list) = api.get("/vms");
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn shutdown_falls_back_to_hard_stop_after_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let g = tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, body) = api.post("/vms", &json!({"vmid": 150, "name": "sd", "memory_mib": 128, "boot": boot}));
    assert_eq!(code, 200, "{body}");
    let (_, body) = api.post("/vms/150/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    // The busybox guest ignores ACPI power-off, so the 2 s timeout forces a stop.
    let (code, body) = api.post("/vms/150/shutdown", &json!({"timeout_s": 2}));
    assert_eq!(code, 200, "{body}");
    let upid = body["upid"].as_str().unwrap().to_string();
    assert_eq!(api.wait_task(&upid), "OK");
    let (_, log) = api.get(&format!("/tasks/{upid}/log"));
    let text: Vec<String> =
        log.as_array().unwrap().iter().map(|l| l["t"].as_str().unwrap().to_string()).collect();
    assert!(text.iter().any(|l| l.contains("did not power off within 2 s")), "{text:?}");
    assert_eq!(api.get("/vms/150").1["status"], "stopped");
    // A bad timeout is refused with the field named.
    let (code, body) = api.post("/vms/150/shutdown", &json!({"timeout_s": "soon"}));
    assert_eq!(code, 400);
    assert_eq!(body["field"], "timeout_s");
}

/// The QEMU command line of a running guest, from its pid file.
fn qemu_cmdline(dir: &std::path::Path, vmid: u32) -> (String, String) {
    let pid = std::fs::read_to_string(dir.join(format!("run/qemu/{vmid}.pid"))).unwrap().trim().to_string();
    let cmdline =
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
    (pid, cmdline)
}

#[test]
fn config_changes_apply_at_reboot_and_suspend_pauses_the_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[("HORCRUX_ACCEL", "tcg")]);
    let api = d.client();
    let g = tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup"});
    let (code, body) =
        api.post("/vms", &json!({"vmid": 160, "name": "cfg", "memory_mib": 128, "boot": boot}));
    assert_eq!(code, 200, "{body}");
    let put = |v: Value| api.request("PUT", "/vms/160/config", Some(api.token()), &v);
    // Reboot and suspend need a running guest.
    assert_eq!(api.post("/vms/160/reboot", &json!({})).0, 409);
    assert_eq!(api.post("/vms/160/suspend", &json!({})).0, 409);
    let (_, body) = api.post("/vms/160/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (pid1, cmd1) = qemu_cmdline(tmp.path(), 160);
    assert!(cmd1.contains("-m 128 "), "{cmd1}");

    // Change memory, CPU, add a NIC (user-mode) and a SCSI disk while it runs.
    let rev = api.get("/vms/160").1["revision"].as_u64().unwrap();
    let change = json!({
        "revision": rev, "memory_mib": 192, "cores": 2, "options": {"description": "edited", "onboot": "1"},
        "nets": [{"index": 0, "model": "e1000"}],
        "add_disks": [{"storage": "local", "size_mib": 16, "slot": "scsi0"}],
    });
    let (code, body) = put(change.clone());
    assert_eq!(code, 200, "{body}");
    // The same change again carries a stale revision: refused, nothing allocated.
    let (code, body) = put(change);
    assert_eq!(code, 409, "{body}");
    let vm = api.get("/vms/160").1;
    assert_eq!((vm["memory_mib"].as_u64(), vm["cores"].as_u64()), (Some(192), Some(2)), "{vm}");
    let mac = vm["nets"][0]["macaddr"].as_str().unwrap().to_string();
    assert!(mac.starts_with("BC:24:11:"), "{vm}");
    assert_eq!(vm["disks"][0]["slot"], "scsi0", "{vm}");
    assert_eq!(vm["options"]["description"], "edited", "{vm}");
    let volumes: Vec<_> = std::fs::read_dir(tmp.path().join("storage/local/images/160")).unwrap().collect();
    assert_eq!(volumes.len(), 1, "one disk allocated, not two");
    // Bad input names the field and changes nothing.
    let (code, body) = put(json!({"nets": [{"index": 1, "model": "pcnet"}]}));
    assert_eq!((code, body["field"].as_str()), (400, Some("net1")), "{body}");
    let (code, body) = put(json!({"options": {"args": "-device evil"}}));
    assert_eq!((code, body["field"].as_str()), (400, Some("args")), "{body}");
    let (code, body) = put(json!({"add_disks": [{"storage": "local", "size_mib": 16, "slot": "ide9"}]}));
    assert_eq!(code, 400, "{body}");
    assert_eq!(std::fs::read_dir(tmp.path().join("storage/local/images/160")).unwrap().count(), 1);

    // Still the old QEMU; a reboot starts a new one with the new configuration.
    assert_eq!(qemu_cmdline(tmp.path(), 160).0, pid1);
    let (code, body) = api.post("/vms/160/reboot", &json!({"timeout_s": 1}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (pid2, cmd2) = qemu_cmdline(tmp.path(), 160);
    assert_ne!(pid1, pid2);
    assert!(cmd2.contains("-m 192 ") && cmd2.contains("-smp 2,sockets=1,cores=2"), "{cmd2}");
    assert!(cmd2.contains(&format!("e1000,netdev=net0,mac={mac}")), "{cmd2}");
    assert!(cmd2.contains("scsi-hd,bus=scsihw0.0,scsi-id=0,drive=drive-scsi0"), "{cmd2}");

    // Suspend pauses the vCPUs (QMP reports paused), resume continues; same process.
    let (code, body) = api.post("/vms/160/suspend", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let vm = api.get("/vms/160").1;
    assert_eq!((vm["status"].as_str(), vm["qmpstatus"].as_str()), (Some("running"), Some("paused")), "{vm}");
    let (_, body) = api.post("/vms/160/resume", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    assert_eq!(api.get("/vms/160").1["qmpstatus"], "running");
    assert_eq!(qemu_cmdline(tmp.path(), 160).0, pid2);
    let (_, body) = api.post("/vms/160/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
}

/// A guest of another architecture: an aarch64 guest runs on this x86_64 node through
/// `qemu-system-aarch64` under TCG (machine `virt`, CPU `cortex-a57`, no VGA), reaches QMP
/// `running`, and Debian's arm64 kernel prints the initramfs's boot marker on the serial
/// console. Unknown architectures, forbidden emulation and bad registrations are refused by
/// field; a registered architecture in use cannot be removed.
#[test]
fn an_aarch64_guest_runs_emulated_on_this_x86_64_node() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), free_port(), &[]);
    let api = d.client();
    let g = tiny_guest_arm64();
    let snippets = tmp.path().join("storage/local/snippets");
    std::fs::create_dir_all(&snippets).unwrap();
    std::fs::copy(g.join("vmlinuz"), snippets.join("vmlinuz-arm64")).unwrap();
    std::fs::copy(g.join("initrd.gz"), snippets.join("initrd-arm64.gz")).unwrap();
    let host = std::env::consts::ARCH;
    assert_eq!(host, "x86_64", "this test emulates aarch64 on an x86_64 host");

    // What the cluster knows: x86_64 native here, aarch64 emulated (the node's facts).
    eventually("the node's facts", Duration::from_secs(30), || {
        let (_, archs) = api.get("/cluster/architectures/aarch64");
        archs["emulating_nodes"] == json!(["n1"])
    });
    let (code, archs) = api.get("/cluster/architectures");
    assert_eq!(code, 200, "{archs}");
    let x86 = archs.as_array().unwrap().iter().find(|a| a["name"] == "x86_64").unwrap();
    assert_eq!(x86["native_nodes"], json!(["n1"]), "{archs}");

    let vm = |arch: &str, extra: Value| {
        let mut v = json!({
            "vmid": 201, "name": "arm1", "memory_mib": 256, "cores": 1, "arch": arch,
            "boot": {"kernel": "local:snippets/vmlinuz-arm64", "initrd": "local:snippets/initrd-arm64.gz",
                     "cmdline": "console=ttyAMA0 stayup"}
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let (code, body) = api.post("/vms", &vm("vax", json!({})));
    assert_eq!((code, body["field"].as_str()), (400, Some("arch")), "{body}");
    let (code, body) = api.post("/vms", &vm("aarch64", json!({"emulation": "forbidden"})));
    assert_eq!((code, body["field"].as_str()), (400, Some("emulation")), "{body}");
    assert_eq!(api.get("/vms/201").0, 404, "a refused create left a guest");

    let (code, body) = api.post("/vms", &vm("aarch64", json!({})));
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.post("/vms/201/start", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let serial = tmp.path().join("log/qemu/201.serial.log");
    eventually("GUEST-BOOTED-AARCH64 on the serial console", Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("GUEST-BOOTED-AARCH64"))
    });
    let (_, v) = api.get("/vms/201");
    assert_eq!((v["qmpstatus"].as_str(), v["arch"].as_str()), (Some("running"), Some("aarch64")), "{v}");
    let (_, cmdline) = qemu_cmdline(tmp.path(), 201);
    let exe = std::fs::read_link(format!("/proc/{}/exe", qemu_cmdline(tmp.path(), 201).0)).unwrap();
    assert!(exe.ends_with("qemu-system-aarch64"), "{exe:?}");
    for want in ["-accel tcg", "-machine virt", "-cpu cortex-a57"] {
        assert!(cmdline.contains(want), "{want} missing: {cmdline}");
    }
    assert!(!cmdline.contains("VGA"), "{cmdline}");
    let (_, cfg) = api.get("/api2/json/nodes/n1/qemu/201/config");
    assert_eq!(cfg["data"]["arch"], "aarch64", "{cfg}");
    // Proxmox's `arch` on create, as its clients send it.
    let (code, body) = api.post(
        "/api2/json/nodes/n1/qemu",
        &json!({"vmid": 202, "name": "arm2", "memory": "128", "arch": "aarch64"}),
    );
    assert_eq!(code, 200, "{body}");
    let (_, v) = api.get("/vms/202");
    assert_eq!(v["arch"], "aarch64", "{v}");
    let (code, body) =
        api.post("/api2/json/nodes/n1/qemu", &json!({"vmid": 203, "name": "vax", "arch": "vax"}));
    assert_eq!(code, 400, "{body}");
    assert!(body["errors"]["arch"].is_string(), "{body}");

    // Registered architectures: a qemu-system-* binary name, never a path; built-in names
    // are reserved; one in use stays.
    let (code, body) = api.post("/cluster/architectures", &json!({"name": "evil", "qemu_binary": "/bin/sh"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("qemu_binary")), "{body}");
    let (code, body) =
        api.post("/cluster/architectures", &json!({"name": "aarch64", "qemu_binary": "qemu-system-aarch64"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("name")), "{body}");
    let (code, body) = api.post(
        "/cluster/architectures",
        &json!({"name": "aarch64_a72", "qemu_binary": "qemu-system-aarch64", "machine": "virt", "cpu": "cortex-a72"}),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) =
        api.request("PUT", "/vms/201/config", Some(api.token()), &json!({"arch": "aarch64_a72"}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.delete("/cluster/architectures/aarch64_a72");
    assert_eq!(code, 409, "{body}");
    // The change applies at the next start: the registered CPU model.
    let (code, body) = api.post("/vms/201/stop", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (code, body) = api.post("/vms/201/start", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (_, cmdline) = qemu_cmdline(tmp.path(), 201);
    assert!(cmdline.contains("-cpu cortex-a72"), "{cmdline}");
    let (code, body) = api.post("/vms/201/stop", &json!({}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
}

/// Metrics: the sampler (a short interval here) reads the node, a guest that keeps its CPU
/// busy and the storages; `rrddata` serves them natively and as Proxmox's routes, with
/// PVE 9's fields, tiers and limits, the live figures reach cluster/resources and
/// `/metrics` (parsed by prometheus_client); bad timeframes are refused by field; a caller may
/// read a guest's figures only with VM.Audit on that guest; the figures survive a restart.
#[test]
fn metrics_are_sampled_kept_and_served_per_node_guest_and_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("HORCRUX_METRICS_INTERVAL_MS", "500")];
    let mut d = Daemon::start(tmp.path(), port, &env);
    let api = d.client();
    let g = tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup burn"});
    let (code, body) = api.post(
        "/vms",
        &json!({"vmid": 150, "name": "busy", "memory_mib": 128, "cores": 1, "boot": boot,
                "disks": [{"storage": "local", "size_mib": 16}]}),
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = api.post("/vms/150/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let last = |path: &str| -> Value {
        let (code, rows) = api.get(path);
        assert_eq!(code, 200, "{path}: {rows}");
        rows.as_array().unwrap().last().cloned().unwrap_or(Value::Null)
    };
    eventually("the busy guest's CPU in rrddata", Duration::from_secs(90), || {
        last("/vms/150/rrddata?timeframe=hour")["cpu"].as_f64().is_some_and(|c| c > 0.5)
    });
    let row = last("/vms/150/rrddata?timeframe=hour");
    assert_eq!(
        (row["maxcpu"].as_f64(), row["maxmem"].as_f64()),
        (Some(1.0), Some(128.0 * 1048576.0)),
        "{row}"
    );
    assert_eq!(row["maxdisk"].as_f64(), Some(16.0 * 1048576.0), "{row}");
    assert!(row["mem"].as_f64().is_some_and(|m| m > 1048576.0), "QEMU's resident memory: {row}");
    assert!(row["diskread"].as_f64().is_some() && row["netin"].as_f64().is_some(), "{row}");
    assert!(row.get("memhost").is_none(), "unknown fields are left out, as PVE does: {row}");
    assert!(row["time"].as_u64().unwrap() % 60 == 0, "rows of the minute tier: {row}");

    // Proxmox's routes: the same figures, at most the timeframe's rows.
    let auth = format!("PVEAPIToken=root@pam!admin={}", api.token());
    let pve = |path: &str| {
        let (code, body, _) =
            api.raw("GET", &format!("/api2/json{path}"), &[("Authorization", &auth)], &json!(null));
        (code, body)
    };
    let (code, body) = pve("/nodes/n1/qemu/150/rrddata?timeframe=hour&cf=MAX");
    assert_eq!(code, 200, "{body}");
    let rows = body["data"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() <= 60, "{}", rows.len());
    assert!(rows.last().unwrap()["cpu"].as_f64().is_some_and(|c| c > 0.5), "{body}");
    let (code, body) = pve("/nodes/n1/rrddata?timeframe=day");
    assert_eq!(code, 200, "{body}");
    let node = body["data"].as_array().unwrap().last().unwrap().clone();
    for field in ["cpu", "maxcpu", "loadavg", "memtotal", "memused", "roottotal", "rootused", "iowait"] {
        assert!(node[field].as_f64().is_some(), "node {field}: {node}");
    }
    assert!(node["cpu"].as_f64().unwrap() <= 1.0 && node["memused"].as_f64() < node["memtotal"].as_f64());
    let (code, body) = pve("/nodes/n1/storage/local/rrddata?timeframe=week");
    assert_eq!(code, 200, "{body}");
    let st = body["data"].as_array().unwrap().last().unwrap().clone();
    assert!(st["total"].as_f64().is_some_and(|t| t > 0.0) && st["used"].as_f64().is_some(), "{st}");
    assert_eq!(st["time"].as_u64().unwrap() % 1800, 0, "the week reads the 30-minute tier: {st}");
    // The live figures in cluster/resources: the guest's CPU and memory, byte totals; the
    // node's CPU, memory and root disk.
    let (code, body) = pve("/cluster/resources");
    assert_eq!(code, 200, "{body}");
    let all = body["data"].as_array().unwrap();
    let vm = all.iter().find(|e| e["id"] == "qemu/150").expect("the guest");
    assert!(vm["cpu"].as_f64().is_some_and(|c| c > 0.0) && vm["mem"].as_u64().is_some_and(|m| m > 0), "{vm}");
    assert_eq!(vm["maxcpu"].as_u64(), Some(1), "{vm}");
    assert!(vm["uptime"].as_u64().is_some_and(|u| u < 600), "the QEMU process's age: {vm}");
    assert!(vm["netin"].as_u64().is_some() && vm["diskread"].as_u64().is_some(), "totals: {vm}");
    let n = all.iter().find(|e| e["id"] == "node/n1").expect("the node");
    assert!(
        n["cpu"].as_f64().is_some()
            && n["maxmem"].as_u64() > n["mem"].as_u64()
            && n["maxdisk"].as_u64().is_some(),
        "{n}"
    );
    // Prometheus: prometheus-pve-exporter's names and labels, parsed by prometheus_client.
    let text = api.get_text("/metrics");
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let mut py = std::process::Command::new(lab_tool("HORCRUX_PYTHON", "python"))
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sample = |name: &str, id: &str| -> Option<Value> {
        m[name].as_array()?.iter().find(|s| s[0]["id"] == id).map(|s| s[1].clone())
    };
    assert_eq!(sample("pve_up", "qemu/150"), Some(json!(1.0)), "{text}");
    assert_eq!(sample("pve_up", "node/n1"), Some(json!(1.0)), "{text}");
    assert!(
        sample("pve_cpu_usage_ratio", "qemu/150").and_then(|v| v.as_f64()).is_some_and(|c| c > 0.0),
        "{text}"
    );
    assert!(sample("pve_memory_usage_bytes", "node/n1").is_some(), "{text}");
    assert!(
        sample("pve_uptime_seconds", "node/n1").and_then(|v| v.as_f64()).is_some_and(|u| u > 0.0),
        "{text}"
    );
    assert!(sample("pve_network_receive_bytes_total", "qemu/150").is_some(), "counters keep _total: {text}");
    assert!(sample("pve_disk_size_bytes", "storage/n1/local").is_some(), "{text}");
    let info =
        m["pve_guest_info"].as_array().unwrap().iter().find(|s| s[0]["id"] == "qemu/150").unwrap().clone();
    assert_eq!(
        (info[0]["name"].as_str(), info[0]["node"].as_str(), info[0]["type"].as_str()),
        (Some("busy"), Some("n1"), Some("qemu"))
    );
    assert!(text.contains("# TYPE pve_network_receive_bytes_total counter"), "{text}");
    assert!(m["pve_node_info"].as_array().is_some_and(|a| a.iter().any(|s| s[0]["name"] == "n1")), "{text}");
    let (code, _, _) = api.raw("GET", "/metrics", &[], &json!(null));
    assert_eq!(code, 401, "an anonymous scrape is refused");
    for (path, field) in [
        ("/nodes/n1/rrddata?timeframe=minute", "timeframe"),
        ("/nodes/n1/rrddata", "timeframe"),
        ("/nodes/n1/qemu/150/rrddata?timeframe=hour&cf=MIN", "cf"),
    ] {
        let (code, body) = pve(path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body["errors"][field].is_string(), "{path}: {body}");
    }
    assert_eq!(api.get("/vms/999/rrddata?timeframe=hour").0, 404);
    assert_eq!(api.get("/storage/nope/rrddata?timeframe=hour").0, 404);

    // VM.Audit on another guest only: this guest's figures are refused.
    assert_eq!(api.post("/access/users", &json!({"userid": "mo@pve"})).0, 200);
    let (_, t) = api.post("/access/users/mo@pve/token/t", &json!({"privsep": false}));
    let mo = t["value"].as_str().unwrap().to_string();
    let acl = json!({"path": "/vms/151", "role": "PVEAuditor", "user": "mo@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let (code, _) = api.request("GET", "/vms/150/rrddata?timeframe=hour", Some(&mo), &json!(null));
    assert_eq!(code, 403, "VM.Audit on /vms/151 does not reach guest 150");
    let (code, _) = api.request("GET", "/nodes/n1/rrddata?timeframe=hour", Some(&mo), &json!(null));
    assert_eq!(code, 403, "nor the node's figures");
    // Sys.Audit on the node and VM.Audit on guest 151 only: the node's latest reading
    // leaves guest 150 out.
    let acl = json!({"path": "/nodes/n1", "role": "PVEAuditor", "user": "mo@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let (code, cur) = api.request("GET", "/nodes/n1/metrics/current", Some(&mo), &json!(null));
    assert_eq!(code, 200, "{cur}");
    assert!(cur["node"]["cpu"].is_number() && cur["guests"].get("150").is_none(), "{cur}");
    let (_, cur) = api.get("/nodes/n1/metrics/current");
    assert!(cur["guests"]["150"]["cputime_total"].as_f64().is_some_and(|t| t > 0.0), "{cur}");

    // Durable: after a restart the earlier rows are still there.
    let before = last("/vms/150/rrddata?timeframe=hour");
    d.kill9();
    let d = Daemon::start(tmp.path(), port, &env);
    let api = d.client();
    let (code, rows) = api.get("/vms/150/rrddata?timeframe=hour");
    assert_eq!(code, 200, "{rows}");
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["time"] == before["time"] && r["cpu"].as_f64().is_some()),
        "the minute sampled before the restart: {before} in {rows}"
    );
    let (_, body) = api.post("/vms/150/stop", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    let (_, body) = api.delete("/vms/150");
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    eventually("the deleted guest's metrics file goes", Duration::from_secs(10), || {
        !tmp.path().join("rrd/qemu-150.rrd").exists()
    });
}

/// The consoles, through both APIs: `termproxy` + `vncwebsocket` carry the guest's serial
/// port (Proxmox's termproxy framing; the log's end replayed, typed input reaches the
/// guest's shell), `vncproxy` + `vncwebsocket` its VNC server (an RFB handshake down to a
/// framebuffer that is not blank). A ticket is refused when reused, expired, presented for
/// another guest, by another user, or by a user without VM.Console.
#[test]
fn consoles_relay_serial_and_vnc_with_single_use_tickets() {
    use common::ws::WsClient;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[]);
    let api = d.client();
    let g = tiny_guest();
    let boot = json!({"kernel": g.join("vmlinuz"), "initrd": g.join("initrd.gz"), "cmdline": "console=ttyS0 stayup shell"});
    let (code, body) =
        api.post("/vms", &json!({"vmid": 160, "name": "con", "memory_mib": 128, "boot": boot}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.post("/vms", &json!({"vmid": 161, "name": "other", "memory_mib": 64})).0, 200);
    let (_, body) = api.post("/vms/160/start", &json!({}));
    assert_eq!(api.wait_task(body["upid"].as_str().unwrap()), "OK");
    eventually("the guest boots", Duration::from_secs(60), || {
        api.get_text("/vms/160/serial").contains("GUEST-BOOTED")
    });
    let admin = format!("PVEAPIToken=root@pam!admin={}", api.token());
    let form_escape =
        |s: &str| s.replace('%', "%25").replace(':', "%3A").replace('&', "%26").replace('=', "%3D");
    let pve_post = |path: &str, form: Value| {
        let (code, body, _) =
            api.raw("POST", &format!("/api2/json{path}"), &[("Authorization", &admin)], &form);
        assert_eq!(code, 200, "{path}: {body}");
        body["data"].clone()
    };
    let ws_path = |vmid: u32, t: &Value| {
        format!(
            "/api2/json/nodes/n1/qemu/{vmid}/vncwebsocket?port={}&vncticket={}",
            t["port"],
            form_escape(t["ticket"].as_str().unwrap())
        )
    };
    // A ticket nobody comes for: refused once 40 s have passed (checked at the end).
    let stale = pve_post("/nodes/n1/qemu/160/termproxy", json!({"serial": "serial0"}));
    let stale_at = std::time::Instant::now();

    // Serial: Proxmox's termproxy exchange.
    let t = pve_post("/nodes/n1/qemu/160/termproxy", json!({"serial": "serial0"}));
    assert!(t["upid"].as_str().unwrap().contains(":vncterm:160:"), "{t}");
    assert_eq!(t["user"], "root@pam!admin");
    let p = t["port"].as_u64().unwrap();
    assert!((5900..=5999).contains(&p), "{t}");
    let mut ws =
        WsClient::connect(port, tmp.path(), &ws_path(160, &t), &[("Authorization", &admin)]).unwrap();
    ws.send_text(&format!("{}:{}\n", t["user"].as_str().unwrap(), t["ticket"].as_str().unwrap()));
    let first = ws.recv_until("OK", Duration::from_secs(10));
    assert!(first.starts_with("OK"), "{first}");
    ws.recv_until("GUEST-BOOTED", Duration::from_secs(10));
    let cmd = "echo HELLO-$((6*7))\n";
    ws.send_text("1:80:24:");
    ws.send_text(&format!("0:{}:{cmd}", cmd.len()));
    ws.send_text("2");
    ws.recv_until("HELLO-42", Duration::from_secs(20));
    drop(ws);
    assert_eq!(api.wait_task(t["upid"].as_str().unwrap()), "OK", "the console's task ends with the session");
    // The same ticket again: refused before the upgrade.
    let again = WsClient::connect(port, tmp.path(), &ws_path(160, &t), &[("Authorization", &admin)]);
    assert_eq!(again.err().map(|r| r.0), Some(403), "a used ticket");

    // VNC, through the native routes: the RFB handshake, then one full framebuffer update.
    let (code, v) = api.post("/vms/160/vncproxy", &json!({"websocket": 1}));
    assert_eq!(code, 200, "{v}");
    assert!(v["cert"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{v}");
    let path = format!(
        "/api/v1/vms/160/vncwebsocket?port={}&vncticket={}",
        v["port"],
        form_escape(v["ticket"].as_str().unwrap())
    );
    let bearer = format!("Bearer {}", api.token());
    let mut ws = WsClient::connect(port, tmp.path(), &path, &[("Authorization", &bearer)]).unwrap();
    let mut buf = Vec::new();
    assert_eq!(ws.read_bytes(12, &mut buf), b"RFB 003.008\n");
    ws.send_binary(b"RFB 003.008\n");
    let n = ws.read_bytes(1, &mut buf)[0] as usize;
    let types = ws.read_bytes(n, &mut buf);
    assert!(types.contains(&1), "security type None is offered: {types:?}");
    ws.send_binary(&[1]);
    assert_eq!(ws.read_bytes(4, &mut buf), [0, 0, 0, 0], "security result OK");
    ws.send_binary(&[1]); // ClientInit, shared
    let init = ws.read_bytes(24, &mut buf);
    let (w, h) =
        (u16::from_be_bytes([init[0], init[1]]) as usize, u16::from_be_bytes([init[2], init[3]]) as usize);
    let bpp = init[4] as usize / 8;
    assert!(w >= 320 && h >= 200 && bpp == 4, "{w}x{h}x{bpp}");
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    ws.read_bytes(name_len, &mut buf);
    ws.send_binary(&[2, 0, 0, 1, 0, 0, 0, 0]); // SetEncodings: raw only
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend((w as u16).to_be_bytes());
    req.extend((h as u16).to_be_bytes());
    ws.send_binary(&req); // FramebufferUpdateRequest, full
    let head = ws.read_bytes(4, &mut buf);
    assert_eq!(head[0], 0, "FramebufferUpdate");
    let rects = u16::from_be_bytes([head[2], head[3]]);
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..rects {
        let r = ws.read_bytes(12, &mut buf);
        let (rw, rh) = (u16::from_be_bytes([r[4], r[5]]) as usize, u16::from_be_bytes([r[6], r[7]]) as usize);
        assert_eq!(&r[8..12], &[0, 0, 0, 0], "raw encoding");
        let pixels = ws.read_bytes(rw * rh * bpp, &mut buf);
        distinct.extend(pixels.chunks(bpp).map(|c| c.to_vec()).take(200_000));
    }
    assert!(distinct.len() > 1, "the framebuffer is not blank ({rects} rectangles)");
    drop(ws);

    // Tickets bound to the guest, the user and VM.Console.
    assert_eq!(api.post("/access/users", &json!({"userid": "al@pve"})).0, 200);
    assert_eq!(api.post("/access/users", &json!({"userid": "vi@pve"})).0, 200);
    let token_of = |user: &str| {
        let (_, t) = api.post(&format!("/access/users/{user}/token/t"), &json!({"privsep": false}));
        t["value"].as_str().unwrap().to_string()
    };
    let (al, vi) = (token_of("al@pve"), token_of("vi@pve"));
    for (user, role) in [("al@pve", "PVEVMUser"), ("vi@pve", "PVEAuditor")] {
        let acl = json!({"path": "/vms", "role": role, "user": user});
        assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    }
    let (code, _) = api.request("POST", "/vms/160/termproxy", Some(&vi), &json!({}));
    assert_eq!(code, 403, "VM.Audit is not VM.Console");
    let t = pve_post("/nodes/n1/qemu/160/termproxy", json!({}));
    for (vmid, who, what) in
        [(160, &vi, "a user without VM.Console"), (160, &al, "another user than the ticket's")]
    {
        let r = WsClient::connect(
            port,
            tmp.path(),
            &ws_path(vmid, &t),
            &[("Authorization", &format!("Bearer {who}"))],
        );
        assert_eq!(r.err().map(|r| r.0), Some(403), "{what}");
    }
    let t = pve_post("/nodes/n1/qemu/160/termproxy", json!({}));
    let r = WsClient::connect(port, tmp.path(), &ws_path(161, &t), &[("Authorization", &admin)]);
    let refused = r.err().unwrap();
    assert_eq!(refused.0, 403, "a ticket for another guest: {}", refused.1);
    let mut other = t.clone();
    other["port"] = json!(if t["port"] == 5999 { 5900 } else { t["port"].as_u64().unwrap() + 1 });
    let t = pve_post("/nodes/n1/qemu/160/vncproxy", json!({"websocket": 1}));
    let mut wrong_port = t.clone();
    wrong_port["port"] = other["port"].clone();
    let r = WsClient::connect(port, tmp.path(), &ws_path(160, &wrong_port), &[("Authorization", &admin)]);
    assert_eq!(r.err().map(|r| r.0), Some(403), "a ticket for another port");
    // The guest's VM.Console holder gets their own ticket and console.
    let (code, mine) = api.request("POST", "/vms/160/termproxy", Some(&al), &json!({}));
    assert_eq!(code, 200, "{mine}");
    let mut ws = WsClient::connect(
        port,
        tmp.path(),
        &ws_path(160, &mine),
        &[("Authorization", &format!("Bearer {al}"))],
    )
    .unwrap();
    ws.send_text(&format!("{}:{}\n", mine["user"].as_str().unwrap(), mine["ticket"].as_str().unwrap()));
    ws.recv_until("OK", Duration::from_secs(10));
    drop(ws);
    // A client that never authenticates is cut off after 10 s (the serial port takes one
    // client at a time), and the port serves the next one.
    let t = pve_post("/nodes/n1/qemu/160/termproxy", json!({}));
    let mut idle =
        WsClient::connect(port, tmp.path(), &ws_path(160, &t), &[("Authorization", &admin)]).unwrap();
    let t0 = std::time::Instant::now();
    while let Some((op, _)) = idle.recv() {
        assert_ne!(op, 0x2, "no console output before the authentication");
        if op == 0x8 {
            break;
        }
    }
    let cut = t0.elapsed();
    assert!(cut >= Duration::from_secs(9) && cut < Duration::from_secs(20), "cut off after {cut:?}");
    let t = pve_post("/nodes/n1/qemu/160/termproxy", json!({}));
    let mut ws =
        WsClient::connect(port, tmp.path(), &ws_path(160, &t), &[("Authorization", &admin)]).unwrap();
    ws.send_text(&format!("{}:{}\n", t["user"].as_str().unwrap(), t["ticket"].as_str().unwrap()));
    ws.recv_until("GUEST-BOOTED", Duration::from_secs(10));
    drop(ws);
    // Not a WebSocket, or bad parameters: 4xx naming the field.
    let (code, body, _) = api.raw("GET", &ws_path(160, &t), &[("Authorization", &admin)], &json!(null));
    assert_eq!(code, 400, "a plain GET: {body}");
    let (code, body, _) = api.raw(
        "GET",
        "/api2/json/nodes/n1/qemu/160/vncwebsocket?port=80&vncticket=x",
        &[("Authorization", &admin)],
        &json!(null),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = api.post("/vms/160/termproxy", &json!({"serial": "serial9"}));
    assert_eq!((code, body["field"].as_str()), (400, Some("serial")), "{body}");

    let wait = Duration::from_secs(41).saturating_sub(stale_at.elapsed());
    std::thread::sleep(wait);
    let r = WsClient::connect(port, tmp.path(), &ws_path(160, &stale), &[("Authorization", &admin)]);
    assert_eq!(r.err().map(|r| r.0), Some(403), "an expired ticket");
    assert_eq!(api.wait_task(stale["upid"].as_str().unwrap()), "no console connection within 40 s");
}

/// `GET /events`: a subscriber is sent the resources it may see, then each change (a guest
/// created, removed), the tasks as they start and end; a caller sees only what its rights
/// show (a node auditor no guest). `cluster/tasks` lists the cluster's tasks, a caller
/// without Sys.Audit only its own.
#[test]
fn events_stream_the_changes_each_caller_may_see() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start(tmp.path(), port, &[]);
    let api = d.client();
    let mut stream = api.sse("/events", api.token());
    let mut next = |want: &dyn Fn(&str, &Value) -> bool| -> Value {
        let (mut event, mut line) = (String::new(), String::new());
        loop {
            line.clear();
            assert!(stream.read_line(&mut line).unwrap() > 0, "the stream ended");
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                if want(&event, &v) {
                    return v;
                }
            }
        }
    };
    let hello = next(&|e, _| e == "hello");
    assert_eq!(hello["node"], "n1");
    let n = next(&|e, v| e == "resource" && v["id"] == "node/n1");
    assert_eq!(n["status"], "online", "{n}");
    assert_eq!(api.post("/vms", &json!({"vmid": 170, "name": "watched", "memory_mib": 64})).0, 200);
    let g = next(&|e, v| e == "resource" && v["id"] == "qemu/170");
    assert_eq!((g["name"].as_str(), g["status"].as_str()), (Some("watched"), Some("stopped")), "{g}");

    // A node auditor: the node, not the guest (the snapshot form of the same events).
    assert_eq!(api.post("/access/users", &json!({"userid": "mo@pve"})).0, 200);
    assert_eq!(api.post("/access/users", &json!({"userid": "no@pve"})).0, 200);
    let token_of = |user: &str| {
        let (_, t) = api.post(&format!("/access/users/{user}/token/t"), &json!({"privsep": false}));
        t["value"].as_str().unwrap().to_string()
    };
    let (mo, no) = (token_of("mo@pve"), token_of("no@pve"));
    let acl = json!({"path": "/nodes/n1", "role": "PVEAuditor", "user": "mo@pve"});
    assert_eq!(api.request("PUT", "/access/acl", Some(api.token()), &acl).0, 200);
    let (code, snap) = api.request("GET", "/events", Some(&mo), &json!(null));
    assert_eq!(code, 200, "{snap}");
    let ids: Vec<&str> = snap.as_array().unwrap().iter().filter_map(|e| e["data"]["id"].as_str()).collect();
    assert!(ids.contains(&"node/n1") && !ids.contains(&"qemu/170"), "{ids:?}");
    let (_, admin_snap) = api.get("/events");
    assert!(admin_snap.to_string().contains("qemu/170"), "{admin_snap}");

    let (_, body) = api.delete("/vms/170");
    let upid = body["upid"].as_str().unwrap().to_string();
    // The task and the guest's removal, in either order.
    let seen = std::cell::RefCell::new((None::<Value>, false));
    next(&|e, v| {
        let mut s = seen.borrow_mut();
        if e == "task" && v["upid"] == upid.as_str() {
            s.0 = Some(v.clone());
        }
        s.1 |= e == "removed" && v["id"] == "qemu/170";
        s.0.is_some() && s.1
    });
    let t = seen.borrow().0.clone().unwrap();
    assert_eq!(t["type"], "qmdestroy", "{t}");
    assert_eq!(api.wait_task(&upid), "OK");

    // cluster/tasks: every member's tasks; the caller's own without Sys.Audit.
    let pve = |token: &str| {
        let (code, body) = api.request("GET", "/api2/json/cluster/tasks", Some(token), &json!(null));
        assert_eq!(code, 200, "{body}");
        body["data"].as_array().unwrap().clone()
    };
    let all = pve(api.token());
    let mine = all.iter().find(|t| t["upid"] == upid.as_str()).expect("the delete task");
    assert_eq!((mine["node"].as_str(), mine["status"].as_str()), (Some("n1"), Some("OK")), "{mine}");
    assert!(pve(&mo).iter().any(|t| t["upid"] == upid.as_str()), "Sys.Audit on the node shows all its tasks");
    assert!(pve(&no).is_empty(), "no rights: none of root's tasks");
    let (code, _) = api.request("GET", "/api2/json/nodes/n1/tasks", Some(&no), &json!(null));
    assert_eq!(code, 200);
}
