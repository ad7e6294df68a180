//! Any node answers for any guest: requests about a guest owned by another node (and
//! about a task another node ran) are carried to that node over the cluster transport and
//! answered there, where the guest's QEMU and the task's log live.

use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use horcrux_core::Upid;
use horcrux_raft::transport::{ApiBody, ApiCall, ApiReply};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::state::ApiState;
use crate::state::Forwarded;

/// Headers that only this daemon may mean: removed from every client request.
pub(crate) const INTERNAL_HEADERS: &[&str] = &["x-horcrux-forwarded"];
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The node that should answer `uri` (relative to `/api/v1`), if not this one: a guest's
/// owner, a task's node, or the member named by `?node=NAME` for a create (`POST /vms`),
/// a storage's content and the audit log.
fn owner_of(st: &ApiState, uri: &axum::http::Uri) -> Option<String> {
    let me = st.runtime.cluster().node_name().to_string();
    let mut parts = uri.path().trim_start_matches('/').split('/');
    let owner = match (parts.next(), parts.next()) {
        (Some("vms"), None) | (Some("storage"), Some(_)) | (Some("access"), Some("audit")) => {
            let node = serde_urlencoded::from_str::<Vec<(String, String)>>(uri.query()?)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "node")?
                .1;
            st.runtime.cluster().read_local(|s| s.nodes.contains_key(&node)).then_some(node)?
        }
        // A console's WebSocket is answered here and relayed (see `console`).
        (Some("vms"), Some(_)) if uri.path().ends_with("/vncwebsocket") => return None,
        (Some("vms"), Some(vmid)) => {
            let vmid: u32 = vmid.parse().ok()?;
            st.runtime.cluster().read_local(|s| s.guests.get(&vmid).map(|g| g.node.clone()))?
        }
        (Some("tasks"), Some(upid)) => upid.parse::<Upid>().ok()?.node,
        // The HA manager and the leases are the leader's.
        (Some("cluster"), Some("ha")) if matches!(parts.next(), Some("status" | "placement")) => {
            st.runtime.cluster().cluster_status().leader?
        }
        (Some("nodes"), Some(node)) => {
            st.runtime.cluster().read_local(|s| s.nodes.contains_key(node)).then(|| node.to_string())?
        }
        _ => return None,
    };
    (owner != me).then_some(owner)
}

pub async fn forward_to_owner(
    State(st): State<ApiState>,
    OriginalUri(original): OriginalUri,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    let Some(owner) = owner_of(&st, req.uri()) else {
        return next.run(req).await;
    };
    // A ticket in a cookie travels as the equivalent Authorization header.
    let cookie_ticket = crate::auth::ticket_of(&req).map(|t| format!("PVEAuthCookie={t}"));
    let authorization = header_str(&req, header::AUTHORIZATION).or(cookie_ticket);
    let csrf = req.headers().get("CSRFPreventionToken").and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header_str(&req, header::CONTENT_TYPE);
    let method = req.method().to_string();
    if req.uri().path().ends_with("/upload") {
        // A file of any size: streamed to the owner as it arrives, never held here whole.
        let call = ApiCall {
            method,
            uri: original.to_string(),
            authorization,
            content_type,
            body: String::new(),
            csrf,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut stream = req.into_body().into_data_stream();
        let pump = async move {
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| format!("the upload was cut off: {e}"));
                let stop = piece.is_err();
                if tx.send(piece).await.is_err() || stop {
                    return;
                }
            }
        };
        let (_, reply) = tokio::join!(pump, st.runtime.cluster().forward_api_stream(&owner, call, rx));
        return match reply {
            Ok(reply) => reply_response(reply),
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_field("body", e.to_string()).into_response(),
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return ApiError::bad_field("body", "not UTF-8").into_response();
    };
    let call = ApiCall { method, uri: original.to_string(), authorization, content_type, body, csrf };
    match st.runtime.cluster().forward_api(&owner, call).await {
        Ok(reply) => reply_response(reply),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn header_str(req: &Request, name: header::HeaderName) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn reply_response(reply: ApiReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, reply.body).into_response();
    if let Some(ct) = reply.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// Serves a forwarded call with this node's own router (authentication included).
pub async fn serve_forwarded(app: Router, call: ApiCall, streamed: Option<ApiBody>) -> ApiReply {
    let mut builder = axum::http::Request::builder().method(call.method.as_str()).uri(&call.uri);
    if let Some(a) = &call.authorization {
        builder = builder.header(header::AUTHORIZATION, a);
    }
    if let Some(c) = &call.content_type {
        builder = builder.header(header::CONTENT_TYPE, c);
    }
    if let Some(c) = &call.csrf {
        builder = builder.header("CSRFPreventionToken", c);
    }
    let body = match streamed {
        Some(rx) => Body::from_stream(
            futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|piece| (piece.map_err(std::io::Error::other), rx))
            })
            .fuse(),
        ),
        None => Body::from(call.body),
    };
    let Ok(mut req) = builder.body(body) else {
        return ApiReply {
            status: 400,
            content_type: None,
            body: "{\"error\":\"bad forwarded request\"}".into(),
        };
    };
    req.extensions_mut().insert(Forwarded);
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = axum::body::to_bytes(resp.into_body(), MAX_BODY).await.unwrap_or_default();
    ApiReply { status, content_type, body: String::from_utf8_lossy(&body).into_owned() }
}
