//! `/api/v1/cluster/ha/...`: HA resources, rules, the manager's status and placement.
//! Every change also needs the caller's rights over the guests it concerns (HA starts and
//! stops them: `VM.PowerMgmt`; rules and moves decide where they run: `VM.Migrate`), on top
//! of the route's own privilege. Status and placement are answered by the leader, where
//! the manager and the leases are (`forward.rs` carries them there).

pub mod arch;
pub mod compat;

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use horcrux_core::ha::lease::Liveness;
use horcrux_core::ha::manager;
use horcrux_core::ha::placement::Preference;
use horcrux_core::ha::resources::{self as res, HaOptions, HaResource, RequestedState, ServiceState};
use horcrux_core::ha::rules::{self, Rule, RuleKind};
use horcrux_core::{ClusterState, Command};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::authz::caller_privileges;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/cluster/ha/resources", get(list_resources).post(create_resource))
        .route("/cluster/ha/resources/{sid}", get(one_resource).put(update_resource).delete(delete_resource))
        .route("/cluster/ha/resources/{sid}/relocate", post(relocate))
        .route("/cluster/ha/resources/{sid}/migrate", post(migrate))
        .route("/cluster/ha/rules", get(list_rules).post(create_rule))
        .route("/cluster/ha/rules/{rule}", get(one_rule).put(update_rule).delete(delete_rule))
        .route("/cluster/ha/status", get(status))
        .route("/cluster/ha/placement", get(placement))
        .route("/cluster/ha/history", get(history))
}

/// Refuses unless the caller holds `privilege` on every guest an HA change touches.
async fn require_on_guests(
    st: &ApiState,
    caller: &Caller,
    privilege: &'static str,
    sids: impl IntoIterator<Item = String>,
) -> Result<(), ApiError> {
    let paths: Vec<String> =
        sids.into_iter().filter_map(|s| res::vmid_of(&s)).map(|v| format!("/vms/{v}")).collect();
    let who = caller.clone();
    let root = caller.user() == "root@pam" && !caller.privsep;
    let missing = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            paths.into_iter().find(|p| !caller_privileges(s, &who, p).contains(privilege))
        })
        .await?;
    match missing {
        Some(path) if !root => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("permission check failed: {} needs {privilege} on {path}", caller.token_id),
        )),
        _ => Ok(()),
    }
}

/// A config digest (Proxmox's `digest`: changes whenever the config does).
fn digest(v: &Value) -> String {
    horcrux_core::ids::sha256_hex(&v.to_string())[..40].to_string()
}

fn resource_config(r: &HaResource) -> Value {
    json!({
        "sid": r.sid,
        "type": r.sid.split(':').next().unwrap_or("vm"),
        "state": r.state.as_str(),
        "max_restart": r.max_restart,
        "max_relocate": r.max_relocate,
        "failback": r.failback,
        "comment": r.comment,
    })
}

fn resource_view(s: &ClusterState, r: &HaResource) -> Value {
    let mut v = resource_config(r);
    v["digest"] = json!(digest(&v));
    let node = res::vmid_of(&r.sid).and_then(|id| s.guests.get(&id)).map(|g| g.node.clone());
    v["node"] = json!(node);
    v["service"] = json!(r.service.as_str());
    v["failed_nodes"] = json!(r.failed_nodes);
    v["target"] = json!(r.target);
    v
}

async fn list_resources(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let list = st
        .runtime
        .cluster()
        .read_linearizable(|s| s.ha_resources.values().map(|r| resource_view(s, r)).collect::<Vec<_>>())
        .await?;
    Ok(Json(json!(list)))
}

fn sid_of(raw: &str) -> Result<String, ApiError> {
    Ok(res::normalize_sid("sid", raw)?)
}

