//! The HA protocol under faults (`sim_tests::ha`): over a sweep of seeds the guest never
//! runs on two hosts and always runs again after a fault; the failover-time distribution
//! is printed; a manager that skips the margin, or a new leader that does not wait a full
//! lease, is caught by the same invariant.

use sim_tests::ha::{run, HaBug, HaSimConfig, LIVENESS_BOUND_MS};

fn cfg(seed: u64, bug: HaBug) -> HaSimConfig {
    HaSimConfig { seed, sim_secs: 120, bug }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn ha_never_runs_a_guest_twice_and_recovers_it_after_every_fault() {
    let seeds: u64 = std::env::var("HA_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut times = Vec::new();
    for seed in 0..seeds {
        let out = run(cfg(seed, HaBug::None));
        assert!(out.violations.is_empty(), "seed {seed}: {:?}\n{}", out.violations, out.trace.join("\n"));
        times.extend(out.failovers_ms);
    }
    times.sort_unstable();
    assert!(times.len() as u64 > seeds / 2, "too few faults hit the guest: {}", times.len());
    let (p50, p99, max) = (percentile(&times, 0.5), percentile(&times, 0.99), *times.last().unwrap());
    println!(
        "HA simulation: {seeds} seeds, {} faults of the guest's host, time to running again: p50 {p50} ms, p99 {p99} ms, max {max} ms",
        times.len()
    );
    assert!(max < LIVENESS_BOUND_MS);
}

#[test]
fn the_same_seed_replays_identically() {
    for seed in 0..5 {
        assert_eq!(run(cfg(seed, HaBug::None)).trace, run(cfg(seed, HaBug::None)).trace, "seed {seed}");
    }
}

fn caught(bug: HaBug) -> Option<(u64, String)> {
    (0..400).find_map(|s| {
        run(cfg(s, bug)).violations.into_iter().find(|v| v.contains("runs on [")).map(|v| (s, v))
    })
}

#[test]
fn a_manager_that_skips_the_margin_is_caught() {
    let (seed, v) = caught(HaBug::SkipMargin).expect("no seed caught a manager without the margin");
    println!("SkipMargin caught at seed {seed}: {v}");
}

#[test]
fn a_new_leader_that_does_not_wait_a_lease_is_caught() {
    let (seed, v) = caught(HaBug::NoTakeoverWait).expect("no seed caught a new leader that does not wait");
    println!("NoTakeoverWait caught at seed {seed}: {v}");
}

#[test]
fn a_lease_granted_to_a_node_being_fenced_is_caught() {
    let (seed, v) = caught(HaBug::GrantWhileFencing).expect("no seed caught a grant while fencing");
    println!("GrantWhileFencing caught at seed {seed}: {v}");
}

#[test]
#[ignore = "debugging aid: prints the slowest failover's trace"]
fn slowest() {
    let mut worst = (0, 0);
    for seed in 0..200 {
        let out = run(cfg(seed, HaBug::None));
        if let Some(&m) = out.failovers_ms.iter().max() {
            if m > worst.1 {
                worst = (seed, m);
            }
        }
    }
    let out = run(cfg(worst.0, HaBug::None));
    println!("seed {} {} ms\n{}", worst.0, worst.1, out.trace.join("\n"));
}

#[test]
#[ignore = "debugging aid: HA_SIM_SEED=N prints that run's trace"]
fn one() {
    let seed = std::env::var("HA_SIM_SEED").unwrap().parse().unwrap();
    let out = run(cfg(seed, HaBug::None));
    println!("{:?}\n{}", out.violations, out.trace.join("\n"));
}
