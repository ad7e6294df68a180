//! API errors: a status code and a JSON body `{"error": message, "field": name?}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use horcrux_actors::RuntimeError;
use horcrux_core::{ApplyError, ValidationError};
use horcrux_raft::ProposeError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), field: None }
    }
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Self { status: StatusCode::BAD_REQUEST, message, field: Some(field) }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_field(e.field, e.message)
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(v) => v.into(),
            ApplyError::NotFound { what } => ApiError::not_found(format!("{what} not found")),
            ApplyError::Conflict { message } => ApiError::conflict(message),
            ApplyError::Forbidden { message } => ApiError::new(StatusCode::FORBIDDEN, message),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Rejected(a) => a.into(),
            ProposeError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ProposeError::Storage(m) => ApiError::internal(m),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotFound(_) => ApiError::not_found(e.to_string()),
            RuntimeError::NotOwned { .. } => ApiError::new(StatusCode::MISDIRECTED_REQUEST, e.to_string()),
            RuntimeError::Driver(_) | RuntimeError::ActorGone => ApiError::internal(e.to_string()),
            RuntimeError::Busy(m) => ApiError::new(StatusCode::CONFLICT, m),
            RuntimeError::Cluster(p) => p.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = self.field {
            body["field"] = f.into();
        }
        (self.status, axum::Json(body)).into_response()
    }
}

/// Answers of the framework itself (a malformed query string, a method the route does not
/// have) come as plain text; every error leaves as `{"error": ...}` like the handlers' own.
pub async fn json_errors(resp: Response) -> Response {
    reshape_plain_errors(resp, |status, message| ApiError::new(status, message).into_response()).await
}

/// A plain-text error answer rebuilt by `shape` from its status and text (the reason phrase
/// if it has none), keeping its other headers; any other answer unchanged.
pub async fn reshape_plain_errors(
    resp: Response,
    shape: impl FnOnce(axum::http::StatusCode, String) -> Response,
) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut out = shape(status, message);
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
