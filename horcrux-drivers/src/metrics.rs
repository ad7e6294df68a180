//! What the host says about its load, and about each guest's: read from `/proc` and
//! `/sys` under a root directory (`/` in production, a fixture in tests: the sampling
//! seam). Counters become rates between two samples, so each sampler keeps the previous
//! reading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One reading of the node, in PVE's units: `cpu` and `iowait` as fractions of all CPUs
/// (0..1), bytes, bytes per second, `loadavg` as the 1-minute load. A rate is NaN in the
/// first sample (nothing to compare with); a figure the host does not offer is NaN.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSample {
    pub cpu: f64,
    pub maxcpu: f64,
    pub iowait: f64,
    pub loadavg: f64,
    pub memtotal: f64,
    pub memused: f64,
    pub memavailable: f64,
    pub swaptotal: f64,
    pub swapused: f64,
    pub roottotal: f64,
    pub rootused: f64,
    pub netin: f64,
    pub netout: f64,
    /// `/proc/pressure/*` `avg10` (percent of time stalled), NaN without PSI.
    pub pressurecpusome: f64,
    pub pressureiosome: f64,
    pub pressureiofull: f64,
    pub pressurememorysome: f64,
    pub pressurememoryfull: f64,
}

/// `/proc/stat`'s aggregate line: (busy, iowait, total) jiffies, and the CPU count.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64, u64, usize)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0);
    let iowait = v.get(4).copied().unwrap_or(0);
    let cpus = text.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    Some((total - idle - iowait, iowait, total, cpus.max(1)))
}

/// `/proc/meminfo` in bytes, by key.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

/// Whether an interface counts as the node's network, as PVE's physical NIC pattern:
/// `ethN`, `en*`, `ib*` (bridges, taps, bonds' slaves' aggregates and loopback do not).
pub fn physical_nic(name: &str) -> bool {
    name.strip_prefix("eth").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || (name.starts_with("en") && !name.contains(['.', ':']))
        || (name.starts_with("ib") && !name.contains(['.', ':']))
}

/// `/proc/net/dev`: (received, transmitted) bytes per interface.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some((name.trim().to_string(), (*f.first()?, *f.get(8)?)))
        })
        .collect()
}

/// `/proc/pressure/KIND`: the `some` and `full` lines' `avg10` (percent).
pub fn parse_pressure(text: &str) -> (f64, f64) {
    let avg10 = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("avg10=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (avg10("some"), avg10("full"))
}

fn rate(now: u64, before: Option<u64>, secs: f64) -> f64 {
    match before {
        Some(b) if secs > 0.0 && now >= b => (now - b) as f64 / secs,
        _ => f64::NAN,
    }
}

/// Samples the node. `root`: where `/proc` is (`/`); `disk`: the file system whose size
/// is `roottotal`/`rootused` (the data dir's).
pub struct NodeSampler {
    root: PathBuf,
    disk: PathBuf,
    last: Option<Reading>,
}

/// What the next sample's rates are measured against: when, the `/proc/stat` (busy,
/// iowait, total) jiffies, the network (received, sent) bytes.
type Reading = (f64, (u64, u64, u64), (u64, u64));

impl NodeSampler {
    pub fn new(root: impl Into<PathBuf>, disk: impl Into<PathBuf>) -> NodeSampler {
        NodeSampler { root: root.into(), disk: disk.into(), last: None }
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join(rel)).unwrap_or_default()
    }

    /// A reading at `now` (seconds, any monotonic origin: only differences count).
    pub fn sample(&mut self, now: f64) -> NodeSample {
        let mut s = NodeSample::default();
        let (busy, iowait, total, cpus) = parse_proc_stat(&self.read("proc/stat")).unwrap_or((0, 0, 0, 1));
        s.maxcpu = cpus as f64;
        let net = parse_net_dev(&self.read("proc/net/dev"))
            .into_iter()
            .filter(|(name, _)| physical_nic(name))
            .fold((0, 0), |(r, t), (_, (rx, tx))| (r + rx, t + tx));
        match self.last {
            Some((then, (b0, w0, t0), _)) if total > t0 && now > then => {
                let dt = (total - t0) as f64;
                s.cpu = busy.saturating_sub(b0) as f64 / dt;
                s.iowait = iowait.saturating_sub(w0) as f64 / dt;
            }
            _ => (s.cpu, s.iowait) = (f64::NAN, f64::NAN),
        }
        let secs = self.last.map(|(then, _, _)| now - then).unwrap_or(0.0);
        let before = self.last.map(|(_, _, n)| n);
        s.netin = rate(net.0, before.map(|b| b.0), secs);
        s.netout = rate(net.1, before.map(|b| b.1), secs);
        self.last = Some((now, (busy, iowait, total), net));
        s.loadavg = self
            .read("proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        let mem = parse_meminfo(&self.read("proc/meminfo"));
        let get = |k: &str| mem.get(k).map(|v| *v as f64).unwrap_or(f64::NAN);
        s.memtotal = get("MemTotal");
        s.memavailable = get("MemAvailable");
        s.memused = s.memtotal - s.memavailable;
        s.swaptotal = get("SwapTotal");
        s.swapused = s.swaptotal - get("SwapFree");
        (s.roottotal, s.rootused) = match fs_usage(&self.disk) {
            Some((total, used)) => (total as f64, used as f64),
            None => (f64::NAN, f64::NAN),
        };
        (s.pressurecpusome, _) = parse_pressure(&self.read("proc/pressure/cpu"));
        (s.pressureiosome, s.pressureiofull) = parse_pressure(&self.read("proc/pressure/io"));
        (s.pressurememorysome, s.pressurememoryfull) = parse_pressure(&self.read("proc/pressure/memory"));
        s
    }
}

/// A file system's (total, used) bytes (`statvfs`).
pub fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    fs_space(path).map(|(total, free, _)| (total, total - free))
}

