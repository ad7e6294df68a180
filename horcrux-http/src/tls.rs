//! The HTTPS certificate: self-signed, generated with rcgen into `DIR/ssl/` on first start
//! (key 0600), reused afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TlsFiles {
    /// The node's certificate followed by the cluster CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: what clients trust, for every node of the cluster.
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(data_dir: &Path) -> Self {
        let ssl = data_dir.join("ssl");
        Self { cert: ssl.join("horcrux.pem"), key: ssl.join("horcrux.key"), ca: ssl.join("ca.pem") }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// Loads the certificate, creating it first if absent. `names` become its subject
/// alternative names (host name, `localhost`, listen addresses). With a cluster CA the
/// certificate is signed by it (as Proxmox signs node certificates with its cluster CA), so
/// one trusted CA covers every node; without one it is self-signed.
pub fn load_or_create_tls(
    files: &TlsFiles,
    names: Vec<String>,
    ca: Option<&horcrux_raft::pki::ClusterCa>,
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let current_ca = std::fs::read_to_string(&files.ca).ok();
    let ca_changed = ca.is_some_and(|ca| current_ca.as_deref() != Some(ca.cert_pem.as_str()));
    if !files.cert.exists() || !files.key.exists() || ca_changed {
        if let Some(dir) = files.cert.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (cert_pem, key_pem, ca_pem) = match ca {
            Some(ca) => {
                let c = ca.issue_for(&names[0], &names).map_err(std::io::Error::other)?;
                (format!("{}{}", c.cert_pem, ca.cert_pem), c.key_pem, ca.cert_pem.clone())
            }
            None => {
                let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
                (ck.cert.pem(), ck.signing_key.serialize_pem(), ck.cert.pem())
            }
        };
        write_private(&files.key, key_pem.as_bytes())?;
        std::fs::write(&files.cert, cert_pem)?;
        std::fs::write(&files.ca, ca_pem)?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(std::io::Error::other)?
        .collect::<Result<_, _>>()
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
