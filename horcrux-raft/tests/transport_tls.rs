//! The cluster transport authenticates members, not just the CA: only a current member's
//! recorded certificate is accepted on the Raft protocol, and a message naming its sender
//! must name the certificate's node. A removed node's certificate, a certificate the CA
//! signed for no member, an HTTPS certificate, a foreign CA's and none at all are refused;
//! a wrong join secret writes nothing to the log and is rate-limited per source.

use std::time::Duration;

use horcrux_core::Command;
use horcrux_raft::pki::{cert_der, fingerprint_der, ClusterCa};
use horcrux_raft::transport::{
    JoinRequest, JoinResponse, NodeIdentity, QuicNetwork, RpcRequest, RpcResponse,
};
use horcrux_raft::{ClusterHandle, ClusterOptions, HorcruxNode, OpenOptions};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client(identity: &NodeIdentity) -> QuicNetwork {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    QuicNetwork::new(endpoint, identity.client_config().unwrap())
}

fn identity(ca_pem: &str, cert_pem: &str, key_pem: &str) -> NodeIdentity {
    NodeIdentity::from_pem(ca_pem, cert_pem, key_pem).unwrap()
}

async fn open(dir: &std::path::Path, addr: &str) -> ClusterHandle {
    ClusterHandle::open(OpenOptions {
        dir: dir.join("raft"),
        node_name: "n1".into(),
        api_addr: "127.0.0.1:1".into(),
        cluster: Some(ClusterOptions { listen: addr.parse().unwrap(), join: None }),
        snapshot_logs: None,
    })
    .await
    .unwrap()
}

