//! Guests (`/api/v1/vms...`): create, read, power, migrate, delete, serial log; their
//! configuration (`config`), reboot/suspend/resume/reset (`power`) and their `/api2/json`
//! translations (`compat`). Mutations go through Raft (`ClusterHandle::propose`) and then
//! through the owning node's actors; each returns a task UPID.

mod attach;
pub mod compat;
pub mod config;
pub mod disk;
pub(crate) mod hotplug;
pub mod power;
pub mod snapshot;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use horcrux_actors::{create_with_disks, ClusterPort, CreateError, NewGuest, TaskLog};
use horcrux_core::ha::resources::{vm_sid, HaResource, RequestedState};
use horcrux_core::ObservedPower;
use horcrux_core::{ids, Command, DesiredPower, DiskSpec, Guest, KernelBoot, VmSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::*;

pub(crate) fn status_word(p: ObservedPower) -> &'static str {
    match p {
        ObservedPower::Stopped => "stopped",
        // Proxmox reports a paused guest as running, with qmpstatus "paused".
        ObservedPower::Running | ObservedPower::Paused => "running",
    }
}

pub(crate) fn vm_json(st: &ApiState, g: &Guest) -> Value {
    let mut observed = st.runtime.observed(g.vmid);
    if g.node != st.runtime.cluster().node_name() {
        // Only the owner observes its guests; a list on another node reports the desired
        // state (GET /vms/{vmid} is forwarded to the owner and reports what it observes).
        observed.power = if g.desired.is_running() { ObservedPower::Running } else { ObservedPower::Stopped };
    }
    let spec = g.vm_spec();
    let mut v = json!({
        "vmid": g.vmid,
        "name": g.name,
        "node": g.node,
        "type": "qemu",
        "memory_mib": spec.memory_mib,
        "cores": spec.cores,
        "sockets": spec.sockets,
        "disks": spec.disks.iter().zip(spec.disk_slots()).map(|(d, slot)| {
            let mut d = json!(d);
            d["slot"] = slot.into();
            d
        }).collect::<Vec<_>>(),
        "nets": spec.nets,
        "unused": spec.unused,
        "cdroms": spec.cdroms,
        "options": spec.options,
        "arch": spec.arch.as_deref().unwrap_or(horcrux_core::arch::DEFAULT_ARCH),
        "emulation": spec.emulation,
        "status": status_word(observed.power),
        "qmpstatus": observed.power,
        "desired": g.desired,
        "revision": g.revision,
    });
    if g.node == st.runtime.cluster().node_name() {
        v["serial_log"] = st.runtime.hypervisor().serial_log(g.vmid).display().to_string().into();
    }
    if let Some(b) = &spec.boot {
        v["boot"] = json!(b);
    }
    if let Some(e) = observed.last_error {
        v["last_error"] = e.into();
    }
    v
}

pub(crate) async fn list_vms(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let guests: Vec<Guest> =
        st.runtime.cluster().read_linearizable(|s| s.guests.values().cloned().collect()).await?;
    Ok(Json(Value::Array(guests.iter().map(|g| vm_json(&st, g)).collect())))
}

