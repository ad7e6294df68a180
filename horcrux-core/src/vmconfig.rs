//! Guest hardware beyond CPU and memory: network cards, disk slots, and the Proxmox options
//! kept as they are; and Proxmox's property strings (`virtio=BC:24:11:00:00:01,bridge=vmbr0`,
//! `local:32,format=qcow2`), parsed and printed here so the `/api2/json` layer and any other
//! client get the same validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ValidationError;

/// Network card models QEMU emulates and Proxmox offers.
pub const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"];
pub const NETS_MAX: u8 = 32;

/// One network card: `netN` in Proxmox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// N of `netN`, 0-31.
    pub index: u8,
    pub model: String,
    /// `XX:XX:XX:XX:XX:XX`, upper case.
    pub macaddr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// 802.1Q VLAN tag, 1-4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    #[serde(default)]
    pub firewall: bool,
    #[serde(default)]
    pub link_down: bool,
}
crate::evolving!(NetSpec { index, model, macaddr, bridge, tag, firewall, link_down });

impl NetSpec {
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.index >= NETS_MAX {
            return Err(ValidationError::new(field, format!("net index 0-{}", NETS_MAX - 1)));
        }
        if !NIC_MODELS.contains(&self.model.as_str()) {
            return Err(ValidationError::new(
                field,
                format!("unknown model {:?}; one of {}", self.model, NIC_MODELS.join(", ")),
            ));
        }
        validate_mac(field, &self.macaddr)?;
        if let Some(b) = &self.bridge {
            let ok = !b.is_empty()
                && b.len() <= 15
                && b.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if !ok {
                return Err(ValidationError::new(field, format!("bridge {b:?} is not an interface name")));
            }
        }
        if let Some(t) = self.tag {
            if !(1..=4094).contains(&t) {
                return Err(ValidationError::new(field, format!("tag {t} out of range 1-4094")));
            }
        }
        Ok(())
    }

    /// Proxmox's form: `virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1,tag=10`.
    pub fn to_property_string(&self) -> String {
        let mut s = format!("{}={}", self.model, self.macaddr);
        if let Some(b) = &self.bridge {
            s.push_str(&format!(",bridge={b}"));
        }
        if self.firewall {
            s.push_str(",firewall=1");
        }
        if self.link_down {
            s.push_str(",link_down=1");
        }
        if let Some(t) = self.tag {
            s.push_str(&format!(",tag={t}"));
        }
        s
    }

    /// Parses `netN`'s value. Without a MAC address, `fresh_mac` is used (Proxmox generates
    /// one the same way, on the node that handles the request).
    pub fn parse(field: &str, index: u8, value: &str, fresh_mac: &str) -> Result<Self, ValidationError> {
        let mut net = NetSpec {
            index,
            model: String::new(),
            macaddr: String::new(),
            bridge: None,
            tag: None,
            firewall: false,
            link_down: false,
        };
        for (k, v) in parse_property_string(field, value, None)? {
            let v = v.as_deref();
            match (k.as_str(), v) {
                (m, mac) if NIC_MODELS.contains(&m) => {
                    net.model = m.to_string();
                    if let Some(mac) = mac {
                        net.macaddr = mac.to_ascii_uppercase();
                    }
                }
                ("model", Some(m)) => net.model = m.to_string(),
                ("macaddr", Some(mac)) => net.macaddr = mac.to_ascii_uppercase(),
                ("bridge", Some(b)) => net.bridge = Some(b.to_string()),
                ("tag", Some(t)) => {
                    net.tag = Some(t.parse().map_err(|_| ValidationError::new(field, format!("tag {t:?}")))?)
                }
                ("firewall", Some(f)) => net.firewall = parse_bool(field, f)?,
                ("link_down", Some(f)) => net.link_down = parse_bool(field, f)?,
                // Accepted by Proxmox and without effect here: rate limits and queues.
                ("rate" | "queues" | "mtu", Some(_)) => {}
                (k, _) => return Err(ValidationError::new(field, format!("unknown or empty key {k:?}"))),
            }
        }
        if net.model.is_empty() {
            return Err(ValidationError::new(field, "no model (virtio, e1000, ...)"));
        }
        if net.macaddr.is_empty() {
            net.macaddr = fresh_mac.to_string();
        }
        net.validate(field)?;
        Ok(net)
    }
}

