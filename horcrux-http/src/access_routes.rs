//! `/api/v1/access/...`: users, their API tokens, ACL entries, roles, and the caller's own
//! permissions. Everything goes through Raft commands; token secrets are shown once and
//! only their SHA-256 is replicated.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use horcrux_core::access::{builtin_roles, Ugid};
use horcrux_core::Command;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{token_sha256, Caller};
use crate::error::ApiError;
use crate::routes::{parse_body, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/access/users", get(list_users).post(create_user))
        .route("/access/users/{userid}", delete(delete_user))
        .route("/access/users/{userid}/token/{tokenid}", post(create_token))
        .route("/access/acl", get(list_acl).put(set_acl))
        .route("/access/roles", get(list_roles))
        .route("/access/permissions", get(permissions))
        .route("/access/password", put(crate::login::set_password))
        .route("/access/audit", get(crate::audit::read))
        .route("/access/domains", get(list_realms).post(add_realm))
        .route("/access/domains/{realm}", delete(delete_realm))
        .route("/access/tfa/{userid}", post(crate::login::enrol_tfa).delete(crate::login::remove_tfa))
}

/// Users without their secrets: no password hash, no TOTP secret.
async fn list_users(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let users = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            let view = |u: &horcrux_core::User| {
                json!({
                    "userid": u.userid, "comment": u.comment, "groups": u.groups, "expire": u.expire,
                    "enable": 1, "tfa": u.tfa.is_some(),
                })
            };
            s.users.values().map(view).collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(users)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    userid: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    expire: u64,
}

async fn create_user(State(st): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let u: NewUser = parse_body(&body)?;
    let cmd = Command::CreateUser {
        userid: u.userid.clone(),
        comment: u.comment,
        groups: u.groups,
        expire: u.expire,
    };
    let ok = st.runtime.cluster().propose(cmd).await?;
    Ok(Json(json!({ "userid": u.userid, "revision": ok.revision })))
}

async fn delete_user(
    State(st): State<ApiState>,
    Path(userid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.runtime.cluster().propose(Command::DeleteUser { userid }).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// Proxmox's default: a token's rights are separated from its user's.
    #[serde(default = "yes")]
    privsep: bool,
    #[serde(default)]
    expire: u64,
}

fn yes() -> bool {
    true
}

/// Creates (or rotates) `USERID!TOKENID` and answers its secret, once.
async fn create_token(
    State(st): State<ApiState>,
    Path((userid, tokenid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let t: NewToken =
        if body.is_empty() { NewToken { privsep: true, expire: 0 } } else { parse_body(&body)? };
    let id = format!("{userid}!{tokenid}");
    let secret = horcrux_core::ids::random_secret();
    let cmd = Command::SetApiToken {
        id: id.clone(),
        secret_sha256: token_sha256(&secret),
        privsep: t.privsep,
        expire: t.expire,
    };
    st.runtime.cluster().propose(cmd).await?;
    Ok(Json(
        json!({ "full-tokenid": id, "value": secret, "info": { "privsep": t.privsep, "expire": t.expire } }),
    ))
}

async fn list_acl(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let acl = st.runtime.cluster().read_linearizable(|s| s.acl.clone()).await?;
    Ok(Json(json!(acl)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclChange {
    path: String,
    role: String,
    user: Option<String>,
    group: Option<String>,
    token: Option<String>,
    #[serde(default = "yes")]
    propagate: bool,
    #[serde(default)]
    delete: bool,
}

async fn set_acl(State(st): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let c: AclChange = parse_body(&body)?;
    let ugid = match (c.user, c.group, c.token) {
        (Some(u), None, None) => Ugid::User(u),
        (None, Some(g), None) => Ugid::Group(g),
        (None, None, Some(t)) => Ugid::Token(t),
        _ => return Err(ApiError::bad_field("user", "give exactly one of user, group or token")),
    };
    let cmd = Command::SetAcl { path: c.path, ugid, role: c.role, propagate: c.propagate, delete: c.delete };
    let ok = st.runtime.cluster().propose(cmd).await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

async fn list_roles() -> Json<Value> {
    let roles: Vec<Value> = builtin_roles()
        .into_iter()
        .map(|(roleid, privs)| json!({ "roleid": roleid, "privs": privs.into_iter().collect::<Vec<_>>().join(","), "special": 1 }))
        .collect();
    Json(json!(roles))
}

#[derive(Deserialize)]
struct PermQuery {
    path: Option<String>,
}

/// The caller's own privileges on `path` (default `/`).
async fn permissions(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PermQuery>,
) -> Result<Json<Value>, ApiError> {
    let path = q.path.unwrap_or_else(|| "/".into());
    horcrux_core::access::validate_acl_path("path", &path)?;
    let privs = st.runtime.cluster().read_local(|s| crate::authz::caller_privileges(s, &caller, &path));

    let map: serde_json::Map<String, Value> = privs.into_iter().map(|p| (p, json!(1))).collect();
    Ok(Json(json!({ path: map })))
}

/// Realms: the built-in ones and the configured directories (without bind passwords).
async fn list_realms(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let realms = st.runtime.cluster().read_linearizable(|s| s.realms.clone()).await?;
    let mut out = vec![json!({"realm": "pam", "type": "pam"}), json!({"realm": "pve", "type": "pve"})];
    for (name, c) in realms {
        let horcrux_core::RealmConfig::Ldap { server, port, base_dn, user_attr, bind_dn, .. } = c;
        out.push(json!({
            "realm": name, "type": "ldap", "server1": server, "port": port, "base_dn": base_dn,
            "user_attr": user_attr, "bind_dn": bind_dn,
        }));
    }
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRealm {
    realm: String,
    #[serde(rename = "type")]
    kind: String,
    server1: String,
    port: Option<u16>,
    base_dn: String,
    #[serde(default = "uid")]
    user_attr: String,
    bind_dn: Option<String>,
    password: Option<String>,
}

fn uid() -> String {
    "uid".into()
}

async fn add_realm(State(st): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let r: NewRealm = parse_body(&body)?;
    if r.kind != "ldap" {
        return Err(ApiError::bad_field("type", "only ldap realms can be added (pam and pve are built in)"));
    }
    let config = horcrux_core::RealmConfig::Ldap {
        server: r.server1,
        port: r.port.unwrap_or(389),
        base_dn: r.base_dn,
        user_attr: r.user_attr,
        bind_dn: r.bind_dn,
        bind_password: r.password,
    };
    let ok = st.runtime.cluster().propose(Command::SetRealm { realm: r.realm, config: Some(config) }).await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

async fn delete_realm(
    State(st): State<ApiState>,
    Path(realm): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.runtime.cluster().propose(Command::SetRealm { realm, config: None }).await?;
    Ok(Json(json!({})))
}
