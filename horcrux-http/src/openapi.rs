//! The OpenAPI 3.0 document of the native API, served at `GET /api/v1/openapi.json`. It is
//! written out here, next to the access table: a unit test checks that both name exactly
//! the same routes, and CI runs schemathesis against a live daemon with it (no 5xx, every
//! response matching its schema).

use axum::Json;
use serde_json::{json, Map, Value};

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn arr(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn obj(props: Value, required: &[&str]) -> Value {
    let mut o = json!({ "type": "object", "properties": props });
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// A JSON body that names no field outside `props`.
fn body(props: Value, required: &[&str]) -> Value {
    let mut o = obj(props, required);
    o["additionalProperties"] = json!(false);
    o
}

const S: &str = "string";
const I: &str = "integer";
const B: &str = "boolean";

fn t(ty: &str) -> Value {
    json!({ "type": ty })
}

/// A DNS label: guest, node, group and realm names.
fn dns() -> Value {
    json!({ "type": S, "pattern": "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$" })
}

fn ha_resource(create: bool) -> Value {
    let mut props = json!({
        "state": { "type": S, "enum": ["started", "stopped", "enabled", "disabled", "ignored"] },
        "max_restart": { "type": I, "minimum": 0, "maximum": 10 },
        "max_relocate": { "type": I, "minimum": 0, "maximum": 10 },
        "failback": t(B), "comment": t(S),
    });
    if create {
        props["sid"] = t(S);
        props["type"] = json!({ "type": S, "enum": ["vm"] });
        body(props, &["sid"])
    } else {
        props["delete"] = arr(t(S));
        props["digest"] = t(S);
        body(props, &[])
    }
}

fn ha_rule(create: bool) -> Value {
    let mut props = json!({
        "type": { "type": S, "enum": ["node-affinity", "resource-affinity"] },
        "resources": t(S), "nodes": t(S), "strict": t(B),
        "affinity": { "type": S, "enum": ["positive", "negative"] },
        "disable": t(B), "comment": t(S),
    });
    if create {
        props["rule"] = t(S);
        body(props, &["rule", "type", "resources"])
    } else {
        props["delete"] = arr(t(S));
        props["digest"] = t(S);
        body(props, &[])
    }
}

fn schemas() -> Value {
    let error = obj(json!({ "error": t(S), "field": t(S) }), &["error"]);
    let disk = obj(
        json!({
            "storage": t(S), "size_mib": { "type": I, "minimum": 1, "maximum": 64 * 1024 * 1024 },
            "volume": t(S), "slot": { "type": S, "pattern": "^(virtio|scsi|sata|ide)[0-9]{1,2}$" },
            "format": { "type": S, "enum": ["raw", "qcow2", "vmdk"] }, "import_from": t(S),
        }),
        &["storage"],
    );
    let cdrom = obj(
        json!({ "slot": { "type": S, "pattern": "^(scsi|sata|ide)[0-9]{1,2}$" }, "volume": t(S) }),
        &["slot"],
    );
    let net = obj(
        json!({
            "index": { "type": I, "minimum": 0, "maximum": 31 }, "model": t(S), "macaddr": t(S),
            "bridge": t(S), "tag": t(I), "firewall": t(B), "link_down": t(B),
        }),
        &["index"],
    );
    let boot = obj(json!({ "kernel": t(S), "initrd": t(S), "cmdline": t(S) }), &["kernel"]);
    let vm = obj(
        json!({
            "vmid": t(I), "name": t(S), "node": t(S), "type": t(S), "memory_mib": t(I), "cores": t(I),
            "sockets": t(I), "disks": arr(r("Disk")), "nets": arr(r("Net")), "unused": arr(t(S)),
            "cdroms": arr(r("Cdrom")), "options": { "type": "object", "additionalProperties": t(S) },
            "status": { "type": S, "enum": ["running", "stopped"] }, "qmpstatus": t(S),
            "desired": t("object"), "revision": t(I), "serial_log": t(S), "boot": r("KernelBoot"),
            "last_error": t(S), "arch": t(S), "emulation": { "type": S, "enum": ["allowed", "forbidden"] },
        }),
        &["vmid", "name", "node", "status", "revision"],
    );
    let task = obj(
        json!({
            "upid": t(S), "node": t(S), "type": t(S), "id": t(S), "user": t(S),
            "status": { "type": S, "enum": ["running", "stopped"] }, "exitstatus": t(S),
            "starttime": t(I), "endtime": t(I), "pid": t(I), "pstart": t(I),
        }),
        &["upid", "status"],
    );
    let log_line = obj(json!({ "n": t(I), "t": t(S) }), &["n", "t"]);
    let upid = obj(json!({ "upid": t(S), "vmid": t(I) }), &["upid"]);
    let user = obj(
        json!({
            "userid": t(S), "comment": t(S), "email": t(S), "groups": arr(t(S)), "expire": t(I),
            "enable": t(B), "tfa": t(B), "tokens": arr(r("Token")),
        }),
        &["userid"],
    );
    let token = obj(json!({ "tokenid": t(S), "privsep": t(B), "expire": t(I) }), &["tokenid"]);
    let acl = obj(
        json!({ "path": t(S), "ugid": t("object"), "role": t(S), "propagate": t(B) }),
        &["path", "ugid", "role"],
    );
    let role = obj(json!({ "roleid": t(S), "privs": t(S), "special": t(B) }), &["roleid", "privs"]);
    let group =
        obj(json!({ "groupid": t(S), "comment": t(S), "users": t(S), "members": arr(t(S)) }), &["groupid"]);
    // Proxmox's keys (`storage.cfg`): the type's own and the common ones.
    let pool = obj(
        json!({
            "storage": t(S), "type": t(S), "content": t(S), "digest": t(S), "nodes": t(S), "shared": t(I),
            "disable": t(I), "path": t(S), "pool": t(S), "server": t(S), "export": t(S), "portal": t(S),
            "target": t(S), "vgname": t(S), "thinpool": t(S), "monhost": t(S),
        }),
        &["storage", "type", "content", "digest"],
    );
    let content = obj(
        json!({
            "volid": t(S), "vmid": t(I), "format": t(S), "size": t(I), "used": t(I), "content": t(S),
            "ctime": t(I), "notes": t(S), "protected": t(I), "parent": t(S),
        }),
        &["volid", "format", "size", "content"],
    );
    let node = obj(json!({ "name": t(S), "api_addr": t(S), "revision": t(I) }), &["name"]);
    let status = obj(
        json!({ "leader": { "type": S, "nullable": true }, "quorate": t(B), "nodes": arr(t("object")) }),
        &["quorate", "nodes"],
    );
    let revision = obj(json!({ "revision": t(I) }), &["revision"]);
    let ca_member = obj(
        json!({ "node_id": t(I), "name": t(S), "current_ca": t(B), "confirmed": t(B) }),
        &["node_id", "name", "current_ca", "confirmed"],
    );
    let cluster_ca = obj(
        json!({
            "fingerprint": t(S), "rotating": t(B),
            "previous_fingerprint": { "type": S, "nullable": true }, "members": arr(ca_member),
        }),
        &["fingerprint", "rotating", "members"],
    );
    let pool_schema = obj(
        json!({ "poolid": t(S), "comment": t(S), "vms": arr(t("object")), "storage": arr(t(S)) }),
        &["poolid", "vms", "storage"],
    );
    json!({
        "Error": error, "Disk": disk, "Cdrom": cdrom, "Net": net, "KernelBoot": boot, "Vm": vm, "Task": task,
        "LogLine": log_line, "Upid": upid, "User": user, "Token": token, "AclEntry": acl,
        "Role": role, "Group": group, "StoragePool": pool, "Content": content, "Node": node,
        "Snapshot": obj(
            json!({
                "name": t(S), "description": t(S), "snaptime": t(I), "vmstate": t(I), "parent": t(S),
                "running": t(I), "spec": t("object"),
            }),
            &["name", "description"],
        ),
        "ClusterStatus": status, "Revision": revision, "Pool": pool_schema, "ClusterCa": cluster_ca,
    })
}

/// One operation: its summary, path parameters (name, schema), query parameters, JSON
/// request body and the schema of a 200 answer.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: Vec<(&'static str, Value)>,
    body: Option<Value>,
    ok: Value,
    public: bool,
}

fn op(method: &'static str, path: &'static str, summary: &'static str, ok: Value) -> Op {
    Op { method, path, summary, query: Vec::new(), body: None, ok, public: false }
}

impl Op {
    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }
    fn query(mut self, name: &'static str, schema: Value) -> Self {
        self.query.push((name, schema));
        self
    }
    fn public(mut self) -> Self {
        self.public = true;
        self
    }
}