/// A unicast MAC address `XX:XX:XX:XX:XX:XX`.
pub fn validate_mac(field: &str, mac: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let hex =
        parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    let unicast = hex && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if unicast {
        Ok(())
    } else {
        Err(ValidationError::new(field, format!("{mac:?} is not a unicast MAC address")))
    }
}

/// A MAC address from 3 random bytes under Proxmox's prefix `BC:24:11`.
pub fn mac_from_bytes(b: [u8; 3]) -> String {
    format!("BC:24:11:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2])
}

fn parse_bool(field: &str, v: &str) -> Result<bool, ValidationError> {
    match v {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(ValidationError::new(field, format!("{v:?} is not a boolean"))),
    }
}

/// Disk buses and how many slots each has (Proxmox's limits).
pub const DISK_BUSES: &[(&str, u32)] = &[("virtio", 16), ("scsi", 31), ("sata", 6), ("ide", 4)];

/// `scsi3` -> (`scsi`, 3), checked against the bus's slot count.
pub fn parse_disk_slot(field: &str, slot: &str) -> Result<(&'static str, u32), ValidationError> {
    for (bus, count) in DISK_BUSES {
        if let Some(n) = slot.strip_prefix(bus).and_then(|n| n.parse::<u32>().ok()) {
            if n < *count
                && !slot[bus.len()..].starts_with('+')
                && (n == 0 || !slot[bus.len()..].starts_with('0'))
            {
                return Ok((bus, n));
            }
            return Err(ValidationError::new(field, format!("{slot}: {bus} slots are 0-{}", count - 1)));
        }
    }
    Err(ValidationError::new(field, format!("{slot:?} is not a disk slot (virtioN, scsiN, sataN, ideN)")))
}

/// Proxmox VM options kept as they are (shown by `GET .../config`, not acted on beyond
/// what the notes say): description, ostype, onboot, tags, and hardware choices this
/// driver does not model yet.
pub const KEPT_OPTIONS: &[&str] = &[
    "acpi",
    "agent",
    "balloon",
    "bios",
    "boot",
    "cpu",
    "description",
    "hotplug",
    "kvm",
    "machine",
    "numa",
    "onboot",
    "ostype",
    "protection",
    "scsihw",
    "startup",
    "tablet",
    "tags",
    "vga",
];
pub const OPTION_MAX: usize = 8 * 1024;

/// The type Proxmox gives a kept option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionKind {
    /// Stored as `0` or `1`.
    Bool,
    /// A non-negative integer.
    Int,
    /// One of these words.
    Enum(&'static [&'static str]),
    Text,
}

pub fn option_kind(key: &str) -> OptionKind {
    match key {
        "acpi" | "kvm" | "numa" | "onboot" | "protection" | "tablet" => OptionKind::Bool,
        "balloon" => OptionKind::Int,
        "bios" => OptionKind::Enum(&["seabios", "ovmf"]),
        "ostype" => OptionKind::Enum(&[
            "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24", "l26",
            "solaris",
        ]),
        "scsihw" => OptionKind::Enum(&[
            "lsi",
            "lsi53c810",
            "virtio-scsi-pci",
            "virtio-scsi-single",
            "megasas",
            "pvscsi",
        ]),
        _ => OptionKind::Text,
    }
}

/// An option's value in its stored form (`true`/`yes`/`on` -> `1` for booleans), or why it
/// is not one.
/// What a guest's `hotplug` option lets change while it runs (Proxmox's default
/// `network,disk,usb`; `0` nothing, `1` the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugFeatures {
    pub network: bool,
    pub disk: bool,
}

