//! `GET /api/v1/events`: live changes as server-sent events, so the UI need not poll.
//!
//! Each subscriber is watched with its own credentials: the lists it would read itself
//! (`cluster/resources`, `cluster/tasks`, `cluster/ha/status/current`) are rebuilt when a
//! committed entry changes guests and every two seconds, and what changed is sent. So
//! authorization is applied per event exactly as on the routes: a guest the caller may not
//! audit never appears, and one whose right is revoked is `removed`.
//!
//! Events: `resource` (a `cluster/resources` entry, on any change but the live figures,
//! whose changes are sent every ten seconds), `removed` (`{"id"}`), `task` (a task entry
//! when it appears or its status changes), `ha` (a `cluster/ha/status/current` entry), and
//! `hello` first (`{"node"}`). A comment line every 15 s keeps proxies from closing it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::state::ApiState;

const TICK: Duration = Duration::from_secs(2);
const LIVE_EVERY: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The fields of a resource entry that change with every sample.
const LIVE: &[&str] = &["cpu", "mem", "disk", "netin", "netout", "diskread", "diskwrite", "uptime"];

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// An entry without its live figures: what decides whether it changed.
fn steady(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(o) = e.as_object_mut() {
        for k in LIVE {
            o.remove(*k);
        }
    }
    e
}

/// An HA entry without the figures its text carries (a lease's milliseconds left).
fn steady_ha(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(text) = e["status"].as_str() {
        e["status"] = json!(text.chars().filter(|c| !c.is_ascii_digit()).collect::<String>());
    }
    e
}

/// The `data` of a compat answer, or `None` (the caller's access ended).
async fn data_of(resp: Response) -> Option<Vec<Value>> {
    if !resp.status().is_success() {
        return None;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024).await.ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["data"].as_array().cloned()
}

/// What one subscriber has been sent.
#[derive(Default)]
struct Seen {
    resources: BTreeMap<String, Value>,
    tasks: BTreeMap<String, Value>,
    ha: BTreeMap<String, Value>,
}

/// With `Accept: text/event-stream` (as `EventSource` sends) the stream; otherwise one JSON
/// array of what a new subscriber is sent first (`[{"event", "data"}]`), for clients that
/// want a snapshot of the same shape.
pub async fn events(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let node = st.runtime.cluster().node_name().to_string();
    let hello = ("hello".to_string(), json!({ "node": node }));
    if !wants_stream {
        let mut seen = Seen::default();
        return match round(&st, &headers, &mut seen, true, true).await {
            Some(evs) => {
                let all: Vec<Value> = std::iter::once(hello)
                    .chain(evs)
                    .map(|(e, d)| json!({ "event": e, "data": d }))
                    .collect();
                axum::Json(Value::Array(all)).into_response()
            }
            None => crate::error::ApiError::new(StatusCode::UNAUTHORIZED, "authentication required")
                .into_response(),
        };
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let _ = tx.try_send(frame(&hello.0, &hello.1));
    tokio::spawn(watch(st, headers, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn watch(st: ApiState, headers: HeaderMap, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut seen = Seen::default();
    let mut changes = st.runtime.cluster().subscribe_guest_changes();
    let (mut last_live, mut last_keepalive) = (Instant::now(), Instant::now());
    let mut first = true;
    loop {
        let send_live = first || last_live.elapsed() >= LIVE_EVERY;
        let Some(events) = round(&st, &headers, &mut seen, first, send_live).await else {
            let _ = tx.send(frame("error", &json!({ "message": "access ended: log in again" }))).await;
            return;
        };
        if send_live {
            last_live = Instant::now();
        }
        let mut out: Vec<Bytes> = events.iter().map(|(e, d)| frame(e, d)).collect();
        if out.is_empty() && last_keepalive.elapsed() >= KEEPALIVE {
            out.push(Bytes::from_static(b": keepalive\n\n"));
        }
        for b in out {
            if tx.send(b).await.is_err() {
                return;
            }
            last_keepalive = Instant::now();
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            r = changes.changed() => if r.is_err() { tokio::time::sleep(TICK).await },
            _ = tx.closed() => return,
        }
    }
}

/// One look at the lists: the events since `seen` (updated); `None` once the caller's
/// credentials are refused.
async fn round(
    st: &ApiState,
    headers: &HeaderMap,
    seen: &mut Seen,
    first: bool,
    send_live: bool,
) -> Option<Vec<(String, Value)>> {
    let mut out = Vec::new();
    // Resources: new or changed entries, and those gone. A refusal other than of the
    // credentials (a caller who may list no guests) leaves them as they were.
    let list = match crate::cluster::compat::resources(st, headers, None).await {
        Ok(l) => Some(l),
        Err(r) if r.status() == StatusCode::UNAUTHORIZED => return None,
        Err(_) => None,
    };
    if let Some(list) = list {
        let mut now: BTreeMap<String, Value> = BTreeMap::new();
        for e in list {
            if let Some(id) = e["id"].as_str() {
                now.insert(id.to_string(), e);
            }
        }
        for (id, e) in &now {
            let changed = seen.resources.get(id).is_none_or(|old| steady(old) != steady(e));
            let live_changed = seen.resources.get(id).is_some_and(|old| old != e);
            if changed || (send_live && live_changed) {
                out.push(("resource".to_string(), e.clone()));
                seen.resources.insert(id.clone(), e.clone());
            }
        }
        for id in seen.resources.keys().filter(|id| !now.contains_key(*id)) {
            out.push(("removed".to_string(), json!({ "id": id })));
        }
        seen.resources.retain(|id, _| now.contains_key(id));
    }
    // Tasks: the cluster's recent ones; each new one, and each change of status (the
    // first look only remembers them: a new subscriber reads the list itself).
    let tasks = crate::nodes::compat::tasks_of_members(st, headers).await;
    seen.tasks.retain(|upid, _| tasks.iter().any(|t| t["upid"] == upid.as_str()));
    for t in tasks {
        let Some(upid) = t["upid"].as_str().map(str::to_string) else { continue };
        if seen.tasks.get(&upid) != Some(&t) {
            if !first {
                out.push(("task".to_string(), t.clone()));
            }
            seen.tasks.insert(upid, t);
        }
    }
    // HA: the status entries (quorum, manager, nodes, services).
    let ha = crate::ha::compat::ha_status_current(State(st.clone()), headers.clone()).await;
    for e in data_of(ha).await.unwrap_or_default() {
        let Some(id) = e["id"].as_str().map(str::to_string) else { continue };
        if seen.ha.get(&id).map(steady_ha) != Some(steady_ha(&e)) {
            out.push(("ha".to_string(), e.clone()));
            seen.ha.insert(id, e);
        }
    }
    Some(out)
}