fn path_param(name: &str) -> Value {
    let schema = match name {
        "vmid" => json!({ "type": I, "minimum": 100, "maximum": 999_999_999 }),
        _ => t(S),
    };
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

fn operations() -> Vec<Op> {
    let any = || t("object");
    let storage_keys = json!({
        "content": t(S), "nodes": t(S), "shared": t(B), "disable": t(B), "path": t(S), "pool": t(S),
        "server": t(S), "export": t(S), "portal": t(S), "target": t(S), "vgname": t(S),
        "thinpool": t(S), "monhost": t(S), "preallocation": { "type": S, "enum": ["off", "metadata", "falloc", "full"] },
        "format": { "type": S, "enum": ["raw", "qcow2", "vmdk"] }, "username": t(S), "password": t(S),
        "keyring": t(S), "sparse": t(B), "blocksize": t(S), "mountpoint": t(S), "nocow": t(B), "krbd": t(B),
        "options": t(S), "saferemove": t(B),
    });
    let mut create_keys = storage_keys.clone();
    create_keys["storage"] = json!({ "type": S, "pattern": "^[A-Za-z][A-Za-z0-9_.-]{0,63}$" });
    create_keys["type"] = json!({ "type": S, "enum": horcrux_core::storage::STORAGE_TYPES });
    let storage_body = body(create_keys, &["storage", "type"]);
    let mut update_keys = storage_keys;
    update_keys["delete"] = t(S);
    update_keys["digest"] = t(S);
    let storage_update = body(update_keys, &[]);
    let storage_answer =
        obj(json!({ "storage": t(S), "type": t(S), "revision": t(I) }), &["storage", "type", "revision"]);
    let vm_power = |path, summary| op("POST", path, summary, r("Upid"));
    let create_vm = body(
        json!({
            "vmid": { "type": I, "minimum": 100, "maximum": 999_999_999 }, "name": dns(),
            "memory_mib": { "type": I, "minimum": 16, "maximum": 4 * 1024 * 1024 },
            "cores": { "type": I, "minimum": 1, "maximum": 512 }, "sockets": { "type": I, "minimum": 1, "maximum": 4 },
            "disks": { "type": "array", "items": r("Disk"), "maxItems": 16 },
            "boot": r("KernelBoot"), "nets": arr(r("Net")), "pool": t(S), "cdroms": arr(r("Cdrom")),
            "options": { "type": "object", "additionalProperties": t(S) },
            "arch": t(S), "emulation": { "type": S, "enum": ["allowed", "forbidden"] },
        }),
        &["name", "memory_mib"],
    );
    let config = body(
        json!({
            "revision": t(I), "name": t(S), "memory_mib": t(I), "cores": t(I), "sockets": t(I),
            "nets": arr(r("Net")), "add_disks": arr(r("Disk")), "cdroms": arr(r("Cdrom")),
            "options": { "type": "object", "additionalProperties": t(S) }, "delete": arr(t(S)),
            "purge": t(B), "arch": t(S), "emulation": { "type": S, "enum": ["allowed", "forbidden"] },
        }),
        &[],
    );
    let timeout = body(json!({ "timeout_s": { "type": I, "minimum": 0 } }), &[]);
    let rrd_timeframe = json!({ "type": S, "enum": ["hour", "day", "week", "month", "year", "decade"] });
    let rrd_cf = json!({ "type": S, "enum": ["AVERAGE", "MAX"] });
    let user_change = body(
        json!({
            "comment": t(S), "email": t(S), "groups": arr(t(S)), "append": t(B), "expire": t(I),
            "enable": t(B),
        }),
        &[],
    );
    let acl_change = body(
        json!({
            "path": t(S), "role": t(S), "user": t(S), "group": t(S), "token": t(S), "propagate": t(B),
            "delete": t(B),
        }),
        &["path", "role"],
    );
    let realm = body(
        json!({
            "realm": t(S), "type": t(S), "server1": t(S), "port": t(I), "base_dn": t(S), "user_attr": t(S),
            "bind_dn": t(S), "password": t(S), "domain": t(S),
        }),
        &["realm", "type", "server1", "base_dn"],
    );
    let login = body(
        json!({ "username": t(S), "password": t(S), "otp": t(S), "tfa-challenge": t(S), "realm": t(S) }),
        &["username", "password"],
    );
    vec![
        op("GET", "/version", "Product and version", any()).public(),
        op("POST", "/access/ticket", "Log in (or renew a ticket, or answer a second factor)", any())
            .body(login)
            .public(),
        op("DELETE", "/access/ticket", "Log out: clears the ticket cookie", any()).public(),
        op("GET", "/openapi.json", "This document", any()),
        op("GET", "/vms", "Guests", arr(r("Vm"))),
        op("POST", "/vms", "Create a guest (on `node`, default this one)", r("Upid"))
            .body(create_vm)
            .query("node", t(S)),
        op("GET", "/vms/{vmid}", "One guest, as its owner observes it", r("Vm")),
        op("DELETE", "/vms/{vmid}", "Delete a stopped guest and its disks", r("Upid")),
        vm_power("/vms/{vmid}/start", "Start"),
        vm_power("/vms/{vmid}/stop", "Stop at once"),
        op("POST", "/vms/{vmid}/shutdown", "Power off (hard after the timeout)", r("Upid"))
            .body(timeout.clone()),
        op("POST", "/vms/{vmid}/reboot", "Power off, then start a new QEMU", r("Upid")).body(timeout),
        vm_power("/vms/{vmid}/suspend", "Pause the vCPUs"),
        vm_power("/vms/{vmid}/resume", "Resume the vCPUs"),
        vm_power("/vms/{vmid}/reset", "Reset at once (the QEMU keeps running)"),
        op("POST", "/vms/{vmid}/migrate", "Offline migration", r("Upid"))
            .body(body(json!({ "target": t(S) }), &["target"])),
        op(
            "PUT",
            "/vms/{vmid}/config",
            "Change the configuration (what hotplug allows applies to a running guest at once, the rest at its next start)",
            r("Revision"),
        )
        .body(config),
        op("GET", "/vms/{vmid}/serial", "Serial console log", t(S)),
        op(
            "POST",
            "/vms/{vmid}/vncproxy",
            "A ticket for the guest's VNC console (40 s, one WebSocket connection)",
            obj(
                json!({ "port": t(I), "ticket": t(S), "user": t(S), "upid": t(S), "cert": t(S), "password": t(S) }),
                &["port", "ticket", "user", "upid", "cert"],
            ),
        )
        .body(body(json!({ "websocket": t(B), "generate-password": t(B) }), &[])),
        op(
            "POST",
            "/vms/{vmid}/termproxy",
            "A ticket for the guest's serial console (40 s, one WebSocket connection)",
            obj(json!({ "port": t(I), "ticket": t(S), "user": t(S), "upid": t(S) }), &["port", "ticket", "user", "upid"]),
        )
        .body(body(json!({ "serial": { "type": S, "enum": ["serial0", "serial1", "serial2", "serial3"] } }), &[])),
        op("GET", "/vms/{vmid}/vncwebsocket", "The console as a WebSocket (an HTTP/1.1 upgrade)", any())
            .query("port", json!({ "type": I, "minimum": 5900, "maximum": 5999 }))
            .query("vncticket", json!({ "type": S, "maxLength": 512 })),
        op(
            "POST",
            "/vms/{vmid}/move_disk",
            "Move a disk to another storage (online through blockdev-mirror when running), or hand it to another guest (target_vmid)",
            obj(json!({ "upid": t(S), "revision": t(I), "volume": t(S) }), &["upid", "revision", "volume"]),
        )
        .body(body(
            json!({ "disk": t(S), "storage": t(S), "format": { "type": S, "enum": ["raw", "qcow2", "vmdk"] }, "delete": t(B),
                    "target_vmid": { "type": I, "minimum": 100, "maximum": 999_999_999 }, "target_disk": t(S) }),
            &["disk"],
        )),
        op(
            "GET",
            "/vms/{vmid}/pending",
            "Each configuration key: its running value, its pending one, or a pending delete",
            arr(obj(json!({ "key": t(S), "value": t(S), "pending": t(S), "delete": t(I) }), &["key"])),
        ),
        op("GET", "/vms/{vmid}/snapshots", "Snapshots, then `current`", arr(r("Snapshot"))),
        op(
            "POST",
            "/vms/{vmid}/snapshots",
            "Take a snapshot (with the RAM: `vmstate`, a running guest on qcow2)",
            obj(json!({ "upid": t(S), "revision": t(I) }), &["upid", "revision"]),
        )
        .body(body(
            json!({
                "snapname": { "type": S, "pattern": "^[A-Za-z][A-Za-z0-9_-]{1,39}$" },
                "description": t(S), "vmstate": t(B),
            }),
            &["snapname"],
        )),
        op("GET", "/vms/{vmid}/snapshots/{name}", "A snapshot with the config it was taken of", r("Snapshot")),
        op("PUT", "/vms/{vmid}/snapshots/{name}", "Change a snapshot's description", r("Revision"))
            .body(body(json!({ "description": t(S) }), &["description"])),
        op(
            "DELETE",
            "/vms/{vmid}/snapshots/{name}",
            "Delete a snapshot",
            obj(json!({ "upid": t(S), "revision": t(I) }), &["upid", "revision"]),
        ),
        op(
            "POST",
            "/vms/{vmid}/snapshots/{name}/rollback",
            "Roll back (stops the guest; a snapshot with RAM resumes)",
            obj(json!({ "upid": t(S), "revision": t(I) }), &["upid", "revision"]),
        )
        .body(body(json!({ "start": t(B) }), &[])),
        op(
            "PUT",
            "/vms/{vmid}/resize",
            "Grow a disk (online through QMP when running)",
            obj(json!({ "upid": t(S), "revision": t(I) }), &["upid", "revision"]),
        )
        .body(body(
            json!({ "disk": t(S), "size": { "type": S, "pattern": "^\\+?[0-9]+(\\.[0-9]+)?[KMGT]?$" }, "revision": t(I) }),
            &["disk", "size"],
        )),
        op("GET", "/tasks", "Tasks", arr(r("Task"))),
        op("GET", "/tasks/{upid}", "One task", r("Task")),
        op("GET", "/tasks/{upid}/log", "A task's log", arr(r("LogLine"))),
        op("GET", "/cluster/nextid", "Lowest free VMID", obj(json!({ "vmid": t(I) }), &["vmid"])),
        op("GET", "/nodes", "Cluster members", arr(r("Node"))),
        op(
            "GET",
            "/events",
            "Live changes (server-sent events with Accept: text/event-stream; else the first ones as JSON)",
            arr(obj(json!({ "event": t(S), "data": any() }), &["event", "data"])),
        ),
        op("GET", "/nodes/{node}/tasks", "The node's tasks: all with Sys.Audit on it, else the caller's own", arr(any())),
        op("GET", "/nodes/{node}/status", "A member's host: CPU, memory, load, root file system", any()),
        op("GET", "/nodes/{node}/rrddata", "The node's metrics over a timeframe (PVE 9's fields)", arr(any()))
            .query("timeframe", rrd_timeframe.clone())
            .query("cf", rrd_cf.clone()),
        op(
            "GET",
            "/nodes/{node}/metrics/current",
            "The node's latest reading, and of its guests and storages the caller may audit",
            obj(json!({ "node": any(), "guests": any(), "storages": any() }), &["guests", "storages"]),
        ),
        op("GET", "/vms/{vmid}/rrddata", "A guest's metrics over a timeframe (PVE 9's fields)", arr(any()))
            .query("timeframe", rrd_timeframe.clone())
            .query("cf", rrd_cf.clone()),
        op("GET", "/storage/{id}/rrddata", "A storage's size and use over a timeframe", arr(any()))
            .query("timeframe", rrd_timeframe)
            .query("cf", rrd_cf)
            .query("node", t(S)),
        op("GET", "/storage", "Storages the caller may audit", arr(r("StoragePool"))),
        op("POST", "/storage", "Add a storage (Proxmox's storage.cfg keys)", storage_answer.clone()).body(storage_body.clone()),
        op("GET", "/storage/{id}", "A storage's configuration", r("StoragePool")),
        op("PUT", "/storage/{id}", "Change a storage's options", storage_answer).body(storage_update),
        op("DELETE", "/storage/{id}", "Remove a storage (refused while a guest has a disk on it)", r("Revision")),
        op(
            "POST",
            "/storage/{id}/upload",
            "Upload a file (the request body, streamed; checksum verified)",
            obj(json!({ "upid": t(S), "volid": t(S), "size": t(I) }), &["upid", "volid", "size"]),
        )
        .query("content", json!({ "type": S, "enum": ["iso", "vztmpl", "import"] }))
        .query("filename", t(S))
        .query("checksum", t(S))
        .query("checksum-algorithm", json!({ "type": S, "enum": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"] }))
        .query("node", t(S)),
        op("POST", "/storage/{id}/download-url", "Fetch a URL into the storage (a task)", r("Upid")).body(body(
            json!({
                "url": t(S), "content": { "type": S, "enum": ["iso", "vztmpl", "import"] }, "filename": t(S),
                "checksum": t(S), "checksum-algorithm": t(S), "verify-certificates": t(B), "node": t(S),
            }),
            &["url", "content", "filename"],
        )),
        op("GET", "/storage/{id}/content", "Volumes on one node", arr(r("Content")))
            .query("node", t(S))
            .query("vmid", t(I))
            .query("content", t(S)),
        op("POST", "/storage/{id}/content", "Allocate a disk image (its volume id)", t(S)).body(body(
            json!({
                "vmid": { "type": I, "minimum": 100, "maximum": 999_999_999 }, "filename": t(S),
                "size": { "type": S, "pattern": "^[0-9]+[KMG]?$" }, "format": { "type": S, "enum": ["raw", "qcow2", "vmdk"] },
                "node": t(S),
            }),
            &["vmid", "filename", "size"],
        )),
        op(
            "GET",
            "/storage/{id}/content/{volume}",
            "One volume: path, size, use, format, notes, protection",
            obj(
                json!({
                    "volid": t(S), "path": t(S), "size": t(I), "used": t(I), "format": t(S), "notes": t(S),
                    "protected": t(B),
                }),
                &["volid", "path", "size", "format"],
            ),
        )
        .query("node", t(S)),
        op("PUT", "/storage/{id}/content/{volume}", "Notes and protection of a file-backed volume", obj(json!({ "volid": t(S) }), &["volid"]))
            .body(body(json!({ "notes": t(S), "protected": t(B) }), &[])),
        op("DELETE", "/storage/{id}/content/{volume}", "Remove a volume no guest uses (a task)", r("Upid"))
            .query("node", t(S)),
        op(
            "GET",
            "/storage/{id}/status",
            "Enabled, active, size, use and free space on one node",
            obj(
                json!({
                    "storage": t(S), "type": t(S), "content": t(S), "shared": t(I), "enabled": t(I),
                    "active": t(I), "total": t(I), "used": t(I), "avail": t(I), "error": t(S),
                }),
                &["storage", "type", "content", "shared", "enabled", "active"],
            ),
        )
        .query("node", t(S)),
        op("GET", "/cluster/status", "Members, leader, quorum", r("ClusterStatus")),
        op("GET", "/cluster/tokens", "Join tokens", arr(any())),
        op("POST", "/cluster/tokens", "Create a join token", obj(json!({ "token": t(S) }), &["token"]))
            .body(body(json!({ "ttl_s": { "type": I, "minimum": 1 } }), &[])),
        op("DELETE", "/cluster/tokens/{id}", "Revoke a join token", any()),
        op("GET", "/cluster/quorum", "Votequorum view", any()),
        op("GET", "/cluster/options", "Cluster-wide options", {
            json!({ "type": "object", "additionalProperties": t(S) })
        }),
        op("PUT", "/cluster/options/{key}", "Set a cluster-wide option", any())
            .body(body(json!({ "value": t(S) }), &["value"])),
        op("DELETE", "/cluster/nodes/{name}", "Remove a member", any()),
        op("GET", "/cluster/ca", "The cluster CA and the progress of a CA roll", r("ClusterCa")),
        op("POST", "/cluster/ca/rotate", "Start a CA roll", obj(json!({ "fingerprint": t(S) }), &["fingerprint"])),
        op("GET", "/cluster/corosync", "The imported corosync.conf", json!({ "type": "object", "nullable": true })),
        op("POST", "/cluster/corosync", "Import a corosync.conf", any())
            .body(body(json!({ "config": t(S) }), &["config"])),
        op("GET", "/cluster/ha/resources", "HA resources with the manager's state", arr(any())),
        op("POST", "/cluster/ha/resources", "Make a guest an HA resource", any()).body(ha_resource(true)),
        op("GET", "/cluster/ha/resources/{sid}", "One HA resource", any()),
        op("PUT", "/cluster/ha/resources/{sid}", "Change an HA resource", any()).body(ha_resource(false)),
        op("DELETE", "/cluster/ha/resources/{sid}", "Remove a guest from HA (and from the rules)", any()),
        op("POST", "/cluster/ha/resources/{sid}/relocate", "Move: stop, move, start", any())
            .body(body(json!({ "node": dns() }), &["node"])),
        op("POST", "/cluster/ha/resources/{sid}/migrate", "Move (as relocate until live migration)", any())
            .body(body(json!({ "node": dns() }), &["node"])),
        op("GET", "/cluster/ha/rules", "HA rules", arr(any())).query("type", t(S)).query("resource", t(S)),
        op("POST", "/cluster/ha/rules", "Create an HA rule", any()).body(ha_rule(true)),
        op("GET", "/cluster/ha/rules/{rule}", "One HA rule", any()),
        op("PUT", "/cluster/ha/rules/{rule}", "Change an HA rule", any()).body(ha_rule(false)),
        op("DELETE", "/cluster/ha/rules/{rule}", "Delete an HA rule", any()),
        op("GET", "/cluster/ha/status", "Manager, node leases and resource states (from the leader)", any()),
        op("GET", "/cluster/ha/placement", "Where a resource would go now, with the reasons", any())
            .query("sid", t(S)),
        op(
            "GET",
            "/cluster/ha/history",
            "The latest HA service-state changes and moves, newest first",
            arr(obj(
                json!({ "ts_ms": t(I), "index": t(I), "sid": t(S), "from": t(S), "to": t(S), "from_node": t(S), "node": t(S) }),
                &["ts_ms", "index", "sid", "from", "to", "from_node", "node"],
            )),
        ),
        op("GET", "/cluster/architectures", "Guest CPU architectures, and the nodes that run each", arr(any())),
        op("POST", "/cluster/architectures", "Register a guest architecture", any()).body(body(
            json!({ "name": t(S), "qemu_binary": { "type": S, "pattern": "^qemu-system-[a-z0-9_]{1,32}$" },
                    "machine": t(S), "cpu": t(S) }),
            &["name", "qemu_binary"],
        )),
        op("GET", "/cluster/architectures/{name}", "One guest architecture", any()),
        op("PUT", "/cluster/architectures/{name}", "Change a registered architecture", any()).body(body(
            json!({ "qemu_binary": { "type": S, "pattern": "^qemu-system-[a-z0-9_]{1,32}$" },
                    "machine": t(S), "cpu": t(S), "delete": arr(t(S)) }),
            &[],
        )),
        op("DELETE", "/cluster/architectures/{name}", "Remove a registered architecture", any()),
        op("GET", "/pools", "Resource pools the caller may audit", arr(r("Pool"))),
        op("POST", "/pools", "Create a pool", any()).body(body(
            json!({ "poolid": { "type": S, "pattern": "^[A-Za-z0-9_-]{1,64}$" }, "comment": { "type": S, "maxLength": 256 } }),
            &["poolid"],
        )),
        op("GET", "/pools/{poolid}", "One pool with its members", r("Pool")),
        op("PUT", "/pools/{poolid}", "Change a pool's comment or members", any()).body(body(
            json!({ "comment": t(S), "vms": arr(json!({ "type": I, "minimum": 100, "maximum": 999_999_999 })), "storage": arr(t(S)), "delete": t(B) }),
            &[],
        )),
        op("DELETE", "/pools/{poolid}", "Delete an empty pool", any()),
        op("GET", "/access/users", "Users", arr(r("User"))),
        op("POST", "/access/users", "Create a user", any()).body(body(
            json!({
                "userid": { "type": S, "pattern": "^[A-Za-z0-9._-]{1,60}@(pve|pam)$" },
                "comment": { "type": S, "maxLength": 256 }, "groups": arr(t(S)), "expire": { "type": I, "minimum": 0 },
            }),
            &["userid"],
        )),
        op("GET", "/access/users/{userid}", "One user with its tokens", r("User")),
        op("PUT", "/access/users/{userid}", "Change a user", any()).body(user_change),
        op("DELETE", "/access/users/{userid}", "Delete a user, its tokens and ACL entries", any()),
        op("GET", "/access/users/{userid}/token", "A user's API tokens", arr(r("Token"))),
        op("GET", "/access/users/{userid}/token/{tokenid}", "One API token", r("Token")),
        op(
            "POST",
            "/access/users/{userid}/token/{tokenid}",
            "Create an API token (secret shown once)",
            any(),
        )
        .body(body(json!({ "privsep": t(B), "expire": t(I) }), &[])),
        op("DELETE", "/access/users/{userid}/token/{tokenid}", "Delete an API token", any()),
        op("GET", "/access/groups", "Groups", arr(r("Group"))),
        op("POST", "/access/groups", "Create a group", any())
            .body(body(json!({ "groupid": dns(), "comment": { "type": S, "maxLength": 256 } }), &["groupid"])),
        op("GET", "/access/groups/{groupid}", "One group", r("Group")),
        op("DELETE", "/access/groups/{groupid}", "Delete a group", any()),
        op("GET", "/access/acl", "ACL entries", arr(r("AclEntry"))),
        op("PUT", "/access/acl", "Grant or revoke a role on a path", r("Revision")).body(acl_change),
        op("GET", "/access/roles", "Roles", arr(r("Role"))),
        op("POST", "/access/roles", "Create a custom role", any())
            .body(body(
                json!({
                    "roleid": { "type": S, "pattern": "^[A-Za-z][A-Za-z0-9._-]{0,63}$" },
                    "privs": arr(json!({ "type": S, "enum": horcrux_core::access::PRIVILEGES })),
                }),
                &["roleid"],
            )),
        op("GET", "/access/roles/{roleid}", "One role", r("Role")),
        op("PUT", "/access/roles/{roleid}", "Change a custom role", any())
            .body(body(json!({ "privs": arr(t(S)), "append": t(B) }), &["privs"])),
        op("DELETE", "/access/roles/{roleid}", "Delete a custom role and its grants", any()),
        op("GET", "/access/permissions", "Privileges on a path (the caller's, or `userid`'s)", any())
            .query("path", t(S))
            .query("userid", t(S)),
        op("PUT", "/access/password", "Set a @pve user's password", any())
            .body(body(json!({ "userid": t(S), "password": t(S) }), &["userid", "password"])),
        op("GET", "/access/audit", "A member's audit log", arr(any()))
            .query("limit", json!({ "type": I, "minimum": 1, "maximum": 10000 }))
            .query("node", t(S)),
        op("GET", "/access/domains", "Realms", arr(any())),
        op("POST", "/access/domains", "Add an LDAP realm", r("Revision")).body(realm),
        op("DELETE", "/access/domains/{realm}", "Remove a realm", any()),
        op("POST", "/access/tfa/{userid}", "Enrol a TOTP second factor", any()),
        op("DELETE", "/access/tfa/{userid}", "Remove the second factor", any()),
    ]
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for o in operations() {
        let params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(path_param)
            .chain(
                o.query
                    .iter()
                    .map(|(n, s)| json!({ "name": n, "in": "query", "required": false, "schema": s })),
            )
            .collect();
        let ok_content = if o.ok == t(S) {
            json!({ "text/plain": { "schema": o.ok } })
        } else {
            json!({ "application/json": { "schema": o.ok } })
        };
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{} {}", o.method, o.path),
            "parameters": params,
            "responses": {
                "200": { "description": "OK", "content": ok_content },
                "default": { "description": "Error", "content": { "application/json": { "schema": r("Error") } } },
            },
        });
        if o.public {
            operation["security"] = json!([]);
        }
        if let Some(b) = o.body {
            operation["requestBody"] =
                json!({ "required": false, "content": { "application/json": { "schema": b } } });
        }
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        entry[o.method.to_lowercase()] = operation;
    }
    // Links from a create to the operations on what it created, so schemathesis's stateful
    // phase exercises real objects and not only 404s.
    let creates = [
        ("/vms", "/vms/{vmid}", "vmid", "$response.body#/vmid"),
        ("/access/users", "/access/users/{userid}", "userid", "$request.body#/userid"),
        ("/access/groups", "/access/groups/{groupid}", "groupid", "$request.body#/groupid"),
        ("/access/roles", "/access/roles/{roleid}", "roleid", "$request.body#/roleid"),
        ("/pools", "/pools/{poolid}", "poolid", "$request.body#/poolid"),
    ];
    for (create, prefix, param, source) in creates {
        let mut links = Map::new();
        for (path, item) in &paths {
            if path.starts_with(prefix) && path.matches('{').count() == 1 {
                for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
                    let id = format!("{} {path}", method.to_uppercase());
                    links.insert(
                        id.replace(['/', '{', '}', ' '], "_"),
                        json!({ "operationId": id, "parameters": { param: source } }),
                    );
                }
            }
        }
        paths[create]["post"]["responses"]["200"]["links"] = Value::Object(links);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Horcrux native API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every route but /version and /access/ticket needs an API token (Authorization: Bearer SECRET or PVEAPIToken=USER@REALM!ID=SECRET) or a ticket (PVEAuthCookie cookie; writes also need the CSRFPreventionToken header). The Proxmox-compatible API is served under /api2/json.",
        },
        "servers": [{ "url": "/api/v1" }],
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
        "paths": paths,
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document names exactly the routes of the access table (and the public ones).
    #[test]
    fn documents_every_route_and_nothing_else() {
        let mut documented: Vec<(String, String)> = operations()
            .iter()
            .filter(|o| !o.public)
            .map(|o| (o.method.to_string(), o.path.to_string()))
            .collect();
        let mut declared: Vec<(String, String)> =
            crate::authz::routes().iter().map(|r| (r.method.to_string(), r.route.to_string())).collect();
        documented.sort();
        declared.sort();
        assert_eq!(documented, declared);
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let n = path.matches('{').count();
                let p = op["parameters"].as_array().unwrap().iter().filter(|p| p["in"] == "path").count();
                assert_eq!(n, p, "{method} {path}: path parameters");
            }
        }
    }
}
