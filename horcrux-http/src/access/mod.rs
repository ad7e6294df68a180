//! `/api/v1/access/...`: users, their API tokens, ACL entries, roles, and the caller's own
//! permissions. Everything goes through Raft commands; token secrets are shown once and
//! only their SHA-256 is replicated.

pub mod audit;
pub mod compat;
pub mod ldap;
pub mod login;
pub mod pam;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use horcrux_core::access::Ugid;
use horcrux_core::Command;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{token_sha256, Caller};
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/access/users", get(list_users).post(create_user))
        .route("/access/users/{userid}", get(get_user).put(update_user).delete(delete_user))
        .route("/access/users/{userid}/token", get(list_tokens))
        .route(
            "/access/users/{userid}/token/{tokenid}",
            get(get_token).post(create_token).delete(delete_token),
        )
        .route("/access/acl", get(list_acl).put(set_acl))
        .route("/access/roles", get(list_roles).post(create_role))
        .route("/access/roles/{roleid}", get(get_role).put(update_role).delete(delete_role))
        .route("/access/groups", get(list_groups).post(create_group))
        .route("/access/groups/{groupid}", get(get_group).delete(delete_group))
        .route("/access/permissions", get(permissions))
        .route("/access/password", put(login::set_password))
        .route("/access/audit", get(audit::read))
        .route("/access/domains", get(list_realms).post(add_realm))
        .route("/access/domains/{realm}", delete(delete_realm))
        .route("/access/tfa/{userid}", post(login::enrol_tfa).delete(login::remove_tfa))
}

/// A user without its secrets: no password hash, no TOTP secret.
fn user_view(u: &horcrux_core::User) -> Value {
    json!({
        "userid": u.userid, "comment": u.comment, "email": u.email, "groups": u.groups,
        "expire": u.expire, "enable": u.enable, "tfa": u.tfa.is_some(),
    })
}

async fn list_users(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let users = st
        .runtime
        .cluster()
        .read_linearizable(|s| s.users.values().map(user_view).collect::<Vec<_>>())
        .await?;
    Ok(Json(json!(users)))
}

async fn get_user(State(st): State<ApiState>, Path(userid): Path<String>) -> Result<Json<Value>, ApiError> {
    let (user, tokens) = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            let prefix = format!("{userid}!");
            let tokens: Vec<Value> =
                s.api_tokens.values().filter(|t| t.id.starts_with(&prefix)).map(token_view).collect();
            (s.users.get(&userid).map(user_view).ok_or(userid), tokens)
        })
        .await?;
    let mut user = user.map_err(|u| ApiError::not_found(format!("user {u} does not exist")))?;
    user["tokens"] = json!(tokens);
    Ok(Json(user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    comment: Option<String>,
    email: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(default)]
    append: bool,
    expire: Option<u64>,
    enable: Option<bool>,
}

async fn update_user(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(userid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c: UserChange = parse_body(&body)?;
    if c.append && c.groups.is_none() {
        return Err(ApiError::bad_field("append", "needs groups"));
    }
    let cmd = Command::UpdateUser {
        userid: userid.clone(),
        comment: c.comment,
        email: c.email,
        groups: c.groups,
        append: c.append,
        expire: c.expire,
        enable: c.enable,
    };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "userid": userid, "revision": ok.revision })))
}

fn token_view(t: &horcrux_core::ApiToken) -> Value {
    let tokenid = t.id.split_once('!').map(|(_, t)| t).unwrap_or_default();
    json!({ "tokenid": tokenid, "privsep": t.privsep, "expire": t.expire })
}

async fn list_tokens(
    State(st): State<ApiState>,
    Path(userid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tokens = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            let prefix = format!("{userid}!");
            s.user_exists(&userid).then(|| {
                s.api_tokens
                    .values()
                    .filter(|t| t.id.starts_with(&prefix))
                    .map(token_view)
                    .collect::<Vec<_>>()
            })
        })
        .await?;
    Ok(Json(json!(tokens.ok_or_else(|| ApiError::not_found("no such user"))?)))
}

async fn get_token(
    State(st): State<ApiState>,
    Path((userid, tokenid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = format!("{userid}!{tokenid}");
    let t = st.runtime.cluster().read_linearizable(move |s| s.api_tokens.get(&id).map(token_view)).await?;
    Ok(Json(t.ok_or_else(|| ApiError::not_found(format!("token {userid}!{tokenid} does not exist")))?))
}

async fn delete_token(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((userid, tokenid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::DeleteApiToken { id: format!("{userid}!{tokenid}") }).await?;
    Ok(Json(json!({})))
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

async fn create_user(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let u: NewUser = parse_body(&body)?;
    let cmd = Command::CreateUser {
        userid: u.userid.clone(),
        comment: u.comment,
        groups: u.groups,
        expire: u.expire,
    };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "userid": u.userid, "revision": ok.revision })))
}