const HOTPLUG_WORDS: [&str; 6] = ["network", "disk", "cpu", "memory", "usb", "cloudinit"];

pub fn hotplug_features(value: Option<&str>) -> HotplugFeatures {
    let v = match value.unwrap_or("1") {
        "1" => "network,disk,usb",
        "0" => "",
        other => other,
    };
    let has = |w: &str| v.split(',').any(|x| x.trim() == w);
    HotplugFeatures { network: has("network"), disk: has("disk") }
}

pub fn normalize_option(key: &str, value: &str) -> Result<String, ValidationError> {
    if key == "hotplug" && !matches!(value, "0" | "1") {
        if let Some(bad) = value.split(',').find(|w| !HOTPLUG_WORDS.contains(&w.trim())) {
            return Err(ValidationError::new(
                key,
                format!("{bad:?}: 0, 1 or a list of {}", HOTPLUG_WORDS.join(",")),
            ));
        }
    }
    match option_kind(key) {
        OptionKind::Bool => match value {
            "1" | "true" | "yes" | "on" => Ok("1".into()),
            "0" | "false" | "no" | "off" => Ok("0".into()),
            _ => Err(ValidationError::new(key, "type check ('boolean') failed")),
        },
        OptionKind::Int => value
            .parse::<u64>()
            .map(|n| n.to_string())
            .map_err(|_| ValidationError::new(key, "type check ('integer') failed")),
        OptionKind::Enum(words) if !words.contains(&value) => Err(ValidationError::new(
            key,
            format!("value '{value}' does not have a value in the enumeration '{}'", words.join(", ")),
        )),
        _ => Ok(value.to_string()),
    }
}

/// Each option's value has its type and stored form (what the API checks before a change;
/// the state machine checks only `validate_options`, as entries already in logs did).
pub fn validate_option_values(options: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (k, v) in options {
        if normalize_option(k, v)? != *v {
            return Err(ValidationError::new(k.clone(), format!("{v:?}: give {}", normalize_option(k, v)?)));
        }
    }
    Ok(())
}

pub fn validate_options(options: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (k, v) in options {
        if !KEPT_OPTIONS.contains(&k.as_str()) {
            return Err(ValidationError::new(k.clone(), "unknown option"));
        }

        if v.len() > OPTION_MAX || v.contains('\0') || (k != "description" && v.contains('\n')) {
            return Err(ValidationError::new(k.clone(), format!("at most {OPTION_MAX} bytes, one line")));
        }
    }
    Ok(())
}

