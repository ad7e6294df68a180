//! The cluster PKI: a CA created at `cluster init` and node certificates signed by it.
//! Peers accept only certificates from this CA; a joining node pins the CA by the SHA-256
//! fingerprint carried in its join token.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every node certificate carries this name too, so a joining node (which does not know
/// the name of the member it dials) can verify it.
pub const CLUSTER_SERVER_NAME: &str = "horcrux-cluster";

/// How long a member's transport certificate is valid.
pub const CERT_LIFETIME_S: u64 = 365 * 86_400;
/// A member renews its certificate this long before it expires.
pub const RENEW_BEFORE_S: u64 = 30 * 86_400;

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The UTC calendar date of Unix time `secs` (Howard Hinnant's civil_from_days).
fn civil_date(secs: u64) -> (i32, u8, u8) {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

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
    horcrux_core::ids::hex_encode(&Sha256::digest(der))
}

/// SHA-256 of a PEM certificate's DER, lower-case hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_der(&cert_der(pem)?))
}

pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(err)
}

/// Every certificate in a PEM bundle.
pub fn certs_der(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().map_err(err)
}

pub fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(err)
}

impl ClusterCa {
    /// The signing CA of a replicated record.
    pub fn from_record(r: &horcrux_core::model::ClusterCaRecord) -> Self {
        Self { cert_pem: r.cert_pem.clone(), key_pem: r.key_pem.clone() }
    }

    pub fn create() -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = ca_params().self_signed(&key).map_err(err)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint_der(&cert_der(&self.cert_pem)?))
    }

    /// Issues a transport certificate for member `node_id` named `node_name`, with a key
    /// made here (the node that creates a cluster, and tests).
    pub fn issue(&self, node_id: u64, node_name: &str) -> Result<NodeCert, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let cert_pem =
            self.issue_member(node_id, node_name, key.public_key_raw(), now_s() + CERT_LIFETIME_S)?;
        Ok(NodeCert { cert_pem, key_pem: key.serialize_pem() })
    }

    /// Signs a transport certificate for member `node_id` over a public key the member made
    /// itself (a joining node sends only its public key: its private key never travels).
    /// The certificate names the node (`node_name`), its id (`id-N.horcrux-cluster`) and
    /// the cluster, and is valid for both ends of a connection.
    pub fn issue_member(
        &self,
        node_id: u64,
        node_name: &str,
        public_key: &[u8],
        valid_until_s: u64,
    ) -> Result<String, PkiError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(PkiError("expected an uncompressed P-256 public key (65 bytes)".into()));
        }
        let names = vec![node_name.to_string(), CLUSTER_SERVER_NAME.to_string(), member_san(node_id)];
        let eku = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        // Valid from yesterday (a member's clock may lag a little) to `valid_until_s`.
        let validity = (now_s().saturating_sub(86_400), valid_until_s);
        self.sign(node_name, &names, eku, &P256Public(public_key.to_vec()), validity)
    }

    /// Issues a server certificate with common name `cn` for `names` (host names or IP
    /// addresses), valid until `valid_until_s`: a node's HTTPS certificate. It cannot
    /// authenticate a client, so it is useless on the cluster transport.
    pub fn issue_for(&self, cn: &str, names: &[String], valid_until_s: u64) -> Result<NodeCert, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let validity = (now_s().saturating_sub(86_400), valid_until_s);
        let cert_pem = self.sign(cn, names, vec![ExtendedKeyUsagePurpose::ServerAuth], &key, validity)?;
        Ok(NodeCert { cert_pem, key_pem: key.serialize_pem() })
    }

    fn sign(
        &self,
        cn: &str,
        names: &[String],
        eku: Vec<ExtendedKeyUsagePurpose>,
        public_key: &impl PublicKeyData,
        validity: (u64, u64),
    ) -> Result<String, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut p = CertificateParams::new(names.to_vec()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = eku;
        let date = |secs| {
            let (y, m, d) = civil_date(secs);
            rcgen::date_time_ymd(y, m, d)
        };
        let (from, until) = validity;
        p.not_before = date(from);
        p.not_after = date(until);
        Ok(p.signed_by(public_key, &issuer).map_err(err)?.pem())
    }
}

/// The DNS name in a member's certificate that carries its Raft node id.
pub fn member_san(node_id: u64) -> String {
    format!("id-{node_id}.{CLUSTER_SERVER_NAME}")
}

/// A P-256 public key (uncompressed point) to sign a certificate over.
struct P256Public(Vec<u8>);

impl PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A joining node's self-signed certificate over its new key, presented on the join ALPN
/// (valid for an hour: a join takes seconds).
pub fn joiner_cert(key_pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(err)?;
    let mut p = CertificateParams::new(vec!["horcrux-joiner".to_string()]).map_err(err)?;
    p.distinguished_name.push(DnType::CommonName, "horcrux joining node");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = now_s();
    let date = |secs| {
        let (y, m, d) = civil_date(secs);
        rcgen::date_time_ymd(y, m, d)
    };
    p.not_before = date(now.saturating_sub(86_400));
    p.not_after = date(now + 86_400);
    Ok(p.self_signed(&key).map_err(err)?.der().clone())
}

/// The public key (for P-256: the uncompressed point) a certificate carries.
pub fn cert_public_key(der: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
    let ee = webpki::EndEntityCert::try_from(der).map_err(err)?;
    let spki = ee.subject_public_key_info();
    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm, BIT STRING }: for P-256 the point is
    // the last 65 bytes (the BIT STRING's content after its unused-bits octet).
    let bytes = spki.as_ref();
    if bytes.len() < 65 || bytes[bytes.len() - 65] != 4 {
        return Err(PkiError("not a P-256 public key".into()));
    }
    Ok(bytes[bytes.len() - 65..].to_vec())
}

/// A new key for this node's transport certificate: (private key PEM, public key raw).
pub fn new_member_key() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate().map_err(err)?;
    Ok((key.serialize_pem(), key.public_key_raw().to_vec()))
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
        let node = ca.issue(1, "n1").unwrap();
        let verify = |ca: &ClusterCa| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap();
            v.verify_client_cert(&cert_der(&node.cert_pem).unwrap(), &[], rustls::pki_types::UnixTime::now())
        };
        assert!(verify(&ca).is_ok());
        assert!(verify(&other).is_err(), "a certificate from another CA must be refused");
        // A certificate over a key the member made itself works with that key.
        let (key_pem, public) = new_member_key().unwrap();
        let cert_pem = ca.issue_member(2, "n2", &public, now_s() + CERT_LIFETIME_S).unwrap();
        let id = crate::transport::NodeIdentity::from_pem(&ca.cert_pem, &cert_pem, &key_pem).unwrap();
        assert!(id.client_config().is_ok());
        assert!(ca.issue_member(2, "n2", &public[1..], now_s() + 60).is_err());
        // An expired member certificate is refused by the TLS layer.
        let old = ca.issue_member(2, "n2", &public, now_s() - 3 * 86_400).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
        let v = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap();
        let now = rustls::pki_types::UnixTime::now();
        assert!(v.verify_client_cert(&cert_der(&old).unwrap(), &[], now).is_err(), "expired accepted");
        assert!(v.verify_client_cert(&cert_der(&cert_pem).unwrap(), &[], now).is_ok());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(civil_date(1_704_067_200), (2024, 1, 1));
        assert_eq!(civil_date(4_859_740_800), (2124, 1, 1));
        assert_eq!(civil_date(1_798_761_599), (2026, 12, 31));
    }
}