async fn delete_user(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(userid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::DeleteUser { userid }).await?;
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
    Extension(caller): Extension<Caller>,
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
    st.propose_by(&caller, cmd).await?;
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

async fn set_acl(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c: AclChange = parse_body(&body)?;
    let ugid = match (c.user, c.group, c.token) {
        (Some(u), None, None) => Ugid::User(u),
        (None, Some(g), None) => Ugid::Group(g),
        (None, None, Some(t)) => Ugid::Token(t),
        _ => return Err(ApiError::bad_field("user", "give exactly one of user, group or token")),
    };
    let cmd = Command::SetAcl { path: c.path, ugid, role: c.role, propagate: c.propagate, delete: c.delete };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

fn role_view(roleid: &str, privs: &std::collections::BTreeSet<String>, special: bool) -> Value {
    let privs: Vec<&str> = privs.iter().map(String::as_str).collect();
    json!({ "roleid": roleid, "privs": privs.join(","), "special": special })
}

async fn list_roles(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let roles = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            s.roles().all().map(|(id, p, special)| role_view(id, p, special)).collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(roles)))
}

async fn get_role(State(st): State<ApiState>, Path(roleid): Path<String>) -> Result<Json<Value>, ApiError> {
    let role = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            s.roles().all().find(|(id, _, _)| *id == roleid).map(|(i, p, sp)| role_view(i, p, sp))
        })
        .await?;
    Ok(Json(role.ok_or_else(|| ApiError::not_found("no such role"))?))
}

/// `privs` as a list or as Proxmox's comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum PrivList {
    List(Vec<String>),
    Text(String),
}

