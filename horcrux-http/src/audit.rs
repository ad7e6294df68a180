//! The audit log: every login (success or failure) and every mutating request (who, what,
//! when, result), one JSON line each in `DATA_DIR/audit.log` on the node that received it
//! (and on the node that executed a forwarded one), readable by privileged users at
//! `GET /api/v1/access/audit`. It rotates at `ROTATE_BYTES` into `audit.log.1` ..
//! `audit.log.KEEP`; reads take the file's end only.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Size at which the log is rotated.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept.
const KEEP: usize = 3;
/// At most this much of the file's end is read to answer a tail.
const MAX_READ: u64 = 8 * 1024 * 1024;

/// The open log and how much it holds.
struct Open {
    file: std::fs::File,
    len: u64,
}

#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    /// Opened (append-only) at the first record and kept: one write(2) per record.
    file: Arc<Mutex<Option<Open>>>,
    rotate_bytes: u64,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: Arc::default(), rotate_bytes: ROTATE_BYTES }
    }

    /// `audit.log` -> `audit.log.1` -> ... -> `audit.log.KEEP` (the oldest is dropped).
    fn rotate(&self) {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        for i in (1..KEEP).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        if let Err(e) = std::fs::rename(&self.path, name(1)) {
            tracing::warn!("audit log {}: rotation failed: {e}", self.path.display());
        }
    }

    /// Appends one record; a failure to write is logged, not fatal to the request.
    pub fn record(&self, user: &str, action: &str, result: u16, detail: &str) {
        let line = json!({
            "time": crate::tickets::now_s(),
            "user": user,
            "action": action,
            "status": result,
            "detail": detail,
        });
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|f| Ok(Open { len: f.metadata()?.len(), file: f }));
            match opened {
                Ok(o) => *file = Some(o),
                Err(e) => return tracing::warn!("audit log {}: {e}", self.path.display()),
            }
        }
        let mut text = line.to_string();
        text.push('\n');
        let Some(open) = file.as_mut() else { return };
        if let Err(e) = open.file.write_all(text.as_bytes()) {
            tracing::warn!("audit log {}: {e}", self.path.display());
            *file = None;
            return;
        }
        open.len += text.len() as u64;
        if open.len >= self.rotate_bytes {
            *file = None;
            self.rotate();
        }
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Value> {
        let lines = crate::tail::last_lines(&self.path, n, MAX_READ).unwrap_or_default();
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_three_old_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let log = AuditLog { rotate_bytes: 1000, ..AuditLog::new(path.clone()) };
        for i in 0..200 {
            log.record("u@pve", &format!("POST /x/{i}"), 200, "");
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) < 1000, "the live file stays below the limit");
        for i in 1..=KEEP {
            let old = PathBuf::from(format!("{}.{i}", path.display()));
            assert!((1000..1200).contains(&size(&old)), "{}: {}", old.display(), size(&old));
        }
        assert!(!PathBuf::from(format!("{}.{}", path.display(), KEEP + 1)).exists());
        // The newest records are read from the live file's end.
        let tail = log.tail(2);
        assert_eq!(tail.last().unwrap()["action"], "POST /x/199", "{tail:?}");
    }
}
