//! What a node reports of its hardware for placement: CPU architecture (`uname -m`), the
//! architectures its `qemu-system-*` binaries emulate, CPUs and memory.

use std::collections::BTreeSet;

use horcrux_core::NodeFacts;

/// `uname -m`.
pub fn machine() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return std::env::consts::ARCH.to_string();
    }
    let bytes: Vec<u8> = u.machine.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The architectures of the `qemu-system-ARCH` binaries on `PATH` (`ppc64` also runs
/// `ppc64le` guests, `mips64el` `mips64` ones).
pub fn emulated_archs() -> BTreeSet<String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut out = BTreeSet::new();
    for dir in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(arch) = name.strip_prefix("qemu-system-") {
                out.insert(arch.to_string());
                match arch {
                    "ppc64" => drop(out.insert("ppc64le".to_string())),
                    "mips64el" => drop(out.insert("mips64".to_string())),
                    _ => {}
                }
            }
        }
    }
    out
}

fn mem_total_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

pub fn node_facts() -> NodeFacts {
    NodeFacts {
        arch: machine(),
        emulates: emulated_archs(),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        mem_mib: mem_total_mib(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_reports_its_architecture_and_qemu() {
        let f = super::node_facts();
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert!(f.emulates.contains("x86_64"), "qemu-system-x86_64 is installed here: {:?}", f.emulates);
        assert!(f.cpus >= 1 && f.mem_mib > 256, "{f:?}");
    }
}
