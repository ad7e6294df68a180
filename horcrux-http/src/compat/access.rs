//! `/api2/json/access/...`: users, tokens, groups, roles, ACL entries, permissions.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::{answer, error, flag, int_param, native, ok, params, query};
use crate::routes::ApiState;

/// A user as Proxmox lists one: `groups` as a comma-separated list, `enable` as 0/1.
fn user_entry(u: &Value) -> Value {
    let mut u = u.clone();
    if let Some(g) = u["groups"].as_array() {
        let list: Vec<&str> = g.iter().filter_map(Value::as_str).collect();
        u["groups"] = json!(list.join(","));
    }
    if let Some(e) = u["enable"].as_bool() {
        u["enable"] = json!(u8::from(e));
    }
    u
}

/// `enabled` filters on the flag; `full` adds the tokens (Horcrux always lists groups).
pub(super) async fn access_users(
    State(st): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let (enabled, full) = match (flag(&q, "enabled"), flag(&q, "full")) {
        (Ok(e), Ok(f)) => (e, f.unwrap_or(false)),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/users", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| enabled.is_none_or(|e| u["enable"].as_bool().unwrap_or(true) == e))
            .map(|u| {
                let mut e = user_entry(u);
                match (full, e.as_object_mut()) {
                    (true, Some(o)) => {
                        let tokens: Vec<Value> = o
                            .get("tokens")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .map(|t| {
                                let mut i = token_info(t);
                                i["tokenid"] = t["tokenid"].clone();
                                i
                            })
                            .collect();
                        o.insert("tokens".into(), json!(tokens));
                    }
                    (false, Some(o)) => {
                        o.remove("tokens");
                    }
                    _ => {}
                }
                e
            })
            .collect();
        json!(list)
    })
}

pub(super) async fn access_create_user(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(userid) = p.get("userid").cloned() else {
        return error(StatusCode::BAD_REQUEST, "userid", "property is missing and it is not optional");
    };
    let groups: Vec<&str> =
        p.get("groups").map(|g| g.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let expire = match int_param(&p, "expire") {
        Ok(e) => e.unwrap_or(0),
        Err(e) => return e,
    };
    let req = json!({ "userid": userid, "comment": p.get("comment").cloned().unwrap_or_default(), "groups": groups, "expire": expire });
    let (status, v, _) = native(&st, &headers, Method::POST, "/access/users", Some(req)).await;
    if !status.is_success() {
        return answer(status, v, |v| v);
    }
    if p.contains_key("email") || p.contains_key("enable") {
        let change = match user_change(&p) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let path = format!("/access/users/{userid}");
        let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(change)).await;
        if !status.is_success() {
            return answer(status, v, |v| v);
        }
    }
    if let Some(pw) = p.get("password") {
        let req = json!({ "userid": userid, "password": pw });
        let (status, v, _) = native(&st, &headers, Method::PUT, "/access/password", Some(req)).await;
        return answer(status, v, |_| Value::Null);
    }
    ok(Value::Null)
}

pub(super) async fn access_token(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path((userid, tokenid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (privsep, expire) = match (flag(&p, "privsep"), int_param(&p, "expire")) {
        (Ok(s), Ok(e)) => (s.unwrap_or(true), e.unwrap_or(0)),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let path = format!("/access/users/{userid}/token/{tokenid}");
    let (status, v, _) =
        native(&st, &headers, Method::POST, &path, Some(json!({ "privsep": privsep, "expire": expire })))
            .await;
    answer(status, v, |v| v)
}

pub(super) async fn access_acl(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/acl", None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| json!({ "path": e["path"], "roleid": e["role"], "type": e["ugid"]["type"], "ugid": e["ugid"]["id"], "propagate": u8::from(e["propagate"] == true) }))
                    .collect()
            })
            .unwrap_or_default();
        json!(list)
    })
}

