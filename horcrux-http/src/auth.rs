//! Bearer-token authentication. Only SHA-256 hashes of token secrets are replicated; a
//! request's secret is hashed and compared in constant time against every token.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::routes::ApiState;

pub fn token_sha256(secret: &str) -> String {
    horcrux_core::ids::sha256_hex(secret)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made the request: the token id, and the user it belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    /// The token's rights are separated from (and at most) its user's.
    pub privsep: bool,
}

impl Caller {
    /// `root@pam!admin` -> `root@pam`.
    pub fn user(&self) -> &str {
        self.token_id.split('!').next().unwrap_or(&self.token_id)
    }
}

pub async fn require_token(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication required: send Authorization: Bearer <token>")
    };
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(unauthorized)?;
    let presented = token_sha256(secret);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let caller = st.runtime.cluster().read_local(|s| {
        let mut found = None;
        // Compare against every token so timing does not reveal which one matched.
        for t in s.api_tokens.values() {
            if ct_eq(t.secret_sha256.as_bytes(), presented.as_bytes()) {
                found = Some(t.clone());
            }
        }
        let t = found?;
        let expired = |e: u64| e != 0 && e <= now;
        // A deleted or expired user's tokens stop working with it.
        let user_ok = t.user() == "root@pam" || s.users.get(t.user()).is_some_and(|u| !expired(u.expire));
        (user_ok && !expired(t.expire)).then(|| Caller { token_id: t.id.clone(), privsep: t.privsep })
    });
    let caller = caller.ok_or_else(unauthorized)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
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
