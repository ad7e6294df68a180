//! Password login with Proxmox-style tickets: `POST /api/v1/access/ticket` checks a `@pve`
//! user's Argon2id password (or renews a valid ticket passed as the password) and answers
//! a ticket, valid 2 h, plus the CSRF token that every non-GET request authenticated by the
//! ticket cookie must carry. Tickets and CSRF tokens are HMAC-SHA256-signed with the
//! replicated ticket key (random, of its own, rotated every 24 h; the previous key stays
//! valid), over the user's credentials revision, so a password, second-factor, enable or
//! expiry change ends the user's tickets. A ticket carries the time of the login it
//! descends from: renewals never extend a login past `ticket-max-age` (default 24 h).
//! Failed logins are throttled per (user, source address) and per source address, on every
//! node: each failure is counted here and sent to the other members. So a guesser is
//! slowed everywhere, but cannot lock a user out from other clients; root@pam is never
//! locked out even from the guessing address: its attempts there are delayed, more with
//! each failure, instead of refused.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use horcrux_core::{ClusterState, Command};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{parse_body, ApiState};
use crate::throttle::*;
use crate::tickets::*;
pub use crate::tickets::{keep_ticket_key, rotate_ticket_key_if_due};

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
    /// A TOTP code given with the password (Proxmox's older one-step form).
    #[serde(default)]
    otp: Option<String>,
    /// The partial ticket of the first step; `password` then carries `totp:CODE` or
    /// `recovery:CODE`.
    #[serde(default, rename = "tfa-challenge")]
    tfa_challenge: Option<String>,
}

/// Checks a second factor (`totp:CODE`, `recovery:CODE` or a bare code) and records its
/// use through Raft, so no code works twice anywhere in the cluster.
async fn second_factor(st: &ApiState, user: &horcrux_core::User, answer: &str, now: u64) -> bool {
    let Some(tfa) = &user.tfa else { return false };
    let (kind, code) = answer.split_once(':').unwrap_or(("totp", answer));
    let (step, recovery) = match kind {
        "totp" => {
            let secret = horcrux_core::totp::base32_decode(&tfa.totp_secret).unwrap_or_default();
            match horcrux_core::totp::verify(&secret, code.trim(), now) {
                Some(step) if step > tfa.last_step => (Some(step), None),
                _ => return false,
            }
        }
        "recovery" => match horcrux_core::totp::match_recovery_code(&tfa.recovery, code) {
            Some(i) => (None, Some(i)),
            None => return false,
        },
        _ => return false,
    };
    let cmd = Command::UseTfa { userid: user.userid.clone(), step, recovery };
    st.runtime.cluster().propose(cmd).await.is_ok()
}

