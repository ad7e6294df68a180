//! The HTTPS certificate in `DIR/ssl/` (key 0600): signed by the cluster CA (as Proxmox
//! signs node certificates with its cluster CA, so one trusted CA covers every node), or
//! self-signed while the node has no CA. It lives a year and is replaced, without a restart,
//! 30 days before it expires and whenever the cluster's CAs change (a CA roll); `ca.pem`
//! holds every CA the cluster trusts, which is what clients should trust.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use horcrux_core::model::ClusterCaRecord;
use horcrux_raft::pki::{now_s, ClusterCa, CERT_LIFETIME_S, RENEW_BEFORE_S};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub struct TlsFiles {
    /// The node's certificate followed by the cluster CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CAs: what clients trust, for every node of the cluster.
    pub ca: PathBuf,
    /// When `cert` expires (Unix seconds).
    pub expires: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(data_dir: &Path) -> Self {
        let ssl = data_dir.join("ssl");
        Self {
            cert: ssl.join("horcrux.pem"),
            key: ssl.join("horcrux.key"),
            ca: ssl.join("ca.pem"),
            expires: ssl.join("horcrux.expires"),
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename (never half a file).
fn replace_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("new");
    if private {
        write_private(&tmp, bytes)?;
    } else {
        std::fs::write(&tmp, bytes)?;
    }
    std::fs::rename(&tmp, path)
}

/// The node's HTTPS certificate: what the listener presents, replaced in place.
pub struct HttpsCert {
    files: TlsFiles,
    names: Vec<String>,
    /// `None` only before the files first load (the listener is not up yet).
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for HttpsCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsCert").field("cert", &self.files.cert).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for HttpsCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_key(files: &TlsFiles) -> std::io::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(std::io::Error::other)?
        .collect::<Result<_, _>>()
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(std::io::Error::other)?;
    let signing = provider().key_provider.load_private_key(key).map_err(std::io::Error::other)?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl HttpsCert {
    /// Whether the files must be (re)issued for the cluster's CAs `ca`.
    fn due(&self, ca: Option<&ClusterCaRecord>) -> bool {
        if !self.files.cert.exists() || !self.files.key.exists() {
            return true;
        }
        let Some(ca) = ca else { return false };
        let trusted = std::fs::read_to_string(&self.files.ca).ok();
        let expires: Option<u64> =
            std::fs::read_to_string(&self.files.expires).ok().and_then(|s| s.trim().parse().ok());
        trusted.as_deref() != Some(ca.trusted_pems().concat().as_str())
            || expires.is_none_or(|e| now_s() + RENEW_BEFORE_S >= e)
    }

    /// Issues new files when due; with a CA the certificate is signed by its current key.
    fn issue(&self, ca: Option<&ClusterCaRecord>) -> std::io::Result<()> {
        if let Some(dir) = self.files.cert.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let expires = now_s() + CERT_LIFETIME_S;
        let (cert_pem, key_pem, ca_pem) = match ca {
            Some(rec) => {
                let signer = ClusterCa::from_record(rec);
                let c =
                    signer.issue_for(&self.names[0], &self.names, expires).map_err(std::io::Error::other)?;
                (format!("{}{}", c.cert_pem, rec.cert_pem), c.key_pem, rec.trusted_pems().concat())
            }
            None => {
                let ck =
                    rcgen::generate_simple_self_signed(self.names.clone()).map_err(std::io::Error::other)?;
                (ck.cert.pem(), ck.signing_key.serialize_pem(), ck.cert.pem())
            }
        };
        // A crash between these renames leaves a mismatched pair: loading it fails at the
        // next start, which issues a new one (`load_or_create_tls`).
        replace_file(&self.files.key, key_pem.as_bytes(), true)?;
        replace_file(&self.files.cert, cert_pem.as_bytes(), false)?;
        replace_file(&self.files.ca, ca_pem.as_bytes(), false)?;
        replace_file(&self.files.expires, expires.to_string().as_bytes(), false)
    }

    /// Reissues the certificate if due and presents it on new connections.
    pub fn refresh(&self, ca: Option<&ClusterCaRecord>) -> std::io::Result<bool> {
        if !self.due(ca) {
            return Ok(false);
        }
        self.issue(ca)?;
        let key = load_key(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        tracing::info!(cert = %self.files.cert.display(), "issued a new HTTPS certificate");
        Ok(true)
    }
}

/// Loads the certificate, creating it first if absent or due. `names` become its subject
/// alternative names (host name, `localhost`, listen addresses).
pub fn load_or_create_tls(
    files: TlsFiles,
    names: Vec<String>,
    ca: Option<&ClusterCaRecord>,
) -> std::io::Result<(Arc<rustls::ServerConfig>, Arc<HttpsCert>)> {
    let cert = HttpsCert { files, names, current: RwLock::new(None) };
    if cert.due(ca) {
        cert.issue(ca)?;
    }
    let key = match load_key(&cert.files) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("the HTTPS certificate does not load ({e}); issuing a new one");
            cert.issue(ca)?;
            load_key(&cert.files)?
        }
    };
    *cert.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    let cert = Arc::new(cert);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), cert))
}

