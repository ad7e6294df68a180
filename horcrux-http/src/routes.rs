//! The native API, `/api/v1`. Mutations of guests go through Raft (`ClusterHandle::propose`)
//! and then through the owning node's actors; each returns a task UPID.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{middleware, Extension, Json, Router};
use horcrux_actors::{create_with_disks, ClusterPort, CreateError, NewGuest, NodeRuntime, TaskLog};
use horcrux_core::ObservedPower;
use horcrux_core::{ids, Command, DesiredPower, DiskSpec, Guest, KernelBoot, VmSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{require_token, Caller};
use crate::error::ApiError;

/// Proxmox's default graceful-shutdown timeout.
const DEFAULT_SHUTDOWN_TIMEOUT_S: u32 = 60;

/// What every handler shares: one `Arc`, so the per-request clones the middleware layers
/// make cost one reference count, not one per field.
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

pub struct ApiShared {
    pub runtime: NodeRuntime,
    /// Serialises guest creation so two requests never allocate the same disk.
    create_lock: Arc<tokio::sync::Mutex<()>>,
    pub(crate) throttle: crate::login::Throttle,
    pub(crate) audit: crate::audit::AuditLog,
    /// The native router, for the `/api2/json` layer to call.
    pub(crate) native: crate::compat::NativeApp,
}

impl ApiShared {
    /// Proposes `cmd` on behalf of `caller`: the state machine checks an access-control
    /// change against the caller's rights at the point the change meets in the log.
    pub(crate) async fn propose_by(
        &self,
        caller: &Caller,
        cmd: Command,
    ) -> Result<horcrux_core::ApplyOk, ApiError> {
        Ok(self.runtime.cluster().propose_as(Some(caller.actor()), cmd).await?)
    }
}

pub fn router(runtime: NodeRuntime) -> Router {
    let audit_path =
        runtime.tasks().dir().parent().map(|d| d.join("audit.log")).unwrap_or_else(|| "audit.log".into());
    let st = ApiState(Arc::new(ApiShared {
        runtime,
        create_lock: Arc::default(),
        throttle: Default::default(),
        audit: crate::audit::AuditLog::new(audit_path),
        native: Default::default(),
    }));
    let authed = Router::new()
        .route("/vms", get(list_vms).post(create_vm))
        .route("/vms/{vmid}", get(get_vm).delete(delete_vm))
        .route("/vms/{vmid}/start", post(start_vm))
        .route("/vms/{vmid}/stop", post(stop_vm))
        .route("/vms/{vmid}/shutdown", post(shutdown_vm))
        .route("/vms/{vmid}/migrate", post(migrate_vm))
        .route("/vms/{vmid}/config", put(crate::vm_config::update))
        .route("/vms/{vmid}/reboot", post(crate::vm_power::reboot))
        .route("/vms/{vmid}/suspend", post(crate::vm_power::suspend))
        .route("/vms/{vmid}/reset", post(crate::vm_power::reset))
        .route("/vms/{vmid}/resume", post(crate::vm_power::resume))
        .route("/vms/{vmid}/serial", get(serial_log))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{upid}", get(get_task))
        .route("/tasks/{upid}/log", get(get_task_log))
        .route("/cluster/nextid", get(next_id))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{node}/status", get(crate::host::node_status))
        .route("/storage", get(list_storage))
        .route("/storage/{id}/content", get(storage_content))
        .route("/storage/{id}/status", get(crate::host::storage_status))
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(crate::cluster_routes::routes())
        .merge(crate::access_routes::routes())
        .merge(crate::pool_routes::routes())
        // Layers run outside-in: authenticate, check the route's privilege, then carry guest
        // requests to their owner (which checks again).
        .route_layer(middleware::from_fn_with_state(st.clone(), crate::forward::forward_to_owner))
        .route_layer(middleware::from_fn_with_state(st.clone(), crate::authz::authorize))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_token));
    // The only public routes: the version and the login itself.
    let api = Router::new()
        .route("/version", get(version))
        .route("/access/ticket", post(crate::login::ticket))
        .merge(authed);
    let app = Router::new()
        .nest("/api/v1", api)
        .nest("/api2/json", crate::compat::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::map_response(crate::error::json_errors))
        .layer(middleware::from_fn(crate::drain::drain_unread_body))
        .with_state(st.clone());
    let _ = st.native.set(app.clone());
    let throttle = st.throttle.clone();
    st.runtime.cluster().set_login_failure_hook(Arc::new(move |keys| throttle.note_remote(keys)));
    let served = app.clone();
    st.runtime.cluster().set_api_handler(Arc::new(move |call| {
        let app = served.clone();
        Box::pin(crate::forward::serve_forwarded(app, call))
    }));
    app
}

