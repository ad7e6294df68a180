//! Proxmox task ids: `UPID:node:pid:pstart:starttime:type:id:user:`, with pid, pstart and
//! starttime as upper-case hex (pid and pstart 8 digits wide, starttime 8), exactly as
//! Proxmox's `PVE::Tools::upid_encode` writes them; clients parse the node out of it.

use std::fmt;
use std::str::FromStr;

use crate::ids::ValidationError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: u64,
    pub kind: String,
    pub id: String,
    pub user: String,
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.kind, self.id, self.user
        )
    }
}

impl FromStr for Upid {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValidationError::new("upid", format!("{s:?} is not a UPID"));
        let parts: Vec<&str> = s.split(':').collect();
        // "UPID", 7 fields, then the empty string after the trailing ':'.
        if parts.len() != 9 || parts[0] != "UPID" || !parts[8].is_empty() {
            return Err(bad());
        }
        let hex = |p: &str| u64::from_str_radix(p, 16).map_err(|_| bad());
        let field_ok = |p: &str| p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@!".contains(&b));
        if parts[1].is_empty() || !parts[1..].iter().all(|p| field_ok(p)) {
            return Err(bad());
        }
        Ok(Upid {
            node: parts[1].to_string(),
            pid: u32::try_from(hex(parts[2])?).map_err(|_| bad())?,
            pstart: hex(parts[3])?,
            starttime: hex(parts[4])?,
            kind: parts[5].to_string(),
            id: parts[6].to_string(),
            user: parts[7].to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_proxmox_and_parses_back() {
        let u = Upid {
            node: "pve1".into(),
            pid: 0x1a2b,
            pstart: 0x3c4d5e,
            starttime: 0x6553f100,
            kind: "qmstart".into(),
            id: "101".into(),
            user: "root@pam".into(),
        };
        let s = u.to_string();
        assert_eq!(s, "UPID:pve1:00001A2B:003C4D5E:6553F100:qmstart:101:root@pam:");
        assert_eq!(s.parse::<Upid>().unwrap(), u);
        assert!("UPID:pve1:zz:0:0:qmstart:101:root@pam:".parse::<Upid>().is_err());
        assert!("UPID:pve1:1:0:0:qmstart:101:root@pam".parse::<Upid>().is_err());
        assert!("UPID:../x:1:0:0:qmstart:101:root@pam:".parse::<Upid>().is_err());
    }
}
