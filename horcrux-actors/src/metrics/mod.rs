//! Metrics, per node and durable: every `interval` (10 s) the sampler reads the node, the
//! guests it runs and its storages, and folds each reading into that object's round-robin
//! file under `DATA_DIR/rrd/` ([`rrd`]). Not replicated (high-rate samples are not
//! committed); another node's figures are read through that node.

pub mod rrd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use horcrux_core::GuestConfig;
use horcrux_drivers::metrics::{guest_counters, guest_sample, parse_blockstats, GuestCounters, NodeSampler};
use horcrux_drivers::Hypervisor;
use horcrux_raft::ClusterHandle;
use rrd::{Cf, Rrd};

use crate::storage::StorageBoard;

/// How long a sample waits for one guest's QMP answer.
const QMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The node's fields, as PVE 9's node metrics name them.
pub const NODE_FIELDS: &[&str] = &[
    "loadavg",
    "maxcpu",
    "cpu",
    "iowait",
    "memtotal",
    "memused",
    "swaptotal",
    "swapused",
    "roottotal",
    "rootused",
    "netin",
    "netout",
    "memavailable",
    "arcsize",
    "pressurecpusome",
    "pressureiosome",
    "pressureiofull",
    "pressurememorysome",
    "pressurememoryfull",
];

/// A guest's fields (PVE 9's `pve-vm-9.0` data sources, in their order). `memhost` and
/// the pressure figures are PVE's per-guest cgroup readings, which Horcrux's QEMU (no
/// cgroup per guest) does not have: always unknown.
pub const GUEST_FIELDS: &[&str] = &[
    "maxcpu",
    "cpu",
    "maxmem",
    "mem",
    "maxdisk",
    "disk",
    "netin",
    "netout",
    "diskread",
    "diskwrite",
    "memhost",
    "pressurecpusome",
    "pressurecpufull",
    "pressureiosome",
    "pressureiofull",
    "pressurememorysome",
    "pressurememoryfull",
];

/// A storage's fields.
pub const STORAGE_FIELDS: &[&str] = &["total", "used"];

/// Which object a file is about: its file name and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Series {
    Node,
    Guest(u32),
    Storage(String),
}

impl Series {
    fn file(&self) -> String {
        match self {
            Series::Node => "node.rrd".into(),
            Series::Guest(v) => format!("qemu-{v}.rrd"),
            Series::Storage(id) => format!("storage-{id}.rrd"),
        }
    }

    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Series::Node => NODE_FIELDS,
            Series::Guest(_) => GUEST_FIELDS,
            Series::Storage(_) => STORAGE_FIELDS,
        }
    }
}

/// `timeframe` of Proxmox's `rrddata` as PVE 9 reads it (pve-cluster's `PVE::RRD`): the
/// tier and how many of its rows.
pub fn timeframe(name: &str) -> Option<(usize, u64)> {
    Some(match name {
        "hour" => (0, 60),
        "day" => (0, 1440),
        "week" => (1, 336),
        "month" => (1, 1440),
        "year" => (2, 1440),
        "decade" => (3, 570),
        _ => return None,
    })
}

/// The files of this node, each opened on first use and kept open; the latest reading of
/// each object in memory (the live figures of `cluster/resources`).
#[derive(Clone)]
pub struct MetricsStore {
    dir: PathBuf,
    files: Arc<Mutex<HashMap<Series, Rrd>>>,
    latest: Arc<Mutex<HashMap<Series, Latest>>>,
    /// Each running guest's counters since its start (CPU seconds, network and disk
    /// bytes): the totals `cluster/resources` and Prometheus counters report.
    totals: Arc<Mutex<HashMap<u32, GuestCounters>>>,
    /// Seconds the node, and each running guest, has been up at the last reading.
    uptimes: Arc<Mutex<HashMap<Series, u64>>>,
}

/// A reading's time (Unix seconds) and values (in the series' field order).
type Latest = (u64, Vec<f64>);

impl MetricsStore {
    pub fn new(dir: impl Into<PathBuf>) -> MetricsStore {
        MetricsStore {
            dir: dir.into(),
            files: Arc::default(),
            latest: Arc::default(),
            totals: Arc::default(),
            uptimes: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Folds a reading taken at `time` (Unix seconds) into `series`' file.
    pub fn record(&self, series: &Series, time: u64, values: Vec<f64>) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(series) {
            let rrd = Rrd::open(&self.dir.join(series.file()), series.fields())?;
            files.insert(series.clone(), rrd);
        }
        files.get_mut(series).expect("opened").update(time, &values)?;
        drop(files);
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).insert(series.clone(), (time, values));
        Ok(())
    }

