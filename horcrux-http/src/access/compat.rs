//! `/api2/json/access/...`: users, tokens, groups, roles, ACL entries, permissions.

// Handlers bail out with a ready Proxmox-shaped response; its size does not matter here.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::pve::*;
use crate::state::ApiState;

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
/// `GET /api2/json/access/domains`: the realms a login form offers. Public, as Proxmox's
/// (the login screen lists them before anyone is authenticated): names and types only.
pub(crate) async fn access_domains(State(st): State<ApiState>) -> Response {
    let realms: Vec<(String, &'static str)> = st.runtime.cluster().read_local(|s| {
        s.realms
            .iter()
            .map(|(name, c)| {
                let horcrux_core::RealmConfig::Ldap { domain, .. } = c;
                (name.clone(), if domain.is_some() { "ad" } else { "ldap" })
            })
            .collect()
    });
    let mut out = vec![
        json!({ "realm": "pam", "type": "pam", "comment": "Linux PAM standard authentication" }),
        json!({ "realm": "pve", "type": "pve", "comment": "Proxmox VE authentication server" }),
    ];
    out.extend(realms.into_iter().map(|(realm, kind)| json!({ "realm": realm, "type": kind })));
    ok(json!(out))
}

pub(crate) async fn access_users(
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

pub(crate) async fn access_create_user(
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

pub(crate) async fn access_token(
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

pub(crate) async fn access_acl(State(st): State<ApiState>, headers: HeaderMap) -> Response {
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
pub(crate) async fn access_set_acl(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let list = |k: &str| list_param(&p, k).unwrap_or_default();
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

pub(crate) async fn access_roles(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let (status, v, _) = native(&st, &headers, Method::GET, "/access/roles", None).await;
    answer(status, v, |v| v)
}

pub(crate) async fn access_permissions(
    State(st): State<ApiState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let q = query(&uri);
    let mut path = "/access/permissions".to_string();
    let args: Vec<(&str, &String)> =
        ["path", "userid"].into_iter().filter_map(|k| q.get(k).map(|v| (k, v))).collect();
    if !args.is_empty() {
        path.push('?');
        path.push_str(&serde_urlencoded::to_string(&args).unwrap_or_default());
    }
    let (status, v, _) = native(&st, &headers, Method::GET, &path, None).await;
    answer(status, v, |v| v)
}

/// The native body of a user change from Proxmox's parameters.
fn user_change(p: &std::collections::BTreeMap<String, String>) -> Result<Value, Response> {
    let mut change = serde_json::Map::new();
    for k in ["comment", "email"] {
        if let Some(v) = p.get(k) {
            change.insert(k.into(), json!(v));
        }
    }
    if let Some(g) = list_param(p, "groups") {
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

pub(crate) async fn access_user(
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

pub(crate) async fn access_token_list(
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

pub(crate) async fn access_token_read_delete(
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

pub(crate) async fn access_create_role(
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
    let req = json!({ "roleid": roleid, "privs": list_param(&p, "privs").unwrap_or_default() });
    let (status, v, _) = native(&st, &headers, Method::POST, "/access/roles", Some(req)).await;
    answer(status, v, |_| Value::Null)
}

pub(crate) async fn access_role(
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
            let req = json!({ "privs": list_param(&p, "privs").unwrap_or_default(), "append": append });
            let (status, v, _) = native(&st, &headers, Method::PUT, &path, Some(req)).await;
            answer(status, v, |_| Value::Null)
        }
        _ => {
            let (status, v, _) = native(&st, &headers, Method::DELETE, &path, None).await;
            answer(status, v, |_| Value::Null)
        }
    }
}

pub(crate) async fn access_groups(
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

pub(crate) async fn access_group(
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

pub(crate) async fn ticket(
    State(st): State<ApiState>,
    peer: Option<axum::Extension<crate::throttle::PeerAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // `realm` completes a user name given without one, as Proxmox's login form does.
    let mut username = p.get("username").cloned().unwrap_or_default();
    if let Some(realm) = p.get("realm").filter(|_| !username.contains('@')) {
        username = format!("{username}@{realm}");
    }
    if let Err(e) = flag(&p, "new-format") {
        return e;
    }
    let mut login = json!({
        "username": username,
        "password": p.get("password").cloned().unwrap_or_default(),
    });
    if let Some(o) = p.get("otp") {
        login["otp"] = json!(o);
    }
    if let Some(c) = p.get("tfa-challenge") {
        login["tfa-challenge"] = json!(c);
    }
    let peer = peer.map(|axum::Extension(p)| p);
    let (status, v, h) =
        native_from(&st, &HeaderMap::new(), Method::POST, "/access/ticket", Some(login), peer).await;
    let mut resp = answer(status, v, |v| v);
    if let Some(c) = h.get(header::SET_COOKIE) {
        resp.headers_mut().insert(header::SET_COOKIE, c.clone());
    }
    resp
}
