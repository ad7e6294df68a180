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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use horcrux_core::{ClusterState, Command};
use ring::hmac;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{ct_eq, Caller};
use crate::error::ApiError;
use crate::routes::{parse_body, ApiState};

/// How long a ticket (and its CSRF token) is valid, as in Proxmox.
pub const TICKET_LIFETIME_S: u64 = 2 * 3600;

/// The client's address, set per connection by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

pub fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| ApiError::internal("no randomness"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| ApiError::internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// How often the ticket key is replaced.
pub const TICKET_KEY_ROTATION: Duration = Duration::from_secs(24 * 3600);

/// The keys tickets verify against: the current one first, then the previous one.
fn keys(state: &ClusterState) -> Vec<hmac::Key> {
    let Some(k) = &state.ticket_keys else { return Vec::new() };
    std::iter::once(&k.current)
        .chain(k.previous.as_ref())
        .filter_map(|k| horcrux_core::ids::hex_decode(&k.secret_hex))
        .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, &secret))
        .collect()
}

/// `data` signed for `user` (whose credentials revision the signature covers).
fn sign(key: &hmac::Key, state: &ClusterState, user: &str, data: &str) -> String {
    let rev = state.credentials_revision(user.strip_prefix("!tfa!").unwrap_or(user));
    horcrux_core::ids::hex_encode(hmac::sign(key, format!("{data}\n{rev}").as_bytes()).as_ref())
}

fn signed_by_any(state: &ClusterState, user: &str, data: &str, sig: &str) -> bool {
    keys(state).iter().any(|k| ct_eq(sign(k, state, user, data).as_bytes(), sig.as_bytes()))
}

/// `PVE:USER:ISSUED:LOGIN::SIG`, times in hex seconds: `ISSUED` this ticket, `LOGIN` the
/// password login it descends from through renewals.
pub fn make_ticket(state: &ClusterState, user: &str, at: u64, login: u64) -> Option<String> {
    let key = keys(state).into_iter().next()?;
    let data = format!("PVE:{user}:{at:08X}:{login:08X}");
    Some(format!("{data}::{}", sign(&key, state, user, &data)))
}

pub fn make_csrf(state: &ClusterState, user: &str, at: u64) -> Option<String> {
    let key = keys(state).into_iter().next()?;
    Some(format!("{at:08X}:{}", sign(&key, state, user, &format!("csrf:{at:08X}:{user}"))))
}

fn fresh(at: u64, now: u64) -> bool {
    at <= now + 300 && now.saturating_sub(at) <= TICKET_LIFETIME_S
}

/// A valid ticket: whose it is and when its login was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketInfo {
    pub user: String,
    pub login: u64,
}

/// The user a valid, unexpired ticket was issued to, and when they logged in.
pub fn verify_ticket(state: &ClusterState, ticket: &str, now: u64) -> Option<TicketInfo> {
    let (data, sig) = ticket.rsplit_once("::")?;
    let mut parts = data.split(':');
    let (prefix, user, at, login) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let at = u64::from_str_radix(at, 16).ok()?;
    let login = u64::from_str_radix(login, 16).ok()?;
    let ok = prefix == "PVE"
        && parts.next().is_none()
        && login <= at
        && fresh(at, now)
        && signed_by_any(state, user, data, sig);
    ok.then(|| TicketInfo { user: user.to_string(), login })
}

/// A renewal: `ticket` is a valid ticket of `user` whose login is no older than the
/// cluster's `ticket-max-age`; answers that login's time, which the new ticket keeps.
pub fn renewable(state: &ClusterState, ticket: &str, user: &str, now: u64) -> Option<u64> {
    let t = verify_ticket(state, ticket, now)?;
    (t.user == user && now.saturating_sub(t.login) <= state.ticket_max_age_s()).then_some(t.login)
}

pub fn verify_csrf(state: &ClusterState, token: &str, user: &str, now: u64) -> bool {
    let Some((time, sig)) = token.split_once(':') else { return false };
    let Ok(at) = u64::from_str_radix(time, 16) else { return false };
    fresh(at, now) && signed_by_any(state, user, &format!("csrf:{time}:{user}"), sig)
}

