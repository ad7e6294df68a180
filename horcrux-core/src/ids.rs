//! Identifiers and their validation: VMIDs, DNS-label names, storage ids, volume ids.
//! Every check names the field it refused so the API can answer 400 with it.

use serde::{Deserialize, Serialize};

/// Lowest and highest VMID Proxmox accepts.
pub const VMID_MIN: u32 = 100;
pub const VMID_MAX: u32 = 999_999_999;

/// A refused input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}
crate::evolving!(ValidationError { field, message });

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

pub fn validate_vmid(field: &str, vmid: u64) -> Result<u32, ValidationError> {
    if (VMID_MIN as u64..=VMID_MAX as u64).contains(&vmid) {
        Ok(vmid as u32)
    } else {
        Err(ValidationError::new(field, format!("VMID {vmid} out of range {VMID_MIN}..={VMID_MAX}")))
    }
}

/// A DNS label (RFC 1123): 1-63 letters, digits and hyphens, not starting or ending with '-'.
pub fn validate_dns_label(field: &str, s: &str) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{s:?} is not a DNS label (1-63 letters, digits or '-', not at either end)"),
        ))
    }
}

/// Storage ids follow Proxmox: a letter, then letters, digits, '-', '_' or '.', at most 64.
pub fn validate_storage_id(field: &str, s: &str) -> Result<(), ValidationError> {
    let mut bytes = s.bytes();
    let ok = s.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{s:?} is not a valid storage id")))
    }
}

/// An absolute host path that is safe to hand to a program as one argument.
pub fn validate_abs_path(field: &str, s: &str) -> Result<(), ValidationError> {
    if !s.starts_with('/') {
        return Err(ValidationError::new(field, format!("{s:?} is not an absolute path")));
    }
    if s.len() > 4096 || s.contains('\0') || s.contains('\n') {
        return Err(ValidationError::new(field, "path has a NUL or newline or is too long"));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(ValidationError::new(field, "path must not contain '..'"));
    }
    Ok(())
}

/// A file a guest boots from (kernel, initrd): a volume on a storage, or a host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFile<'a> {
    /// `STORAGE:snippets/NAME` or `STORAGE:iso/NAME`: checked against the caller's rights
    /// on `/storage/STORAGE`, resolved to a path by the storage on the owning node.
    Volume { storage: &'a str, volid: &'a str },
    /// An absolute host path: only `root@pam` may name one (as Proxmox's `args`).
    Host(&'a str),
}

pub fn parse_boot_file<'a>(field: &str, s: &'a str) -> Result<BootFile<'a>, ValidationError> {
    if s.starts_with('/') {
        validate_abs_path(field, s)?;
        return Ok(BootFile::Host(s));
    }
    let (storage, rel) = parse_volume_id(s).map_err(|e| ValidationError::new(field, e.message))?;
    match rel.split_once('/') {
        Some(("snippets" | "iso", name)) if !name.contains('/') => Ok(BootFile::Volume { storage, volid: s }),
        _ => Err(ValidationError::new(
            field,
            format!(
                "{s:?}: a volume STORAGE:snippets/NAME or STORAGE:iso/NAME (or, for root@pam, a host path)"
            ),
        )),
    }
}

/// Lower-case hex SHA-256: how secrets (API tokens, join tokens) are stored and compared.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    hex_encode(&sha2::Sha256::digest(secret.as_bytes()))
}

/// Proxmox-style volume id of a guest disk on a directory pool: `local:101/vm-101-disk-0.qcow2`.
pub fn volume_id(storage: &str, vmid: u32, index: usize) -> String {
    format!("{storage}:{vmid}/vm-{vmid}-disk-{index}.qcow2")
}

/// A volume's image format: qcow2 and vmdk files by name (`local:100/vm-100-disk-0.qcow2`),
/// everything else (raw files, zvols, LVs: `tank:vm-100-disk-0`) raw.
pub fn volume_format(volid: &str) -> &'static str {
    let file = volid.split_once(':').is_some_and(|(_, rel)| rel.contains('/'));
    match volid.rsplit('.').next() {
        Some("qcow2") if file => "qcow2",
        Some("vmdk") if file => "vmdk",
        _ => "raw",
    }
}

