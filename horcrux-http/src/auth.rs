//! Bearer-token authentication. Only SHA-256 hashes of token secrets are replicated; a
//! request's secret is hashed and compared in constant time against every token.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::ApiState;

pub fn token_sha256(secret: &str) -> String {
    horcrux_core::ids::sha256_hex(secret)
}

pub(crate) use horcrux_core::ids::ct_eq;

pub use crate::caller::Caller;

/// The ticket from `Cookie: PVEAuthCookie=...` or `Authorization: PVEAuthCookie=...`.
pub(crate) fn ticket_of(req: &Request) -> Option<String> {
    let h = req.headers();
    let from_auth = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("PVEAuthCookie="))
        .map(str::to_string);
    let from_cookie = h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').map(str::trim).find_map(|kv| kv.strip_prefix("PVEAuthCookie=")).map(str::to_string)
    });
    from_auth.or(from_cookie).map(|t| t.replace("%3A", ":").replace("%3a", ":"))
}

/// Authenticates by API token (`Authorization: Bearer SECRET`) or by ticket (cookie
/// `PVEAuthCookie`; non-GET requests then need the matching `CSRFPreventionToken` header).
pub async fn require_token(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: send Authorization: Bearer <token>, or log in at /access/ticket",
        )
    };
    let now = crate::tickets::now_s();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // Proxmox's token header: `PVEAPIToken=USER@REALM!TOKENID=SECRET` (or `:` before the
    // secret, as some clients send).
    let pve_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("PVEAPIToken="))
        .and_then(|v| {
            let bang = v.find('!')?;
            let sep = v[bang..].find(['=', ':']).map(|i| bang + i)?;
            Some((v[..sep].to_string(), v[sep + 1..].trim().to_string()))
        });
    let bearer = match (&bearer, &pve_token) {
        (None, Some((id, secret))) => {
            // The id must name the token whose secret this is.
            let matches = st.runtime.cluster().read_local(|s| {
                s.api_tokens
                    .get(id)
                    .is_some_and(|t| ct_eq(t.secret_sha256.as_bytes(), token_sha256(secret).as_bytes()))
            });
            if !matches {
                return Err(unauthorized());
            }
            Some(secret.clone())
        }
        _ => bearer,
    };
    let caller: Option<Caller> = match (bearer, ticket_of(&req)) {
        (Some(secret), _) => {
            let presented = token_sha256(&secret);
            st.runtime.cluster().read_local(|s| {
                let mut found = None;
                // Compare against every token so timing does not reveal which one matched.
                for t in s.api_tokens.values() {
                    if ct_eq(t.secret_sha256.as_bytes(), presented.as_bytes()) {
                        found = Some(t.clone());
                    }
                }
                let t = found?;
                // A deleted, disabled or expired user's tokens stop working with it.
                let user_ok = t.user() == "root@pam" || s.users.get(t.user()).is_some_and(|u| u.active(now));
                let token_live = t.expire == 0 || t.expire > now;
                (user_ok && token_live).then(|| Caller { token_id: t.id.clone(), privsep: t.privsep })
            })
        }
        (None, Some(ticket)) => {
            let csrf =
                req.headers().get("CSRFPreventionToken").and_then(|v| v.to_str().ok()).map(str::to_string);
            let needs_csrf = req.method() != axum::http::Method::GET;
            let checked = st.runtime.cluster().read_local(|s| {
                let user = crate::tickets::verify_ticket(s, &ticket, now)?.user;
                let live = user == "root@pam" || s.users.get(&user).is_some_and(|u| u.active(now));
                if !live {
                    return None;
                }
                let csrf_ok = csrf.as_deref().is_some_and(|c| crate::tickets::verify_csrf(s, c, &user, now));
                Some((user, csrf_ok))
            });
            match checked {
                Some((_, false)) if needs_csrf => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "permission denied - invalid CSRF prevention token",
                    ))
                }
                Some((user, _)) => Some(Caller { token_id: user, privsep: false }),
                None => None,
            }
        }
        (None, None) => None,
    };
    let mutating = req.method() != axum::http::Method::GET;
    // A call another member forwarded over the cluster transport is recorded here too, where
    // it is executed (the receiving node recorded it as well). Only the transport marks one:
    // the marker is a request extension, which no client can set.
    let detail = if req.extensions().get::<crate::state::Forwarded>().is_some() { "forwarded" } else { "" };
    let full = req.extensions().get::<axum::extract::OriginalUri>().map(|u| u.path().to_string());
    let action = format!("{} {}", req.method(), full.as_deref().unwrap_or(req.uri().path()));
    let Some(caller) = caller else {
        if mutating {
            st.audit.record("-", &action, 401, "not authenticated");
        }
        return Err(unauthorized());
    };
    let who = caller.token_id.clone();
    req.extensions_mut().insert(caller);
    let resp = next.run(req).await;
    if mutating {
        st.audit.record(&who, &action, resp.status().as_u16(), detail);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_compares() {
        assert_eq!(token_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        let c = Caller { token_id: "root@pam!admin".into(), privsep: false };
        assert_eq!(c.user(), "root@pam");
    }
}
