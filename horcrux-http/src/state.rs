//! What every handler shares (`ApiState`) and the helpers every resource family uses.
//! Imports nothing from the crate but the leaf modules (`error`, `caller`, `throttle`,
//! `audit`), so the crate's files form a tree around it.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::Router;
use horcrux_actors::NodeRuntime;
use horcrux_core::{ids, Command};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::caller::Caller;
use crate::error::ApiError;

/// Proxmox's default graceful-shutdown timeout.
const DEFAULT_SHUTDOWN_TIMEOUT_S: u32 = 60;

/// What every handler shares: one `Arc`, so the per-request clones the middleware layers
/// make cost one reference count, not one per field.
#[derive(Clone)]
pub struct ApiState(pub(crate) Arc<ApiShared>);

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

pub struct ApiShared {
    pub runtime: NodeRuntime,
    /// Serialises guest creation so two requests never allocate the same disk.
    pub(crate) create_lock: Arc<tokio::sync::Mutex<()>>,
    pub(crate) throttle: crate::throttle::Throttle,
    pub(crate) audit: crate::audit::AuditLog,
    /// The native router, for the `/api2/json` layer to call.
    pub(crate) native: NativeApp,
    /// Where the web UI's files come from.
    pub(crate) web: crate::webfiles::WebRoot,
    /// Console tickets issued here and not yet used.
    pub(crate) consoles: crate::console_tickets::Tickets,
}

impl ApiShared {
    /// Proposes `cmd` on behalf of `caller`: the state machine checks an access-control
    /// change against the caller's rights at the point the change meets in the log.
    pub(crate) async fn propose_by(
        &self,
        caller: &Caller,
        cmd: Command,
    ) -> Result<horcrux_core::ApplyOk, ApiError> {
        Ok(self.runtime.cluster().propose_as(Some(caller.actor()), cmd).await?)
    }
}

/// The native router, set once it is built (compat calls go through it).
pub type NativeApp = Arc<OnceLock<Router>>;

/// Marks (as a request extension, which no client can set) a call that arrived over the
/// cluster transport: it is served here and never forwarded again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded;

/// Parses a JSON body (an empty body counts as `{}`); errors name the offending field.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at its parent's path; every other error at the field.
        let missing = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next());
        let field = match (missing, path.as_str()) {
            (Some(f), ".") => f.to_string(),
            (Some(f), parent) => format!("{parent}.{f}"),
            (None, ".") => "body".to_string(),
            (None, p) => p.to_string(),
        };
        ApiError::bad_field(field, inner)
    })
}

pub(crate) fn parse_vmid(raw: &str) -> Result<u32, ApiError> {
    let n: u64 = raw.parse().map_err(|_| ApiError::bad_field("vmid", format!("{raw:?} is not a number")))?;
    Ok(ids::validate_vmid("vmid", n)?)
}

pub(crate) fn random_mac() -> String {
    let mut b = [0u8; 3];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("OS random source");
    horcrux_core::vmconfig::mac_from_bytes(b)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    /// How long the guest may take to power off before it is stopped hard.
    timeout_s: Option<u32>,
}

/// The power-off timeout of a shutdown or reboot body: default 60 s, at most a day.
pub(crate) fn power_off_timeout(body: &Bytes) -> Result<u32, ApiError> {
    let b: ShutdownBody = parse_body(body)?;
    let timeout = b.timeout_s.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_S);
    if timeout > 86_400 {
        return Err(ApiError::bad_field("timeout_s", "at most 86400 seconds"));
    }
    Ok(timeout)
}
