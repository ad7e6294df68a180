//! The cluster PKI: a CA created at `cluster init` and node certificates signed by it.
//! Peers accept only certificates from this CA; a joining node pins the CA by the SHA-256
//! fingerprint carried in its join token.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every node certificate carries this name too, so a joining node (which does not know
/// the name of the member it dials) can verify it.
pub const CLUSTER_SERVER_NAME: &str = "horcrux-cluster";

#[derive(Debug, thiserror::Error)]
#[error("PKI: {0}")]
pub struct PkiError(pub String);

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("fingerprint", &self.fingerprint().ok()).finish_non_exhaustive()
    }
}

/// A node's certificate and key (PEM).
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Horcrux cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// SHA-256 of a certificate's DER, lower-case hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(err)
}

pub fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(err)
}

impl ClusterCa {
    pub fn create() -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = ca_params().self_signed(&key).map_err(err)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint_der(&cert_der(&self.cert_pem)?))
    }

    /// Issues a node certificate for `node_name`, valid for both ends of a connection.
    pub fn issue(&self, node_name: &str) -> Result<NodeCert, PkiError> {
        self.issue_for(node_name, &[node_name.to_string(), CLUSTER_SERVER_NAME.to_string()])
    }

    /// Issues a certificate with common name `cn` for `names` (host names or IP addresses),
    /// e.g. a node's HTTPS certificate.
    pub fn issue_for(&self, cn: &str, names: &[String]) -> Result<NodeCert, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(names.to_vec()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certs_chain_to_their_ca_only() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = ClusterCa::create().unwrap();
        let other = ClusterCa::create().unwrap();
        assert_ne!(ca.fingerprint().unwrap(), other.fingerprint().unwrap());
        let node = ca.issue("n1").unwrap();
        let verify = |ca: &ClusterCa| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap();
            v.verify_client_cert(&cert_der(&node.cert_pem).unwrap(), &[], rustls::pki_types::UnixTime::now())
        };
        assert!(verify(&ca).is_ok());
        assert!(verify(&other).is_err(), "a certificate from another CA must be refused");
    }
}
