//! Authorization: every authenticated route declares here, in one table, the privilege it
//! needs and the ACL path it is checked on. The middleware fails closed: a route missing
//! from the table is refused to everyone, so a new route cannot slip through unchecked.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use horcrux_core::access::Subject;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::ApiState;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// `privilege` on the ACL path (with `{param}`s from the route filled in); a privilege
    /// ending in `*` is any privilege with that prefix.
    Priv(&'static str, &'static str),
    /// Any authenticated caller (reads only their own data, or public facts).
    AnyUser,
    /// The task's owner, or `Sys.Audit` on `/nodes/{node}` of the task's node.
    TaskOwnerOrAudit,
    /// `privilege` on some path; the state machine then checks it on the exact target (the
    /// user managed, the ACL path changed) when the change meets the log.
    Somewhere(&'static str),
    /// The route's `{userid}` is the caller itself (not through a privilege-separated
    /// token), or `Somewhere(privilege)`. A route whose target is in the body (the
    /// password) lets every caller through to the state machine's check.
    SelfOr(&'static str),
}

pub struct RouteAccess {
    pub method: Method,
    /// As registered, relative to `/api/v1`.
    pub route: &'static str,
    pub check: Check,
}

macro_rules! r {
    ($m:ident, $route:literal, $check:expr) => {
        RouteAccess { method: Method::$m, route: $route, check: $check }
    };
}

use Check::*;

/// Every authenticated route. `GET /version`, `POST /access/ticket` (the login) and
/// `DELETE /access/ticket` (the logout, clearing the cookie) are the only public ones
/// (outside this table). Built once.
pub fn routes() -> &'static [RouteAccess] {
    static TABLE: std::sync::OnceLock<Vec<RouteAccess>> = std::sync::OnceLock::new();
    TABLE.get_or_init(table)
}

