//! The router: every resource family's native routes under `/api/v1` and their
//! `/api2/json` translations, behind authentication, the privilege table and the
//! forwarding layer. The top of the crate's module tree: nothing imports it.

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::{middleware, Router};
use horcrux_actors::NodeRuntime;

use crate::auth::require_token;
use crate::state::*;
use crate::{access, cluster, ha, nodes, pools, vms};

pub fn router(runtime: NodeRuntime, web: crate::web::WebRoot) -> Router {
    let audit_path =
        runtime.tasks().dir().parent().map(|d| d.join("audit.log")).unwrap_or_else(|| "audit.log".into());
    let st = ApiState(Arc::new(ApiShared {
        runtime,
        create_lock: Arc::default(),
        throttle: Default::default(),
        audit: crate::audit::AuditLog::new(audit_path),
        native: Default::default(),
        web,
        consoles: Default::default(),
    }));
    let authed = Router::new()
        .route("/vms", get(vms::list_vms).post(vms::create_vm))
        .route("/vms/{vmid}", get(vms::get_vm).delete(vms::delete_vm))
        .route("/vms/{vmid}/start", post(vms::start_vm))
        .route("/vms/{vmid}/stop", post(vms::stop_vm))
        .route("/vms/{vmid}/shutdown", post(vms::shutdown_vm))
        .route("/vms/{vmid}/migrate", post(vms::migrate_vm))
        .route("/vms/{vmid}/config", put(vms::config::update))
        .route("/vms/{vmid}/resize", put(vms::disk::resize))
        .route("/vms/{vmid}/move_disk", post(vms::disk::move_disk))
        .route("/vms/{vmid}/pending", get(vms::hotplug::get_pending))
        .route("/vms/{vmid}/snapshots", get(vms::snapshot::list).post(vms::snapshot::create))
        .route(
            "/vms/{vmid}/snapshots/{name}",
            get(vms::snapshot::one).put(vms::snapshot::describe).delete(vms::snapshot::remove),
        )
        .route("/vms/{vmid}/snapshots/{name}/rollback", post(vms::snapshot::rollback))
        .route("/vms/{vmid}/reboot", post(vms::power::reboot))
        .route("/vms/{vmid}/suspend", post(vms::power::suspend))
        .route("/vms/{vmid}/reset", post(vms::power::reset))
        .route("/vms/{vmid}/resume", post(vms::power::resume))
        .route("/vms/{vmid}/serial", get(vms::serial_log))
        .route("/vms/{vmid}/vncproxy", post(crate::console::vncproxy))
        .route("/vms/{vmid}/termproxy", post(crate::console::termproxy))
        .route("/vms/{vmid}/vncwebsocket", get(crate::console::vncwebsocket))
        .route("/events", get(crate::events::events))
        .route("/tasks", get(nodes::list_tasks))
        .route("/nodes/{node}/tasks", get(nodes::node_tasks))
        .route("/tasks/{upid}", get(nodes::get_task))
        .route("/tasks/{upid}/log", get(nodes::get_task_log))
        .route("/cluster/nextid", get(cluster::next_id))
        .route("/nodes", get(cluster::list_nodes))
        .route("/nodes/{node}/status", get(nodes::host::node_status))
        .route("/nodes/{node}/rrddata", get(nodes::metrics::node_rrddata))
        .route("/nodes/{node}/metrics/current", get(nodes::metrics::current))
        .route("/vms/{vmid}/rrddata", get(nodes::metrics::vm_rrddata))
        .route("/storage/{id}/rrddata", get(nodes::metrics::storage_rrddata))
        .route("/storage/{id}/content", get(nodes::storage_content).post(crate::storage::volume::alloc))
        .route(
            "/storage/{id}/content/{volume}",
            get(crate::storage::volume::get)
                .put(crate::storage::volume::update)
                .delete(crate::storage::volume::delete),
        )
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(cluster::routes())
        .merge(access::routes())
        .merge(pools::routes())
        .merge(crate::storage::routes())
        .merge(ha::routes())
        .merge(ha::arch::routes())
        // Layers run outside-in: authenticate, check the route's privilege, then carry guest
        // requests to their owner (which checks again).
        .route_layer(middleware::from_fn_with_state(st.clone(), crate::forward::forward_to_owner))
        .route_layer(middleware::from_fn_with_state(st.clone(), crate::authz::authorize))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_token));
    // The only public routes: the version and the login itself.
    let api = Router::new()
        .route("/version", get(cluster::native_version))
        .route("/access/ticket", post(access::login::ticket).delete(access::login::logout))
        .merge(authed);
    let app = Router::new()
        .nest("/api/v1", api)
        .nest("/api2/json", compat_routes())
        // Prometheus' scrape path; authenticated by the native calls it is built from.
        .route("/metrics", get(crate::cluster::prometheus::metrics))
        // The web UI's files; any other path is a JSON 404.
        .fallback(crate::web::serve)
        .layer(middleware::map_response(crate::error::json_errors))
        .layer(middleware::from_fn(crate::drain::drain_unread_body))
        .with_state(st.clone());
    let _ = st.native.set(app.clone());
    let throttle = st.throttle.clone();
    st.runtime.cluster().set_login_failure_hook(Arc::new(move |keys| throttle.note_remote(keys)));
    let served = app.clone();
    st.runtime.cluster().set_api_handler(Arc::new(move |call, body| {
        let app = served.clone();
        Box::pin(crate::forward::serve_forwarded(app, call, body))
    }));
    let consoles = st.clone();
    st.runtime.cluster().set_tunnel_handler(Arc::new(move |call, tunnel| {
        Box::pin(crate::console::serve_tunnel(consoles.clone(), call, tunnel))
    }));
    app
}

