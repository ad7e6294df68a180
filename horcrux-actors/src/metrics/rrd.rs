//! A round-robin database in one file, as PVE 9 keeps its metrics: four tiers (1 min ×
//! 1440, 30 min × 1440, 6 h × 1440, 1 week × 570), each row holding the AVERAGE and the
//! MAX of every field over the samples that fell into it. A sample touches a few hundred
//! bytes (each tier's row in progress, and a row that completes); the rows are read from
//! the file when asked for, never held in memory, so a node with a thousand guests keeps
//! a few kilobytes per guest in memory.
//!
//! Layout (little endian): the magic `HXRRD\0\x01\0`, the field count (u32), the tier
//! count (u32), each field's name in 32 bytes (zero-padded); then per tier a header (step,
//! rows, the start of the row in progress: u64 each, 0 before the first sample), the row in
//! progress (per field: sum, max, count as f64), and `rows` rows of per-field averages
//! then per-field maxima (f64, NaN where unknown). A row's place is `(start / step) % rows`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"HXRRD\0\x01\0";
const NAME_LEN: usize = 32;

/// One tier: rows of `step` seconds, `rows` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub step: u64,
    pub rows: u64,
}

/// PVE 9's tiers.
pub const TIERS: [Tier; 4] = [
    Tier { step: 60, rows: 1440 },
    Tier { step: 1800, rows: 1440 },
    Tier { step: 21600, rows: 1440 },
    Tier { step: 604_800, rows: 570 },
];

/// Which consolidation a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Average,
    Max,
}

struct TierState {
    tier: Tier,
    /// File offset of this tier's header.
    offset: u64,
    /// Start of the row in progress (0: no sample yet).
    current: u64,
    /// Per field: sum, max, count of the samples in the row in progress.
    prep: Vec<[f64; 3]>,
}

impl TierState {
    fn prep_offset(&self) -> u64 {
        self.offset + 24
    }

    fn rows_offset(&self, fields: usize) -> u64 {
        self.prep_offset() + (fields * 24) as u64
    }

    fn row_offset(&self, fields: usize, start: u64) -> u64 {
        let index = (start / self.tier.step) % self.tier.rows;
        self.rows_offset(fields) + index * (fields * 16) as u64
    }

    fn size(&self, fields: usize) -> u64 {
        24 + (fields * 24) as u64 + self.tier.rows * (fields * 16) as u64
    }

    /// The row in progress as (averages, maxima).
    fn consolidated(&self) -> (Vec<f64>, Vec<f64>) {
        self.prep
            .iter()
            .map(|[sum, max, n]| if *n > 0.0 { (sum / n, *max) } else { (f64::NAN, f64::NAN) })
            .unzip()
    }
}

/// One metrics file (a node, a guest, a storage).
pub struct Rrd {
    path: PathBuf,
    file: File,
    fields: Vec<String>,
    tiers: Vec<TierState>,
}

fn f64s(bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
}

fn to_bytes(values: impl IntoIterator<Item = f64>) -> Vec<u8> {
    values.into_iter().flat_map(f64::to_le_bytes).collect()
}

impl Rrd {
    /// Opens the file at `path`, or makes it with `fields` in PVE 9's tiers. A file made
    /// for other fields (an older release's) is moved aside to `PATH.old` and started anew.
    pub fn open(path: &Path, fields: &[&str]) -> std::io::Result<Rrd> {
        Self::open_with(path, fields, &TIERS)
    }

