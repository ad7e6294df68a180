//! Guest CPU architectures: the built-in ones (each a `qemu-system-*` binary, a machine
//! type and a CPU model) and the ones an operator registers
//! (`POST /api/v1/cluster/architectures`). A guest names one in `arch`; a node runs it
//! natively when its `uname -m` is that architecture and under TCG emulation otherwise,
//! where the guest allows it (`emulation`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ValidationError;

/// What a guest without `arch` is (Proxmox: "defaults to the host architecture"; every
/// Horcrux guest before architectures existed was x86_64).
pub const DEFAULT_ARCH: &str = "x86_64";

/// Whether a guest may run emulated on a node of another architecture.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(rename_all = "lowercase")]
pub enum Emulation {
    #[default]
    Allowed,
    Forbidden,
}

impl Emulation {
    pub fn is_allowed(&self) -> bool {
        *self == Emulation::Allowed
    }
}

/// How QEMU runs guests of one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    pub name: String,
    /// A `qemu-system-*` binary name, looked up on each node's `PATH` (never a path: an
    /// architecture must not make the daemon run another program).
    pub qemu_binary: String,
    /// `-machine` (none: QEMU's default for the binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// `-cpu` (none: QEMU's default for the machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}
crate::evolving!(Architecture { name, qemu_binary, machine, cpu });

impl Architecture {
    /// The emulator suffix nodes report in their facts (`aarch64` for `qemu-system-aarch64`).
    pub fn emulator(&self) -> &str {
        self.qemu_binary.strip_prefix("qemu-system-").unwrap_or(&self.qemu_binary)
    }

    /// x86 guests get a VGA card; the other machines have none (their console is serial).
    pub fn has_vga(&self) -> bool {
        matches!(self.emulator(), "x86_64" | "i386")
    }

    /// Whether a node with these facts runs it without emulation (its `uname -m` is this
    /// architecture, or the one its binary is for).
    pub fn native_on(&self, facts: &crate::model::NodeFacts) -> bool {
        facts.arch == self.name || facts.arch == self.emulator()
    }

    /// Whether a node with these facts has the binary to emulate it.
    pub fn emulated_on(&self, facts: &crate::model::NodeFacts) -> bool {
        facts.emulates.contains(self.emulator())
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        let suffix = self.qemu_binary.strip_prefix("qemu-system-").unwrap_or("");
        if suffix.is_empty()
            || suffix.len() > 32
            || !suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ValidationError::new(
                "qemu_binary",
                "a qemu-system-* binary name (lower-case letters, digits, '_'), not a path",
            ));
        }
        let word = |field: &str, v: &Option<String>, extra: &[u8]| match v {
            Some(s)
                if s.is_empty()
                    || s.len() > 128
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b)) =>
            {
                Err(ValidationError::new(
                    field,
                    format!(
                        "1-128 of letters, digits, '.', '_', '-'{}",
                        if extra.is_empty() { "" } else { ", '+', '=', ','" }
                    ),
                ))
            }
            _ => Ok(()),
        };
        // A machine type takes no properties here; a CPU model may carry feature flags.
        word("machine", &self.machine, &[])?;
        word("cpu", &self.cpu, b"+=,")
    }
}

/// An architecture name: 1-32 of lower-case letters, digits and `_`, starting with a letter.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(field, "1-32 of lower-case letters, digits and '_', starting with a letter"))
    }
}

fn builtin(name: &str, binary: &str, machine: Option<&str>, cpu: Option<&str>) -> Architecture {
    Architecture {
        name: name.into(),
        qemu_binary: format!("qemu-system-{binary}"),
        machine: machine.map(Into::into),
        cpu: cpu.map(Into::into),
    }
}

/// The architectures every cluster knows. (`cortex-a57` rather than `max` on aarch64:
/// `max` enables pointer authentication, which TCG emulates slowly.)
pub fn builtins() -> Vec<Architecture> {
    vec![
        builtin("x86_64", "x86_64", None, None),
        builtin("aarch64", "aarch64", Some("virt"), Some("cortex-a57")),
        builtin("riscv64", "riscv64", Some("virt"), None),
        builtin("ppc64le", "ppc64", Some("pseries"), None),
        builtin("s390x", "s390x", Some("s390-ccw-virtio"), None),
        builtin("mips64", "mips64el", Some("malta"), Some("MIPS64R2-generic")),
    ]
}

impl Default for Architecture {
    /// The default architecture, x86_64.
    fn default() -> Self {
        builtins().swap_remove(0)
    }
}

pub fn is_builtin(name: &str) -> bool {
    builtins().iter().any(|a| a.name == name)
}

/// The architecture called `name`: a built-in one or one registered in `registered`.
pub fn lookup(registered: &BTreeMap<String, Architecture>, name: &str) -> Option<Architecture> {
    builtins().into_iter().find(|a| a.name == name).or_else(|| registered.get(name).cloned())
}

/// The architecture a guest of `arch` (none: the default) is, or an error naming `field`.
pub fn resolve(
    registered: &BTreeMap<String, Architecture>,
    field: &str,
    arch: Option<&str>,
) -> Result<Architecture, ValidationError> {
    let name = arch.unwrap_or(DEFAULT_ARCH);
    lookup(registered, name).ok_or_else(|| {
        let mut known: Vec<String> = builtins().into_iter().map(|a| a.name).collect();
        known.extend(registered.keys().cloned());
        ValidationError::new(field, format!("unknown architecture {name:?} (known: {})", known.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_resolve() {
        for a in builtins() {
            a.validate().unwrap();
        }
        let none = BTreeMap::new();
        assert_eq!(resolve(&none, "arch", None).unwrap().qemu_binary, "qemu-system-x86_64");
        let arm = resolve(&none, "arch", Some("aarch64")).unwrap();
        assert_eq!((arm.emulator(), arm.machine.as_deref(), arm.has_vga()), ("aarch64", Some("virt"), false));
        assert_eq!(resolve(&none, "arch", Some("ppc64le")).unwrap().emulator(), "ppc64");
        let e = resolve(&none, "arch", Some("vax")).unwrap_err();
        assert_eq!(e.field, "arch");
        assert!(e.message.contains("unknown architecture \"vax\""), "{e}");
    }

    #[test]
    fn registered_architectures_name_a_qemu_binary_and_plain_words() {
        let ok = Architecture {
            name: "aarch64_sve".into(),
            qemu_binary: "qemu-system-aarch64".into(),
            machine: Some("virt-7.2".into()),
            cpu: Some("max,sve=on".into()),
        };
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut Architecture), field: &str| {
            let mut a = ok.clone();
            f(&mut a);
            assert_eq!(a.validate().unwrap_err().field, field, "{a:?}");
        };
        bad(&|a| a.qemu_binary = "/bin/sh".into(), "qemu_binary");
        bad(&|a| a.qemu_binary = "qemu-system-../../sh".into(), "qemu_binary");
        bad(&|a| a.qemu_binary = "qemu-system-".into(), "qemu_binary");
        bad(&|a| a.machine = Some("virt,memory-backend=x".into()), "machine");
        bad(&|a| a.cpu = Some("max x".into()), "cpu");
        bad(&|a| a.name = "Arm".into(), "name");
        bad(&|a| a.name = String::new(), "name");
    }
}