pub(crate) async fn get_vm(
    State(st): State<ApiState>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(|s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    Ok(Json(vm_json(&st, &g)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDisk {
    pub storage: String,
    /// Required for a new disk; with `volume`, the LUN's size.
    #[serde(default)]
    pub size_mib: u64,
    /// An existing volume used as it is instead of a new one: a LUN of an iSCSI storage
    /// (`san:lun1`), used by this guest alone.
    #[serde(default)]
    pub volume: Option<String>,
    /// `virtio0`, `scsi1`, ...; default `virtio<position>`.
    pub slot: Option<String>,
    /// `raw`, `qcow2` or `vmdk` (directory storages); default the storage's.
    #[serde(default)]
    pub format: Option<String>,
    /// An image to copy into the new disk (`local:import/debian.qcow2`): the disk is at
    /// least as large as the image. At create only.
    #[serde(default)]
    pub import_from: Option<String>,
}

/// A network card; without `macaddr`, one is generated (Proxmox's `BC:24:11` prefix).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewNet {
    pub index: u8,
    #[serde(default = "virtio")]
    pub model: String,
    pub macaddr: Option<String>,
    pub bridge: Option<String>,
    pub tag: Option<u16>,
    #[serde(default)]
    pub firewall: bool,
    #[serde(default)]
    pub link_down: bool,
}

pub(crate) fn virtio() -> String {
    "virtio".into()
}

impl NewNet {
    pub fn into_spec(self) -> horcrux_core::vmconfig::NetSpec {
        horcrux_core::vmconfig::NetSpec {
            index: self.index,
            model: self.model,
            macaddr: self.macaddr.map(|m| m.to_ascii_uppercase()).unwrap_or_else(random_mac),
            bridge: self.bridge,
            tag: self.tag,
            firewall: self.firewall,
            link_down: self.link_down,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateVm {
    vmid: Option<u64>,
    name: String,
    memory_mib: u64,
    #[serde(default = "one")]
    cores: u32,
    #[serde(default = "one")]
    sockets: u32,
    #[serde(default)]
    disks: Vec<NewDisk>,
    boot: Option<KernelBoot>,
    #[serde(default)]
    nets: Vec<NewNet>,
    #[serde(default)]
    options: std::collections::BTreeMap<String, String>,
    /// A resource pool the guest joins.
    pool: Option<String>,
    arch: Option<String>,
    #[serde(default)]
    emulation: horcrux_core::arch::Emulation,
    /// CD-ROM drives (`{"slot": "ide2", "volume": "local:iso/x.iso"}`; no volume: empty).
    #[serde(default)]
    cdroms: Vec<horcrux_core::CdromSpec>,
}

/// The guest's architecture is known and `node` can run it: natively, or emulated with the
/// right `qemu-system-*` where the guest allows emulation. (A node that has not reported
/// its facts yet is not judged.)
pub(crate) fn check_arch(
    state: &horcrux_core::ClusterState,
    node: &str,
    spec: &VmSpec,
) -> Result<(), ApiError> {
    let arch = horcrux_core::arch::resolve(&state.architectures, "arch", spec.arch.as_deref())?;
    let Some(facts) = state.nodes.get(node).map(|n| &n.facts).filter(|f| !f.arch.is_empty()) else {
        return Ok(());
    };
    if arch.native_on(facts) {
        return Ok(());
    }
    if !spec.emulation.is_allowed() {
        return Err(ApiError::bad_field(
            "emulation",
            format!("forbidden, and node {node} is {}, not {}", facts.arch, arch.name),
        ));
    }
    if !arch.emulated_on(facts) {
        return Err(ApiError::bad_field(
            "arch",
            format!("node {node} ({}) has no {} to emulate {}", facts.arch, arch.qemu_binary, arch.name),
        ));
    }
    Ok(())
}

pub(crate) fn one() -> u32 {
    1
}

pub(crate) fn task_response(task: &TaskLog) -> Json<Value> {
    Json(json!({ "upid": task.upid() }))
}

#[derive(Deserialize)]
pub(crate) struct CreateTarget {
    /// The member that will own the guest (the request is carried there); default: this node.
    node: Option<String>,
}

pub(crate) async fn create_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(target): Query<CreateTarget>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: CreateVm = parse_body(&body)?;
    if let Some(node) = target.node.filter(|n| n != st.runtime.cluster().node_name()) {
        // Known members were forwarded to before this handler ran.
        return Err(ApiError::bad_field("node", format!("no cluster member is named {node:?}")));
    }
    let _guard = st.create_lock.lock().await;
    let cluster = st.runtime.cluster();
    let state = cluster.read_linearizable(|s| s.clone()).await?;
    let vmid = match req.vmid {
        Some(v) => ids::validate_vmid("vmid", v)?,
        None => state.next_vmid().ok_or_else(|| ApiError::conflict("no free VMID left"))?,
    };
    ids::validate_dns_label("name", &req.name)?;
    let spec = VmSpec {
        memory_mib: req.memory_mib,
        cores: req.cores,
        sockets: req.sockets,
        disks: req
            .disks
            .iter()
            .map(|d| DiskSpec {
                storage: d.storage.clone(),
                size_mib: d.size_mib.max(u64::from(d.volume.is_some())),
                volume: d.volume.clone(),
                slot: d.slot.clone(),
                format: d.format.clone(),
            })
            .collect(),
        boot: req.boot,
        nets: req.nets.into_iter().map(NewNet::into_spec).collect(),
        options: req.options,
        arch: req.arch,
        emulation: req.emulation,
        unused: Vec::new(),
        cdroms: req.cdroms,
    };
    spec.validate()?;
    horcrux_core::vmconfig::validate_option_values(&spec.options)?;
    check_arch(&state, cluster.node_name(), &spec)?;
    for (i, d) in spec.disks.iter().enumerate() {
        if !state.storage.contains_key(&d.storage) {
            return Err(ApiError::bad_field(
                format!("disks[{i}].storage"),
                format!("unknown storage {:?}", d.storage),
            ));
        }
        // As Proxmox: a disk (new, or a LUN used whole) takes space on its storage.
        crate::authz::require(
            &state,
            &caller,
            "Datastore.AllocateSpace",
            &format!("/storage/{}", d.storage),
        )?;
    }
    if let Some(b) = &spec.boot {
        check_boot_files(&st, &state, &caller, b)?;
    }
    let mut spec = spec;
    attach::check_cdroms(&st, &state, &caller, &spec.cdroms).await?;
    for (i, d) in req.disks.iter().enumerate() {
        let Some(volume) = &d.volume else { continue };
        let field = format!("disks[{i}].volume");
        if d.import_from.is_some() || d.format.is_some() {
            return Err(ApiError::bad_field(field, "an existing volume takes no import_from or format"));
        }
        spec.disks[i].size_mib =
            attach::attached_size_mib(&st, &state, vmid, &[], &field, &d.storage, volume).await?;
    }
    let mut imports = std::collections::BTreeMap::new();
    for (i, d) in req.disks.iter().enumerate() {
        let Some(src) = &d.import_from else { continue };
        let field = format!("disks[{i}].import_from");
        let size = import_size(&st, &state, &caller, &field, src).await?;
        spec.disks[i].size_mib = spec.disks[i].size_mib.max(size.div_ceil(1 << 20));
        imports.insert(i, src.clone());
    }
    if state.guests.contains_key(&vmid) {
        return Err(ApiError::conflict(format!("VMID {vmid} already exists")));
    }
    if let Some(p) = req.pool.as_ref().filter(|p| !state.pools.contains_key(*p)) {
        return Err(ApiError::bad_field("pool", format!("unknown pool {p:?}")));
    }

    let task = st.runtime.tasks().create("qmcreate", &vmid.to_string(), caller.user());
    let port: &dyn ClusterPort = cluster;
    let logger = |l: String| task.log(l);
    let guest =
        NewGuest { vmid, name: req.name.clone(), spec, pool: req.pool, actor: Some(caller.actor()), imports };
    let created = create_with_disks(port, st.runtime.volumes(), &state.storage, guest, &logger).await;
    if let Err(e) = created {
        let err = match e {
            CreateError::Alloc { .. } => ApiError::internal(e.to_string()),
            CreateError::Cluster(p) => p.into(),
            CreateError::Unknown { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        task.finish(Err(&err.message));
        return Err(err);
    }
    task.log(format!("created guest {vmid} ({})", req.name));
    task.finish(Ok::<(), String>(()));
    Ok((StatusCode::OK, Json(json!({ "upid": task.upid(), "vmid": vmid }))))
}

/// The virtual size in bytes of an image to import: an `import` volume on a storage the
/// caller may read (`Datastore.Audit` or `Datastore.AllocateSpace`, checked before it is
/// looked up), or a disk of another guest the caller may clone (`VM.Clone` on it, as
/// Proxmox asks) that is stopped (a consistent copy), on this node.
pub(crate) async fn import_size(
    st: &ApiState,
    state: &horcrux_core::ClusterState,
    caller: &Caller,
    field: &str,
    src: &str,
) -> Result<u64, ApiError> {
    let (storage, rel) =
        horcrux_core::ids::parse_volume_id(src).map_err(|e| ApiError::bad_field(field, e.message))?;
    let path = format!("/storage/{storage}");
    if !crate::authz::caller_privileges(state, caller, &path).contains("Datastore.AllocateSpace") {
        crate::authz::require(state, caller, "Datastore.Audit", &path)?;
    }
    let is_import =
        rel.starts_with("import/") && [".qcow2", ".raw", ".vmdk"].iter().any(|s| rel.ends_with(s));
    if let (false, Some(owner)) = (is_import, ids::volume_owner(src)) {
        crate::authz::require(state, caller, "VM.Clone", &format!("/vms/{owner}"))?;
        let g = state.guests.get(&owner).filter(|g| {
            let spec = g.vm_spec();
            spec.disks.iter().any(|d| d.volume.as_deref() == Some(src))
                || spec.unused.iter().any(|u| u == src)
        });
        let g =
            g.ok_or_else(|| ApiError::bad_field(field, format!("{src} is not a disk of guest {owner}")))?;
        if g.desired.is_running() || st.runtime.observed(owner).power != ObservedPower::Stopped {
            return Err(ApiError::conflict(format!(
                "{field}: guest {owner} is running; stop it to copy its disk"
            )));
        }
    } else if !is_import {
        return Err(ApiError::bad_field(
            field,
            "imports are disk images (.qcow2, .raw, .vmdk) of a storage's import content (STORAGE:import/NAME) \
             or disks of a stopped guest",
        ));
    }
    let pool = state
        .storage
        .get(storage)
        .ok_or_else(|| ApiError::bad_field(field, format!("unknown storage {storage:?}")))?;
    let list = st.runtime.volume_store(pool).list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let vol = list.into_iter().find(|v| v.volid == src).ok_or_else(|| {
        ApiError::bad_field(field, format!("{src} is not on storage {storage} on this node"))
    })?;
    Ok(vol.size)
}

/// A guest boots from volumes the caller may read (`Datastore.Audit` or
/// `Datastore.AllocateSpace` on their storage, as Proxmox's ISO and snippet volumes), or,
/// for root@pam only, from host paths. Rights are checked before anything is looked up,
/// so the answer says nothing about files the caller may not see.
pub(crate) fn check_boot_files(
    st: &ApiState,
    state: &horcrux_core::ClusterState,
    caller: &Caller,
    boot: &KernelBoot,
) -> Result<(), ApiError> {
    for (field, file) in boot.files() {
        let path = match ids::parse_boot_file(field, file)? {
            ids::BootFile::Host(p) => {
                if !caller.actor().is_root() {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "permission check failed: {field}: only root@pam boots from host paths; \
                             name a volume such as local:snippets/vmlinuz"
                        ),
                    ));
                }
                std::path::PathBuf::from(p)
            }
            ids::BootFile::Volume { storage, volid } => {
                let held = crate::authz::caller_privileges(state, caller, &format!("/storage/{storage}"));
                if !held.contains("Datastore.Audit") && !held.contains("Datastore.AllocateSpace") {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "permission check failed: {field}: {} needs Datastore.Audit or \
                             Datastore.AllocateSpace on /storage/{storage}",
                            caller.token_id
                        ),
                    ));
                }
                let pool = state
                    .storage
                    .get(storage)
                    .ok_or_else(|| ApiError::bad_field(field, format!("unknown storage {storage:?}")))?;
                let path = (st.runtime.volumes())(pool)
                    .path(volid)
                    .map_err(|e| ApiError::bad_field(field, e.to_string()))?;
                // The file must be in the storage's own directory, not a link out of it.
                let inside = match (std::fs::canonicalize(&path), path.parent().map(std::fs::canonicalize)) {
                    (Ok(real), Some(Ok(dir))) => real.parent() == Some(dir.as_path()),
                    _ => false,
                };
                if !inside {
                    return Err(ApiError::bad_field(field, format!("volume {volid} does not exist")));
                }
                path
            }
        };
        if !path.is_file() {
            return Err(ApiError::bad_field(
                field,
                format!("{file} is not a file on node {}", st.runtime.cluster().node_name()),
            ));
        }
    }
    Ok(())
}

/// Admission control (`ha.tolerate = N`, `horcrux_core::ha::manager::check_start`): a start
/// is refused (409, with the loss that would strand a guest) when the HA guests could not
/// all run again after any N nodes fail. Stopping is always allowed, and so is a start of a
/// guest already meant to run.
fn admit_start(s: &horcrux_core::ClusterState, vmid: u32, desired: DesiredPower) -> Result<(), ApiError> {
    let n = horcrux_core::ha::resources::HaOptions::from_options(&s.options).tolerate;
    if n == 0 || !desired.is_running() || s.guests.get(&vmid).is_some_and(|g| g.desired.is_running()) {
        return Ok(());
    }
    horcrux_core::ha::manager::check_start(s, vmid, n).map_err(|why| {
        ApiError::new(StatusCode::CONFLICT, format!("admission control (ha.tolerate={n}): {why}"))
    })
}

/// Commits a new desired power state, then lets the owning actor act on it inside a task.
pub(crate) async fn power_task(
    st: ApiState,
    caller: Caller,
    vmid: u32,
    kind: &'static str,
    desired: DesiredPower,
) -> Result<Json<Value>, ApiError> {
    let cluster = st.runtime.cluster().clone();
    let admitted = cluster
        .read_linearizable(move |s| {
            if !s.guests.contains_key(&vmid) {
                return Err(ApiError::not_found(format!("guest {vmid} does not exist")));
            }
            admit_start(s, vmid, desired)?;
            Ok(s.ha_resources.get(&vm_sid(vmid)).filter(|r| r.state != RequestedState::Ignored).cloned())
        })
        .await?;
    if let Some(res) = admitted? {
        return ha_request(st, caller, vmid, res, desired).await;
    }
    let task = st.runtime.tasks().create(kind, &vmid.to_string(), caller.user());
    let committed =
        cluster.propose(Command::SetDesiredPower { vmid, expected_revision: None, desired }).await;
    let revision = match committed {
        Ok(ok) => ok.revision,
        Err(e) => {
            let err: ApiError = e.into();
            task.finish(Err(&err.message));
            return Err(err);
        }
    };
    let (runtime, t) = (st.runtime.clone(), task.clone());
    tokio::spawn(async move {
        let result = runtime.reconcile(vmid, Some(t.clone())).await;
        let outcome = match (desired, result) {
            (DesiredPower::Running, Ok(ObservedPower::Running | ObservedPower::Paused)) => Ok(()),
            (DesiredPower::Stopped { .. }, Ok(ObservedPower::Stopped)) => Ok(()),
            (_, Ok(other)) => Err(format!("guest {vmid} is {other:?} after the operation").to_lowercase()),
            (_, Err(e)) => Err(e.to_string()),
        };
        if outcome.is_err() && desired.is_running() {
            // A failed start leaves the guest stopped rather than retried forever.
            let undo = Command::SetDesiredPower {
                vmid,
                expected_revision: Some(revision),
                desired: DesiredPower::Stopped { graceful_timeout_s: None },
            };
            let _ = runtime.cluster().propose(undo).await;
        }
        t.finish(outcome);
    });
    Ok(task_response(&task))
}

/// A start or stop of an HA-managed guest asks the HA manager instead (as Proxmox's
/// `hastart` / `hastop` tasks do): the resource's requested state becomes `started` or
/// `stopped`, and the manager starts or stops it where placement says (with
/// `ha-rebalance-on-start`, on the best-scored node rather than where it last ran).
async fn ha_request(
    st: ApiState,
    caller: Caller,
    vmid: u32,
    res: HaResource,
    desired: DesiredPower,
) -> Result<Json<Value>, ApiError> {
    let (kind, state, word) = if desired.is_running() {
        ("hastart", RequestedState::Started, "start")
    } else {
        ("hastop", RequestedState::Stopped, "stop")
    };
    let task = st.runtime.tasks().create(kind, &vmid.to_string(), caller.user());
    task.log(format!("Requesting HA {word} for VM {vmid}"));
    let cmd = Command::SetHaResource {
        sid: res.sid.clone(),
        create: false,
        state,
        max_restart: res.max_restart,
        max_relocate: res.max_relocate,
        failback: res.failback,
        comment: res.comment,
    };
    match st.propose_by(&caller, cmd).await {
        Ok(_) => task.finish(Ok::<(), String>(())),
        Err(e) => {
            task.finish(Err(&e.message));
            return Err(e);
        }
    }
    Ok(task_response(&task))
}

pub(crate) async fn start_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    power_task(st, caller, vmid, "qmstart", DesiredPower::Running).await
}