async fn one_resource(State(st): State<ApiState>, Path(sid): Path<String>) -> Result<Json<Value>, ApiError> {
    let sid = sid_of(&sid)?;
    let v = st
        .runtime
        .cluster()
        .read_linearizable(move |s| s.ha_resources.get(&sid).map(|r| resource_view(s, r)))
        .await?;
    Ok(Json(v.ok_or_else(|| ApiError::not_found("no such HA resource"))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewResource {
    sid: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    max_restart: Option<u32>,
    #[serde(default)]
    max_relocate: Option<u32>,
    #[serde(default)]
    failback: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
    /// `vm` (Proxmox's `type`; only checked against the id).
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn requested(state: Option<&str>) -> Result<RequestedState, ApiError> {
    Ok(RequestedState::parse("state", state.unwrap_or("started"))?)
}

/// Admission control (`ha.tolerate`): refuses to make `sid` a started HA resource when the
/// cluster could not restart every started HA guest after losing any `N` nodes.
fn admit(s: &ClusterState, sid: &str, state: RequestedState) -> Result<(), ApiError> {
    let opts = HaOptions::from_options(&s.options);
    if opts.tolerate == 0 || state != RequestedState::Started {
        return Ok(());
    }
    match manager::check_tolerance(s, sid, opts.tolerate) {
        Ok(()) => Ok(()),
        Err(why) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("admission control (ha.tolerate={}): {why}", opts.tolerate),
        )),
    }
}

async fn create_resource(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: NewResource = parse_body(&body)?;
    let sid = sid_of(&r.sid)?;
    if let Some(k) = r.kind.as_deref().filter(|k| !sid.starts_with(&format!("{k}:"))) {
        return Err(ApiError::bad_field("type", format!("{k:?} does not match resource id {sid}")));
    }
    let state = requested(r.state.as_deref())?;
    require_on_guests(&st, &caller, "VM.PowerMgmt", [sid.clone()]).await?;
    let (s2, sid2) = (state, sid.clone());
    st.runtime.cluster().read_linearizable(move |s| admit(s, &sid2, s2)).await??;
    let cmd = Command::SetHaResource {
        sid: sid.clone(),
        create: true,
        state,
        max_restart: r.max_restart.unwrap_or(res::MAX_RESTART_DEFAULT),
        max_relocate: r.max_relocate.unwrap_or(res::MAX_RELOCATE_DEFAULT),
        failback: r.failback.unwrap_or(true),
        comment: r.comment.unwrap_or_default(),
    };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "sid": sid, "revision": ok.revision })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceChange {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    max_restart: Option<u32>,
    #[serde(default)]
    max_relocate: Option<u32>,
    #[serde(default)]
    failback: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
    /// Settings to reset to their defaults.
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

async fn update_resource(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c: ResourceChange = parse_body(&body)?;
    let sid = sid_of(&sid)?;
    require_on_guests(&st, &caller, "VM.PowerMgmt", [sid.clone()]).await?;
    let key = sid.clone();
    let current = st.runtime.cluster().read_linearizable(move |s| s.ha_resources.get(&key).cloned()).await?;
    let mut r = current.ok_or_else(|| ApiError::not_found("no such HA resource"))?;
    if let Some(d) = &c.digest {
        if *d != digest(&resource_config(&r)) {
            return Err(ApiError::bad_field("digest", "the resource was changed meanwhile; read it again"));
        }
    }
    for d in &c.delete {
        match d.as_str() {
            "state" => r.state = RequestedState::Started,
            "max_restart" => r.max_restart = res::MAX_RESTART_DEFAULT,
            "max_relocate" => r.max_relocate = res::MAX_RELOCATE_DEFAULT,
            "failback" => r.failback = true,
            "comment" => r.comment.clear(),
            other => return Err(ApiError::bad_field("delete", format!("{other:?} cannot be deleted"))),
        }
    }
    if let Some(s) = &c.state {
        r.state = requested(Some(s))?;
    }
    r.max_restart = c.max_restart.unwrap_or(r.max_restart);
    r.max_relocate = c.max_relocate.unwrap_or(r.max_relocate);
    r.failback = c.failback.unwrap_or(r.failback);
    if let Some(comment) = c.comment {
        r.comment = comment;
    }
    let (s2, sid2) = (r.state, sid.clone());
    st.runtime.cluster().read_linearizable(move |s| admit(s, &sid2, s2)).await??;
    let cmd = Command::SetHaResource {
        sid: sid.clone(),
        create: false,
        state: r.state,
        max_restart: r.max_restart,
        max_relocate: r.max_relocate,
        failback: r.failback,
        comment: r.comment,
    };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "sid": sid, "revision": ok.revision })))
}

