//! Scoring the candidates that are left after the filters: `basic` counts HA resources,
//! `static` ranks the cluster's resulting CPU and memory load by TOPSIS (as Proxmox's
//! static scheduler). Lower costs are better.

use super::{Ask, Crs, Loads, NodeView};

/// One cost per candidate (indices into `nodes`); `load` is every node's load without the
/// resource being placed, `online` the online nodes (the cluster the static score spans).
pub(super) fn score(
    ask: &Ask,
    cands: &[usize],
    nodes: &[NodeView],
    load: &Loads,
    online: &[usize],
    crs: Crs,
) -> Vec<f64> {
    match crs {
        Crs::Basic => cands.iter().map(|&i| f64::from(load.get(i).ha)).collect(),
        Crs::Static => {
            // The cluster's load if the resource started on each candidate: RMS and max of
            // CPU and memory use as fractions of capacity over the online nodes. (Plain
            // comparisons rather than `f64::max`: the values are finite, and its NaN
            // handling was a third of this function.)
            let base = |i: usize| {
                let (n, l) = (&nodes[i], load.get(i));
                (l.cpu / f64::from(n.cpus.max(1)), l.mem / (n.mem_mib.max(1) as f64))
            };
            let big = |a: f64, b: f64| if a > b { a } else { b };
            let k = online.len().max(1) as f64;
            // Sums of squares, and the two largest of each fraction (so that the maximum
            // without one node is at hand), in one pass.
            let (mut sc, mut sm) = (0.0, 0.0);
            let (mut c1, mut c2, mut m1, mut m2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for &i in online {
                let (c, m) = base(i);
                sc += c * c;
                sm += m * m;
                (c1, c2) = if c > c1 { (c, c1) } else { (c1, big(c2, c)) };
                (m1, m2) = if m > m1 { (m, m1) } else { (m1, big(m2, m)) };
            }
            let rows: Vec<[f64; 4]> = cands
                .iter()
                .map(|&i| {
                    let n = &nodes[i];
                    let (c0, m0) = base(i);
                    let c = c0 + ask.cpus / f64::from(n.cpus.max(1));
                    let m = m0 + ask.mem_mib as f64 / (n.mem_mib.max(1) as f64);
                    let rest_c = if c0 == c1 { c2 } else { c1 };
                    let rest_m = if m0 == m1 { m2 } else { m1 };
                    let sc = sc - c0 * c0 + c * c;
                    let sm = sm - m0 * m0 + m * m;
                    [
                        1.0 + (big(sc, 0.0) / k).sqrt(),
                        1.0 + big(rest_c, c),
                        1.0 + (big(sm, 0.0) / k).sqrt(),
                        1.0 + big(rest_m, m),
                    ]
                })
                .collect();
            topsis_costs(&rows, [1.0, 2.0, 5.0, 10.0])
        }
    }
}

/// TOPSIS over criteria that are all to be minimised: each column normalised by its L2
/// norm and weighted; a row's closeness is its distance to the worst values over the sum
/// of its distances to the best and the worst. Returned as costs, 1 - closeness.
pub(super) fn topsis_costs(rows: &[[f64; 4]], weights: [f64; 4]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let mut norms = [0.0f64; 4];
    for r in rows {
        for j in 0..4 {
            norms[j] += r[j] * r[j];
        }
    }
    let scale: [f64; 4] =
        std::array::from_fn(|j| weights[j] / total / norms[j].sqrt().max(f64::MIN_POSITIVE));
    let (mut best, mut worst) = ([f64::INFINITY; 4], [f64::NEG_INFINITY; 4]);
    for r in rows {
        for j in 0..4 {
            let v = r[j] * scale[j];
            if v < best[j] {
                best[j] = v;
            }
            if v > worst[j] {
                worst[j] = v;
            }
        }
    }
    let dist =
        |r: &[f64; 4], p: &[f64; 4]| (0..4).map(|j| (r[j] * scale[j] - p[j]).powi(2)).sum::<f64>().sqrt();
    rows.iter()
        .map(|r| {
            let (b, w) = (dist(r, &best), dist(r, &worst));
            if b + w == 0.0 {
                0.0
            } else {
                1.0 - w / (b + w)
            }
        })
        .collect()
}

/// A cost with two decimals, formatted through integers (`{:.2}` of an `f64` took a
/// twentieth of a decision).
pub(super) struct Cost(pub(super) f64);

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hundredths = (self.0 * 100.0).round();
        if !hundredths.is_finite() || hundredths.abs() >= 1e15 {
            return write!(f, "{:.2}", self.0);
        }
        let h = hundredths as i64;
        let sign = if h < 0 { "-" } else { "" };
        write!(f, "{sign}{}.{:02}", h.unsigned_abs() / 100, h.unsigned_abs() % 100)
    }
}
