//! Join tokens (like `incus cluster add` / `kubeadm join`): a single-use secret, the
//! addresses of current members and the CA fingerprint, encoded as one printable string.

use serde::{Deserialize, Serialize};

const PREFIX: &str = "HX1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenData {
    pub id: String,
    pub secret: String,
    /// SHA-256 of the cluster CA certificate (DER), hex.
    pub ca_fingerprint: String,
    /// Raft (QUIC) addresses of members to ask.
    pub addrs: Vec<String>,
    /// During a CA roll: the CA being rolled out, which members that have not renewed yet
    /// still present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ca_fingerprint: Option<String>,
}

impl JoinTokenData {
    /// The CA fingerprints a joining node accepts a member's certificate from.
    pub fn ca_fingerprints(&self) -> Vec<String> {
        std::iter::once(self.ca_fingerprint.clone()).chain(self.previous_ca_fingerprint.clone()).collect()
    }
}

impl JoinTokenData {
    pub fn encode(&self) -> String {
        // Serialising plain strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut s = String::with_capacity(PREFIX.len() + json.len() * 2);
        s.push_str(PREFIX);
        for b in json {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn decode(token: &str) -> Result<Self, String> {
        let hex = token.trim().strip_prefix(PREFIX).ok_or("not a Horcrux join token (it starts with HX1)")?;
        if hex.len() % 2 != 0 || hex.len() > 16 * 1024 {
            return Err("join token is truncated or too long".into());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "join token is not hex after its prefix".to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("join token is malformed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = JoinTokenData {
            id: "abc".into(),
            secret: "s3cret".into(),
            ca_fingerprint: "ff".repeat(32),
            addrs: vec!["127.0.0.1:7000".into()],
            previous_ca_fingerprint: Some("ee".repeat(32)),
        };
        assert_eq!(JoinTokenData::decode(&t.encode()).unwrap(), t);
        assert!(JoinTokenData::decode("nope").is_err());
        assert!(JoinTokenData::decode("HX1zz").is_err());
        assert!(JoinTokenData::decode("HX1abc").is_err());
    }
}