    pub fn open_with(path: &Path, fields: &[&str], tiers: &[Tier]) -> std::io::Result<Rrd> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match Self::read_existing(path, fields, tiers) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "metrics file unreadable, started anew: {e}");
                let mut aside = path.as_os_str().to_owned();
                aside.push(".old");
                std::fs::rename(path, aside)?;
            }
        }
        Self::create(path, fields, tiers)
    }

    fn header_len(fields: usize) -> u64 {
        (16 + fields * NAME_LEN) as u64
    }

    fn layout(fields: usize, tiers: &[Tier]) -> Vec<TierState> {
        let mut offset = Self::header_len(fields);
        tiers
            .iter()
            .map(|&tier| {
                let t = TierState { tier, offset, current: 0, prep: vec![[0.0, f64::NAN, 0.0]; fields] };
                offset += t.size(fields);
                t
            })
            .collect()
    }

    fn create(path: &Path, fields: &[&str], tiers: &[Tier]) -> std::io::Result<Rrd> {
        let tmp = path.with_extension("new");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        let mut head = MAGIC.to_vec();
        head.extend((fields.len() as u32).to_le_bytes());
        head.extend((tiers.len() as u32).to_le_bytes());
        for f in fields {
            let mut name = [0u8; NAME_LEN];
            let b = f.as_bytes();
            name[..b.len().min(NAME_LEN)].copy_from_slice(&b[..b.len().min(NAME_LEN)]);
            head.extend(name);
        }
        file.write_all_at(&head, 0)?;
        let states = Self::layout(fields.len(), tiers);
        for t in &states {
            let mut block = Vec::with_capacity(t.size(fields.len()) as usize);
            block.extend(t.tier.step.to_le_bytes());
            block.extend(t.tier.rows.to_le_bytes());
            block.extend(0u64.to_le_bytes());
            block.extend(to_bytes(t.prep.iter().flatten().copied()));
            block.extend(to_bytes(std::iter::repeat_n(f64::NAN, (t.tier.rows as usize) * fields.len() * 2)));
            file.write_all_at(&block, t.offset)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(Rrd {
            path: path.to_path_buf(),
            file,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            tiers: states,
        })
    }

    /// The file if it exists with these fields and tiers; `Ok(None)` if there is none.
    fn read_existing(path: &Path, fields: &[&str], tiers: &[Tier]) -> std::io::Result<Option<Rrd>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut head = vec![0u8; Self::header_len(fields.len()) as usize];
        file.read_exact_at(&mut head, 0)?;
        if &head[..8] != MAGIC {
            return Err(bad("not a Horcrux metrics file"));
        }
        let count = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
        let tier_count = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        let names: Vec<String> = head[16..]
            .chunks_exact(NAME_LEN)
            .map(|n| String::from_utf8_lossy(n).trim_end_matches('\0').to_string())
            .collect();
        if count != fields.len() || tier_count != tiers.len() || names != fields {
            return Err(bad("made for other fields"));
        }
        let mut states = Self::layout(fields.len(), tiers);
        for t in &mut states {
            let mut block = vec![0u8; 24 + fields.len() * 24];
            file.read_exact_at(&mut block, t.offset)?;
            let word = |i: usize| u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            if word(0) != t.tier.step || word(1) != t.tier.rows {
                return Err(bad("made for other tiers"));
            }
            t.current = word(2);
            let prep: Vec<f64> = f64s(&block[24..]).collect();
            t.prep = prep.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        }
        Ok(Some(Rrd {
            path: path.to_path_buf(),
            file,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            tiers: states,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Folds a sample taken at `time` (Unix seconds) into every tier; `values` in the
    /// order of the fields, NaN where unknown. A sample older than a tier's row in
    /// progress (the clock went back) is left out of that tier.
    pub fn update(&mut self, time: u64, values: &[f64]) -> std::io::Result<()> {
        let n = self.fields.len();
        assert_eq!(values.len(), n, "one value per field");
        for t in &mut self.tiers {
            let start = time - time % t.tier.step;
            if start < t.current {
                continue;
            }
            if t.current != 0 && start > t.current {
                // The row in progress is complete; the rows skipped (no samples) are unknown.
                let (avg, max) = t.consolidated();
                self.file.write_all_at(&to_bytes(avg.into_iter().chain(max)), t.row_offset(n, t.current))?;
                let skipped = ((start - t.current) / t.tier.step - 1).min(t.tier.rows);
                let unknown = to_bytes(std::iter::repeat_n(f64::NAN, 2 * n));
                for k in 1..=skipped {
                    self.file.write_all_at(&unknown, t.row_offset(n, t.current + k * t.tier.step))?;
                }
            }
            if start != t.current {
                t.current = start;
                t.prep = vec![[0.0, f64::NAN, 0.0]; n];
            }
            for (p, v) in t.prep.iter_mut().zip(values) {
                if v.is_finite() {
                    p[0] += v;
                    p[1] = if p[2] > 0.0 { p[1].max(*v) } else { *v };
                    p[2] += 1.0;
                }
            }
            let mut block = t.current.to_le_bytes().to_vec();
            block.extend(to_bytes(t.prep.iter().flatten().copied()));
            self.file.write_all_at(&block, t.offset + 16)?;
        }
        Ok(())
    }

    /// The rows of tier `tier` whose start lies in `[from, to]`, oldest first: each its
    /// start time and per field the consolidated value (`None`: unknown). The row in
    /// progress counts with what it holds so far.
    pub fn rows(
        &self,
        tier: usize,
        from: u64,
        to: u64,
        cf: Cf,
    ) -> std::io::Result<Vec<(u64, Vec<Option<f64>>)>> {
        let n = self.fields.len();
        let t = &self.tiers[tier];
        let step = t.tier.step;
        let first = from.div_ceil(step) * step;
        let oldest_kept = t.current.saturating_sub((t.tier.rows - 1) * step);
        let mut out = Vec::new();
        let mut row = vec![0u8; n * 16];
        let mut start = first;
        while start <= to {
            let values: Vec<f64> = if t.current == 0 || start > t.current || start < oldest_kept {
                vec![f64::NAN; n]
            } else if start == t.current {
                let (avg, max) = t.consolidated();
                if cf == Cf::Average {
                    avg
                } else {
                    max
                }
            } else {
                self.file.read_exact_at(&mut row, t.row_offset(n, start))?;
                let all: Vec<f64> = f64s(&row).collect();
                if cf == Cf::Average {
                    all[..n].to_vec()
                } else {
                    all[n..].to_vec()
                }
            };
            out.push((start, values.into_iter().map(|v| v.is_finite().then_some(v)).collect()));
            start += step;
        }
        Ok(out)
    }

    /// The tiers this file keeps.
    pub fn tiers(&self) -> Vec<Tier> {
        self.tiers.iter().map(|t| t.tier).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_760_000_400; // a multiple of 60 and of 1800... and 21600? no matter

    fn open(dir: &Path) -> Rrd {
        Rrd::open(&dir.join("n.rrd"), &["cpu", "mem"]).unwrap()
    }

    #[test]
    fn samples_roll_up_into_averages_and_maxima_per_tier() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        let base = T0 - T0 % 1800;
        // Two hours of samples every 10 s: cpu cycles 0..5 (mean 2.5), mem = minute index.
        for i in 0..720u64 {
            let t = base + i * 10;
            r.update(t, &[(i % 6) as f64, ((i * 10) / 60) as f64]).unwrap();
        }
        let minutes = r.rows(0, base, base + 7199, Cf::Average).unwrap();
        assert_eq!(minutes.len(), 120);
        assert!(minutes.iter().all(|(_, v)| v[0] == Some(2.5)), "{:?}", &minutes[..3]);
        assert_eq!(minutes[7].1[1], Some(7.0));
        let max = r.rows(0, base, base + 59, Cf::Max).unwrap();
        assert_eq!(max, [(base, vec![Some(5.0), Some(0.0)])]);
        // 30 min rows: mem averages minutes 0..29 (14.5), then 30..59 (44.5); max 29, 59.
        let half = r.rows(1, base, base + 7199, Cf::Average).unwrap();
        let mems: Vec<_> = half.iter().map(|(_, v)| v[1].unwrap()).collect();
        assert_eq!(mems, [14.5, 44.5, 74.5, 104.5]);
        let half_max = r.rows(1, base, base + 7199, Cf::Max).unwrap();
        assert_eq!(
            half_max.iter().map(|(_, v)| v[1].unwrap()).collect::<Vec<_>>(),
            [29.0, 59.0, 89.0, 119.0]
        );
        // The 6 h tier holds one row in progress with everything so far.
        let day = r.rows(2, base - base % 21600, base + 7199, Cf::Average).unwrap();
        assert_eq!(day.last().unwrap().1[0], Some(2.5));
    }

    #[test]
    fn gaps_are_unknown_old_rows_age_out_and_the_clock_going_back_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = [Tier { step: 60, rows: 5 }];
        let mut r = Rrd::open_with(&dir.path().join("g.rrd"), &["x"], &tiers).unwrap();
        let b = T0;
        r.update(b, &[1.0]).unwrap();
        r.update(b + 180, &[4.0]).unwrap(); // minutes 1 and 2 had no samples
        r.update(b + 10, &[100.0]).unwrap(); // back in time: left out
        let rows = r.rows(0, b, b + 180, Cf::Average).unwrap();
        assert_eq!(rows.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [Some(1.0), None, None, Some(4.0)]);
        r.update(b + 60 * 7, &[8.0]).unwrap();
        let rows = r.rows(0, b, b + 60 * 7, Cf::Average).unwrap();
        // Five rows are kept: minutes 3..7; 0..2 aged out (unknown), 4..6 had no samples.
        let got: Vec<_> = rows.iter().map(|(_, v)| v[0]).collect();
        assert_eq!(got, [None, None, None, Some(4.0), None, None, None, Some(8.0)]);
        assert!(r.update(b + 60 * 7, &[f64::NAN]).is_ok(), "an unknown value is no sample");
        assert_eq!(r.rows(0, b + 420, b + 420, Cf::Max).unwrap()[0].1, [Some(8.0)]);
    }

    #[test]
    fn the_file_survives_reopening_and_other_fields_start_it_anew() {
        let dir = tempfile::tempdir().unwrap();
        let b = T0;
        {
            let mut r = open(dir.path());
            r.update(b, &[1.0, 10.0]).unwrap();
            r.update(b + 70, &[3.0, 30.0]).unwrap();
        }
        let mut r = open(dir.path());
        r.update(b + 80, &[5.0, 50.0]).unwrap();
        let rows = r.rows(0, b, b + 120, Cf::Average).unwrap();
        assert_eq!(rows[0].1, [Some(1.0), Some(10.0)]);
        assert_eq!(rows[1].1, [Some(4.0), Some(40.0)], "the row in progress was kept on disk");
        drop(r);
        let r = Rrd::open(&dir.path().join("n.rrd"), &["cpu", "mem", "swap"]).unwrap();
        assert!(r
            .rows(0, b, b + 120, Cf::Average)
            .unwrap()
            .iter()
            .all(|(_, v)| v.iter().all(Option::is_none)));
        assert!(dir.path().join("n.rrd.old").exists(), "the other release's file is kept aside");
        let size = std::fs::metadata(dir.path().join("n.rrd")).unwrap().len();
        assert_eq!(size, 16 + 3 * 32 + TIERS.iter().map(|t| 24 + 3 * 24 + t.rows * 3 * 16).sum::<u64>());
    }
}
