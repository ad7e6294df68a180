//! Failed logins, counted per (user, source address) and per source address.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The client's address, set per connection by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Failed logins per (user, source address) and per source address within a sliding
/// window, counted on every node.
#[derive(Clone)]
pub struct Throttle {
    pub(crate) window: Duration,
    pub(crate) failures: Arc<Mutex<HashMap<String, VecDeque<Instant>>>>,
}

pub(crate) const MAX_PER_USER_ADDR: usize = 5;
pub(crate) const MAX_PER_ADDR: usize = 20;
/// The longest delay a throttled root@pam login waits.
pub(crate) const ROOT_DELAY_MAX: Duration = Duration::from_secs(30);

/// The throttle keys of a login of `user` from `ip`.
pub(crate) fn throttle_keys(user: &str, ip: &str) -> (String, String) {
    (format!("user:{user}|{ip}"), format!("addr:{ip}"))
}

/// How long a root@pam login from an address with `failures` recent failures waits:
/// nothing below the limit, then 1 s doubling per failure, at most `ROOT_DELAY_MAX`.
pub(crate) fn root_delay(failures: usize) -> Duration {
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
    pub(crate) fn blocked(&self, key: &str, max: usize) -> Option<Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = f.get_mut(key)?;
        while q.front().is_some_and(|t| t.elapsed() >= self.window) {
            q.pop_front();
        }
        (q.len() >= max)
            .then(|| self.window.saturating_sub(q.front().map(|t| t.elapsed()).unwrap_or_default()))
    }

    /// Recent failures of `key`.
    pub(crate) fn count(&self, key: &str) -> usize {
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

    pub(crate) fn fail(&self, key: String) {
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