impl PrivList {
    fn into_set(self) -> std::collections::BTreeSet<String> {
        match self {
            PrivList::List(l) => l.into_iter().collect(),
            PrivList::Text(t) => {
                t.split([',', ' ', ';']).filter(|p| !p.is_empty()).map(String::from).collect()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    roleid: String,
    privs: Option<PrivList>,
}

async fn create_role(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: NewRole = parse_body(&body)?;
    let privs = r.privs.map(PrivList::into_set).unwrap_or_default();
    let roleid = r.roleid.clone();
    let exists = st.runtime.cluster().read_linearizable(move |s| s.roles().get(&roleid).is_some()).await?;
    if exists {
        return Err(ApiError::conflict(format!("role {} already exists", r.roleid)));
    }
    let ok =
        st.propose_by(&caller, Command::SetRole { roleid: r.roleid.clone(), privs: Some(privs) }).await?;
    Ok(Json(json!({ "roleid": r.roleid, "revision": ok.revision })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleChange {
    privs: PrivList,
    /// Add the privileges to the role's instead of replacing them.
    #[serde(default)]
    append: bool,
}

async fn update_role(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(roleid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c: RoleChange = parse_body(&body)?;
    let id = roleid.clone();
    let (builtin, current) = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            (horcrux_core::access::builtin_roles().contains_key(&id), s.roles.get(&id).cloned())
        })
        .await?;
    if builtin {
        return Err(ApiError::bad_field("roleid", format!("{roleid} is a built-in role")));
    }
    let mut privs = current.ok_or_else(|| ApiError::not_found(format!("role {roleid} does not exist")))?;
    if !c.append {
        privs.clear();
    }
    privs.extend(c.privs.into_set());
    let ok = st.propose_by(&caller, Command::SetRole { roleid: roleid.clone(), privs: Some(privs) }).await?;
    Ok(Json(json!({ "roleid": roleid, "revision": ok.revision })))
}

async fn delete_role(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(roleid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::SetRole { roleid, privs: None }).await?;
    Ok(Json(json!({})))
}

/// The users of a group.
fn members<'a>(s: &'a horcrux_core::ClusterState, g: &horcrux_core::Group) -> Vec<&'a str> {
    s.users.values().filter(|u| u.groups.contains(&g.groupid)).map(|u| u.userid.as_str()).collect()
}

async fn list_groups(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let groups = st
        .runtime
        .cluster()
        .read_linearizable(|s| {
            s.groups
                .values()
                .map(|g| json!({ "groupid": g.groupid, "comment": g.comment, "users": members(s, g).join(",") }))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!(groups)))
}

async fn get_group(State(st): State<ApiState>, Path(groupid): Path<String>) -> Result<Json<Value>, ApiError> {
    let g = st
        .runtime
        .cluster()
        .read_linearizable(move |s| {
            s.groups
                .get(&groupid)
                .map(|g| json!({ "groupid": g.groupid, "comment": g.comment, "members": members(s, g) }))
        })
        .await?;
    Ok(Json(g.ok_or_else(|| ApiError::not_found("no such group"))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    groupid: String,
    #[serde(default)]
    comment: String,
}

async fn create_group(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let g: NewGroup = parse_body(&body)?;
    let cmd = Command::CreateGroup { groupid: g.groupid.clone(), comment: g.comment };
    let ok = st.propose_by(&caller, cmd).await?;
    Ok(Json(json!({ "groupid": g.groupid, "revision": ok.revision })))
}

async fn delete_group(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(groupid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::DeleteGroup { groupid }).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct PermQuery {
    path: Option<String>,
    /// Whose privileges (a user or an API token id); default (and empty): the caller's.
    userid: Option<String>,
}

/// The privileges on `path` (default `/`) of the caller, or, as Proxmox allows it, of
/// `userid`: the caller's own user or token, or anyone's with `Sys.Audit` on `/access`.
async fn permissions(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PermQuery>,
) -> Result<Json<Value>, ApiError> {
    let path = q.path.unwrap_or_else(|| "/".into());
    horcrux_core::access::validate_acl_path("path", &path)?;
    let whom = q.userid.filter(|u| !u.is_empty());
    let privs = st.runtime.cluster().read_local(|s| {
        let subject = match whom.as_deref() {
            None => caller.clone(),
            Some(w) if w == caller.token_id || (w == caller.user() && !caller.privsep) => caller.clone(),
            Some(w) => {
                if !crate::authz::caller_privileges(s, &caller, "/access").contains("Sys.Audit") {
                    return Err(ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "userid: Sys.Audit on /access is needed to see the privileges of another",
                    ));
                }
                match w.split_once('!') {
                    Some(_) => match s.api_tokens.get(w) {
                        Some(t) => Caller { token_id: t.id.clone(), privsep: t.privsep },
                        None => return Err(ApiError::bad_field("userid", format!("no API token {w}"))),
                    },
                    None if s.users.contains_key(w) || w == "root@pam" => {
                        Caller { token_id: w.to_string(), privsep: false }
                    }
                    None => return Err(ApiError::bad_field("userid", format!("no user {w}"))),
                }
            }
        };
        Ok(crate::authz::caller_privileges(s, &subject, &path))
    })?;
    let map: serde_json::Map<String, Value> = privs.into_iter().map(|p| (p, json!(1))).collect();
    Ok(Json(json!({ path: map })))
}

/// Realms: the built-in ones and the configured directories (without bind passwords).
async fn list_realms(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let realms = st.runtime.cluster().read_linearizable(|s| s.realms.clone()).await?;
    let mut out = vec![json!({"realm": "pam", "type": "pam"}), json!({"realm": "pve", "type": "pve"})];
    for (name, c) in realms {
        let horcrux_core::RealmConfig::Ldap { server, port, base_dn, user_attr, bind_dn, domain, .. } = c;
        let kind = if domain.is_some() { "ad" } else { "ldap" };
        out.push(json!({
            "realm": name, "type": kind, "server1": server, "port": port, "base_dn": base_dn,
            "user_attr": user_attr, "bind_dn": bind_dn, "domain": domain,
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
    /// Default: `uid` (LDAP), `sAMAccountName` (AD).
    user_attr: Option<String>,
    bind_dn: Option<String>,
    password: Option<String>,
    /// Active Directory's domain (type `ad`).
    domain: Option<String>,
}

async fn add_realm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: NewRealm = parse_body(&body)?;
    let (default_attr, domain) = match (r.kind.as_str(), r.domain) {
        ("ldap", None) => ("uid", None),
        ("ldap", Some(_)) => return Err(ApiError::bad_field("domain", "only for type ad")),
        ("ad", Some(d)) => ("sAMAccountName", Some(d)),
        ("ad", None) => return Err(ApiError::bad_field("domain", "an ad realm needs its domain")),
        _ => return Err(ApiError::bad_field("type", "ldap or ad (pam and pve are built in)")),
    };
    let config = horcrux_core::RealmConfig::Ldap {
        server: r.server1,
        port: r.port.unwrap_or(389),
        base_dn: r.base_dn,
        user_attr: r.user_attr.unwrap_or_else(|| default_attr.into()),
        bind_dn: r.bind_dn,
        bind_password: r.password,
        domain,
    };
    let ok = st.propose_by(&caller, Command::SetRealm { realm: r.realm, config: Some(config) }).await?;
    Ok(Json(json!({ "revision": ok.revision })))
}

async fn delete_realm(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(realm): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.propose_by(&caller, Command::SetRealm { realm, config: None }).await?;
    Ok(Json(json!({})))
}
