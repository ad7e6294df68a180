//! The CLI's HTTPS client. It trusts the cluster CA found next to the token file
//! (`DATA_DIR/ssl/ca.pem`, which signs every node's certificate); without one it falls back
//! to not verifying, like `curl -k`, and says so.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

pub struct ApiClient {
    base: String,
    token: String,
    token_file: std::path::PathBuf,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(api: &str, token_file: &Path) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the API token from {}", token_file.display()))?
            .trim()
            .to_string();
        let cert_path = token_file.parent().map(|d| d.join("ssl/ca.pem"));
        let tls = match cert_path.as_deref().map(std::fs::read) {
            Some(Ok(pem)) => {
                // One CA, or two during a CA roll.
                let mut cas: Vec<Certificate<'static>> = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let ureq::tls::PemItem::Certificate(c) =
                        item.map_err(|e| anyhow!("server certificate: {e}"))?
                    {
                        cas.push(c.to_owned());
                    }
                }
                if cas.is_empty() {
                    bail!("no certificate in {}", cert_path.as_deref().unwrap_or(token_file).display());
                }
                TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(cas))).build()
            }
            _ => {
                eprintln!("warning: no server certificate next to the token file; not verifying TLS");
                TlsConfig::builder().disable_verification(true).build()
            }
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self { base: api.trim_end_matches('/').to_string(), token, token_file: token_file.into(), agent })
    }

    /// A client that trusts the CAs in `ssl/ca.pem` as they are now (they change during a
    /// CA roll, and so does the server's certificate).
    pub fn reopen(&self) -> anyhow::Result<Self> {
        Self::new(&self.base, &self.token_file)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn finish(mut resp: ureq::http::Response<ureq::Body>) -> anyhow::Result<Value> {
        let status = resp.status();
        let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{} {}", status.as_u16(), msg);
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .get(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()?;
        Self::finish(resp)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .post(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)?;
        Self::finish(resp)
    }

    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .put(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)?;
        Self::finish(resp)
    }

    /// DELETE with a JSON body (options such as `force`).
    pub fn delete_with(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .delete(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .force_send_body()
            .send_json(body)?;
        Self::finish(resp)
    }

    /// POST a file as the request body, streamed from disk.
    pub fn post_file(&self, path: &str, file: std::fs::File) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .post(self.url(path))
            // As long as the file takes (not the API's 120 s).
            .config()
            .timeout_global(None)
            .build()
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(file)?;
        Self::finish(resp)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .delete(self.url(path))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()?;
        Self::finish(resp)
    }
}
