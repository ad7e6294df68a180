//! A member's transport identity over time: its certificate renewed before expiry, the
//! cluster CA rolled (`rotate-ca`), a standalone node given a certificate when it becomes a
//! cluster member. Each keeps the identity the node presents in line with the replicated
//! state (`member_certs`, `cluster_ca`).

use std::collections::BTreeMap;
use std::time::Duration;

use horcrux_core::Command;

use crate::handle::{save_identity, storage, Certs, ClusterHandle, ProposeError, StoredIdentity, OP_TIMEOUT};
use crate::node::HorcruxNode;
use crate::pki::ClusterCa;
use crate::transport::{self, ForwardError, NodeIdentity, RpcRequest, RpcResponse};
use crate::types::NodeId;

/// How long a node waits after seeing a CA roll begin before it swaps its certificate for
/// one from the new CA (peers apply the roll within a heartbeat or so).
const ROLL_GRACE: Duration = Duration::from_secs(4);

/// The fingerprint of a record's signing CA (computed for records from before it was kept).
pub(crate) fn ca_fingerprint(rec: &horcrux_core::model::ClusterCaRecord) -> String {
    if !rec.fingerprint.is_empty() {
        return rec.fingerprint.clone();
    }
    crate::pki::fingerprint_pem(&rec.cert_pem).unwrap_or_default()
}

impl ClusterHandle {
    /// SHA-256 of the transport certificate this node presents.
    pub fn certificate_fingerprint(&self) -> Option<String> {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        crate::pki::fingerprint_pem(&stored.certs.as_ref()?.cert_pem).ok()
    }

