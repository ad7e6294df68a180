//! The web UI's files at `/`: embedded in the binary at build time (`web-static/`), or read
//! from a directory (`--web-dir`, for working on the UI without rebuilding). Every answer
//! carries a content security policy that allows only this origin's scripts and the page's
//! own import map (by its hash), so injected markup cannot run script.

use std::path::{Component, Path};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use crate::error::ApiError;
use crate::state::ApiState;
pub use crate::webfiles::WebRoot;

fn content_type(rel: &str) -> &'static str {
    match Path::new(rel).extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The request path as a file below the root: `/` is `index.html`; `..`, absolute and
/// hidden components are refused.
fn relative(path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let ok = Path::new(rel)
        .components()
        .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')));
    ok.then(|| rel.to_string())
}

/// `sha256-...` of every inline `<script>` of a page (the import map), for the policy.
fn inline_script_hashes(html: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(html);
    let mut hashes = Vec::new();
    let mut rest = &text[..];
    while let Some(start) = rest.find("<script") {
        let after = &rest[start..];
        let Some(open_end) = after.find('>') else { break };
        let tag = &after[..open_end];
        let body = &after[open_end + 1..];
        let Some(close) = body.find("</script>") else { break };
        if !tag.contains("src=") {
            hashes.push(format!(
                "'sha256-{}'",
                horcrux_core::ids::base64_encode(&sha2::Sha256::digest(&body[..close]))
            ));
        }
        rest = &body[close..];
    }
    hashes
}

fn policy(inline: &[String]) -> String {
    format!(
        "default-src 'self'; script-src 'self' {}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        inline.join(" ")
    )
}

/// Serves the UI's files; anything else (an unknown API route) is a JSON 404.
pub async fn serve(State(st): State<ApiState>, req: Request) -> Response {
    let path = req.uri().path();
    let api = ["/api/", "/api2/"].iter().any(|p| path.starts_with(p)) || path == "/api" || path == "/api2";
    if api || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return ApiError::not_found("no such route").into_response();
    }
    let Some(rel) = relative(path) else {
        return ApiError::not_found("no such file").into_response();
    };
    let Some(bytes) = st.web.read(&rel).await else {
        return ApiError::not_found("no such file").into_response();
    };
    let etag = format!("\"{}\"", horcrux_core::ids::hex_encode(&sha2::Sha256::digest(&bytes)[..12]));
    let fresh = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
    let csp = policy(&if rel.ends_with(".html") { inline_script_hashes(&bytes) } else { Vec::new() });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if req.method() == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::OK, bytes.into_owned()).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&rel)));
    // Revalidated each time (a cheap 304): a new binary's UI is never mixed with an old one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(relative("/").as_deref(), Some("index.html"));
        assert_eq!(
            relative("/vendor/preact/preact.module.js").as_deref(),
            Some("vendor/preact/preact.module.js")
        );
        assert_eq!(relative("/../etc/passwd"), None);
        assert_eq!(relative("/a/../../etc/passwd"), None);
        assert_eq!(relative("/.git/config"), None);
        assert_eq!(relative("//etc/passwd").as_deref(), Some("etc/passwd"));
    }

    #[test]
    fn the_import_map_is_allowed_by_its_hash() {
        let html = b"<html><script type=\"importmap\">{\"imports\":{}}</script><script type=\"module\" src=\"/app.js\"></script>";
        let hashes = inline_script_hashes(html);
        let expected = horcrux_core::ids::base64_encode(&sha2::Sha256::digest(b"{\"imports\":{}}"));
        assert_eq!(hashes, vec![format!("'sha256-{expected}'")]);
        assert!(policy(&hashes).contains(&expected));
    }

    #[test]
    fn the_ui_is_embedded() {
        assert!(
            crate::webfiles::embedded_paths().any(|p| p == "index.html"),
            "web-static/index.html is built in"
        );
    }
}
