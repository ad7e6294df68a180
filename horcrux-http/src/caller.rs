//! Who made a request (set by the authentication layer as a request extension).

/// Who made the request: the token id, and the user it belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    /// The token's rights are separated from (and at most) its user's.
    pub privsep: bool,
}

impl Caller {
    /// `root@pam!admin` -> `root@pam`.
    pub fn user(&self) -> &str {
        self.token_id.split('!').next().unwrap_or(&self.token_id)
    }

    /// Who the cluster's state machine checks an access-control change against.
    pub fn actor(&self) -> horcrux_core::access::Actor {
        let token = self.token_id.contains('!').then(|| self.token_id.clone());
        horcrux_core::access::Actor { userid: self.user().to_string(), token, privsep: self.privsep }
    }
}