async fn delete_resource(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sid = sid_of(&sid)?;
    require_on_guests(&st, &caller, "VM.PowerMgmt", [sid.clone()]).await?;
    st.propose_by(&caller, Command::DeleteHaResource { sid }).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveTo {
    node: String,
}

async fn move_resource(
    st: ApiState,
    caller: Caller,
    sid: String,
    body: Bytes,
    live: bool,
) -> Result<Json<Value>, ApiError> {
    let m: MoveTo = parse_body(&body)?;
    let sid = sid_of(&sid)?;
    horcrux_core::ids::validate_dns_label("node", &m.node)?;
    require_on_guests(&st, &caller, "VM.Migrate", [sid.clone()]).await?;
    let ok = st.propose_by(&caller, Command::HaMove { sid: sid.clone(), node: m.node.clone(), live }).await?;
    Ok(Json(json!({ "sid": sid, "node": m.node, "revision": ok.revision })))
}

async fn relocate(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    move_resource(st, caller, sid, body, false).await
}

/// Live migration is not built yet: a running guest moves as a relocation (stopped here,
/// started there).
async fn migrate(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    move_resource(st, caller, sid, body, true).await
}

/// A rule as the API shows it (Proxmox's field names and string forms).
pub(crate) fn rule_view(r: &Rule) -> Value {
    let mut v = json!({
        "rule": r.rule,
        "type": r.type_name(),
        "resources": rules::format_resources(&r.resources),
        "disable": r.disable,
        "comment": r.comment,
    });
    match &r.kind {
        RuleKind::NodeAffinity { nodes, strict } => {
            v["nodes"] = json!(rules::format_nodes(nodes));
            v["strict"] = json!(strict);
        }
        RuleKind::ResourceAffinity { positive } => {
            v["affinity"] = json!(if *positive { "positive" } else { "negative" });
        }
    }
    v["digest"] = json!(digest(&v));
    v
}

#[derive(Deserialize, Default)]
struct RuleFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    resource: Option<String>,
}

/// `GET /api/v1/cluster/ha/history`: the latest committed service-state changes and moves
/// of HA resources (the failover history), newest first.
async fn history(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let list = st
        .runtime
        .cluster()
        .read_linearizable(|s| s.ha_history.iter().rev().cloned().collect::<Vec<_>>())
        .await?;
    Ok(Json(serde_json::json!(list)))
}

async fn list_rules(
    State(st): State<ApiState>,
    Query(f): Query<RuleFilter>,
) -> Result<Json<Value>, ApiError> {
    let list = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            s.ha_rules
                .values()
                .filter(|r| f.kind.as_deref().is_none_or(|k| k == r.type_name()))
                .filter(|r| f.resource.as_deref().is_none_or(|sid| r.resources.contains(sid)))
                .enumerate()
                .map(|(i, r)| {
                    let mut v = rule_view(r);
                    v["order"] = json!(i + 1);
                    v
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(list)))
}