    /// The latest reading of `series` by field name (unknown values left out).
    pub fn latest(&self, series: &Series) -> Option<HashMap<&'static str, f64>> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let (_, values) = latest.get(series)?;
        Some(
            series
                .fields()
                .iter()
                .zip(values)
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| (*k, *v))
                .collect(),
        )
    }

    /// A running guest's counters as last read (`None`: not running here).
    pub fn totals(&self, vmid: u32) -> Option<GuestCounters> {
        self.totals.lock().unwrap_or_else(|p| p.into_inner()).get(&vmid).copied()
    }

    /// Seconds `series` (the node, a running guest) has been up at the last reading.
    pub fn uptime(&self, series: &Series) -> Option<u64> {
        self.uptimes.lock().unwrap_or_else(|p| p.into_inner()).get(series).copied()
    }

    fn set_uptime(&self, series: Series, secs: Option<f64>) {
        let mut u = self.uptimes.lock().unwrap_or_else(|p| p.into_inner());
        match secs {
            Some(s) => u.insert(series, s as u64),
            None => u.remove(&series),
        };
    }

    fn set_totals(&self, vmid: u32, counters: Option<GuestCounters>) {
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        match counters {
            Some(c) => t.insert(vmid, c),
            None => t.remove(&vmid),
        };
    }

    /// Forgets the guests that no longer exist anywhere in the cluster (`exists` says
    /// which do): their files go too, including files of guests deleted while this node
    /// was down.
    pub fn forget_guests(&self, exists: impl Fn(u32) -> bool) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(vmid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("qemu-"))
                .and_then(|n| n.strip_suffix(".rrd"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !exists(vmid) {
                let series = Series::Guest(vmid);
                self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(&series);
                self.latest.lock().unwrap_or_else(|p| p.into_inner()).remove(&series);
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Proxmox's `rrddata`: the timeframe's `count` rows of its tier up to `now` (the last
    /// one the row in progress, so a reading shows at once), each `time` and every known
    /// field (unknown ones left out, as PVE does); a last row with nothing known is
    /// dropped, as PVE drops it.
    pub fn rrddata(
        &self,
        series: &Series,
        tf: (usize, u64),
        cf: Cf,
        now: u64,
    ) -> std::io::Result<Vec<serde_json::Value>> {
        let path = self.dir.join(series.file());
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(series) {
            if !path.exists() {
                return Ok(Vec::new());
            }
            files.insert(series.clone(), Rrd::open(&path, series.fields())?);
        }
        let rrd = files.get(series).expect("opened");
        let (tier, count) = tf;
        let step = rrd.tiers()[tier].step;
        let last = now - now % step;
        let mut rows = rrd.rows(tier, last.saturating_sub(step * (count - 1)), last, cf)?;
        if rows.last().is_some_and(|(_, v)| v.iter().all(Option::is_none)) {
            rows.pop();
        }
        Ok(rows
            .into_iter()
            .map(|(time, values)| {
                let mut o = serde_json::Map::new();
                o.insert("time".into(), time.into());
                for (k, v) in series.fields().iter().zip(values) {
                    if let Some(v) = v {
                        o.insert((*k).into(), v.into());
                    }
                }
                serde_json::Value::Object(o)
            })
            .collect())
    }
}

/// The sampling period: 10 s, or `HORCRUX_METRICS_INTERVAL_MS` (tests use a short one).
pub fn interval() -> Duration {
    std::env::var("HORCRUX_METRICS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

/// Samples the node, its guests and its storages every [`interval`], forever (a tokio
/// task of the daemon).
pub async fn sample_forever(
    store: MetricsStore,
    cluster: ClusterHandle,
    hv: Arc<dyn Hypervisor>,
    storages: StorageBoard,
    data_dir: PathBuf,
) {
    let mut node = NodeSampler::new("/", data_dir);
    let mut before: HashMap<u32, (std::time::Instant, GuestCounters)> = HashMap::new();
    let mut tick = tokio::time::interval(interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = std::time::Instant::now();
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = node.sample(started.elapsed().as_secs_f64());
        let values = vec![
            n.loadavg,
            n.maxcpu,
            n.cpu,
            n.iowait,
            n.memtotal,
            n.memused,
            n.swaptotal,
            n.swapused,
            n.roottotal,
            n.rootused,
            n.netin,
            n.netout,
            n.memavailable,
            f64::NAN,
            n.pressurecpusome,
            n.pressureiosome,
            n.pressureiofull,
            n.pressurememorysome,
            n.pressurememoryfull,
        ];
        store.set_uptime(Series::Node, horcrux_drivers::metrics::host_uptime(Path::new("/")));
        if let Err(e) = store.record(&Series::Node, now, values) {
            tracing::warn!("node metrics: {e}");
        }
        let me = cluster.node_name().to_string();
        let guests: Vec<(u32, GuestConfig)> = cluster.read_local(|s| {
            s.guests.values().filter(|g| g.node == me).map(|g| (g.vmid, g.config.clone())).collect()
        });
        let mut seen = Vec::new();
        for (vmid, config) in guests {
            let GuestConfig::Qemu(spec) = &config;
            let vcpus = spec.cores.max(1) * spec.sockets.max(1);
            let maxmem = (spec.memory_mib << 20) as f64;
            let maxdisk: u64 = spec.disks.iter().map(|d| d.size_mib << 20).sum();
            let mut values = vec![f64::from(vcpus), f64::NAN, maxmem, f64::NAN, maxdisk as f64, 0.0];
            let pid = hv.pid(vmid);
            store.set_uptime(
                Series::Guest(vmid),
                pid.and_then(|p| horcrux_drivers::metrics::process_uptime(Path::new("/"), p)),
            );
            let running = pid.and_then(|pid| {
                let taps: Vec<String> =
                    spec.nets.iter().map(|n| horcrux_drivers::tap_name(vmid, n.index)).collect();
                guest_counters(Path::new("/"), pid, &taps)
            });
            match running {
                Some((mut counters, rss)) => {
                    // A guest whose QMP does not answer in time must not hold up every
                    // other sample: it keeps its last disk counters (no disk traffic this
                    // round; the next answer's difference covers the gap).
                    let stats =
                        tokio::time::timeout(QMP_TIMEOUT, hv.qmp(vmid, "query-blockstats", None)).await;
                    match stats {
                        Ok(Ok(v)) => counters.disk = parse_blockstats(&v),
                        _ => {
                            if let Some((_, c)) = before.get(&vmid) {
                                counters.disk = c.disk;
                            }
                        }
                    }
                    let t = std::time::Instant::now();
                    let prev = before.get(&vmid).map(|(at, c)| (t.duration_since(*at).as_secs_f64(), *c));
                    let s = guest_sample(
                        &counters,
                        prev.as_ref().map(|(_, c)| c),
                        prev.map(|p| p.0).unwrap_or(0.0),
                        vcpus,
                        rss,
                    );
                    before.insert(vmid, (t, counters));
                    store.set_totals(vmid, Some(counters));
                    values[1] = s.cpu;
                    values[3] = s.mem;
                    values.extend([s.netin, s.netout, s.diskread, s.diskwrite]);
                    values.extend([f64::NAN; 7]);
                }
                None => {
                    // Stopped: no load; PVE records zeros for a stopped guest's rates.
                    before.remove(&vmid);
                    store.set_totals(vmid, None);
                    values[1] = 0.0;
                    values[3] = 0.0;
                    values.extend([0.0; 4]);
                    values.extend([f64::NAN; 7]);
                }
            }
            if let Err(e) = store.record(&Series::Guest(vmid), now, values) {
                tracing::warn!(vmid, "guest metrics: {e}");
            }
            seen.push(vmid);
        }
        before.retain(|v, _| seen.contains(v));
        store.totals.lock().unwrap_or_else(|p| p.into_inner()).retain(|v, _| seen.contains(v));
        store
            .uptimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s, _| !matches!(s, Series::Guest(v) if !seen.contains(v)));
        let all: std::collections::BTreeSet<u32> = cluster.read_local(|s| s.guests.keys().copied().collect());
        store.forget_guests(|vmid| all.contains(&vmid));
        let pools: Vec<(String, Option<horcrux_drivers::StoreUsage>)> = storages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, st)| st.active)
            .map(|(id, st)| (id.clone(), st.usage))
            .collect();
        for (id, usage) in pools {
            let Some(u) = usage else { continue };
            if let Err(e) =
                store.record(&Series::Storage(id.clone()), now, vec![u.total as f64, u.used as f64])
            {
                tracing::warn!(storage = %id, "storage metrics: {e}");
            }
        }
    }
}