/// The guest a volume belongs to: `local:100/...` (a directory storage's `VMID/` folder) or
/// a name `vm-100-disk-N`, `base-100-disk-N`, `subvol-100-disk-N` (`tank:vm-100-disk-0`).
pub fn volume_owner(volid: &str) -> Option<u32> {
    let (_, rel) = volid.split_once(':')?;
    if let Some((dir, _)) = rel.split_once('/') {
        return dir.parse().ok();
    }
    let rest = rel
        .strip_prefix("vm-")
        .or_else(|| rel.strip_prefix("base-"))
        .or_else(|| rel.strip_prefix("subvol-"))?;
    rest.split('-').next()?.parse().ok()
}

/// The `N` of a guest disk's volume name (`local:100/vm-100-disk-2.qcow2`, `tank:vm-100-disk-2`,
/// `b:100/vm-100-disk-2.raw`): how a guest's next disk gets a name none of its disks has.
pub fn disk_index(volid: &str) -> Option<usize> {
    let name = volid.rsplit(['/', ':']).next()?;
    let n = name.split_once("-disk-")?.1;
    n.split('.').next()?.parse().ok()
}

/// A disk size as Proxmox's `resize` takes it (`10G`, `+512M`, `1073741824`; units K, M,
/// G, T in powers of 1024, a bare number in bytes), from `current` bytes; answers the new
/// size in bytes, refusing a shrink.
pub fn parse_disk_resize(field: &str, size: &str, current: u64) -> Result<u64, ValidationError> {
    let (grow, rest) = match size.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, size),
    };
    let (num, unit) =
        rest.split_at(rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len()));
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(ValidationError::new(field, format!("{size:?}: the unit must be K, M, G or T"))),
    };
    let value: f64 =
        num.parse().map_err(|_| ValidationError::new(field, format!("{size:?} is not a size")))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > (crate::model::DISK_MIB_MAX << 20) as f64 {
        return Err(ValidationError::new(field, format!("{size:?} is out of range")));
    }
    let new = if grow { current.saturating_add(bytes as u64) } else { bytes as u64 };
    if new < current {
        return Err(ValidationError::new(
            field,
            format!("shrinking a disk is not supported ({current} bytes now)"),
        ));
    }
    if new > crate::model::DISK_MIB_MAX << 20 {
        return Err(ValidationError::new(field, "the disk would be larger than the maximum"));
    }
    Ok(new)
}

/// Splits a volume id into (storage, path relative to the pool's `images/` dir).
pub fn parse_volume_id(volid: &str) -> Result<(&str, &str), ValidationError> {
    let (storage, rel) = volid
        .split_once(':')
        .ok_or_else(|| ValidationError::new("volume", format!("{volid:?} has no 'storage:' prefix")))?;
    validate_storage_id("volume", storage)?;
    let valid_rel = !rel.is_empty()
        && !rel.starts_with('/')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && rel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !valid_rel {
        return Err(ValidationError::new("volume", format!("{volid:?} has an invalid path")));
    }
    Ok((storage, rel))
}

/// An ISO image's volume id, `STORAGE:iso/NAME` (what a CD-ROM drive holds); answers the
/// storage.
pub fn parse_iso_volume<'a>(field: &str, volid: &'a str) -> Result<&'a str, ValidationError> {
    let (storage, rel) = parse_volume_id(volid).map_err(|e| ValidationError::new(field, e.message))?;
    match rel.strip_prefix("iso/") {
        Some(name) if !name.contains('/') => Ok(storage),
        _ => Err(ValidationError::new(field, format!("{volid:?} is not an ISO image (STORAGE:iso/NAME)"))),
    }
}

/// `NAME@REALM` (whether the realm exists is the state's business).
pub fn validate_userid(field: &str, userid: &str) -> Result<(), ValidationError> {
    let Some((name, realm)) = userid.rsplit_once('@') else {
        return Err(ValidationError::new(field, format!("{userid:?} is not NAME@REALM")));
    };
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !name_ok {
        return Err(ValidationError::new(field, format!("{name:?}: 1-64 letters, digits, '.', '_' or '-'")));
    }
    if realm.is_empty() || realm.len() > 32 || !realm.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ValidationError::new(field, format!("{realm:?} is not a realm name")));
    }
    Ok(())
}