async fn one_rule(State(st): State<ApiState>, Path(rule): Path<String>) -> Result<Json<Value>, ApiError> {
    let v = st.runtime.cluster().read_linearizable(move |s| s.ha_rules.get(&rule).map(rule_view)).await?;
    Ok(Json(v.ok_or_else(|| ApiError::not_found("no such HA rule"))?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default)]
    rule: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    resources: Option<String>,
    #[serde(default)]
    nodes: Option<String>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    affinity: Option<String>,
    #[serde(default)]
    disable: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// `b` applied over `old` (a new rule when `None`).
fn build_rule(id: &str, b: RuleBody, old: Option<&Rule>) -> Result<Rule, ApiError> {
    let kind_name = b
        .kind
        .as_deref()
        .or(old.map(Rule::type_name))
        .ok_or_else(|| ApiError::bad_field("type", "property is missing"))?;
    if let (Some(o), Some(k)) = (old, b.kind.as_deref()) {
        if o.type_name() != k {
            return Err(ApiError::bad_field("type", "the type of a rule cannot change"));
        }
    }
    for d in &b.delete {
        if !matches!(d.as_str(), "comment" | "disable" | "strict" | "nodes" | "affinity") {
            return Err(ApiError::bad_field("delete", format!("{d:?} cannot be deleted")));
        }
    }
    let deleted = |f: &str| b.delete.iter().any(|d| d == f);
    let resources = match (&b.resources, old) {
        (Some(r), _) => rules::parse_resources("resources", r)?,
        (None, Some(o)) => o.resources.clone(),
        (None, None) => return Err(ApiError::bad_field("resources", "no resources were specified")),
    };
    let kind = match kind_name {
        "node-affinity" => {
            if b.affinity.is_some() {
                return Err(ApiError::bad_field("affinity", "only for resource-affinity rules"));
            }
            let (old_nodes, old_strict) = match old.map(|o| &o.kind) {
                Some(RuleKind::NodeAffinity { nodes, strict }) => (Some(nodes.clone()), *strict),
                _ => (None, false),
            };
            let nodes = match &b.nodes {
                Some(n) => rules::parse_nodes("nodes", n)?,
                None => old_nodes.ok_or_else(|| ApiError::bad_field("nodes", "no nodes were specified"))?,
            };
            let strict = if deleted("strict") { false } else { b.strict.unwrap_or(old_strict) };
            RuleKind::NodeAffinity { nodes, strict }
        }
        "resource-affinity" => {
            if b.nodes.is_some() || b.strict.is_some() {
                return Err(ApiError::bad_field(
                    if b.nodes.is_some() { "nodes" } else { "strict" },
                    "only for node-affinity rules",
                ));
            }
            let positive = match (b.affinity.as_deref(), old.map(|o| &o.kind)) {
                (Some("positive"), _) => true,
                (Some("negative"), _) => false,
                (Some(other), _) => {
                    return Err(ApiError::bad_field("affinity", format!("{other:?}: positive or negative")))
                }
                (None, Some(RuleKind::ResourceAffinity { positive })) => *positive,
                (None, _) => return Err(ApiError::bad_field("affinity", "property is missing")),
            };
            RuleKind::ResourceAffinity { positive }
        }
        other => {
            return Err(ApiError::bad_field("type", format!("{other:?}: node-affinity or resource-affinity")))
        }
    };
    let disable =
        if deleted("disable") { false } else { b.disable.or(old.map(|o| o.disable)).unwrap_or(false) };
    let comment = if deleted("comment") {
        String::new()
    } else {
        b.comment.or(old.map(|o| o.comment.clone())).unwrap_or_default()
    };
    Ok(Rule { rule: id.to_string(), kind, resources, disable, comment })
}

async fn create_rule(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RuleBody = parse_body(&body)?;
    let id = b.rule.clone().ok_or_else(|| ApiError::bad_field("rule", "property is missing"))?;
    rules::validate_rule_id("rule", &id)?;
    if !b.delete.is_empty() || b.digest.is_some() {
        return Err(ApiError::bad_field("delete", "only when changing a rule"));
    }
    let rule = build_rule(&id, b, None)?;
    require_on_guests(&st, &caller, "VM.Migrate", rule.resources.iter().cloned()).await?;
    let ok = st.propose_by(&caller, Command::SetHaRule { create: true, rule }).await?;
    Ok(Json(json!({ "rule": id, "revision": ok.revision })))
}

async fn update_rule(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RuleBody = parse_body(&body)?;
    if b.rule.as_deref().is_some_and(|r| r != id) {
        return Err(ApiError::bad_field("rule", "a rule cannot be renamed"));
    }
    let key = id.clone();
    let old = st.runtime.cluster().read_linearizable(move |s| s.ha_rules.get(&key).cloned()).await?;
    let old = old.ok_or_else(|| ApiError::not_found("no such HA rule"))?;
    if let Some(d) = &b.digest {
        if *d != rule_view(&old)["digest"] {
            return Err(ApiError::bad_field("digest", "the rule was changed meanwhile; read it again"));
        }
    }
    let rule = build_rule(&id, b, Some(&old))?;
    let touched: BTreeSet<String> = rule.resources.union(&old.resources).cloned().collect();
    require_on_guests(&st, &caller, "VM.Migrate", touched).await?;
    let ok = st.propose_by(&caller, Command::SetHaRule { create: false, rule }).await?;
    Ok(Json(json!({ "rule": id, "revision": ok.revision })))
}

async fn delete_rule(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    let old = st.runtime.cluster().read_linearizable(move |s| s.ha_rules.get(&key).cloned()).await?;
    let old = old.ok_or_else(|| ApiError::not_found("no such HA rule"))?;
    require_on_guests(&st, &caller, "VM.Migrate", old.resources.iter().cloned()).await?;
    st.propose_by(&caller, Command::DeleteHaRule { rule: id }).await?;
    Ok(Json(json!({})))
}

/// The manager's view, from the leader's lease table.
pub(crate) fn ha_status(st: &ApiState) -> Result<Value, ApiError> {
    let cluster = st.runtime.cluster();
    let table = cluster.lease_table().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA manager runs on the leader, and no leader is known",
        )
    })?;
    let quorate = cluster.cluster_status().quorate;
    let now = horcrux_raft::monotonic_ms();
    let v = cluster.read_local(|s| {
        let o = HaOptions::from_options(&s.options);
        let nodes: Vec<Value> = s
            .nodes
            .keys()
            .map(|n| {
                let live = table.liveness(n, now, &o);
                let fencing = s.ha_resources.values().any(|r| {
                    matches!(r.service, ServiceState::Fence | ServiceState::Recovery)
                        && res::vmid_of(&r.sid).and_then(|v| s.guests.get(&v)).is_some_and(|g| g.node == *n)
                });
                let (state, remaining) = match live {
                    Liveness::Online { remaining_ms } => ("online", remaining_ms),
                    Liveness::Failed if fencing => ("fence", 0),
                    _ => ("unknown", 0),
                };
                json!({ "name": n, "state": state, "lease_remaining_ms": remaining })
            })
            .collect();
        let resources: Vec<Value> = s
            .ha_resources
            .values()
            .map(|r| {
                let node = res::vmid_of(&r.sid).and_then(|v| s.guests.get(&v)).map(|g| g.node.clone());
                json!({
                    "sid": r.sid,
                    "node": node,
                    "state": r.service.as_str(),
                    "request_state": r.state.as_str(),
                    "failed_nodes": r.failed_nodes,
                    "max_restart": r.max_restart,
                    "max_relocate": r.max_relocate,
                    "target": r.target,
                })
            })
            .collect();
        json!({
            "quorate": quorate,
            "manager": { "node": cluster.node_name(), "term": table.term },
            "lease_ms": o.lease_ms,
            "margin_ms": o.margin_ms,
            "nodes": nodes,
            "resources": resources,
        })
    });
    Ok(v)
}

async fn status(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(ha_status(&st)?))
}

#[derive(Deserialize)]
struct PlacementQuery {
    sid: String,
}

/// Where the manager would place the resource now (recovery's choice: the best-scored
/// node), with the explanation.
async fn placement(
    State(st): State<ApiState>,
    Query(q): Query<PlacementQuery>,
) -> Result<Json<Value>, ApiError> {
    let sid = sid_of(&q.sid)?;
    let cluster = st.runtime.cluster();
    let table = cluster.lease_table().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "placement is answered by the leader, and no leader is known",
        )
    })?;
    let now = horcrux_raft::monotonic_ms();
    let d = cluster.read_local(|s| {
        let o = HaOptions::from_options(&s.options);
        let current = res::vmid_of(&sid).and_then(|v| s.guests.get(&v)).map(|g| g.node.clone());
        manager::decide(s, &sid, Preference::BestScore, &|n| table.liveness(n, now, &o)).map(|d| (d, current))
    });
    let (d, current) = d.ok_or_else(|| ApiError::not_found("no such HA resource"))?;
    Ok(Json(json!({ "sid": sid, "current": current, "node": d.node, "explanation": d.explanation })))
}
