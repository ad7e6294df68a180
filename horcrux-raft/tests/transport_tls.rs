//! The cluster transport refuses peers whose certificate does not come from the cluster
//! CA, and peers without a certificate, on the Raft protocol; a member's certificate works.

use std::time::Duration;

use horcrux_raft::pki::ClusterCa;
use horcrux_raft::transport::{NodeIdentity, QuicNetwork, RpcRequest, RpcResponse};
use horcrux_raft::{ClusterHandle, ClusterOptions, OpenOptions};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client(identity: &NodeIdentity) -> QuicNetwork {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    QuicNetwork::new(endpoint, identity.client_config().unwrap())
}

fn identity_from(ca: &ClusterCa, name: &str) -> NodeIdentity {
    let cert = ca.issue(name).unwrap();
    NodeIdentity::from_pem(&ca.cert_pem, &cert.cert_pem, &cert.key_pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_anonymous_peers_are_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let addr = format!("127.0.0.1:{port}");
    let handle = ClusterHandle::open(OpenOptions {
        dir: tmp.path().join("raft"),
        node_name: "n1".into(),
        api_addr: "127.0.0.1:1".into(),
        cluster: Some(ClusterOptions { listen: addr.parse().unwrap(), join: None }),
        snapshot_logs: None,
    })
    .await
    .unwrap();
    let ping = RpcRequest::Ping { from: 99 };
    let t = Duration::from_secs(3);

    // A member's certificate (signed by the cluster CA) is accepted.
    let member = identity_from(&handle.cluster_ca().unwrap(), "n2");
    let r = client(&member).call(None, &addr, &ping, t).await.unwrap();
    assert!(matches!(r, RpcResponse::Pong));

    // A certificate from another CA: the handshake fails (the server does not know the
    // CA, and the client does not trust the server's).
    let foreign = identity_from(&ClusterCa::create().unwrap(), "n2");
    let e = client(&foreign).call(None, &addr, &ping, t).await.unwrap_err();
    assert!(!e.to_string().is_empty());

    // Even a client that trusts the cluster CA but presents a foreign certificate is refused.
    let ca = handle.cluster_ca().unwrap();
    let rogue_ca = ClusterCa::create().unwrap();
    let rogue = rogue_ca.issue("n2").unwrap();
    let half = NodeIdentity::from_pem(&ca.cert_pem, &rogue.cert_pem, &rogue.key_pem).unwrap();
    assert!(client(&half).call(None, &addr, &ping, t).await.is_err(), "foreign client certificate accepted");

    // No client certificate at all on the Raft protocol: the server closes the connection.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(horcrux_raft::pki::cert_der(&ca.cert_pem).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![horcrux_raft::transport::ALPN_RAFT.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let anon = QuicNetwork::new(endpoint, quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    assert!(anon.call(None, &addr, &ping, t).await.is_err(), "anonymous Raft peer accepted");
    handle.shutdown().await;
}