/// `/api2/json`: each family's translations, every route behind the parameter check.
fn compat_routes() -> Router<ApiState> {
    use crate::access::compat::*;
    use crate::cluster::compat::*;
    use crate::ha::compat::*;
    use crate::nodes::compat::*;
    use crate::pools::compat::*;
    use crate::pve::{check_params, method_not_allowed, not_implemented, proxmox_errors};
    use crate::vms::compat::*;
    use axum::routing::{get, post};
    Router::new()
        .route("/version", get(version))
        .route("/access/ticket", post(ticket))
        .route("/nodes", get(nodes))
        .route("/cluster/nextid", get(nextid))
        .route("/nodes/{node}/qemu", get(list_qemu).post(create_qemu))
        .route("/nodes/{node}/qemu/{vmid}", axum::routing::delete(delete_qemu))
        .route("/nodes/{node}/qemu/{vmid}/status/current", get(status_current))
        .route("/nodes/{node}/qemu/{vmid}/config", get(qemu_config).post(update_config).put(update_config))
        .route("/nodes/{node}/qemu/{vmid}/status/{action}", post(power))
        .route("/nodes/{node}/qemu/{vmid}/migrate", post(migrate_qemu))
        .route("/nodes/{node}/qemu/{vmid}/resize", axum::routing::put(resize_qemu))
        .route("/nodes/{node}/qemu/{vmid}/unlink", axum::routing::put(unlink_qemu))
        .route("/nodes/{node}/qemu/{vmid}/move_disk", post(move_disk_qemu))
        .route("/nodes/{node}/qemu/{vmid}/pending", get(pending_qemu))
        .route("/nodes/{node}/qemu/{vmid}/snapshot", get(snapshots).post(snapshots))
        .route("/nodes/{node}/qemu/{vmid}/snapshot/{snapname}", get(snapshot).delete(snapshot))
        .route("/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback", post(snapshot_rollback))
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
            get(snapshot_config).put(snapshot_config),
        )
        .route("/nodes/{node}/tasks/{upid}/status", get(task_status))
        .route("/nodes/{node}/tasks/{upid}/log", get(task_log))
        .route("/nodes/{node}/tasks", get(list_tasks))
        .route("/cluster/tasks", get(crate::nodes::compat::cluster_tasks))
        .route("/nodes/{node}/status", get(node_status))
        .route("/nodes/{node}/rrddata", get(crate::nodes::metrics::compat_node))
        .route("/nodes/{node}/qemu/{vmid}/rrddata", get(crate::nodes::metrics::compat_qemu))
        .route("/nodes/{node}/qemu/{vmid}/vncproxy", post(crate::console::compat_vncproxy))
        .route("/nodes/{node}/qemu/{vmid}/termproxy", post(crate::console::compat_termproxy))
        .route("/nodes/{node}/qemu/{vmid}/vncwebsocket", get(crate::console::compat_websocket))
        .route("/nodes/{node}/storage/{storage}/rrddata", get(crate::nodes::metrics::compat_storage))
        .route("/storage", get(crate::storage::compat::storages).post(crate::storage::compat::storages))
        .route(
            "/storage/{storage}",
            get(crate::storage::compat::storage)
                .put(crate::storage::compat::storage)
                .delete(crate::storage::compat::storage),
        )
        .route("/nodes/{node}/storage/{storage}/status", get(node_storage_status))
        .route(
            "/nodes/{node}/storage/{storage}/upload",
            post(crate::storage::compat::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/nodes/{node}/storage/{storage}/download-url", post(crate::storage::compat::download_url))
        .route("/nodes/{node}/storage", get(node_storage))
        .route("/nodes/{node}/storage/{storage}/content", get(storage_content).post(storage_content_alloc))
        .route(
            "/nodes/{node}/storage/{storage}/content/{*volume}",
            get(storage_volume).put(storage_volume).delete(storage_volume),
        )
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/resources", get(cluster_resources))
        .route("/access/domains", get(access_domains))
        .route("/access/users", get(access_users).post(access_create_user))
        .route("/access/users/{userid}", get(access_user).put(access_user).delete(access_user))
        .route("/access/users/{userid}/token", get(access_token_list))
        .route(
            "/access/users/{userid}/token/{tokenid}",
            post(access_token).get(access_token_read_delete).delete(access_token_read_delete),
        )
        .route("/access/acl", get(access_acl).put(access_set_acl))
        .route("/access/roles", get(access_roles).post(access_create_role))
        .route("/access/roles/{roleid}", get(access_role).put(access_role).delete(access_role))
        .route("/access/groups", get(access_groups).post(access_groups))
        .route("/access/groups/{groupid}", get(access_group).delete(access_group))
        .route("/access/permissions", get(access_permissions))
        .route("/pools", get(pools).post(pools).put(pools))
        .route("/pools/{poolid}", get(pool).put(pool).delete(pool))
        .route("/cluster/ha", get(ha_index))
        .route("/cluster/ha/resources", get(ha_resources).post(ha_resources))
        .route("/cluster/ha/resources/{sid}", get(ha_resource).put(ha_resource).delete(ha_resource))
        .route("/cluster/ha/resources/{sid}/{action}", post(ha_move))
        .route("/cluster/ha/rules", get(ha_rules).post(ha_rules))
        .route("/cluster/ha/rules/{rule}", get(ha_rule).put(ha_rule).delete(ha_rule))
        .route("/cluster/ha/status", get(ha_status_index))
        .route("/cluster/ha/status/current", get(ha_status_current))
        .route("/cluster/ha/status/manager_status", get(ha_manager_status))
        .route_layer(axum::middleware::from_fn(check_params))
        .fallback(not_implemented)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(proxmox_errors))
}