/// Splits a property string into `(key, value)` pairs. A part without `=` is the value of
/// `default_key` (only the first part may be); with no default key it is a key without
/// value (`virtio` in `virtio,bridge=vmbr0`). Keys must not repeat.
pub fn parse_property_string(
    field: &str,
    s: &str,
    default_key: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, ValidationError> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    if s.is_empty() {
        return Err(ValidationError::new(field, "empty value"));
    }
    for (i, part) in s.split(',').enumerate() {
        if part.is_empty() {
            return Err(ValidationError::new(field, "empty element in property string"));
        }
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => match default_key {
                Some(d) if i == 0 => (d.to_string(), Some(part.to_string())),
                Some(_) => return Err(ValidationError::new(field, format!("{part:?} needs a key"))),
                None => (part.to_string(), None),
            },
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ValidationError::new(field, format!("key {k:?} given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// What a disk property string asks for: `STORAGE:SIZE_GB` (a new disk) or an existing
/// volume `STORAGE:VMID/NAME`, with options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRequest {
    New {
        storage: String,
        size_gb: u64,
        format: Option<String>,
        import_from: Option<String>,
    },
    Existing {
        volume: String,
    },
    /// `STORAGE:iso/NAME,media=cdrom`, or `none,media=cdrom` (`cdrom` too): an empty drive.
    Cdrom {
        volume: Option<String>,
    },
}

pub fn parse_disk(field: &str, value: &str) -> Result<DiskRequest, ValidationError> {
    let mut file = None;
    let mut format = None;
    let mut import_from = None;
    let mut cdrom = false;
    for (k, v) in parse_property_string(field, value, Some("file"))? {
        match (k.as_str(), v) {
            ("media", Some(m)) if m == "cdrom" => cdrom = true,
            ("media", Some(m)) if m == "disk" => {}
            ("media", Some(m)) => {
                return Err(ValidationError::new(field, format!("media {m}: disk or cdrom")))
            }
            ("import-from", Some(src)) => {
                crate::ids::parse_volume_id(&src)
                    .map_err(|e| ValidationError::new(field, format!("import-from: {}", e.message)))?;
                import_from = Some(src)
            }
            ("file", Some(f)) => file = Some(f),
            ("format", Some(f)) if matches!(f.as_str(), "raw" | "qcow2" | "vmdk") => format = Some(f),
            ("format", Some(f)) => {
                return Err(ValidationError::new(field, format!("format {f}: raw, qcow2 or vmdk")))
            }
            // Tuning options Proxmox accepts; QEMU's defaults are used here.
            ("size" | "cache" | "discard" | "iothread" | "ssd" | "backup" | "aio" | "replicate", Some(_)) => {
            }
            (k, _) => return Err(ValidationError::new(field, format!("unknown or empty key {k:?}"))),
        }
    }
    let file = file.ok_or_else(|| ValidationError::new(field, "no volume"))?;
    if cdrom || file == "cdrom" {
        if field.starts_with("virtio") {
            return Err(ValidationError::new(field, "a CD-ROM drive is on ide, sata or scsi"));
        }
        if import_from.is_some() || format.is_some() {
            return Err(ValidationError::new(field, "a CD-ROM drive takes no import-from or format"));
        }
        if file == "none" || file == "cdrom" {
            return Ok(DiskRequest::Cdrom { volume: None });
        }
        crate::ids::parse_iso_volume(field, &file)?;
        return Ok(DiskRequest::Cdrom { volume: Some(file) });
    }
    let Some((storage, rest)) = file.split_once(':') else {
        return Err(ValidationError::new(field, "expected STORAGE:SIZE_GB or STORAGE:VOLUME"));
    };
    crate::ids::validate_storage_id(field, storage)?;
    match rest.parse::<u64>() {
        // `STORAGE:0,import-from=...`: as large as the image imported.
        Ok(0) if import_from.is_none() => Err(ValidationError::new(field, "size must be at least 1 GiB")),
        Ok(gb) => Ok(DiskRequest::New { storage: storage.to_string(), size_gb: gb, format, import_from }),
        Err(_) => {
            crate::ids::parse_volume_id(&file).map_err(|e| ValidationError::new(field, e.message))?;
            Ok(DiskRequest::Existing { volume: file })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "BC:24:11:AA:BB:CC";

    #[test]
    fn nets_parse_in_both_proxmox_forms_and_print_back() {
        let n = NetSpec::parse("net0", 0, "virtio=bc:24:11:01:02:03,bridge=vmbr0,firewall=1,tag=10", MAC)
            .unwrap();
        assert_eq!((n.model.as_str(), n.macaddr.as_str()), ("virtio", "BC:24:11:01:02:03"));
        assert_eq!((n.bridge.as_deref(), n.tag, n.firewall), (Some("vmbr0"), Some(10), true));
        assert_eq!(n.to_property_string(), "virtio=BC:24:11:01:02:03,bridge=vmbr0,firewall=1,tag=10");
        let n = NetSpec::parse("net1", 1, "model=e1000,bridge=vmbr1", MAC).unwrap();
        assert_eq!((n.model.as_str(), n.macaddr.as_str()), ("e1000", MAC));
        let n = NetSpec::parse("net2", 2, "virtio,bridge=vmbr0", MAC).unwrap();
        assert_eq!(n.macaddr, MAC);
    }

    #[test]
    fn bad_nets_name_the_field() {
        for bad in [
            "pcnet=BC:24:11:01:02:03",
            "virtio=01:24:11:01:02:03",
            "virtio=zz",
            "virtio,tag=5000",
            "virtio,bridge=a b",
            "virtio,bridge=vmbr0,bridge=vmbr1",
            "bridge=vmbr0",
            "virtio,,tag=1",
            "virtio,colour=red",
        ] {
            let e = NetSpec::parse("net3", 3, bad, MAC).unwrap_err();
            assert_eq!(e.field, "net3", "{bad}: {e}");
        }
    }

    #[test]
    fn disks_parse_new_and_existing() {
        assert_eq!(
            parse_disk("virtio0", "local:32,format=qcow2").unwrap(),
            DiskRequest::New {
                storage: "local".into(),
                size_gb: 32,
                format: Some("qcow2".into()),
                import_from: None
            }
        );
        assert_eq!(
            parse_disk("virtio0", "local:2,format=raw").unwrap(),
            DiskRequest::New {
                storage: "local".into(),
                size_gb: 2,
                format: Some("raw".into()),
                import_from: None
            }
        );
        assert_eq!(
            parse_disk("scsi0", "local:0,import-from=local:import/debian.qcow2").unwrap(),
            DiskRequest::New {
                storage: "local".into(),
                size_gb: 0,
                format: None,
                import_from: Some("local:import/debian.qcow2".into())
            }
        );
        assert!(parse_disk("scsi0", "local:0,import-from=../x").is_err());
        assert_eq!(
            parse_disk("ide2", "local:iso/debian.iso,media=cdrom").unwrap(),
            DiskRequest::Cdrom { volume: Some("local:iso/debian.iso".into()) }
        );
        assert_eq!(parse_disk("ide2", "none,media=cdrom").unwrap(), DiskRequest::Cdrom { volume: None });
        assert_eq!(parse_disk("ide2", "cdrom").unwrap(), DiskRequest::Cdrom { volume: None });
        for bad in ["local:100/vm-100-disk-0.qcow2,media=cdrom", "local:iso/../x.iso,media=cdrom"] {
            assert!(parse_disk("ide2", bad).is_err(), "{bad}");
        }
        assert!(parse_disk("virtio1", "none,media=cdrom").is_err());
        assert!(parse_disk("ide2", "local:iso/x.iso,media=floppy").is_err());
        assert_eq!(
            parse_disk("scsi1", "file=local:100/vm-100-disk-0.qcow2,size=1G,cache=none").unwrap(),
            DiskRequest::Existing { volume: "local:100/vm-100-disk-0.qcow2".into() }
        );
        for bad in
            ["local", "local:0", "local:1,format=qed", "9x:1", "local:1,bogus=1", "local:../etc/passwd"]
        {
            assert_eq!(parse_disk("virtio0", bad).unwrap_err().field, "virtio0", "{bad}");
        }
    }

    #[test]
    fn disk_slots_follow_proxmox_limits() {
        assert_eq!(parse_disk_slot("d", "virtio15").unwrap(), ("virtio", 15));
        assert_eq!(parse_disk_slot("d", "scsi30").unwrap(), ("scsi", 30));
        assert_eq!(parse_disk_slot("d", "ide3").unwrap(), ("ide", 3));
        for bad in ["virtio16", "sata6", "ide4", "nvme0", "scsi", "scsi01", "scsi+1"] {
            assert!(parse_disk_slot("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_are_limited_to_known_keys() {
        let ok: BTreeMap<String, String> =
            [("ostype".into(), "l26".into()), ("description".into(), "two\nlines".into())].into();
        validate_options(&ok).unwrap();
        let bad: BTreeMap<String, String> = [("args".into(), "-device evil".into())].into();
        assert_eq!(validate_options(&bad).unwrap_err().field, "args");
        let bad: BTreeMap<String, String> = [("tags".into(), "a\nb".into())].into();
        assert_eq!(validate_options(&bad).unwrap_err().field, "tags");
    }
}