pub(crate) async fn stop_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    power_task(st, caller, vmid, "qmstop", DesiredPower::Stopped { graceful_timeout_s: None }).await
}

pub(crate) async fn shutdown_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let timeout = power_off_timeout(&body)?;
    power_task(st, caller, vmid, "qmshutdown", DesiredPower::Stopped { graceful_timeout_s: Some(timeout) })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MigrateBody {
    target: String,
}

/// Offline migration; answered by the owner (the request is forwarded there), whose guest
/// actor checks that the process is gone before committing the move.
pub(crate) async fn migrate_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let b: MigrateBody = parse_body(&body)?;
    if b.target.is_empty() {
        return Err(ApiError::bad_field("target", "must name a node"));
    }
    let task = st.runtime.tasks().create("qmigrate", &vmid.to_string(), caller.user());
    task.log(format!("migrating guest {vmid} to {} (offline)", b.target));
    match st.runtime.migrate(vmid, b.target.clone()).await {
        Ok(revision) => {
            task.log(format!("guest {vmid} now belongs to {} (revision {revision})", b.target));
            task.finish(Ok::<(), String>(()));
            Ok(task_response(&task))
        }
        Err(e) => {
            let err: ApiError = e.into();
            task.finish(Err(&err.message));
            Err(err)
        }
    }
}