/// Proxmox's form: `path`, `roles` (list), `users`/`groups`/`tokens` (lists), `propagate`,
/// `delete`; each (role, subject) pair becomes one native change.
pub(super) async fn access_set_acl(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let list = |k: &str| list(&p, k).unwrap_or_default();
    let Some(path) = p.get("path").cloned() else {
        return error(StatusCode::BAD_REQUEST, "path", "property is missing and it is not optional");
    };
    let roles = list("roles");
    if roles.is_empty() {
        return error(StatusCode::BAD_REQUEST, "roles", "property is missing and it is not optional");
    }
    let (propagate, delete) = match (flag(&p, "propagate"), flag(&p, "delete")) {
        (Ok(pr), Ok(d)) => (pr.unwrap_or(true), d.unwrap_or(false)),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut subjects = Vec::new();
    for (key, kind) in [("users", "user"), ("groups", "group"), ("tokens", "token")] {
        subjects.extend(list(key).into_iter().map(|s| (kind, s)));
    }
    if subjects.is_empty() {
        return error(StatusCode::BAD_REQUEST, "users", "give users, groups or tokens");
    }
    for role in &roles {
        for (kind, who) in &subjects {
            let req = json!({ "path": path, "role": role, kind.to_string(): who, "propagate": propagate, "delete": delete });
            let (status, v, _) = native(&st, &headers, Method::PUT, "/access/acl", Some(req)).await;
            if !status.is_success() {
                return answer(status, v, |v| v);
            }
        }
    }
    ok(Value::Null)
}

pub(super) async fn access_roles(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/roles", None).await;
    answer(status, v, |v| v)
}

pub(super) async fn access_permissions(
    State(st): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let path = match q.get("path") {
        Some(p) => format!(
            "/access/permissions?path={}",
            serde_urlencoded::to_string([("p", p)]).unwrap_or_default().trim_start_matches("p=")
        ),
        None => "/access/permissions".to_string(),
    };
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

fn list(p: &std::collections::BTreeMap<String, String>, k: &str) -> Option<Vec<String>> {
    p.get(k).map(|v| v.split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// The native body of a user change from Proxmox's parameters.
fn user_change(p: &std::collections::BTreeMap<String, String>) -> Result<Value, Response> {
    let mut change = serde_json::Map::new();
    for k in ["comment", "email"] {
        if let Some(v) = p.get(k) {
            change.insert(k.into(), json!(v));
        }
    }
    if let Some(g) = list(p, "groups") {
        change.insert("groups".into(), json!(g));
    }
    if let Some(e) = int_param(p, "expire")? {
        change.insert("expire".into(), json!(e));
    }
    if let Some(e) = flag(p, "enable")? {
        change.insert("enable".into(), json!(e));
    }
    if flag(p, "append")? == Some(true) {
        change.insert("append".into(), json!(true));
    }
    Ok(Value::Object(change))
}

pub(super) async fn access_user(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(userid): Path<String>,
    body: Bytes,
) -> Response {
    let path = format!("/access/users/{userid}");
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
            answer(status, v, |mut v| {
                // One user: `groups` stays an array (the list has a comma-separated string).
                if let Some(e) = v["enable"].as_bool() {
                    v["enable"] = json!(u8::from(e));
                }
                // Proxmox's answer has exactly its documented keys.
                if let Some(o) = v.as_object_mut() {
                    o.remove("userid");
                    o.remove("tfa");
                }
                let tokens: serde_json::Map<String, Value> = v["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| (t["tokenid"].as_str().unwrap_or_default().to_string(), token_info(t)))
                    .collect();
                v["tokens"] = Value::Object(tokens);
                v
            })
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let change = match user_change(&p) {
                Ok(c) => c,
                Err(e) => return e,
            };
            let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(change)).await;
            answer(status, v, |_| Value::Null)
        }
        _ => {
            let (status, v, _) = native(&st, &headers, Method::DELETE, &path, None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}

fn token_info(t: &Value) -> Value {
    json!({ "privsep": u8::from(t["privsep"] == true), "expire": t["expire"] })
}

pub(super) async fn access_token_list(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Path(userid): Path<String>,
) -> Response {
    let (status, v, _) =
        native(&st, &headers, Method::GET, &format!("/access/users/{userid}/token"), None).await;
    answer(status, v, |v| {
        let list: Vec<Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let mut i = token_info(t);
                i["tokenid"] = t["tokenid"].clone();
                i
            })
            .collect();
        json!(list)
    })
}

pub(super) async fn access_token_read_delete(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path((userid, tokenid)): Path<(String, String)>,
) -> Response {
    let path = format!("/access/users/{userid}/token/{tokenid}");
    let get = method == Method::GET;
    let (status, v, _) = native(&st, &headers, method, &path, None).await;
    answer(status, v, |v| if get { token_info(&v) } else { Value::Null })
}

pub(super) async fn access_create_role(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(roleid) = p.get("roleid") else {
        return error(StatusCode::BAD_REQUEST, "roleid", "property is missing and it is not optional");
    };
    let req = json!({ "roleid": roleid, "privs": list(&p, "privs").unwrap_or_default() });
    let (status, v, _) = native(&st, &headers, Method::POST, "/access/roles", Some(req)).await;
    answer(status, v, |_| Value::Null)
}

pub(super) async fn access_role(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(roleid): Path<String>,
    body: Bytes,
) -> Response {
    let path = format!("/access/roles/{roleid}");
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
            // Proxmox answers a map privilege -> 1.
            answer(status, v, |v| {
                let privs = v["privs"].as_str().unwrap_or_default();
                let map: serde_json::Map<String, Value> =
                    privs.split(',').filter(|p| !p.is_empty()).map(|p| (p.to_string(), json!(1))).collect();
                Value::Object(map)
            })
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let append = match flag(&p, "append") {
                Ok(a) => a.unwrap_or(false),
                Err(e) => return e,
            };
            let req = json!({ "privs": list(&p, "privs").unwrap_or_default(), "append": append });
            let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(req)).await;
            answer(status, v, |_| Value::Null)
        }
        _ => {
            let (status, v, _) = native(&st, &headers, Method::DELETE, &path, None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}

pub(super) async fn access_groups(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        let (status, v, _) = native(&st, &headers, Method::GET, "/access/groups", None).await;
        return answer(status, v, |v| v);
    }
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let Some(groupid) = p.get("groupid") else {
        return error(StatusCode::BAD_REQUEST, "groupid", "property is missing and it is not optional");
    };
    let req = json!({ "groupid": groupid, "comment": p.get("comment").cloned().unwrap_or_default() });
    let (status, v, _) = native(&st, &headers, Method::POST, "/access/groups", Some(req)).await;
    answer(status, v, |_| Value::Null)
}

pub(super) async fn access_group(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(groupid): Path<String>,
) -> Response {
    let get = method == Method::GET;
    let (status, v, _) = native(&st, &headers, method, &format!("/access/groups/{groupid}"), None).await;
    answer(status, v, |mut v| {
        if !get {
            return Value::Null;
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("groupid");
        }
        v
    })
}

/// A pool's members as Proxmox lists them (`qemu/100`, `storage/NODE/ID`).
fn pool_members(st: &ApiState, p: &Value) -> Vec<Value> {
    let node = st.runtime.cluster().node_name().to_string();
    let vms = p["vms"].as_array().into_iter().flatten().map(|g| {
        json!({ "id": format!("qemu/{}", g["vmid"]), "type": "qemu", "vmid": g["vmid"], "name": g["name"], "node": g["node"] })
    });
    let storage = p["storage"].as_array().into_iter().flatten().map(|s| {
        let id = s.as_str().unwrap_or_default();
        json!({ "id": format!("storage/{node}/{id}"), "type": "storage", "storage": id, "node": node })
    });
    vms.chain(storage).collect()
}

/// `GET /pools` (with `poolid`: that pool with its members, PVE 8's form), `POST /pools`,
/// `PUT /pools` (PVE 8's form with `poolid` as a parameter).
pub(super) async fn pools(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let wanted = query(&uri).get("poolid").cloned();
            let (status, v, _) = native(&st, &headers, Method::GET, "/pools", None).await;
            answer(status, v, |v| {
                let list: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| wanted.as_deref().is_none_or(|w| p["poolid"] == w))
                    .map(|p| {
                        let mut out = json!({ "poolid": p["poolid"], "comment": p["comment"] });
                        if wanted.is_some() {
                            out["members"] = json!(pool_members(&st, p));
                        }
                        out
                    })
                    .collect();
                json!(list)
            })
        }
        _ => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let Some(poolid) = p.get("poolid").cloned() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "poolid",
                    "property is missing and it is not optional",
                );
            };
            if method == Method::POST {
                let req =
                    json!({ "poolid": poolid, "comment": p.get("comment").cloned().unwrap_or_default() });
                let (status, v, _) = native(&st, &headers, Method::POST, "/pools", Some(req)).await;
                return answer(status, v, |_| Value::Null);
            }
            update_pool(&st, &headers, &poolid, &p).await
        }
    }
}