/// Keeps the HTTPS certificate current (checked every 10 s): renewed before it expires and
/// reissued when the cluster's CAs change.
pub async fn keep_https_cert(cluster: horcrux_raft::ClusterHandle, cert: Arc<HttpsCert>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let ca = cluster.read_local(|s| s.cluster_ca.clone());
        if let Err(e) = cert.refresh(ca.as_ref()) {
            tracing::warn!("could not renew the HTTPS certificate: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn record(ca: &ClusterCa, previous: Option<&ClusterCa>) -> ClusterCaRecord {
        ClusterCaRecord {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
            fingerprint: ca.fingerprint().unwrap(),
            previous_cert_pem: previous.map(|p| p.cert_pem.clone()),
        }
    }

    /// Whether the certificate presented now verifies for `localhost` against `ca` alone.
    fn signed_by(cert: &HttpsCert, ca: &ClusterCa) -> bool {
        let key = cert.current.read().unwrap().clone().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(horcrux_raft::pki::cert_der(&ca.cert_pem).unwrap()).unwrap();
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(&key.cert[0], &[], &name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn the_https_certificate_follows_a_ca_roll_and_is_renewed_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ClusterCa::create().unwrap(), ClusterCa::create().unwrap());
        let (_, cert) = load_or_create_tls(
            TlsFiles::in_dir(dir.path()),
            vec!["localhost".into()],
            Some(&record(&a, None)),
        )
        .unwrap();
        assert!(signed_by(&cert, &a));
        let expires: u64 = std::fs::read_to_string(&cert.files.expires).unwrap().trim().parse().unwrap();
        assert!(expires <= now_s() + CERT_LIFETIME_S && expires > now_s() + CERT_LIFETIME_S - 60, "a year");
        assert!(!cert.refresh(Some(&record(&a, None))).unwrap(), "nothing changed: kept");

        // A roll begins: signed by the new CA, and clients are told to trust both.
        assert!(cert.refresh(Some(&record(&b, Some(&a)))).unwrap());
        assert!(signed_by(&cert, &b) && !signed_by(&cert, &a));
        let trusted = std::fs::read_to_string(&cert.files.ca).unwrap();
        assert_eq!(trusted, format!("{}{}", b.cert_pem, a.cert_pem));
        // It ends: only the new CA is left to trust.
        assert!(cert.refresh(Some(&record(&b, None))).unwrap());
        assert_eq!(std::fs::read_to_string(&cert.files.ca).unwrap(), b.cert_pem);

        // Within 30 days of expiry: replaced.
        let before = std::fs::read_to_string(&cert.files.cert).unwrap();
        std::fs::write(&cert.files.expires, (now_s() + RENEW_BEFORE_S - 1).to_string()).unwrap();
        assert!(cert.refresh(Some(&record(&b, None))).unwrap());
        assert_ne!(std::fs::read_to_string(&cert.files.cert).unwrap(), before);
        assert!(signed_by(&cert, &b));
        // The key stays private.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&cert.files.key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