/// Issues member 2's certificate (`n2`) and records it, as a leader does at a join.
async fn record_n2(handle: &ClusterHandle, ca: &ClusterCa) -> horcrux_raft::pki::NodeCert {
    let n2 = ca.issue(2, "n2").unwrap();
    let fingerprint = fingerprint_der(&cert_der(&n2.cert_pem).unwrap());
    let cmd = Command::SetMemberCert {
        node_id: 2,
        name: "n2".into(),
        fingerprint,
        keep_previous: false,
        ca: String::new(),
    };
    handle.propose(cmd).await.unwrap();
    n2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_current_members_certificates_are_accepted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let handle = open(tmp.path(), &addr).await;
    let t = Duration::from_secs(3);
    let ca = handle.cluster_ca().unwrap();
    // The first node recorded its own certificate.
    let recorded = handle.read_local(|s| s.member_certs.clone());
    assert_eq!(recorded.keys().copied().collect::<Vec<_>>(), vec![1], "{recorded:?}");

    // A certificate the CA signed for node 2, recorded as member 2's: accepted, as node 2.
    handle
        .propose(Command::RegisterNode { name: "n2".into(), api_addr: "127.0.0.1:2".into() })
        .await
        .unwrap();
    let n2 = record_n2(&handle, &ca).await;
    let member = client(&identity(&ca.cert_pem, &n2.cert_pem, &n2.key_pem));
    let r = member.call(None, &addr, &RpcRequest::Ping { from: 2 }, t).await.unwrap();
    assert!(matches!(r, RpcResponse::Pong));
    // Node 2's certificate speaking for node 1: refused.
    let e = member.call(None, &addr, &RpcRequest::Ping { from: 1 }, t).await;
    assert!(e.is_err(), "a ping in another node's name was answered: {e:?}");

    // Signed by the right CA, but for no member: refused.
    let stray = ca.issue(3, "n3").unwrap();
    let e = client(&identity(&ca.cert_pem, &stray.cert_pem, &stray.key_pem))
        .call(None, &addr, &RpcRequest::Ping { from: 3 }, t)
        .await;
    assert!(e.is_err(), "a non-member certificate was accepted: {e:?}");
    // A node's HTTPS certificate (same CA, server-only) cannot be used on the transport.
    let https =
        ca.issue_for("n1", &["n1".into(), "127.0.0.1".into()], horcrux_raft::pki::now_s() + 86_400).unwrap();
    let e = client(&identity(&ca.cert_pem, &https.cert_pem, &https.key_pem))
        .call(None, &addr, &RpcRequest::Ping { from: 1 }, t)
        .await;
    assert!(e.is_err(), "an HTTPS certificate was accepted: {e:?}");
    // Another CA's certificate, with or without trusting ours.
    let foreign = ClusterCa::create().unwrap();
    let f = foreign.issue(2, "n2").unwrap();
    assert!(client(&identity(&foreign.cert_pem, &f.cert_pem, &f.key_pem))
        .call(None, &addr, &RpcRequest::Ping { from: 2 }, t)
        .await
        .is_err());
    assert!(client(&identity(&ca.cert_pem, &f.cert_pem, &f.key_pem))
        .call(None, &addr, &RpcRequest::Ping { from: 2 }, t)
        .await
        .is_err());
    // No client certificate at all on the Raft protocol: the server closes the connection.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![horcrux_raft::transport::ALPN_RAFT.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let anon = QuicNetwork::new(endpoint, quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    assert!(
        anon.call(None, &addr, &RpcRequest::Ping { from: 2 }, t).await.is_err(),
        "anonymous peer accepted"
    );

    // Node 2 is removed: its certificate stops working at once, on its open connection
    // too, and it cannot write anything.
    handle.propose(Command::RemoveNode { name: "n2".into() }).await.unwrap();
    let e = member.call(None, &addr, &RpcRequest::Ping { from: 2 }, t).await;
    assert!(e.is_err(), "a removed node was answered: {e:?}");
    let before = handle.raft().metrics().borrow().last_log_index;
    let write = horcrux_core::Request {
        ts_ms: 0,
        cmd: Command::SetClusterOption { key: "evil".into(), value: "1".into() },
        actor: None,
        id: None,
    };
    let fresh = client(&identity(&ca.cert_pem, &n2.cert_pem, &n2.key_pem));
    assert!(fresh.call(None, &addr, &RpcRequest::Propose(write), t).await.is_err());
    assert_eq!(handle.raft().metrics().borrow().last_log_index, before, "the removed node wrote");
    assert!(handle.read_local(|s| !s.options.contains_key("evil")));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_join_secrets_write_nothing_and_are_rate_limited() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let handle = open(tmp.path(), &addr).await;
    let token = handle.create_join_token(Duration::from_secs(600)).await.unwrap();
    let token_id = handle.read_local(|s| s.join_tokens.keys().next().cloned()).unwrap();
    let (_, public) = horcrux_raft::pki::new_member_key().unwrap();
    let public_key_hex = horcrux_core::ids::hex_encode(&public);
    let request = |secret: &str| JoinRequest {
        token_id: token_id.clone(),
        secret: secret.into(),
        node: HorcruxNode { name: "mallory".into(), raft_addr: "127.0.0.1:9".into(), api_addr: "x".into() },
        public_key_hex: public_key_hex.clone(),
    };
    let before = handle.raft().metrics().borrow().last_log_index;
    let attacker: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let mut throttled = 0;
    for i in 0..1000 {
        match handle.admit(request(&format!("guess-{i}")), attacker).await {
            JoinResponse::Refused { reason } if reason.contains("too many") => throttled += 1,
            JoinResponse::Refused { .. } => {}
            _ => panic!("a wrong secret was accepted"),
        }
    }
    assert_eq!(
        throttled,
        1000 - horcrux_raft::MAX_JOIN_FAILURES,
        "the source is throttled after 10 failures"
    );
    assert_eq!(handle.raft().metrics().borrow().last_log_index, before, "wrong secrets grew the Raft log");
    // Another source is still heard (and still refused for a wrong secret) ...
    let other: std::net::IpAddr = "127.0.0.10".parse().unwrap();
    match handle.admit(request("wrong"), other).await {
        JoinResponse::Refused { reason } => assert!(reason.contains("wrong secret"), "{reason}"),
        _ => panic!("accepted"),
    }
    // ... and the token itself still works from a source that did not guess.
    let secret = horcrux_raft::JoinTokenData::decode(&token).unwrap().secret;
    let honest: std::net::IpAddr = "127.0.0.11".parse().unwrap();
    match handle.admit(request(&secret), honest).await {
        JoinResponse::Accepted { node_id, cert_pem, members, .. } => {
            assert_eq!(node_id, 2);
            let fp = fingerprint_der(&cert_der(&cert_pem).unwrap());
            assert_eq!(handle.read_local(|s| s.member_by_fingerprint(&fp)), Some(2));
            assert!(members.contains_key(&1) && members.contains_key(&2), "{members:?}");
        }
        JoinResponse::Refused { reason } => panic!("refused: {reason}"),
        JoinResponse::Redirect { .. } => panic!("redirected"),
    }
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialing_side_talks_only_to_current_members() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let handle = open(tmp.path(), &addr).await;
    let t = Duration::from_secs(3);
    let ca = handle.cluster_ca().unwrap();
    // A server whose certificate the CA signed, but for no member.
    let stray = ca.issue(5, "n5").unwrap();
    let stray_id = identity(&ca.cert_pem, &stray.cert_pem, &stray.key_pem);
    let fake_addr = format!("127.0.0.1:{}", free_udp_port());
    let fake =
        quinn::Endpoint::server(stray_id.server_config().unwrap(), fake_addr.parse().unwrap()).unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = answered.clone();
    tokio::spawn(async move {
        while let Some(incoming) = fake.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    if conn.accept_bi().await.is_ok() {
                        seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    // A client with member 2's certificate that checks servers as every node does.
    let n2 = record_n2(&handle, &ca).await;
    let net = client(&identity(&ca.cert_pem, &n2.cert_pem, &n2.key_pem));
    let h = handle.clone();
    net.set_peer_check(std::sync::Arc::new(move |fp| h.member_by_fingerprint(fp)));
    let ping = RpcRequest::Ping { from: 2 };
    assert!(matches!(net.call(Some(1), &addr, &ping, t).await.unwrap(), RpcResponse::Pong));
    let e = net.call(Some(5), &fake_addr, &ping, t).await.unwrap_err();
    assert!(e.to_string().contains("not a current member"), "{e}");
    assert!(!answered.load(std::sync::atomic::Ordering::SeqCst), "a request reached the impostor");
    // The real node 1 dialled as if it were node 3: refused too.
    let e = net.call(Some(3), &addr, &ping, t).await.unwrap_err();
    assert!(e.to_string().contains("not node 3's"), "{e}");
    handle.shutdown().await;
}

/// A member renews its certificate (new key, signed and recorded by the leader) and keeps
/// talking in both directions; the leader renews its own the same way. Certificates carry
/// a lifetime of a year.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_renew_their_certificates_without_losing_contact() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let (addr1, addr2) = (format!("127.0.0.1:{}", free_udp_port()), format!("127.0.0.1:{}", free_udp_port()));
    let n1 = open(&tmp.path().join("1"), &addr1).await;
    let token = n1.create_join_token(Duration::from_secs(600)).await.unwrap();
    let n2 = ClusterHandle::open(OpenOptions {
        dir: tmp.path().join("2/raft"),
        node_name: "n2".into(),
        api_addr: "127.0.0.1:2".into(),
        cluster: Some(ClusterOptions { listen: addr2.parse().unwrap(), join: Some(token) }),
        snapshot_logs: None,
    })
    .await
    .unwrap();
    let year = horcrux_raft::pki::CERT_LIFETIME_S;
    let now = horcrux_raft::pki::now_s();
    for h in [&n1, &n2] {
        assert!((now + year - 86_400..=now + year + 60).contains(&h.cert_expires_s()), "a year's lifetime");
    }
    let wait_option = |h: &ClusterHandle, key: &str| {
        let (h, key) = (h.clone(), key.to_string());
        async move {
            for _ in 0..100 {
                if h.read_local(|s| s.options.contains_key(&key)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{key} never reached the node");
        }
    };
    let set = |key: &str| Command::SetClusterOption { key: key.into(), value: "1".into() };
    n2.propose(set("before")).await.unwrap();
    let before = n1.read_local(|s| s.member_certs[&2].clone());

    n2.renew_certificate().await.unwrap();
    let after = n1.read_local(|s| s.member_certs[&2].clone());
    assert_eq!(n2.certificate_fingerprint().as_deref(), Some(after.fingerprint.as_str()));
    assert_ne!(after.fingerprint, before.fingerprint);
    assert_eq!(after.previous, None, "n2 confirmed it saved the new one: the old one is no longer accepted");
    // n2 writes through the leader with its new certificate, and the leader replicates to it.
    n2.propose(set("after-renewal")).await.unwrap();
    wait_option(&n2, "after-renewal").await;
    n1.propose(set("from-leader")).await.unwrap();
    wait_option(&n2, "from-leader").await;
    // The leader renews its own.
    let own = n1.read_local(|s| s.member_certs[&1].fingerprint.clone());
    n1.renew_certificate().await.unwrap();
    assert_ne!(n1.read_local(|s| s.member_certs[&1].fingerprint.clone()), own);
    n2.propose(set("after-leader-renewal")).await.unwrap();
    wait_option(&n1, "after-leader-renewal").await;
    // The renewed certificate was saved: a restarted n2 presents it and is accepted.
    let renewed = n1.read_local(|s| s.member_certs[&2].fingerprint.clone());
    n2.shutdown().await;
    drop(n2);
    let mut reopened = None;
    for _ in 0..50 {
        // The store closes once the old node's background tasks have ended.
        let opened = ClusterHandle::open(OpenOptions {
            dir: tmp.path().join("2/raft"),
            node_name: "n2".into(),
            api_addr: "127.0.0.1:2".into(),
            cluster: Some(ClusterOptions { listen: addr2.parse().unwrap(), join: None }),
            snapshot_logs: None,
        })
        .await;
        match opened {
            Ok(h) => {
                reopened = Some(h);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("lock"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let n2 = reopened.expect("the store was never released");
    assert_eq!(n2.certificate_fingerprint().as_deref(), Some(renewed.as_str()), "the renewed one was saved");
    n2.propose(set("after-restart")).await.unwrap();
    wait_option(&n1, "after-restart").await;
    assert_eq!(n1.read_local(|s| s.member_certs[&2].fingerprint.clone()), renewed, "no second renewal");
    n2.shutdown().await;
    n1.shutdown().await;
}

async fn join(tmp: &std::path::Path, name: &str, addr: &str, token: String) -> ClusterHandle {
    ClusterHandle::open(OpenOptions {
        dir: tmp.join(format!("{name}/raft")),
        node_name: name.into(),
        api_addr: "127.0.0.1:2".into(),
        cluster: Some(ClusterOptions { listen: addr.parse().unwrap(), join: Some(token) }),
        snapshot_logs: None,
    })
    .await
    .unwrap()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// `rotate-ca`: a new CA signs from the start of the roll; both CAs are trusted while the
/// members renew (a node that joins meanwhile talks to members still on the old one); the
/// leader ends the roll once every member confirmed a certificate from the new CA, and from
/// then on a certificate from the old CA is refused, even one recorded for a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_rolls_without_losing_contact() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
    let n1 = open(&tmp.path().join("n1"), &addrs[0]).await;
    let n2 = join(tmp.path(), "n2", &addrs[1], n1.create_join_token(Duration::from_secs(600)).await.unwrap())
        .await;
    let old = n1.cluster_ca().unwrap();
    let old_fp = old.fingerprint().unwrap();
    let set = |key: &str| Command::SetClusterOption { key: key.into(), value: "1".into() };

    let new_fp = n1.rotate_ca().await.unwrap();
    assert_ne!(new_fp, old_fp);
    let token = n1.create_join_token(Duration::from_secs(600)).await.unwrap();
    let n3 = join(tmp.path(), "n3", &addrs[2], token).await;
    assert_eq!(
        n3.read_local(|s| s.member_certs[&3].ca.clone()),
        new_fp,
        "a joiner gets a new-CA certificate"
    );
    n3.propose(set("n3-during-roll")).await.unwrap();

    let n1c = n1.clone();
    wait_for("the roll to complete", 30, move || {
        n1c.read_local(|s| s.cluster_ca.as_ref().is_some_and(|c| c.previous_cert_pem.is_none()))
    })
    .await;
    for (id, c) in n1.read_local(|s| s.member_certs.clone()) {
        assert_eq!(c.ca, new_fp, "member {id} was not renewed from the new CA");
        assert_eq!(c.previous, None);
    }
    // Everyone still talks to everyone: writes from each node reach the others.
    for (i, h) in [&n1, &n2, &n3].into_iter().enumerate() {
        let key = format!("after-roll-{i}");
        h.propose(set(&key)).await.unwrap();
        for other in [&n1, &n2, &n3] {
            let (o, k) = (other.clone(), key.clone());
            wait_for("replication after the roll", 10, move || o.read_local(|s| s.options.contains_key(&k)))
                .await;
        }
    }
    // A certificate from the old CA is refused even when recorded for a member; the same
    // member's certificate from the new CA is accepted.
    let stale = old.issue(7, "n7").unwrap();
    let fresh = n1.cluster_ca().unwrap().issue(8, "n8").unwrap();
    for (id, c, ca) in [(7, &stale, &old_fp), (8, &fresh, &new_fp)] {
        let fingerprint = fingerprint_der(&cert_der(&c.cert_pem).unwrap());
        let cmd = Command::SetMemberCert {
            node_id: id,
            name: format!("n{id}"),
            fingerprint,
            keep_previous: false,
            ca: ca.clone(),
        };
        n1.propose(cmd).await.unwrap();
    }
    let t = Duration::from_secs(3);
    let both = format!("{}{}", n1.cluster_ca().unwrap().cert_pem, old.cert_pem);
    let fresh_ok = client(&identity(&both, &fresh.cert_pem, &fresh.key_pem))
        .call(None, &addrs[0], &RpcRequest::Ping { from: 8 }, t)
        .await;
    assert!(matches!(fresh_ok, Ok(RpcResponse::Pong)), "{fresh_ok:?}");
    let mut refused = false;
    for _ in 0..50 {
        let r = client(&identity(&both, &stale.cert_pem, &stale.key_pem))
            .call(None, &addrs[0], &RpcRequest::Ping { from: 7 }, t)
            .await;
        if r.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused, "a certificate from the rolled-out CA is still accepted");
    // A second roll can start once the first is over.
    assert!(n2.rotate_ca().await.is_ok());
    for h in [n3, n2, n1] {
        h.shutdown().await;
    }
}

/// A raw QUIC connection to `addr` with `cfg`: the handshake's outcome.
async fn handshake(
    addr: &str,
    cfg: rustls::ClientConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    endpoint
        .connect_with(config, addr.parse().unwrap(), horcrux_raft::pki::CLUSTER_SERVER_NAME)
        .unwrap()
        .await
}

async fn ask(conn: &quinn::Connection, req: &JoinRequest) -> JoinResponse {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&serde_json::to_vec(req).unwrap()).await.unwrap();
    send.finish().unwrap();
    serde_json::from_slice(&recv.read_to_end(1 << 20).await.unwrap()).unwrap()
}

/// The TLS layer requires a client certificate on both protocols: none at all fails the
/// handshake. A joining node presents a self-signed certificate over the key it asks a
/// certificate for, and a request for any other key is refused (it must hold the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_requires_a_client_certificate_and_a_joiner_proves_its_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let handle = open(tmp.path(), &addr).await;
    let ca = handle.cluster_ca().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
    for alpn in [horcrux_raft::transport::ALPN_RAFT, horcrux_raft::transport::ALPN_JOIN] {
        let mut cfg =
            rustls::ClientConfig::builder().with_root_certificates(roots.clone()).with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        // TLS 1.3 finishes the client's side before the server checks its certificate: the
        // server's refusal (alert 116, certificate required) then aborts the connection.
        let refused = match handshake(&addr, cfg).await {
            Err(_) => true,
            Ok(c) => {
                let why = c.closed().await.to_string();
                assert!(why.contains("handshake failed") && why.contains("no certificates"), "{why}");
                true
            }
        };
        assert!(refused, "a connection without a client certificate was served");
    }
    // A self-signed certificate gets through TLS but is no member: refused on Raft.
    let (key_a, public_a) = horcrux_raft::pki::new_member_key().unwrap();
    let own_a = horcrux_raft::pki::joiner_cert(&key_a).unwrap();
    let own_identity = NodeIdentity {
        cas: vec![cert_der(&ca.cert_pem).unwrap()],
        cert: own_a.clone(),
        key: std::sync::Arc::new(horcrux_raft::pki::key_der(&key_a).unwrap()),
    };
    let e =
        client(&own_identity).call(None, &addr, &RpcRequest::Ping { from: 2 }, Duration::from_secs(3)).await;
    assert!(e.is_err(), "a self-signed certificate was accepted on the Raft protocol: {e:?}");

    let token = horcrux_raft::JoinTokenData::decode(
        &handle.create_join_token(Duration::from_secs(600)).await.unwrap(),
    )
    .unwrap();
    let (_, public_b) = horcrux_raft::pki::new_member_key().unwrap();
    let request = |public: &[u8]| JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node: HorcruxNode { name: "n2".into(), raft_addr: "127.0.0.1:9".into(), api_addr: "x".into() },
        public_key_hex: horcrux_core::ids::hex_encode(public),
    };
    let join_cfg = || {
        horcrux_raft::transport::join_client_config(
            &token.ca_fingerprints(),
            own_a.clone(),
            horcrux_raft::pki::key_der(&key_a).unwrap(),
        )
        .unwrap()
    };
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(join_cfg(), addr.parse().unwrap(), horcrux_raft::pki::CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let before = handle.raft().metrics().borrow().last_log_index;
    match ask(&conn, &request(&public_b)).await {
        JoinResponse::Refused { reason } => {
            assert!(reason.contains("not the one of the certificate"), "{reason}")
        }
        other => panic!("a certificate for a key the joiner does not hold: {other:?}"),
    }
    assert_eq!(handle.raft().metrics().borrow().last_log_index, before, "the refused join wrote");
    let conn = endpoint
        .connect_with(join_cfg(), addr.parse().unwrap(), horcrux_raft::pki::CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    match ask(&conn, &request(&public_a)).await {
        JoinResponse::Accepted { node_id, cert_pem, .. } => {
            assert_eq!(node_id, 2);
            let issued = horcrux_raft::pki::cert_public_key(&cert_der(&cert_pem).unwrap()).unwrap();
            assert_eq!(issued, public_a, "the certificate is over the key the joiner proved it holds");
        }
        other => panic!("{other:?}"),
    }
    handle.shutdown().await;
}

/// A member unreachable at its Raft address is dialled at its other addresses (the other
/// corosync links of an imported corosync.conf).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_dialled_on_its_other_links_when_its_address_fails() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let handle = open(tmp.path(), &addr).await;
    let ca = handle.cluster_ca().unwrap();
    let n2 = record_n2(&handle, &ca).await;
    let dead = format!("127.0.0.1:{}", free_udp_port());
    let t = Duration::from_secs(2);
    let net = client(&identity(&ca.cert_pem, &n2.cert_pem, &n2.key_pem));
    assert!(net.call(Some(1), &dead, &RpcRequest::Ping { from: 2 }, t).await.is_err());
    let other = addr.clone();
    net.set_alternates(std::sync::Arc::new(move |id| if id == 1 { vec![other.clone()] } else { vec![] }));
    let r = net.call(Some(1), &dead, &RpcRequest::Ping { from: 2 }, Duration::from_secs(8)).await;
    assert!(matches!(r, Ok(RpcResponse::Pong)), "{r:?}");
    handle.shutdown().await;
}
