//! Time-based one-time passwords (RFC 6238, on HOTP of RFC 4226) for two-factor login,
//! their `otpauth://` provisioning URI (what authenticator apps scan as a QR code), and
//! single-use recovery codes that are stored only as hashes.

use ring::hmac;

use crate::ids::sha256_hex;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode,
)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    fn ring(self) -> hmac::Algorithm {
        match self {
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

/// HOTP (RFC 4226): the `digits`-digit code for `counter`.
pub fn hotp(secret: &[u8], counter: u64, digits: u32, alg: Algorithm) -> u32 {
    let tag = hmac::sign(&hmac::Key::new(alg.ring(), secret), &counter.to_be_bytes());
    let mac = tag.as_ref();
    let off = (mac[mac.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([mac[off] & 0x7f, mac[off + 1], mac[off + 2], mac[off + 3]]);
    bin % 10u32.pow(digits)
}

/// TOTP (RFC 6238) with a 30 s step: the code at `unix_secs`.
pub fn totp(secret: &[u8], unix_secs: u64, digits: u32, alg: Algorithm) -> u32 {
    hotp(secret, unix_secs / 30, digits, alg)
}

/// Checks a 6-digit SHA-1 code (what authenticator apps use) at `unix_secs`, accepting one
/// step of clock drift either way. Returns the matching step, so the caller can refuse a
/// code whose step is not newer than the last one accepted (no replay).
pub fn verify(secret: &[u8], code: &str, unix_secs: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let now = unix_secs / 30;
    [now.saturating_sub(1), now, now + 1]
        .into_iter()
        .find(|step| constant_eq(hotp(secret, *step, 6, Algorithm::Sha1), want))
}

fn constant_eq(a: u32, b: u32) -> bool {
    (a ^ b) == 0
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (as `otpauth://` secrets are written).
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 (case-insensitive; spaces and padding ignored); `None` if invalid.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.chars().filter(|c| *c != ' ' && *c != '=') {
        let v = B32.iter().position(|b| *b as char == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

fn uri_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The provisioning URI authenticator apps read from a QR code.
pub fn provisioning_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits=6&period=30",
        uri_escape(issuer),
        uri_escape(account),
        base32_encode(secret),
        uri_escape(issuer),
        Algorithm::Sha1.name()
    )
}

/// How a recovery code is stored: its SHA-256 (codes are random, so no salt is needed).
pub fn recovery_code_hash(code: &str) -> String {
    sha256_hex(&code.trim().to_ascii_lowercase())
}

/// Which stored (unused) recovery code `code` is, if any; the caller marks it used.
pub fn match_recovery_code(stored_hashes: &[Option<String>], code: &str) -> Option<usize> {
    let h = recovery_code_hash(code);
    stored_hashes.iter().position(|s| s.as_deref() == Some(h.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, Appendix B: 8-digit codes for the three algorithms at six instants.
    #[test]
    fn rfc6238_test_vectors() {
        let sha1 = b"12345678901234567890".as_slice();
        let sha256 = b"12345678901234567890123456789012".as_slice();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".as_slice();
        let vectors: [(u64, u32, u32, u32); 6] = [
            (59, 94287082, 46119246, 90693936),
            (1111111109, 7081804, 68084774, 25091201),
            (1111111111, 14050471, 67062674, 99943326),
            (1234567890, 89005924, 91819424, 93441116),
            (2000000000, 69279037, 90698825, 38618901),
            (20000000000, 65353130, 77737706, 47863826),
        ];
        for (t, c1, c256, c512) in vectors {
            assert_eq!(totp(sha1, t, 8, Algorithm::Sha1), c1, "SHA1 at {t}");
            assert_eq!(totp(sha256, t, 8, Algorithm::Sha256), c256, "SHA256 at {t}");
            assert_eq!(totp(sha512, t, 8, Algorithm::Sha512), c512, "SHA512 at {t}");
        }
    }

    /// RFC 4226, Appendix D: HOTP values for counters 0..9.
    #[test]
    fn rfc4226_test_vectors() {
        let want = [755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489];
        for (counter, code) in want.into_iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", counter as u64, 6, Algorithm::Sha1), code);
        }
    }

    #[test]
    fn verify_accepts_one_step_of_drift_and_nothing_else() {
        let secret = b"12345678901234567890";
        let t = 1_111_111_111;
        let code = |at: u64| format!("{:06}", totp(secret, at, 6, Algorithm::Sha1));
        assert_eq!(verify(secret, &code(t), t), Some(t / 30));
        assert_eq!(verify(secret, &code(t - 30), t), Some(t / 30 - 1));
        assert_eq!(verify(secret, &code(t + 30), t), Some(t / 30 + 1));
        assert_eq!(verify(secret, &code(t - 90), t), None);
        assert_eq!(verify(secret, "12345", t), None);
        assert_eq!(verify(secret, "abcdef", t), None);
    }

    #[test]
    fn base32_round_trips_and_matches_rfc4648() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw 6ytb oi").unwrap(), b"foobar");
        assert!(base32_decode("MZ1W").is_none());
        let secret: Vec<u8> = (0..20).collect();
        assert_eq!(base32_decode(&base32_encode(&secret)).unwrap(), secret);
    }

    #[test]
    fn provisioning_uri_and_recovery_codes() {
        let uri = provisioning_uri("Horcrux", "alice@pve", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Horcrux:alice@pve?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Horcrux&algorithm=SHA1&digits=6&period=30"
        );
        let stored = vec![Some(recovery_code_hash("aaaa-bbbb")), None, Some(recovery_code_hash("cccc-dddd"))];
        assert_eq!(match_recovery_code(&stored, " CCCC-DDDD "), Some(2));
        assert_eq!(match_recovery_code(&stored, "eeee-ffff"), None);
        assert!(!stored[0].as_ref().unwrap().contains("aaaa"), "stored hashed");
    }
}
