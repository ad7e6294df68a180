//! Metrics: `rrddata` of the node, a guest and a storage, natively and as Proxmox's
//! `/nodes/{node}/{rrddata,qemu/{vmid}/rrddata,storage/{storage}/rrddata}`. The figures
//! are the owning node's (its durable round-robin files); requests about another node's
//! objects are carried there by the forwarding layer.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::Json;
use horcrux_actors::metrics::{self, rrd::Cf, Series};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::pve::*;
use crate::state::ApiState;

#[derive(Deserialize)]
pub(crate) struct RrdQuery {
    timeframe: Option<String>,
    cf: Option<String>,
    /// The node whose figures of a storage are asked for (the forwarding layer's).
    #[allow(dead_code)]
    node: Option<String>,
}

impl RrdQuery {
    fn parse(&self) -> Result<((usize, u64), Cf), ApiError> {
        let tf = self
            .timeframe
            .as_deref()
            .ok_or_else(|| ApiError::bad_field("timeframe", "property is missing and it is not optional"))?;
        let tf = metrics::timeframe(tf).ok_or_else(|| {
            ApiError::bad_field(
                "timeframe",
                format!("value {tf:?} is not one of hour, day, week, month, year, decade"),
            )
        })?;
        let cf = match self.cf.as_deref() {
            None | Some("AVERAGE") => Cf::Average,
            Some("MAX") => Cf::Max,
            Some(other) => {
                return Err(ApiError::bad_field("cf", format!("value {other:?} is not one of AVERAGE, MAX")))
            }
        };
        Ok((tf, cf))
    }
}

fn series(st: &ApiState, s: &Series, q: &RrdQuery) -> Result<Json<Value>, ApiError> {
    let (tf, cf) = q.parse()?;
    let Some(store) = st.runtime.metrics() else { return Ok(Json(Value::Array(Vec::new()))) };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let rows = store.rrddata(s, tf, cf, now).map_err(|e| ApiError::internal(format!("metrics: {e}")))?;
    Ok(Json(Value::Array(rows)))
}

/// `GET /nodes/{node}/rrddata?timeframe=&cf=`: the node's load, CPU, memory, disk, network.
pub async fn node_rrddata(
    State(st): State<ApiState>,
    Path(node): Path<String>,
    Query(q): Query<RrdQuery>,
) -> Result<Json<Value>, ApiError> {
    super::this_node(&st, &node)?;
    series(&st, &Series::Node, &q)
}

/// `GET /vms/{vmid}/rrddata?timeframe=&cf=`: a guest's CPU, memory, disk and network.
pub async fn vm_rrddata(
    State(st): State<ApiState>,
    Path(vmid): Path<u32>,
    Query(q): Query<RrdQuery>,
) -> Result<Json<Value>, ApiError> {
    if !st.runtime.cluster().read_local(|s| s.guests.contains_key(&vmid)) {
        return Err(ApiError::not_found(format!("guest {vmid} does not exist")));
    }
    series(&st, &Series::Guest(vmid), &q)
}

/// `GET /storage/{id}/rrddata?timeframe=&cf=[&node=]`: a storage's size and use here.
pub async fn storage_rrddata(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<RrdQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    if !st.runtime.cluster().read_local(move |s| s.storage.contains_key(&key)) {
        return Err(ApiError::not_found("no such storage"));
    }
    series(&st, &Series::Storage(id), &q)
}

/// `GET /nodes/{node}/metrics/current`: the node's latest reading, and of each guest it
/// runs that the caller may audit its latest reading with its totals since start
/// (`netin`/`netout`/`diskread`/`diskwrite` in bytes, `cputime` in seconds), and of each
/// storage. What `cluster/resources` reads from every member.
pub async fn current(
    State(st): State<ApiState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::this_node(&st, &node)?;
    let Some(store) = st.runtime.metrics() else { return Ok(Json(serde_json::json!({}))) };
    let me = node.clone();
    let (guests, storages): (Vec<u32>, Vec<String>) = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            let guests = s
                .guests
                .values()
                .filter(|g| g.node == me)
                .filter(|g| {
                    crate::authz::caller_privileges(s, &caller, &format!("/vms/{}", g.vmid))
                        .contains("VM.Audit")
                })
                .map(|g| g.vmid)
                .collect();
            let storages = s
                .storage
                .keys()
                .filter(|id| {
                    crate::authz::caller_privileges(s, &caller, &format!("/storage/{id}"))
                        .contains("Datastore.Audit")
                })
                .cloned()
                .collect();
            (guests, storages)
        })
        .await?;
    let object = |m: std::collections::HashMap<&'static str, f64>| -> serde_json::Map<String, Value> {
        m.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect()
    };
    let mut out = serde_json::Map::new();
    if let Some(n) = store.latest(&Series::Node) {
        let mut n = object(n);
        if let Some(u) = store.uptime(&Series::Node) {
            n.insert("uptime".into(), u.into());
        }
        out.insert("node".into(), Value::Object(n));
    }
    let mut gs = serde_json::Map::new();
    for vmid in guests {
        let mut g = store.latest(&Series::Guest(vmid)).map(object).unwrap_or_default();
        if let Some(u) = store.uptime(&Series::Guest(vmid)) {
            g.insert("uptime".into(), u.into());
        }
        if let Some(t) = store.totals(vmid) {
            for (k, v) in [
                ("netin", t.net.0 as f64),
                ("netout", t.net.1 as f64),
                ("diskread", t.disk.0 as f64),
                ("diskwrite", t.disk.1 as f64),
                ("cputime", t.cpu_secs),
            ] {
                g.insert(format!("{k}_total"), v.into());
            }
        }
        gs.insert(vmid.to_string(), Value::Object(g));
    }
    out.insert("guests".into(), Value::Object(gs));
    let mut ss = serde_json::Map::new();
    for id in storages {
        if let Some(s) = store.latest(&Series::Storage(id.clone())) {
            ss.insert(id, Value::Object(object(s)));
        }
    }
    out.insert("storages".into(), Value::Object(ss));
    Ok(Json(Value::Object(out)))
}

fn passed_query(uri: &axum::http::Uri) -> String {
    uri.query().unwrap_or("").to_string()
}

/// `GET /api2/json/nodes/{node}/rrddata`.
pub(crate) async fn compat_node(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let path = format!("/nodes/{}/rrddata?{}", form_escape(&node), passed_query(&uri));
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

/// `GET /api2/json/nodes/{node}/qemu/{vmid}/rrddata`.
pub(crate) async fn compat_qemu(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((_node, vmid)): Path<(String, u32)>,
    uri: axum::http::Uri,
) -> Response {
    let path = format!("/vms/{vmid}/rrddata?{}", passed_query(&uri));
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

/// `GET /api2/json/nodes/{node}/storage/{storage}/rrddata`.
pub(crate) async fn compat_storage(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((node, storage)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let path = format!(
        "/storage/{}/rrddata?node={}&{}",
        form_escape(&storage),
        form_escape(&node),
        passed_query(&uri)
    );
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}