async fn update_pool(
    st: &ApiState,
    headers: &HeaderMap,
    poolid: &str,
    p: &std::collections::BTreeMap<String, String>,
) -> Response {
    let mut vms = Vec::new();
    for v in list(p, "vms").unwrap_or_default() {
        match v.parse::<u32>() {
            Ok(n) => vms.push(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "vms", &format!("{v:?} is not a VMID")),
        }
    }
    let delete = match flag(p, "delete") {
        Ok(d) => d.unwrap_or(false),
        Err(e) => return e,
    };
    let mut req = json!({ "vms": vms, "storage": list(p, "storage").unwrap_or_default(), "delete": delete });
    if let Some(c) = p.get("comment") {
        req["comment"] = json!(c);
    }
    let (status, v, _) = native(st, headers, Method::PUT, &format!("/pools/{poolid}"), Some(req)).await;
    answer(status, v, |_| Value::Null)
}

/// The older per-pool form: `GET|PUT|DELETE /pools/{poolid}`.
pub(super) async fn pool(
    State(st): State<ApiState>,
    headers: HeaderMap,
    method: Method,
    Path(poolid): Path<String>,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let (status, v, _) = native(&st, &headers, Method::GET, &format!("/pools/{poolid}"), None).await;
            answer(status, v, |p| json!({ "comment": p["comment"], "members": pool_members(&st, &p) }))
        }
        Method::PUT => {
            let p = match params(&headers, &body) {
                Ok(p) => p,
                Err(e) => return e,
            };
            update_pool(&st, &headers, &poolid, &p).await
        }
        _ => {
            let (status, v, _) =
                native(&st, &headers, Method::DELETE, &format!("/pools/{poolid}"), None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}