/// A file system's (total, free, available to unprivileged users) bytes (`statvfs`).
pub fn fs_space(path: &Path) -> Option<(u64, u64, u64)> {
    statvfs(path).ok()
}

/// `statvfs(path)`: (total, free, available to unprivileged users) bytes.
pub fn statvfs(path: &Path) -> std::io::Result<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bfree as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// One reading of a running guest: `cpu` as a fraction of its vCPUs, `mem` its process's
/// resident memory, the rest bytes per second (NaN in the first sample).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestSample {
    pub cpu: f64,
    pub mem: f64,
    pub netin: f64,
    pub netout: f64,
    pub diskread: f64,
    pub diskwrite: f64,
}

/// The counters a guest's rates come from: CPU seconds, network (into, out of the
/// guest) and disk (read, written) bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GuestCounters {
    pub cpu_secs: f64,
    pub net: (u64, u64),
    pub disk: (u64, u64),
}

/// `/proc/PID/stat`: user + system time in clock ticks.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    // The fields after the parenthesised command name (which may hold spaces).
    let rest = text.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime is field 14, stime 15 (1-based, counting pid and comm).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Reads a guest process's counters under `root`: its CPU time and resident memory from
/// `/proc/PID`, the network from its taps' counters in `/sys/class/net` (a tap's received
/// bytes are what the guest sent).
pub fn guest_counters(root: &Path, pid: u32, taps: &[String]) -> Option<(GuestCounters, u64)> {
    let stat = std::fs::read_to_string(root.join(format!("proc/{pid}/stat"))).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_secs = parse_pid_stat(&stat)? as f64 / ticks;
    let statm = std::fs::read_to_string(root.join(format!("proc/{pid}/statm"))).unwrap_or_default();
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss = statm.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * page;
    let counter = |tap: &str, what: &str| -> u64 {
        std::fs::read_to_string(root.join(format!("sys/class/net/{tap}/statistics/{what}")))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let net = taps.iter().fold((0, 0), |(i, o), t| (i + counter(t, "tx_bytes"), o + counter(t, "rx_bytes")));
    Some((GuestCounters { cpu_secs, net, disk: (0, 0) }, rss))
}

/// Seconds since the host booted (`/proc/uptime` under `root`).
pub fn host_uptime(root: &Path) -> Option<f64> {
    std::fs::read_to_string(root.join("proc/uptime")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Seconds a process has run: the host's uptime less its start (field 22 of
/// `/proc/PID/stat`, clock ticks after boot).
pub fn process_uptime(root: &Path, pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(root.join(format!("proc/{pid}/stat"))).ok()?;
    let start: f64 = stat.rsplit_once(") ")?.1.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((host_uptime(root)? - start / ticks).max(0.0))
}

/// QMP `query-blockstats`: the (read, written) bytes of all the guest's drives.
pub fn parse_blockstats(v: &serde_json::Value) -> (u64, u64) {
    v.as_array().into_iter().flatten().fold((0, 0), |(r, w), dev| {
        let s = &dev["stats"];
        (r + s["rd_bytes"].as_u64().unwrap_or(0), w + s["wr_bytes"].as_u64().unwrap_or(0))
    })
}

/// A guest's reading from two counter readings `secs` apart.
pub fn guest_sample(
    now: &GuestCounters,
    before: Option<&GuestCounters>,
    secs: f64,
    vcpus: u32,
    mem: u64,
) -> GuestSample {
    let mut s = GuestSample { mem: mem as f64, ..Default::default() };
    match before {
        Some(b) if secs > 0.0 => {
            s.cpu = ((now.cpu_secs - b.cpu_secs) / secs / f64::from(vcpus.max(1))).max(0.0);
            s.netin = rate(now.net.0, Some(b.net.0), secs);
            s.netout = rate(now.net.1, Some(b.net.1), secs);
            s.diskread = rate(now.disk.0, Some(b.disk.0), secs);
            s.diskwrite = rate(now.disk.1, Some(b.disk.1), secs);
        }
        _ => {
            (s.cpu, s.netin, s.netout, s.diskread, s.diskwrite) =
                (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN)
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path, stat: &str, net: &str) {
        std::fs::create_dir_all(dir.join("proc/net")).unwrap();
        std::fs::create_dir_all(dir.join("proc/pressure")).unwrap();
        std::fs::write(dir.join("proc/stat"), stat).unwrap();
        std::fs::write(dir.join("proc/net/dev"), net).unwrap();
        std::fs::write(dir.join("proc/loadavg"), "0.52 0.40 0.30 2/300 1234\n").unwrap();
        std::fs::write(
            dir.join("proc/meminfo"),
            "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\nSwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n",
        )
        .unwrap();
        std::fs::write(dir.join("proc/pressure/io"), "some avg10=1.50 avg60=1.00 avg300=0.50 total=10\nfull avg10=0.25 avg60=0.10 avg300=0.05 total=5\n").unwrap();
    }

    const NET: &str = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes\n";

    #[test]
    fn node_rates_fractions_and_memory_from_proc() {
        let dir = tempfile::tempdir().unwrap();
        let stat0 = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 350 50 0 0 0 0 0\n";
        let net0 = format!("{NET}    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 5000 10 0 0 0 0 0 0\ntap100i0: 77 1 0 0 0 0 0 0 77 1 0 0 0 0 0 0\n");
        fixture(dir.path(), stat0, &net0);
        let mut s = NodeSampler::new(dir.path(), dir.path());
        let first = s.sample(100.0);
        assert!(first.cpu.is_nan() && first.netin.is_nan(), "no rate from one reading");
        assert_eq!((first.maxcpu, first.loadavg), (2.0, 0.52));
        assert_eq!(first.memtotal, 16_000_000.0 * 1024.0);
        assert_eq!(first.memused, 4_000_000.0 * 1024.0, "total - available");
        assert_eq!(first.swapused, 500_000.0 * 1024.0);
        assert_eq!((first.pressureiosome, first.pressureiofull), (1.5, 0.25));
        assert!(first.pressurecpusome.is_nan(), "a PSI file that is not there");
        assert!(first.roottotal > 0.0 && first.rootused >= 0.0);
        // 10 s later: 1000 more jiffies, 300 busy, 100 iowait; eth0 got 20000 and sent 10000.
        let stat1 = "cpu  250 0 250 1300 200 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n";
        let net1 = format!("{NET}    lo: 99999 1 0 0 0 0 0 0 99999 1 0 0 0 0 0 0\n  eth0: 21000 10 0 0 0 0 0 0 15000 10 0 0 0 0 0 0\ntap100i0: 9999 1 0 0 0 0 0 0 9999 1 0 0 0 0 0 0\n");
        fixture(dir.path(), stat1, &net1);
        let second = s.sample(110.0);
        assert!((second.cpu - 0.3).abs() < 1e-9, "{}", second.cpu);
        assert!((second.iowait - 0.1).abs() < 1e-9);
        assert_eq!((second.netin, second.netout), (2000.0, 1000.0), "physical NICs only, per second");
    }

    #[test]
    fn nic_names_and_pid_stat() {
        for (n, phys) in [
            ("eth0", true),
            ("enp3s0", true),
            ("ib0", true),
            ("lo", false),
            ("vmbr0", false),
            ("tap100i0", false),
            ("eth0.10", false),
            ("ethx", false),
        ] {
            assert_eq!(physical_nic(n), phys, "{n}");
        }
        let stat = "4242 (qemu system x86) S 1 4242 4242 0 -1 4194560 1000 0 0 0 700 300 0 0 20 0 3 0 100 1000000 5000 18446744073709551615";
        assert_eq!(parse_pid_stat(stat), Some(1000));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/4242")).unwrap();
        std::fs::write(dir.path().join("proc/4242/stat"), stat).unwrap();
        std::fs::write(dir.path().join("proc/uptime"), "500.25 900.00\n").unwrap();
        assert_eq!(host_uptime(dir.path()), Some(500.25));
        // Started 100 ticks after boot (field 22).
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(process_uptime(dir.path(), 4242), Some(500.25 - 100.0 / ticks));
        let g = guest_sample(
            &GuestCounters { cpu_secs: 25.0, net: (3000, 1000), disk: (10_000, 4000) },
            Some(&GuestCounters { cpu_secs: 5.0, net: (1000, 0), disk: (0, 0) }),
            10.0,
            4,
            1 << 30,
        );
        assert_eq!(
            (g.cpu, g.netin, g.netout, g.diskread, g.diskwrite, g.mem),
            (0.5, 200.0, 100.0, 1000.0, 400.0, (1u64 << 30) as f64)
        );
        let qmp = serde_json::json!([{"device": "", "stats": {"rd_bytes": 5, "wr_bytes": 7}}, {"stats": {"rd_bytes": 1, "wr_bytes": 2}}]);
        assert_eq!(parse_blockstats(&qmp), (6, 9));
    }
}