/// Keeps a ticket key: installs one if there is none and replaces it once it is a day old.
/// Every node runs this; the compare-and-set in `RotateTicketKey` lets one rotation through.
pub async fn keep_ticket_key(cluster: horcrux_raft::ClusterHandle) {
    loop {
        let wait = match rotate_ticket_key_if_due(&cluster).await {
            Ok(_) => Duration::from_secs(60),
            Err(e) => {
                tracing::debug!("ticket key: {e}");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One check: `Ok(true)` if this call installed a new key.
pub async fn rotate_ticket_key_if_due(
    cluster: &horcrux_raft::ClusterHandle,
) -> Result<bool, horcrux_raft::ProposeError> {
    let current =
        cluster.read_local(|s| s.ticket_keys.as_ref().map(|k| (k.current.id, k.current.created_ms)));
    let now_ms = now_s() * 1000;
    let due = current
        .is_none_or(|(_, created)| now_ms.saturating_sub(created) >= TICKET_KEY_ROTATION.as_millis() as u64);
    if !due {
        return Ok(false);
    }
    let secret_hex = horcrux_core::ids::random_secret();
    match cluster.propose(Command::RotateTicketKey { secret_hex, replaces: current.map(|c| c.0) }).await {
        Ok(_) => Ok(true),
        // Another node rotated first.
        Err(horcrux_raft::ProposeError::Rejected(horcrux_core::ApplyError::Conflict { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Failed logins per (user, source address) and per source address within a sliding
/// window, counted on every node.
#[derive(Clone)]
pub struct Throttle {
    window: Duration,
    failures: Arc<Mutex<HashMap<String, VecDeque<Instant>>>>,
}

const MAX_PER_USER_ADDR: usize = 5;
const MAX_PER_ADDR: usize = 20;
/// The longest delay a throttled root@pam login waits.
const ROOT_DELAY_MAX: Duration = Duration::from_secs(30);

/// The throttle keys of a login of `user` from `ip`.
fn throttle_keys(user: &str, ip: &str) -> (String, String) {
    (format!("user:{user}|{ip}"), format!("addr:{ip}"))
}

/// How long a root@pam login from an address with `failures` recent failures waits:
/// nothing below the limit, then 1 s doubling per failure, at most `ROOT_DELAY_MAX`.
fn root_delay(failures: usize) -> Duration {
    match failures.checked_sub(MAX_PER_USER_ADDR) {
        None => Duration::ZERO,
        Some(n) => Duration::from_secs(1u64 << n.min(16)).min(ROOT_DELAY_MAX),
    }
}

impl Throttle {
    pub fn new() -> Self {
        let secs = std::env::var("HORCRUX_LOGIN_WINDOW_S").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        Self { window: Duration::from_secs(secs), failures: Arc::default() }
    }

    /// `Some(wait)` while `key` has too many recent failures.
    fn blocked(&self, key: &str, max: usize) -> Option<Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = f.get_mut(key)?;
        while q.front().is_some_and(|t| t.elapsed() >= self.window) {
            q.pop_front();
        }
        (q.len() >= max)
            .then(|| self.window.saturating_sub(q.front().map(|t| t.elapsed()).unwrap_or_default()))
    }

    /// Recent failures of `key`.
    fn count(&self, key: &str) -> usize {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.get(key).map(|q| q.iter().filter(|t| t.elapsed() < self.window).count()).unwrap_or(0)
    }

    /// Failures another member saw (only well-formed keys count).
    pub fn note_remote(&self, keys: Vec<String>) {
        for k in keys {
            if k.len() <= 400 && (k.starts_with("user:") || k.starts_with("addr:")) {
                self.fail(k);
            }
        }
    }

    fn fail(&self, key: String) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded memory under a flood of distinct names: forget keys whose failures all
        // left the window.
        if f.len() > 10_000 {
            let window = self.window;
            f.retain(|_, q| q.back().is_some_and(|t| t.elapsed() < window));
        }
        f.entry(key).or_default().push_back(Instant::now());
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

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
        let good = tokio::task::spawn_blocking(move || crate::ldap::authenticate(&realm, &name, &pw))
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
        let good = tokio::task::spawn_blocking(move || crate::pam::authenticate("horcrux", &name, &pw))
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

#[cfg(test)]
mod tests {
    use super::*;
    use horcrux_core::state::TICKET_MAX_AGE_DEFAULT_S;
    use horcrux_core::Request;

    fn apply(s: &mut ClusterState, index: u64, ts_ms: u64, cmd: Command) {
        s.apply(index, &Request { ts_ms, cmd, actor: None, id: None }).unwrap();
    }

    fn rotate(s: &mut ClusterState, index: u64, secret: char) {
        let replaces = s.ticket_keys.as_ref().map(|k| k.current.id);
        let secret_hex = secret.to_string().repeat(64);
        apply(s, index, index * 1000, Command::RotateTicketKey { secret_hex, replaces });
    }

    fn with_user() -> ClusterState {
        let mut s = ClusterState::default();
        rotate(&mut s, 1, 'a');
        let user =
            Command::CreateUser { userid: "u@pve".into(), comment: String::new(), groups: vec![], expire: 0 };
        apply(&mut s, 2, 2000, user);
        s
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn tickets_survive_one_key_rotation_not_two() {
        let mut s = with_user();
        let t = make_ticket(&s, "u@pve", NOW, NOW).unwrap();
        let csrf = make_csrf(&s, "u@pve", NOW).unwrap();
        assert_eq!(verify_ticket(&s, &t, NOW), Some(TicketInfo { user: "u@pve".into(), login: NOW }));
        rotate(&mut s, 3, 'b');
        assert!(verify_ticket(&s, &t, NOW).is_some(), "the previous key still verifies");
        assert!(verify_csrf(&s, &csrf, "u@pve", NOW));
        // New tickets are signed with the new key.
        let t2 = make_ticket(&s, "u@pve", NOW, NOW).unwrap();
        assert_ne!(t, t2);
        rotate(&mut s, 4, 'c');
        assert_eq!(verify_ticket(&s, &t, NOW), None, "two rotations later");
        assert!(!verify_csrf(&s, &csrf, "u@pve", NOW));
        assert!(verify_ticket(&s, &t2, NOW).is_some());
        // A stale rotation (replacing a key that is no longer current) is refused.
        let stale = Command::RotateTicketKey { secret_hex: "d".repeat(64), replaces: Some(3) };
        assert!(s.apply(5, &Request { ts_ms: 5, cmd: stale, actor: None, id: None }).is_err());
    }

    #[test]
    fn credential_changes_end_outstanding_tickets() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3NCOVHLtlZVw8tSEDYLsTYtDQDfrGmsnXeJyrBxjVjc";
        let changes = [
            Command::SetPassword { userid: "u@pve".into(), password_hash: hash.into() },
            Command::SetTfa { userid: "u@pve".into(), tfa: None },
            Command::UpdateUser {
                userid: "u@pve".into(),
                comment: None,
                email: None,
                groups: None,
                append: false,
                expire: None,
                enable: Some(false),
            },
            Command::UpdateUser {
                userid: "u@pve".into(),
                comment: None,
                email: None,
                groups: None,
                append: false,
                expire: Some(NOW + 10),
                enable: None,
            },
        ];
        for cmd in changes {
            let mut s = with_user();
            let t = make_ticket(&s, "u@pve", NOW, NOW).unwrap();
            let csrf = make_csrf(&s, "u@pve", NOW).unwrap();
            apply(&mut s, 10, 10_000, cmd.clone());
            assert_eq!(verify_ticket(&s, &t, NOW), None, "{cmd:?}");
            assert!(!verify_csrf(&s, &csrf, "u@pve", NOW), "{cmd:?}");
        }
        // A comment is no credential.
        let mut s = with_user();
        let t = make_ticket(&s, "u@pve", NOW, NOW).unwrap();
        let comment = Command::UpdateUser {
            userid: "u@pve".into(),
            comment: Some("hi".into()),
            email: None,
            groups: None,
            append: false,
            expire: None,
            enable: None,
        };
        apply(&mut s, 10, 10_000, comment);
        assert!(verify_ticket(&s, &t, NOW).is_some());
    }

    #[test]
    fn renewal_keeps_the_login_time_and_stops_at_the_maximum_age() {
        let mut s = with_user();
        let login = NOW;
        // Renewed every hour: each ticket is fresh, the login stays the same.
        let mut t = make_ticket(&s, "u@pve", login, login).unwrap();
        let mut now = login;
        while now + 3600 <= login + TICKET_MAX_AGE_DEFAULT_S {
            now += 3600;
            let kept = renewable(&s, &t, "u@pve", now).expect("renewable within a day");
            assert_eq!(kept, login);
            t = make_ticket(&s, "u@pve", now, kept).unwrap();
        }
        assert_eq!(renewable(&s, &t, "u@pve", login + TICKET_MAX_AGE_DEFAULT_S + 1), None, "past a day");
        assert_eq!(renewable(&s, &t, "v@pve", now), None, "someone else's ticket");
        // The cluster option shortens it.
        apply(
            &mut s,
            20,
            20_000,
            Command::SetClusterOption { key: "ticket-max-age".into(), value: "600".into() },
        );
        let t = make_ticket(&s, "u@pve", login + 500, login).unwrap();
        assert!(renewable(&s, &t, "u@pve", login + 590).is_some());
        assert_eq!(renewable(&s, &t, "u@pve", login + 601), None);
        // A forged login time breaks the signature.
        let forged = t.replacen(&format!(":{login:08X}::"), &format!(":{:08X}::", login + 500), 1);
        assert_ne!(forged, t);
        assert_eq!(verify_ticket(&s, &forged, login + 590), None);
    }

    #[test]
    fn throttling_is_per_user_and_address_and_never_locks_root_out() {
        let t = Throttle { window: Duration::from_secs(60), failures: Arc::default() };
        let (alice_a, addr_a) = throttle_keys("alice@pve", "10.0.0.1");
        let (alice_b, addr_b) = throttle_keys("alice@pve", "10.0.0.2");
        for _ in 0..MAX_PER_USER_ADDR {
            t.fail(alice_a.clone());
            t.fail(addr_a.clone());
        }
        assert!(t.blocked(&alice_a, MAX_PER_USER_ADDR).is_some(), "the guessing address is throttled");
        assert!(t.blocked(&alice_b, MAX_PER_USER_ADDR).is_none(), "alice still logs in from elsewhere");
        assert!(t.blocked(&addr_b, MAX_PER_ADDR).is_none());
        // Failures reported by another member count as if seen here; junk keys do not.
        let (bob, _) = throttle_keys("bob@pve", "10.0.0.3");
        t.note_remote(vec![bob.clone(); MAX_PER_USER_ADDR]);
        t.note_remote(vec!["whatever".into(); 10]);
        assert!(t.blocked(&bob, MAX_PER_USER_ADDR).is_some());
        assert_eq!(t.count("whatever"), 0);
        // root@pam waits longer with each failure, up to a cap, but is never refused.
        assert_eq!(root_delay(MAX_PER_USER_ADDR - 1), Duration::ZERO);
        assert_eq!(root_delay(MAX_PER_USER_ADDR), Duration::from_secs(1));
        assert_eq!(root_delay(MAX_PER_USER_ADDR + 3), Duration::from_secs(8));
        assert_eq!(root_delay(MAX_PER_USER_ADDR + 40), ROOT_DELAY_MAX);
    }

    #[test]
    fn no_key_no_ticket() {
        let s = ClusterState::default();
        assert_eq!(make_ticket(&s, "root@pam", NOW, NOW), None);
        assert_eq!(verify_ticket(&s, "PVE:root@pam:0:0::00", NOW), None);
    }
}
