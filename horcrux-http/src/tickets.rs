//! Tickets and CSRF tokens (HMAC-SHA256 with the replicated ticket key, rotated every
//! 24 h), password hashes, and the clock they are checked against.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use horcrux_core::{ClusterState, Command};
use ring::hmac;

use crate::error::ApiError;
use horcrux_core::ids::ct_eq;

/// How long a ticket (and its CSRF token) is valid, as in Proxmox.
pub const TICKET_LIFETIME_S: u64 = 2 * 3600;

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

pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::*;
    use horcrux_core::state::TICKET_MAX_AGE_DEFAULT_S;
    use horcrux_core::Request;
    use std::sync::Arc;

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