pub(crate) async fn delete_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let cluster = st.runtime.cluster().clone();
    let (guest, storage) =
        cluster.read_linearizable(|s| (s.guests.get(&vmid).cloned(), s.storage.clone())).await?;
    let guest = guest.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if guest.vm_spec().options.get("protection").is_some_and(|p| p == "1") {
        // Proxmox's `protection`: the guest and its disks can't be removed until it is unset.
        return Err(ApiError::bad_field(
            "protection",
            format!("guest {vmid} is protected; unset protection first"),
        ));
    }
    if guest.desired.is_running() || st.runtime.observed(vmid).power != ObservedPower::Stopped {
        return Err(ApiError::conflict(format!("guest {vmid} is running; stop it before deleting it")));
    }
    let task = st.runtime.tasks().create("qmdestroy", &vmid.to_string(), caller.user());
    let cmd = Command::DeleteGuest { vmid, expected_revision: Some(guest.revision) };
    if let Err(e) = cluster.propose(cmd).await {
        let err: ApiError = e.into();
        task.finish(Err(&err.message));
        return Err(err);
    }
    task.log(format!("removed guest {vmid} from the cluster configuration"));
    let mut errors = Vec::new();
    for d in &guest.vm_spec().disks {
        let (Some(volid), Some(pool)) = (&d.volume, storage.get(&d.storage)) else { continue };
        if !attach::owned(vmid, volid) {
            task.log(format!("kept {volid}: the guest used it without owning it"));
            continue;
        }
        match st.runtime.volume_store(pool).free(volid).await {
            Ok(()) => task.log(format!("removed volume {volid}")),
            Err(e) => errors.push(format!("{volid}: {e}")),
        }
    }
    if errors.is_empty() {
        task.finish(Ok::<(), String>(()));
        Ok(task_response(&task))
    } else {
        let msg = format!("guest {vmid} deleted, but volumes could not be removed: {}", errors.join("; "));
        task.finish(Err(&msg));
        Err(ApiError::internal(msg))
    }
}

/// The guest's serial console output so far (last 64 KiB), as text.
pub(crate) async fn serial_log(
    State(st): State<ApiState>,
    Path(vmid): Path<String>,
) -> Result<String, ApiError> {
    const TAIL: u64 = 64 * 1024;
    let vmid = parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(|s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    if g.node != st.runtime.cluster().node_name() {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("guest {vmid} runs on node {}", g.node),
        ));
    }
    let path = st.runtime.hypervisor().serial_log(vmid);
    let bytes = crate::tail::last_bytes(&path, TAIL)
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
