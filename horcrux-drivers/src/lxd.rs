//! LXD (and Incus, which kept the same REST API) instances through `/1.0` on the daemon's
//! unix socket: images imported from a unified tarball (`metadata.yaml` + `rootfs/`),
//! instances created from them, started and stopped through their `state`, removed; an
//! asynchronous call answers an operation, which is waited for; the lifecycle events come
//! over the `/1.0/events` WebSocket.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::hypervisor::DriverError;
use crate::oci::{Answer, UnixHttp};

pub struct Lxd {
    http: UnixHttp,
}

/// An instance as LXD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxdState {
    /// `Running`, `Stopped`, `Frozen`, ...
    pub status: String,
    pub pid: Option<u32>,
}

fn refused(what: &str, a: &Answer) -> DriverError {
    let v = a.json();
    let message = v["error"]
        .as_str()
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}", a.status));
    DriverError::Command { program: format!("lxd {what}"), message }
}

/// The body of a state change.
pub fn state_body(action: &str, timeout_s: u32, force: bool) -> Value {
    json!({ "action": action, "timeout": timeout_s, "force": force })
}

impl Lxd {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Lxd { http: UnixHttp::new(socket) }
    }

    /// A synchronous answer's metadata, or an asynchronous one's operation, waited for.
    async fn finish(&self, what: &str, a: Answer) -> Result<Value, DriverError> {
        let v = a.json();
        match v["type"].as_str() {
            Some("sync") => Ok(v["metadata"].clone()),
            Some("async") => {
                let op = v["operation"].as_str().ok_or_else(|| refused(what, &a))?;
                let w = self.http.request("GET", &format!("{op}/wait?timeout=120"), None).await?;
                let wv = w.json();
                let m = &wv["metadata"];
                if m["status"] == "Success" {
                    Ok(m["metadata"].clone())
                } else {
                    let err = m["err"].as_str().filter(|e| !e.is_empty()).unwrap_or("the operation failed");
                    Err(DriverError::Command { program: format!("lxd {what}"), message: err.to_string() })
                }
            }
            _ => Err(refused(what, &a)),
        }
    }

    pub async fn server_version(&self) -> Result<String, DriverError> {
        let a = self.http.request("GET", "/1.0", None).await?;
        let m = self.finish("info", a).await?;
        Ok(m["environment"]["server_version"].as_str().unwrap_or("").to_string())
    }

    /// Imports a unified image tarball; its fingerprint.
    pub async fn import_image(&self, tarball: &Path) -> Result<String, DriverError> {
        let bytes = tokio::fs::read(tarball).await.map_err(|e| DriverError::Io(e.to_string()))?;
        let a = self.http.request_bytes("POST", "/1.0/images", &bytes, "application/octet-stream").await?;
        let m = self.finish("image import", a).await?;
        m["fingerprint"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| DriverError::Invalid(format!("no fingerprint in {m}")))
    }

    /// Creates container `name` from the image with `fingerprint`.
    pub async fn create(&self, name: &str, fingerprint: &str) -> Result<(), DriverError> {
        let body = json!({ "name": name, "type": "container", "source": { "type": "image", "fingerprint": fingerprint } });
        let a = self.http.request("POST", "/1.0/instances", Some(&body)).await?;
        self.finish("create", a).await.map(|_| ())
    }

    /// `start`, `stop` (cleanly within `timeout_s`, or at once with `force`), `restart`,
    /// `freeze`, `unfreeze`.
    pub async fn set_state(
        &self,
        name: &str,
        action: &str,
        timeout_s: u32,
        force: bool,
    ) -> Result<(), DriverError> {
        let a = self
            .http
            .request(
                "PUT",
                &format!("/1.0/instances/{name}/state"),
                Some(&state_body(action, timeout_s, force)),
            )
            .await?;
        self.finish(action, a).await.map(|_| ())
    }

    pub async fn state(&self, name: &str) -> Result<Option<LxdState>, DriverError> {
        let a = self.http.request("GET", &format!("/1.0/instances/{name}/state"), None).await?;
        if a.status == 404 {
            return Ok(None);
        }
        let m = self.finish("state", a).await?;
        Ok(Some(LxdState {
            status: m["status"].as_str().unwrap_or("Unknown").to_string(),
            pid: m["pid"].as_u64().filter(|p| *p > 0).map(|p| p as u32),
        }))
    }

    pub async fn delete(&self, name: &str) -> Result<(), DriverError> {
        let a = self.http.request("DELETE", &format!("/1.0/instances/{name}"), None).await?;
        if a.status == 404 {
            return Ok(());
        }
        self.finish("delete", a).await.map(|_| ())
    }

    /// The lifecycle events as they happen: (action, e.g. `instance-started`,
    /// `instance-stopped`; the instance's name).
    pub async fn lifecycle(&self) -> Result<tokio::sync::mpsc::Receiver<(String, String)>, DriverError> {
        let mut msgs = self.http.websocket("/1.0/events?type=lifecycle").await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(m) = msgs.recv().await {
                let Ok(v) = serde_json::from_str::<Value>(&m) else { continue };
                let action = v["metadata"]["action"].as_str().unwrap_or("").to_string();
                let source = v["metadata"]["source"].as_str().unwrap_or("");
                let name = source.rsplit('/').next().unwrap_or("").to_string();
                if tx.send((action, name)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_say_how() {
        assert_eq!(state_body("stop", 30, false), json!({"action": "stop", "timeout": 30, "force": false}));
    }
}