/// An API token's name (the part after `!`).
pub fn validate_token_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{name:?}: a letter, then letters, digits, '.', '_' or '-'")))
    }
}

/// 32 random bytes from the OS, as 64 hex digits: API token secrets.
/// Constant-time equality of two byte strings (of equal length; unequal lengths differ).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bytes as lower-case hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a query value, a
/// URL's user part, a path segment.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Standard base64 with padding (RFC 4648 section 4): the WebSocket handshake's accept key
/// and the hashes of a content security policy.
pub fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, x)| n | (*x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lower- or upper-case hex to bytes; `None` if it is not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub fn random_secret() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the OS random source works");
    hex_encode(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), coded, "{plain}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn disk_indices_and_resize_sizes() {
        assert_eq!(disk_index("local:100/vm-100-disk-2.qcow2"), Some(2));
        assert_eq!(disk_index("tank:vm-100-disk-11"), Some(11));
        assert_eq!(disk_index("b:100/vm-100-disk-0.raw"), Some(0));
        assert_eq!(disk_index("local:iso/x.iso"), None);
        assert_eq!(volume_owner("local:100/vm-100-disk-2.qcow2"), Some(100));
        assert_eq!(volume_owner("tank:vm-101-disk-0"), Some(101));
        assert_eq!(volume_owner("tank:subvol-7-disk-0"), Some(7));
        assert_eq!(volume_owner("local:iso/x.iso"), None);
        assert_eq!(volume_format("local:100/vm-100-disk-0.qcow2"), "qcow2");
        assert_eq!(volume_format("b:100/vm-100-disk-0.raw"), "raw");
        assert_eq!(volume_format("tank:vm-100-disk-0.qcow2"), "raw");
        let g = 1u64 << 30;
        assert_eq!(parse_disk_resize("size", "+1G", g), Ok(2 * g));
        assert_eq!(parse_disk_resize("size", "10G", g), Ok(10 * g));
        assert_eq!(parse_disk_resize("size", "1.5G", g), Ok(g + g / 2));
        assert_eq!(parse_disk_resize("size", "1073741824", g), Ok(g));
        for bad in ["512M", "+1X", "G", "-1G", "+1E", "99999T"] {
            assert_eq!(parse_disk_resize("size", bad, g).unwrap_err().field, "size", "{bad}");
        }
    }

    #[test]
    fn vmid_bounds() {
        assert!(validate_vmid("vmid", 99).is_err());
        assert!(validate_vmid("vmid", 5).is_err());
        assert_eq!(validate_vmid("vmid", 100), Ok(100));
        assert_eq!(validate_vmid("vmid", 999_999_999), Ok(999_999_999));
        assert!(validate_vmid("vmid", 1_000_000_000).is_err());
    }

    #[test]
    fn dns_labels() {
        for good in ["t1", "a", "web-01", "A1"] {
            assert!(validate_dns_label("name", good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "has space", "-x", "x-", "a.b", "ü", long.as_str()] {
            let e = validate_dns_label("name", bad).unwrap_err();
            assert_eq!(e.field, "name");
        }
    }

    #[test]
    fn storage_ids_and_paths() {
        assert!(validate_storage_id("storage", "local").is_ok());
        assert!(validate_storage_id("storage", "local-zfs_2.x").is_ok());
        assert!(validate_storage_id("storage", "1local").is_err());
        assert!(validate_storage_id("storage", "lo cal").is_err());
        assert!(validate_abs_path("p", "/boot/vmlinuz").is_ok());
        assert!(validate_abs_path("p", "boot/vmlinuz").is_err());
        assert!(validate_abs_path("p", "/boot/../etc/shadow").is_err());
    }

    #[test]
    fn volume_ids_round_trip() {
        let v = volume_id("local", 101, 0);
        assert_eq!(v, "local:101/vm-101-disk-0.qcow2");
        assert_eq!(parse_volume_id(&v).unwrap(), ("local", "101/vm-101-disk-0.qcow2"));
        assert!(parse_volume_id("local:../etc/passwd").is_err());
        assert!(parse_volume_id("local:/abs").is_err());
        assert!(parse_volume_id("nocolon").is_err());
    }
}