    /// When this node's transport certificate expires (Unix seconds; 0: never renewed).
    pub fn cert_expires_s(&self) -> u64 {
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).cert_expires_s
    }

    /// Keeps this node's transport identity in line with the replicated state, every two
    /// seconds: trusts the CAs the state trusts (two during a roll), renews the certificate
    /// when it is within `RENEW_BEFORE_S` of expiring or was signed by a CA being rolled
    /// out, and, on the leader, ends a roll once every member confirmed a new certificate.
    pub(crate) async fn renew_loop(self) {
        let mut roll_seen: Option<std::time::Instant> = None;
        let mut retry_at = std::time::Instant::now();
        while self.sleep_unless_stopping(Duration::from_secs(2)).await {
            let Some(ca) = self.read_local(|s| s.cluster_ca.clone()) else { continue };
            if let Err(e) = self.trust_cas(&ca) {
                tracing::warn!("could not update the trusted cluster CAs: {e}");
            }
            let current = ca_fingerprint(&ca);
            let mine = self.read_local(|s| s.member_certs.get(&self.node_id).map(|c| c.ca.clone()));
            let rolling = ca.previous_cert_pem.is_some();
            roll_seen = if rolling { roll_seen.or_else(|| Some(std::time::Instant::now())) } else { None };
            // Peers apply the roll within a heartbeat or so; give them a moment before
            // presenting a certificate only the new CA vouches for.
            let rolled_out = rolling
                && mine.as_deref().is_some_and(|m| m != current)
                && roll_seen.is_some_and(|t| t.elapsed() >= ROLL_GRACE);
            let expires = self.cert_expires_s();
            let expiring = expires != 0 && crate::pki::now_s() + crate::pki::RENEW_BEFORE_S >= expires;
            if (rolled_out || expiring) && std::time::Instant::now() >= retry_at {
                if let Err(e) = self.renew_certificate().await {
                    // A roll waits on every member: retry it soon.
                    let pause = Duration::from_secs(if rolling { 3 } else { 60 });
                    tracing::warn!("transport certificate renewal failed (retrying in {pause:?}): {e}");
                    retry_at = std::time::Instant::now() + pause;
                }
            }
            // Renewed and saved, but the confirmation did not commit (no leader then, say):
            // confirm again, so the old certificate goes and a roll can end.
            let unconfirmed = self.read_local(|s| {
                s.member_certs.get(&self.node_id).filter(|c| c.previous.is_some()).map(|c| c.ca.clone())
            });
            if let (Some(ca), Some(fingerprint)) = (unconfirmed, self.certificate_fingerprint()) {
                let mine =
                    self.read_local(|s| s.member_certs.get(&self.node_id).map(|c| c.fingerprint.clone()));
                if mine.as_deref() == Some(fingerprint.as_str()) {
                    self.confirm_certificate(fingerprint, ca).await;
                }
            }
            if rolling && self.is_leader() {
                let done = self
                    .read_local(|s| s.member_certs.values().all(|c| c.ca == current && c.previous.is_none()));
                if done {
                    match self.propose(Command::FinishCaRotation).await {
                        Ok(_) => {
                            tracing::info!(ca = %current, "CA rotation complete: the previous CA is no longer trusted")
                        }
                        Err(e) => tracing::warn!("could not end the CA rotation: {e}"),
                    }
                }
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Trusts exactly the CAs of `ca` (the current one, and the previous during a roll),
    /// for new connections in both directions; saved, so a restart trusts the same.
    fn trust_cas(&self, ca: &horcrux_core::model::ClusterCaRecord) -> Result<(), ProposeError> {
        let (Some(net), Some(endpoint)) = (&self.net, &self.endpoint) else { return Ok(()) };
        let bundle: String = ca.trusted_pems().concat();
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let Some(certs) = stored.certs.as_mut() else { return Ok(()) };
        if certs.ca_pem == bundle {
            return Ok(());
        }
        let identity = NodeIdentity::from_pem(&bundle, &certs.cert_pem, &certs.key_pem).map_err(storage)?;
        certs.ca_pem = bundle;
        save_identity(&self.db, &stored)?;
        endpoint.set_server_config(Some(identity.server_config().map_err(storage)?));
        net.set_client_config(identity.client_config().map_err(storage)?);
        tracing::info!(cas = identity.cas.len(), "the transport trusts a new set of cluster CAs");
        Ok(())
    }

    /// Starts a CA roll: a new CA signs from now on; members renew their certificates from
    /// it and the leader ends the roll (the old CA stops being trusted) once all confirmed.
    /// Returns the new CA's fingerprint.
    pub async fn rotate_ca(&self) -> Result<String, ProposeError> {
        if self.net.is_none() {
            return Err(ProposeError::Rejected(horcrux_core::ApplyError::Conflict {
                message: "this node has no cluster transport".into(),
            }));
        }
        let ca = ClusterCa::create().map_err(storage)?;
        let fingerprint = ca.fingerprint().map_err(storage)?;
        let cmd = Command::RotateClusterCa {
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
            fingerprint: fingerprint.clone(),
        };
        self.propose(cmd).await?;
        tracing::info!(ca = %fingerprint, "started a CA rotation");
        Ok(fingerprint)
    }

    /// Replaces this node's transport certificate: a new key made here, a certificate the
    /// leader signs and records (the old one stays accepted until it expires), saved, then
    /// presented on new connections in both directions.
    pub async fn renew_certificate(&self) -> Result<(), ProposeError> {
        let (Some(net), Some(endpoint)) = (&self.net, &self.endpoint) else {
            return Err(ProposeError::Unavailable("this node has no cluster transport".into()));
        };
        let (key_pem, public) = crate::pki::new_member_key().map_err(storage)?;
        let public_key_hex = horcrux_core::ids::hex_encode(&public);
        let renewed = match self.leader_node() {
            Some((id, _)) if id == self.node_id => self.renew_for_member(id, &public_key_hex).await,
            Some((id, leader)) => {
                let req = RpcRequest::RenewCert { public_key_hex };
                match net.call(Some(id), &leader.raft_addr, &req, OP_TIMEOUT).await {
                    Ok(RpcResponse::RenewCert(r)) => r,
                    Ok(_) => Err(ForwardError::Unavailable("unexpected reply from the leader".into())),
                    Err(e) => Err(ForwardError::Unavailable(e.to_string())),
                }
            }
            None => Err(ForwardError::Unavailable("no leader is elected".into())),
        }
        .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        let fingerprint = crate::pki::fingerprint_pem(&renewed.cert_pem).map_err(storage)?;
        {
            let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
            let ca_pem = match self.read_local(|s| s.cluster_ca.clone()) {
                Some(ca) => ca.trusted_pems().concat(),
                None => stored.certs.as_ref().map(|c| c.ca_pem.clone()).unwrap_or_default(),
            };
            let identity = NodeIdentity::from_pem(&ca_pem, &renewed.cert_pem, &key_pem).map_err(storage)?;
            stored.certs = Some(Certs { ca_pem, cert_pem: renewed.cert_pem, key_pem });
            stored.cert_expires_s = renewed.expires_s;
            save_identity(&self.db, &stored)?;
            endpoint.set_server_config(Some(identity.server_config().map_err(storage)?));
            net.set_client_config(identity.client_config().map_err(storage)?);
        }
        tracing::info!(expires_s = renewed.expires_s, "renewed this node's transport certificate");
        // Saved: the previous certificate is no longer needed (a roll waits for this). If
        // this does not commit now, the renewal loop confirms again.
        self.confirm_certificate(fingerprint, renewed.ca).await;
        Ok(())
    }

    /// Records that this node saved and presents certificate `fingerprint` (signed by CA
    /// `ca`): the one it renewed from stops being accepted.
    async fn confirm_certificate(&self, fingerprint: String, ca: String) {
        let confirm = Command::SetMemberCert {
            node_id: self.node_id,
            name: self.node_name.to_string(),
            fingerprint,
            keep_previous: false,
            ca,
        };
        if let Err(e) = self.propose(confirm).await {
            tracing::warn!("could not confirm this node's renewed certificate yet: {e}");
        }
    }

    /// Leader only: signs a new certificate for member `peer` over `public_key_hex` and
    /// records it, keeping the member's current one accepted until it expires.
    pub(crate) async fn renew_for_member(
        &self,
        peer: NodeId,
        public_key_hex: &str,
    ) -> Result<transport::RenewedCert, ForwardError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.node_id) {
            return Err(ForwardError::NotLeader { leader: m.current_leader });
        }
        let public = horcrux_core::ids::hex_decode(public_key_hex)
            .ok_or_else(|| ForwardError::Refused("the public key is not hex".into()))?;
        let (name, ca) =
            self.read_local(|s| (s.member_certs.get(&peer).map(|c| c.name.clone()), s.cluster_ca.clone()));
        let name = name.ok_or_else(|| ForwardError::Refused(format!("node {peer} is not a member")))?;
        let rec = ca.ok_or_else(|| ForwardError::Refused("the cluster has no CA".into()))?;
        let ca = ClusterCa::from_record(&rec);
        let expires_s = crate::pki::now_s() + crate::pki::CERT_LIFETIME_S;
        let cert_pem = ca
            .issue_member(peer, &name, &public, expires_s)
            .map_err(|e| ForwardError::Refused(e.to_string()))?;
        let fingerprint =
            crate::pki::fingerprint_pem(&cert_pem).map_err(|e| ForwardError::Refused(e.to_string()))?;
        let signer = ca_fingerprint(&rec);
        let record = Command::SetMemberCert {
            node_id: peer,
            name,
            fingerprint,
            keep_previous: true,
            ca: signer.clone(),
        };
        self.propose(record).await.map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        tracing::info!(node_id = peer, "renewed a member's transport certificate");
        Ok(transport::RenewedCert { cert_pem, expires_s, ca: signer })
    }

    /// Turns a node that ran standalone into a one-node cluster others can join: a
    /// transport certificate from the cluster CA in its state (kept since its first start),
    /// presented from now on, and its Raft address recorded in the membership.
    pub(crate) async fn adopt_transport(
        &self,
        identity: &mut StoredIdentity,
        me: &HorcruxNode,
    ) -> Result<(), ProposeError> {
        let (Some(net), Some(endpoint)) = (&self.net, &self.endpoint) else { return Ok(()) };
        let rec = self.read_local(|s| s.cluster_ca.clone()).ok_or_else(|| {
            ProposeError::Storage(
                "this node's state has no cluster CA; it cannot become a cluster member".into(),
            )
        })?;
        let cert = ClusterCa::from_record(&rec).issue(identity.id, &identity.name).map_err(storage)?;
        let certs =
            Certs { ca_pem: rec.trusted_pems().concat(), cert_pem: cert.cert_pem, key_pem: cert.key_pem };
        let ni = NodeIdentity::from_pem(&certs.ca_pem, &certs.cert_pem, &certs.key_pem).map_err(storage)?;
        identity.certs = Some(certs);
        identity.cert_expires_s = crate::pki::now_s() + crate::pki::CERT_LIFETIME_S;
        save_identity(&self.db, identity)?;
        *self.stored.lock().unwrap_or_else(|p| p.into_inner()) = identity.clone();
        endpoint.set_server_config(Some(ni.server_config().map_err(storage)?));
        net.set_client_config(ni.client_config().map_err(storage)?);
        let recorded =
            self.raft.metrics().borrow().membership_config.membership().get_node(&identity.id).cloned();
        if recorded.as_ref().is_some_and(|n| n.raft_addr != me.raft_addr) {
            let nodes = BTreeMap::from([(identity.id, me.clone())]);
            self.raft
                .change_membership(openraft::ChangeMembers::SetNodes(nodes), false)
                .await
                .map_err(|e| storage(format!("recording this node's cluster address: {e}")))?;
        }
        tracing::info!(addr = %me.raft_addr, "this standalone node is now a one-node cluster others can join");
        Ok(())
    }
}