/// Parses a JSON body (an empty body counts as `{}`); errors name the offending field.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at its parent's path; every other error at the field.
        let missing = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next());
        let field = match (missing, path.as_str()) {
            (Some(f), ".") => f.to_string(),
            (Some(f), parent) => format!("{parent}.{f}"),
            (None, ".") => "body".to_string(),
            (None, p) => p.to_string(),
        };
        ApiError::bad_field(field, inner)
    })
}

pub(crate) fn parse_vmid(raw: &str) -> Result<u32, ApiError> {
    let n: u64 = raw.parse().map_err(|_| ApiError::bad_field("vmid", format!("{raw:?} is not a number")))?;
    Ok(ids::validate_vmid("vmid", n)?)
}

async fn version() -> Json<Value> {
    Json(
        json!({ "version": env!("CARGO_PKG_VERSION"), "release": env!("CARGO_PKG_VERSION"), "product": "horcrux" }),
    )
}

fn status_word(p: ObservedPower) -> &'static str {
    match p {
        ObservedPower::Stopped => "stopped",
        // Proxmox reports a paused guest as running, with qmpstatus "paused".
        ObservedPower::Running | ObservedPower::Paused => "running",
    }
}

fn vm_json(st: &ApiState, g: &Guest) -> Value {
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
        "options": spec.options,
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

async fn list_vms(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let guests: Vec<Guest> =
        st.runtime.cluster().read_linearizable(|s| s.guests.values().cloned().collect()).await?;
    Ok(Json(Value::Array(guests.iter().map(|g| vm_json(&st, g)).collect())))
}

async fn get_vm(State(st): State<ApiState>, Path(vmid): Path<String>) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    let g = st.runtime.cluster().read_linearizable(|s| s.guests.get(&vmid).cloned()).await?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("guest {vmid} does not exist")))?;
    Ok(Json(vm_json(&st, &g)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDisk {
    pub storage: String,
    pub size_mib: u64,
    /// `virtio0`, `scsi1`, ...; default `virtio<position>`.
    pub slot: Option<String>,
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

fn virtio() -> String {
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

pub(crate) fn random_mac() -> String {
    let mut b = [0u8; 3];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("OS random source");
    horcrux_core::vmconfig::mac_from_bytes(b)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVm {
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
}

fn one() -> u32 {
    1
}

fn task_response(task: &TaskLog) -> Json<Value> {
    Json(json!({ "upid": task.upid() }))
}

#[derive(Deserialize)]
struct CreateTarget {
    /// The member that will own the guest (the request is carried there); default: this node.
    node: Option<String>,
}

async fn create_vm(
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
                size_mib: d.size_mib,
                volume: None,
                slot: d.slot.clone(),
            })
            .collect(),
        boot: req.boot,
        nets: req.nets.into_iter().map(NewNet::into_spec).collect(),
        options: req.options,
    };
    spec.validate()?;
    horcrux_core::vmconfig::validate_option_values(&spec.options)?;
    for (i, d) in spec.disks.iter().enumerate() {
        if !state.storage.contains_key(&d.storage) {
            return Err(ApiError::bad_field(
                format!("disks[{i}].storage"),
                format!("unknown storage {:?}", d.storage),
            ));
        }
    }
    if let Some(b) = &spec.boot {
        check_boot_files(&st, &state, &caller, b)?;
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
    let guest = NewGuest { vmid, name: req.name.clone(), spec, pool: req.pool, actor: Some(caller.actor()) };
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

/// A guest boots from volumes the caller may read (`Datastore.Audit` or
/// `Datastore.AllocateSpace` on their storage, as Proxmox's ISO and snippet volumes), or,
/// for root@pam only, from host paths. Rights are checked before anything is looked up,
/// so the answer says nothing about files the caller may not see.
fn check_boot_files(
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

/// Commits a new desired power state, then lets the owning actor act on it inside a task.
async fn power_task(
    st: ApiState,
    caller: Caller,
    vmid: u32,
    kind: &'static str,
    desired: DesiredPower,
) -> Result<Json<Value>, ApiError> {
    let cluster = st.runtime.cluster().clone();
    let exists = cluster.read_linearizable(|s| s.guests.contains_key(&vmid)).await?;
    if !exists {
        return Err(ApiError::not_found(format!("guest {vmid} does not exist")));
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

async fn start_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    power_task(st, caller, vmid, "qmstart", DesiredPower::Running).await
}

async fn stop_vm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(vmid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let vmid = parse_vmid(&vmid)?;
    power_task(st, caller, vmid, "qmstop", DesiredPower::Stopped { graceful_timeout_s: None }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    /// How long the guest may take to power off before it is stopped hard.
    timeout_s: Option<u32>,
}

/// The power-off timeout of a shutdown or reboot body: default 60 s, at most a day.
pub(crate) fn power_off_timeout(body: &Bytes) -> Result<u32, ApiError> {
    let b: ShutdownBody = parse_body(body)?;
    let timeout = b.timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S);
    if timeout > 86_400 {
        return Err(ApiError::bad_field("timeout_s", "at most 86400 seconds"));
    }
    Ok(timeout)
}

async fn shutdown_vm(
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
struct MigrateBody {
    target: String,
}

/// Offline migration; answered by the owner (the request is forwarded there), whose guest
/// actor checks that the process is gone before committing the move.
async fn migrate_vm(
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

async fn delete_vm(
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
async fn serial_log(State(st): State<ApiState>, Path(vmid): Path<String>) -> Result<String, ApiError> {
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

async fn list_tasks(State(st): State<ApiState>) -> Json<Value> {
    let tasks: Vec<Value> = st
        .runtime
        .tasks()
        .list()
        .into_iter()
        .map(|mut t| {
            t.log.clear();
            let mut v = json!(t);
            v.as_object_mut().map(|o| o.remove("log"));
            v
        })
        .collect();
    Json(Value::Array(tasks))
}

async fn get_task(State(st): State<ApiState>, Path(upid): Path<String>) -> Result<Json<Value>, ApiError> {
    let t =
        st.runtime.tasks().get(&upid).ok_or_else(|| ApiError::not_found(format!("task {upid} not found")))?;
    let mut v = json!(t);
    v.as_object_mut().map(|o| o.remove("log"));
    Ok(Json(v))
}

async fn get_task_log(State(st): State<ApiState>, Path(upid): Path<String>) -> Result<Json<Value>, ApiError> {
    let t =
        st.runtime.tasks().get(&upid).ok_or_else(|| ApiError::not_found(format!("task {upid} not found")))?;
    // Proxmox's shape: [{"n": line number from 1, "t": text}].
    let lines: Vec<Value> = t.log.iter().enumerate().map(|(i, l)| json!({ "n": i + 1, "t": l })).collect();
    Ok(Json(Value::Array(lines)))
}

async fn next_id(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let id = st.runtime.cluster().read_linearizable(|s| s.next_vmid()).await?;
    let id = id.ok_or_else(|| ApiError::conflict("no free VMID left"))?;
    Ok(Json(json!({ "vmid": id })))
}

async fn list_nodes(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let nodes =
        st.runtime.cluster().read_linearizable(|s| json!(s.nodes.values().collect::<Vec<_>>())).await?;
    Ok(Json(nodes))
}

async fn list_storage(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let pools =
        st.runtime.cluster().read_linearizable(|s| json!(s.storage.values().collect::<Vec<_>>())).await?;
    Ok(Json(pools))
}

#[derive(Deserialize)]
struct ContentQuery {
    /// Whose disks to list (the request is carried to that member); default: this node.
    node: Option<String>,
    vmid: Option<u64>,
}

/// The guest images a storage holds on one node (Proxmox's storage content).
async fn storage_content(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(node) = q.node.filter(|n| n != st.runtime.cluster().node_name()) {
        return Err(ApiError::bad_field("node", format!("no cluster member is named {node:?}")));
    }
    let pool = st.runtime.cluster().read_linearizable(move |s| s.storage.get(&id).cloned()).await?;
    let pool = pool.ok_or_else(|| ApiError::not_found("no such storage"))?;
    let list = (st.runtime.volumes())(&pool).list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<Value> = list
        .into_iter()
        .filter(|v| q.vmid.is_none_or(|id| id == u64::from(v.vmid)))
        .map(|v| json!({ "volid": v.volid, "vmid": v.vmid, "format": v.format, "size": v.size, "used": v.used, "content": "images" }))
        .collect();
    Ok(Json(json!(items)))
}
