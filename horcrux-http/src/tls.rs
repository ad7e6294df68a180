//! The HTTPS certificate: self-signed, generated with rcgen into `DIR/ssl/` on first start
//! (key 0600), reused afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(data_dir: &Path) -> Self {
        let ssl = data_dir.join("ssl");
        Self { cert: ssl.join("horcrux.pem"), key: ssl.join("horcrux.key") }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

/// Loads the certificate, creating it first if absent. `names` become its subject
/// alternative names (host name, `localhost`, listen addresses).
pub fn load_or_create_tls(
    files: &TlsFiles,
    names: Vec<String>,
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    if !files.cert.exists() || !files.key.exists() {
        if let Some(dir) = files.cert.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
        write_private(&files.key, ck.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&files.cert, ck.cert.pem())?;
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