fn table() -> Vec<RouteAccess> {
    vec![
        r!(GET, "/openapi.json", AnyUser),
        r!(GET, "/vms", Priv("VM.Audit", "/vms")),
        r!(POST, "/vms", Priv("VM.Allocate", "/vms")),
        r!(GET, "/vms/{vmid}", Priv("VM.Audit", "/vms/{vmid}")),
        r!(DELETE, "/vms/{vmid}", Priv("VM.Allocate", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/start", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/stop", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/shutdown", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/migrate", Priv("VM.Migrate", "/vms/{vmid}")),
        r!(PUT, "/vms/{vmid}/config", Priv("VM.Config.*", "/vms/{vmid}")),
        // And Datastore.AllocateSpace on the disk's storage (checked by the handler).
        r!(PUT, "/vms/{vmid}/resize", Priv("VM.Config.Disk", "/vms/{vmid}")),
        // And Datastore.AllocateSpace on the target storage (checked by the handler).
        r!(POST, "/vms/{vmid}/move_disk", Priv("VM.Config.Disk", "/vms/{vmid}")),
        r!(GET, "/vms/{vmid}/pending", Priv("VM.Audit", "/vms/{vmid}")),
        r!(GET, "/vms/{vmid}/snapshots", Priv("VM.Audit", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/snapshots", Priv("VM.Snapshot", "/vms/{vmid}")),
        r!(GET, "/vms/{vmid}/snapshots/{name}", Priv("VM.Audit", "/vms/{vmid}")),
        r!(PUT, "/vms/{vmid}/snapshots/{name}", Priv("VM.Snapshot", "/vms/{vmid}")),
        r!(DELETE, "/vms/{vmid}/snapshots/{name}", Priv("VM.Snapshot", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/snapshots/{name}/rollback", Priv("VM.Snapshot.Rollback", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/reboot", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/suspend", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/reset", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/resume", Priv("VM.PowerMgmt", "/vms/{vmid}")),
        r!(GET, "/vms/{vmid}/serial", Priv("VM.Console", "/vms/{vmid}")),
        // Each event is built from the lists the caller may read (see `events`).
        r!(GET, "/events", AnyUser),
        r!(GET, "/tasks", Priv("Sys.Audit", "/nodes")),
        // The caller's own tasks; all of the node's with Sys.Audit on it (the handler checks).
        r!(GET, "/nodes/{node}/tasks", AnyUser),
        r!(GET, "/tasks/{upid}", TaskOwnerOrAudit),
        r!(GET, "/tasks/{upid}/log", TaskOwnerOrAudit),
        r!(GET, "/cluster/nextid", AnyUser),
        r!(GET, "/nodes", AnyUser),
        r!(GET, "/nodes/{node}/status", Priv("Sys.Audit", "/nodes/{node}")),
        r!(GET, "/nodes/{node}/rrddata", Priv("Sys.Audit", "/nodes/{node}")),
        // Guests and storages in the answer are filtered by the caller's audit rights.
        r!(GET, "/nodes/{node}/metrics/current", Priv("Sys.Audit", "/nodes/{node}")),
        r!(GET, "/vms/{vmid}/rrddata", Priv("VM.Audit", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/vncproxy", Priv("VM.Console", "/vms/{vmid}")),
        r!(POST, "/vms/{vmid}/termproxy", Priv("VM.Console", "/vms/{vmid}")),
        // The ticket must also have been issued to the caller, for this guest and port.
        r!(GET, "/vms/{vmid}/vncwebsocket", Priv("VM.Console", "/vms/{vmid}")),
        r!(GET, "/storage/{id}/rrddata", Priv("Datastore.Audit", "/storage/{id}")),
        // Listed per storage the caller may audit (Proxmox's filter).
        r!(GET, "/storage", AnyUser),
        r!(POST, "/storage", Priv("Datastore.Allocate", "/storage")),
        r!(GET, "/storage/{id}", Priv("Datastore.Allocate", "/storage/{id}")),
        r!(PUT, "/storage/{id}", Priv("Datastore.Allocate", "/storage")),
        r!(DELETE, "/storage/{id}", Priv("Datastore.Allocate", "/storage")),
        r!(GET, "/storage/{id}/content", Priv("Datastore.Audit", "/storage/{id}")),
        r!(POST, "/storage/{id}/content", Priv("Datastore.AllocateSpace", "/storage/{id}")),
        r!(GET, "/storage/{id}/content/{volume}", Priv("Datastore.Audit", "/storage/{id}")),
        r!(PUT, "/storage/{id}/content/{volume}", Priv("Datastore.AllocateSpace", "/storage/{id}")),
        r!(DELETE, "/storage/{id}/content/{volume}", Priv("Datastore.Allocate", "/storage/{id}")),
        r!(GET, "/storage/{id}/status", Priv("Datastore.Audit", "/storage/{id}")),
        r!(POST, "/storage/{id}/upload", Priv("Datastore.AllocateTemplate", "/storage/{id}")),
        // And Sys.AccessNetwork on the node or Sys.Modify on / (checked by the handler).
        r!(POST, "/storage/{id}/download-url", Priv("Datastore.AllocateTemplate", "/storage/{id}")),
        r!(GET, "/cluster/status", Priv("Sys.Audit", "/")),
        r!(GET, "/cluster/tokens", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/tokens", Priv("Sys.Modify", "/")),
        r!(DELETE, "/cluster/tokens/{id}", Priv("Sys.Modify", "/")),
        r!(GET, "/cluster/quorum", Priv("Sys.Audit", "/")),
        r!(GET, "/cluster/options", Priv("Sys.Audit", "/")),
        r!(PUT, "/cluster/options/{key}", Priv("Sys.Modify", "/")),
        r!(DELETE, "/cluster/nodes/{name}", Priv("Sys.Modify", "/")),
        r!(GET, "/cluster/ca", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/ca/rotate", Priv("Sys.Modify", "/")),
        r!(GET, "/cluster/corosync", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/corosync", Priv("Sys.Modify", "/")),
        // HA (Proxmox's privileges; each handler also checks the guests concerned).
        r!(GET, "/cluster/ha/resources", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/ha/resources", Priv("Sys.Console", "/")),
        r!(GET, "/cluster/ha/resources/{sid}", Priv("Sys.Audit", "/")),
        r!(PUT, "/cluster/ha/resources/{sid}", Priv("Sys.Console", "/")),
        r!(DELETE, "/cluster/ha/resources/{sid}", Priv("Sys.Console", "/")),
        r!(POST, "/cluster/ha/resources/{sid}/relocate", Priv("Sys.Console", "/")),
        r!(POST, "/cluster/ha/resources/{sid}/migrate", Priv("Sys.Console", "/")),
        r!(GET, "/cluster/ha/rules", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/ha/rules", Priv("Sys.Console", "/")),
        r!(GET, "/cluster/ha/rules/{rule}", Priv("Sys.Audit", "/")),
        r!(PUT, "/cluster/ha/rules/{rule}", Priv("Sys.Console", "/")),
        r!(DELETE, "/cluster/ha/rules/{rule}", Priv("Sys.Console", "/")),
        r!(GET, "/cluster/ha/status", Priv("Sys.Audit", "/")),
        r!(GET, "/cluster/ha/placement", Priv("Sys.Audit", "/")),
        r!(GET, "/cluster/ha/history", Priv("Sys.Audit", "/")),
        r!(GET, "/cluster/architectures", Priv("Sys.Audit", "/")),
        r!(POST, "/cluster/architectures", Priv("Sys.Modify", "/")),
        r!(GET, "/cluster/architectures/{name}", Priv("Sys.Audit", "/")),
        r!(PUT, "/cluster/architectures/{name}", Priv("Sys.Modify", "/")),
        r!(DELETE, "/cluster/architectures/{name}", Priv("Sys.Modify", "/")),
        r!(GET, "/pools", AnyUser),
        r!(POST, "/pools", Priv("Pool.Allocate", "/pool")),
        r!(GET, "/pools/{poolid}", Priv("Pool.Audit", "/pool/{poolid}")),
        r!(PUT, "/pools/{poolid}", Priv("Pool.Allocate", "/pool/{poolid}")),
        r!(DELETE, "/pools/{poolid}", Priv("Pool.Allocate", "/pool/{poolid}")),
        r!(GET, "/access/users", Priv("Sys.Audit", "/access")),
        r!(POST, "/access/users", Somewhere("User.Modify")),
        r!(GET, "/access/users/{userid}", Priv("Sys.Audit", "/access")),
        r!(PUT, "/access/users/{userid}", Somewhere("User.Modify")),
        r!(DELETE, "/access/users/{userid}", Somewhere("User.Modify")),
        r!(GET, "/access/users/{userid}/token", Priv("Sys.Audit", "/access")),
        r!(GET, "/access/users/{userid}/token/{tokenid}", Priv("Sys.Audit", "/access")),
        r!(POST, "/access/users/{userid}/token/{tokenid}", SelfOr("User.Modify")),
        r!(DELETE, "/access/users/{userid}/token/{tokenid}", SelfOr("User.Modify")),
        r!(GET, "/access/groups", Priv("Sys.Audit", "/access")),
        r!(POST, "/access/groups", Priv("Group.Allocate", "/access/groups")),
        r!(GET, "/access/groups/{groupid}", Priv("Sys.Audit", "/access")),
        r!(DELETE, "/access/groups/{groupid}", Priv("Group.Allocate", "/access/groups")),
        r!(POST, "/access/roles", Priv("Sys.Modify", "/access")),
        r!(GET, "/access/roles/{roleid}", AnyUser),
        r!(PUT, "/access/roles/{roleid}", Priv("Sys.Modify", "/access")),
        r!(DELETE, "/access/roles/{roleid}", Priv("Sys.Modify", "/access")),
        r!(GET, "/access/acl", Priv("Sys.Audit", "/access")),
        r!(PUT, "/access/acl", Somewhere("Permissions.Modify")),
        r!(GET, "/access/roles", AnyUser),
        r!(GET, "/access/permissions", AnyUser),
        r!(PUT, "/access/password", SelfOr("User.Modify")),
        r!(GET, "/access/audit", Priv("Sys.Audit", "/access")),
        r!(GET, "/access/domains", AnyUser),
        r!(POST, "/access/domains", Priv("Realm.Allocate", "/access/realm")),
        r!(DELETE, "/access/domains/{realm}", Priv("Realm.Allocate", "/access/realm")),
        r!(POST, "/access/tfa/{userid}", SelfOr("User.Modify")),
        r!(DELETE, "/access/tfa/{userid}", SelfOr("User.Modify")),
    ]
}

/// Fills `{param}`s of `template` from the request path matched by `route`.
fn fill(template: &str, route: &str, path: &str) -> String {
    let params: Vec<(&str, &str)> = route
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(r, p)| r.strip_prefix('{').and_then(|r| r.strip_suffix('}')).map(|name| (name, p)))
        .collect();
    template
        .split('/')
        .map(|seg| {
            let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            match name.and_then(|n| params.iter().find(|(k, _)| *k == n)) {
                Some((_, v)) => v.to_string(),
                None => seg.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Refuses (403) unless `caller` holds `privilege` on `path`: the check a handler makes on a
/// target the route's own check does not cover (the storage a disk goes to).
pub(crate) fn require(
    state: &horcrux_core::ClusterState,
    caller: &Caller,
    privilege: &str,
    path: &str,
) -> Result<(), ApiError> {
    if caller_privileges(state, caller, path).contains(privilege) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("permission check failed: {} needs {privilege} on {path}", caller.token_id),
    ))
}

/// What `caller` may do on `path` in `state`.
pub(crate) fn caller_privileges(
    state: &horcrux_core::ClusterState,
    caller: &Caller,
    path: &str,
) -> std::collections::BTreeSet<String> {
    let groups = state.users.get(caller.user()).map(|u| u.groups.clone()).unwrap_or_default();
    let subject = Subject {
        user: caller.user(),
        groups: &groups,
        token: Some((caller.token_id.as_str(), caller.privsep)),
    };
    state.privileges(&subject, path)
}

pub async fn authorize(State(st): State<ApiState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let caller = req.extensions().get::<Caller>().cloned().ok_or_else(|| ApiError::internal("no caller"))?;
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let route = matched.strip_prefix("/api/v1").unwrap_or(&matched).to_string();
    let path = req.uri().path();
    let path = path.strip_prefix("/api/v1").unwrap_or(path).to_string();
    let table = routes();
    let Some(rule) = table.iter().find(|r| r.method == req.method() && r.route == route) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("no access rule is declared for {} {route}; refused", req.method()),
        ));
    };
    let root = caller.user() == "root@pam" && !caller.privsep;
    let somewhere = |privilege: &str| {
        root || st.runtime.cluster().read_local(|s| {
            s.representative_paths().iter().any(|p| caller_privileges(s, &caller, p).contains(privilege))
        })
    };
    let refuse = |privilege: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("permission check failed: {} needs {privilege} on a path", caller.token_id),
        ))
    };
    let (privilege, acl_path) = match rule.check {
        AnyUser => return Ok(next.run(req).await),
        Somewhere(p) => return if somewhere(p) { Ok(next.run(req).await) } else { refuse(p) },
        SelfOr(p) => {
            let target = fill("{userid}", &route, &path);
            let own = target == "{userid}" || (target == caller.user() && !caller.privsep);
            return if own || somewhere(p) { Ok(next.run(req).await) } else { refuse(p) };
        }
        Priv(p, template) => (p, fill(template, &route, &path)),
        TaskOwnerOrAudit => {
            let upid = path.split('/').nth(2).unwrap_or_default();
            match upid.parse::<horcrux_core::Upid>() {
                Ok(u) if u.user == caller.user() => return Ok(next.run(req).await),
                Ok(u) => ("Sys.Audit", format!("/nodes/{}", u.node)),
                // A malformed id: let the handler answer 404 to whoever may audit tasks.
                Err(_) => ("Sys.Audit", "/nodes".to_string()),
            }
        }
    };
    // root@pam holds every privilege everywhere (its non-separated tokens too).
    let allowed = root
        || st.runtime.cluster().read_local(|s| {
            let held = caller_privileges(s, &caller, &acl_path);
            // `VM.Config.*`: any of that family (the handler then checks each change).
            match privilege.strip_suffix('*') {
                Some(prefix) => held.iter().any(|p| p.starts_with(prefix)),
                None => held.contains(privilege),
            }
        });

    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("permission check failed: {} needs {privilege} on {acl_path}", caller.token_id),
        ));
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_fill_acl_paths() {
        assert_eq!(fill("/vms/{vmid}", "/vms/{vmid}/start", "/vms/105/start"), "/vms/105");
        assert_eq!(fill("/", "/cluster/options/{key}", "/cluster/options/x"), "/");
    }

    /// Every `.route(...)` registered in the sources is declared in the table, method by
    /// method, and nothing is declared that is not registered.
    #[test]
    fn every_registered_route_is_declared() {
        let sources = [
            // The native router only: `compat_routes` registers the `/api2/json` ones.
            include_str!("routes.rs").split("fn compat_routes").next().unwrap(),
            include_str!("cluster/mod.rs"),
            include_str!("access/mod.rs"),
            include_str!("pools/mod.rs"),
            include_str!("ha/mod.rs"),
            include_str!("ha/arch.rs"),
            include_str!("storage/mod.rs"),
        ];
        // (vms/ and nodes/ hold handlers only; their routes are in routes.rs; `/api2/json`
        // routes are checked by their native calls and are not in this table.)
        let mut registered = std::collections::BTreeSet::new();
        for src in sources {
            // `.route("/path", ...)`, also when rustfmt breaks it over lines.
            for chunk in src.split(".route(").skip(1) {
                let Some(chunk) = chunk.trim_start().strip_prefix('"') else { continue };
                let (route, rest) = chunk.split_once('"').unwrap();
                let call = &rest[..rest.find("))").unwrap_or(rest.len())];
                for (m, name) in [("get(", "GET"), ("post(", "POST"), ("put(", "PUT"), ("delete(", "DELETE")]
                {
                    let hits = call.matches(m).count();
                    if hits > 0 {
                        registered.insert((name.to_string(), route.to_string()));
                    }
                }
            }
        }
        // The public ones.
        registered.remove(&("GET".to_string(), "/version".to_string()));
        registered.remove(&("POST".to_string(), "/access/ticket".to_string()));
        registered.remove(&("DELETE".to_string(), "/access/ticket".to_string()));
        // Prometheus' `/metrics` sits outside `/api/v1`; like the `/api2/json` routes it is
        // built from native calls, which authenticate and check each privilege.
        registered.remove(&("GET".to_string(), "/metrics".to_string()));
        let declared: std::collections::BTreeSet<(String, String)> =
            routes().iter().map(|r| (r.method.to_string(), r.route.to_string())).collect();
        assert_eq!(registered, declared);
    }
}