/// `DELETE /api/v1/access/ticket`: logging out of a browser session. The ticket cookie is
/// `HttpOnly` (no script can read or clear it), so the server clears it. Public: it only
/// ever removes the caller's own cookie.
pub async fn logout() -> Response {
    let mut resp = Json(json!({})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("PVEAuthCookie=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    resp
}

pub async fn ticket(
    State(st): State<ApiState>,
    peer: Option<Extension<PeerAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let l: Login = parse_body(&body)?;
    let ip = peer.map(|p| p.0 .0.ip().to_string()).unwrap_or_default();
    let (user_key, addr_key) = throttle_keys(&l.username, &ip);
    let throttle = &st.throttle;
    let too_many = |wait: Duration| {
        st.audit.record(&l.username, "login", 429, &addr_key);
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins; try again in {} s", wait.as_secs().max(1)),
        ))
    };
    if let Some(wait) = throttle.blocked(&addr_key, MAX_PER_ADDR) {
        return too_many(wait);
    }
    if let Some(wait) = throttle.blocked(&user_key, MAX_PER_USER_ADDR) {
        if l.username != "root@pam" {
            return too_many(wait);
        }
        // root@pam is slowed, never locked out.
        tokio::time::sleep(root_delay(throttle.count(&user_key))).await;
    }
    let now = now_s();
    let cluster = st.runtime.cluster();
    let state = cluster.read_local(|s| s.clone());
    let user = state.users.get(&l.username).filter(|u| u.active(now)).cloned();
    let mut login_time = now;
    let ok = if let Some(challenge) = &l.tfa_challenge {
        // Second step: the partial ticket proves the password; `password` is the factor.
        let pending =
            verify_ticket(&state, challenge, now).is_some_and(|t| t.user == format!("!tfa!{}", l.username));
        match (&user, pending) {
            (Some(u), true) => second_factor(&st, u, &l.password, now).await,
            _ => false,
        }
    } else if l.password.starts_with("PVE:") {
        // Renewal: a valid ticket of the same user stands for the password, within the
        // login's maximum age.
        match renewable(&state, &l.password, &l.username, now) {
            Some(login) => {
                login_time = login;
                true
            }
            None => false,
        }
    } else if let Some((name, realm)) =
        l.username.rsplit_once('@').and_then(|(n, r)| state.realms.get(r).map(|c| (n.to_string(), c.clone())))
    {
        // A directory realm: the user must exist here, the directory checks the password.
        let pw = l.password.clone();
        let good = tokio::task::spawn_blocking(move || super::ldap::authenticate(&realm, &name, &pw))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let good = good.unwrap_or_else(|e| {
            tracing::warn!("LDAP: {e}");
            false
        });
        match (good, &user) {
            (true, Some(u)) if u.tfa.is_some() => match &l.otp {
                Some(otp) => second_factor(&st, u, otp, now).await,
                None => return pending_tfa(&state, &l.username, now),
            },
            (good, u) => good && u.is_some(),
        }
    } else if let Some(name) = l.username.strip_suffix("@pam") {
        // The host's PAM checks `@pam` users; root@pam exists implicitly, others must have
        // been added to Horcrux.
        let known = l.username == "root@pam" || user.is_some();
        let (name, pw) = (name.to_string(), l.password.clone());
        let good = tokio::task::spawn_blocking(move || super::pam::authenticate("horcrux", &name, &pw))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let good = match good {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("PAM: {e}");
                false
            }
        };
        if known && good && user.as_ref().is_some_and(|u| u.tfa.is_some()) && l.otp.is_none() {
            return pending_tfa(&state, &l.username, now);
        }
        match (known && good, &user, &l.otp) {
            (true, Some(u), Some(otp)) if u.tfa.is_some() => second_factor(&st, u, otp, now).await,
            (ok, _, _) => ok,
        }
    } else {
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        // Verify against a dummy hash when there is none, so timing does not reveal users.
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let good = verify_password(&hash, &l.password) && hash != DUMMY_HASH;
        match (good, &user) {
            (true, Some(u)) if u.tfa.is_some() => match &l.otp {
                Some(otp) => second_factor(&st, u, otp, now).await,
                None => return pending_tfa(&state, &l.username, now),
            },
            (good, _) => good,
        }
    };
    if !ok {
        throttle.fail(user_key.clone());
        throttle.fail(addr_key.clone());
        st.runtime.cluster().broadcast_login_failures(vec![user_key, addr_key.clone()]);
        tracing::warn!(user = %l.username, "login failed");
        st.audit.record(&l.username, "login", 401, &addr_key);
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "authentication failure"));
    }
    st.audit.record(&l.username, "login", 200, &addr_key);
    let (Some(ticket), Some(csrf)) =
        (make_ticket(&state, &l.username, now, login_time), make_csrf(&state, &l.username, now))
    else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has no key to sign tickets yet",
        ));
    };
    let cookie =
        format!("PVEAuthCookie={}; Path=/; Secure; HttpOnly; SameSite=Lax", ticket.replace(':', "%3A"));
    let mut resp = Json(json!({
        "username": l.username,
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "clustername": "horcrux",
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Password right, second factor pending: a partial ticket that only the second step
/// accepts.
fn pending_tfa(state: &ClusterState, username: &str, now: u64) -> Result<Response, ApiError> {
    let partial = make_ticket(state, &format!("!tfa!{username}"), now, now)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no ticket key yet"))?;
    Ok(Json(json!({ "username": username, "ticket": partial, "NeedTFA": 1, "clustername": "horcrux" }))
        .into_response())
}

/// Argon2id of a random string: what a login of a user without a password is checked
/// against, so the answer takes as long as for a real user.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3NCOVHLtlZVw8tSEDYLsTYtDQDfrGmsnXeJyrBxjVjc";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    userid: String,
    password: String,
}

/// `PUT /access/password`: sets a `@pve` user's password (stored as an Argon2id hash).
pub async fn set_password(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p: NewPassword = parse_body(&body)?;
    if p.password.chars().count() < 8 || p.password.len() > 256 {
        return Err(ApiError::bad_field("password", "8 to 256 characters"));
    }
    // Refused before the (deliberately slow) hashing; `apply` checks again.
    st.runtime.cluster().read_local(|s| s.check_credentials_change(&caller.actor(), &p.userid))?;
    let hash = hash_password(&p.password)?;
    st.propose_by(&caller, Command::SetPassword { userid: p.userid, password_hash: hash }).await?;
    Ok(Json(json!({})))
}

/// `POST /access/tfa/{userid}`: enrols a TOTP factor. Answers the secret, its
/// `otpauth://` URI (for a QR code) and 8 recovery codes, once; only hashes of the codes
/// are kept.
pub async fn enrol_tfa(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(userid): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut secret = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| ApiError::internal("no randomness"))?;
    let codes: Vec<String> = (0..8)
        .map(|_| {
            let r = horcrux_core::ids::random_secret();
            format!("{}-{}-{}", &r[0..4], &r[4..8], &r[8..12])
        })
        .collect();
    let tfa = horcrux_core::Tfa {
        totp_secret: horcrux_core::totp::base32_encode(&secret),
        last_step: 0,
        recovery: codes.iter().map(|c| Some(horcrux_core::totp::recovery_code_hash(c))).collect(),
    };
    let b32 = tfa.totp_secret.clone();
    st.propose_by(&caller, Command::SetTfa { userid: userid.clone(), tfa: Some(tfa) }).await?;
    Ok(Json(json!({
        "secret": b32,
        "uri": horcrux_core::totp::provisioning_uri("Horcrux", &userid, &secret),
        "recovery": codes,
    })))
}

/// `DELETE /access/tfa/{userid}`: removes the second factor.
pub async fn remove_tfa(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(userid): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.propose_by(&caller, Command::SetTfa { userid, tfa: None }).await?;
    Ok(Json(json!({})))
}
