//! rustls configurations for QUIC. Members present a node certificate from the cluster
//! CA and require one from their peer; a joining node has no certificate yet and pins
//! the CA by fingerprint instead (on the join ALPN only).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::pki::{cert_der, certs_der, fingerprint_der, key_der, PkiError};

pub const ALPN_RAFT: &[u8] = b"horcrux-raft/1";
pub const ALPN_JOIN: &[u8] = b"horcrux-join/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

/// This node's certificate, key and the cluster CAs it trusts (one; two during a CA roll).
#[derive(Clone)]
pub struct NodeIdentity {
    pub cas: Vec<CertificateDer<'static>>,
    pub cert: CertificateDer<'static>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl NodeIdentity {
    /// `ca_pem` holds one or more CA certificates.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cas = certs_der(ca_pem)?;
        if cas.is_empty() {
            return Err(PkiError("no CA certificate".into()));
        }
        Ok(Self { cas, cert: cert_der(cert_pem)?, key: Arc::new(key_der(key_pem)?) })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.cas {
            roots.add(ca.clone()).map_err(tls_err)?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: a client certificate is required at the TLS layer, signed by a trusted
    /// cluster CA (a member's) or self-signed (a joining node's, over the key it asks a
    /// certificate for). The Raft ALPN then accepts only a current member's recorded
    /// certificate; the join ALPN only a request for the presented key.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, PkiError> {
        let members = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(tls_err)?;
        let verifier = Arc::new(MemberOrJoiner { members, provider: provider() });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                std::iter::once(self.cert.clone()).chain(self.cas.iter().cloned()).collect(),
                self.key.clone_key(),
            )
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_JOIN.to_vec()];
        let quic = QuicServerConfig::try_from(cfg).map_err(tls_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(Arc::new(transport()));
        Ok(server)
    }

    /// Client side for member-to-member connections.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN_RAFT.to_vec()];
        let mut c = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).map_err(tls_err)?));
        c.transport_config(Arc::new(transport()));
        Ok(c)
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    // A dead peer is noticed within a few seconds, not the default 30.
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5_000))));
    t
}

/// Trusts a server whose certificate one of the CAs with these fingerprints (from a join
/// token: one, or two during a CA roll) signed; the server sends its CAs in its chain.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprints: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = |c: &&CertificateDer<'_>| self.fingerprints.iter().any(|f| *f == fingerprint_der(c));
        let mut last =
            rustls::Error::General("the cluster CA does not match the join token's fingerprint".into());
        for ca in intermediates.iter().filter(pinned) {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone().into_owned())?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            match inner.verify_server_cert(end_entity, &[], server_name, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts a client certificate a trusted CA signed, or a self-signed one (a joining node's).
#[derive(Debug)]
struct MemberOrJoiner {
    members: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for MemberOrJoiner {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.members.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let refused = match self.members.verify_client_cert(end_entity, intermediates, now) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // A certificate that is its own issuer (the joiner's); valid dates are checked too.
        let mut own = RootCertStore::empty();
        if own.add(end_entity.clone().into_owned()).is_err() {
            return Err(refused);
        }
        let joiner =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(own), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        joiner.verify_client_cert(end_entity, &[], now).map_err(|_| refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.members.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.members.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.members.supported_verify_schemes()
    }
}

/// Client side for a node that joins with a token: it presents a self-signed certificate
/// over the key it asks the cluster to certify (proving it holds that key).
pub fn join_client_config(
    ca_fingerprints: &[String],
    joiner_cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, PkiError> {
    let verifier =
        Arc::new(PinnedCaVerifier { fingerprints: ca_fingerprints.to_vec(), provider: provider() });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![joiner_cert], key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN_JOIN.to_vec()];
    let mut c = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).map_err(tls_err)?));
    c.transport_config(Arc::new(transport()));
    Ok(c)
}
