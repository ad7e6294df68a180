//! `sim-tests --seed S` replays one seed and prints its trace; `--seeds N [--from S]`
//! sweeps seeds. Exits non-zero on any invariant violation, printing the replay command.

use sim_tests::{run, Bug, SimConfig, StoreKind};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() -> std::process::ExitCode {
    // `SIM_LOG=openraft=debug` adds openraft's own log (stderr) to a replay.
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .with_ansi(false)
            .init();
    }
    let secs = arg("--secs").unwrap_or(60);
    let nodes = arg("--nodes").unwrap_or(5);
    let args: Vec<String> = std::env::args().collect();
    let store =
        match args.iter().position(|a| a == "--store").and_then(|i| args.get(i + 1)).map(String::as_str) {
            None | Some("mem") => StoreKind::Mem,
            Some("rocksdb") => StoreKind::Rocks,
            Some(other) => {
                eprintln!("--store {other}: expected mem or rocksdb");
                return std::process::ExitCode::from(2);
            }
        };
    let store_arg = if store == StoreKind::Rocks { " --store rocksdb" } else { "" };
    // `--early-flush`: the injected missing-fsync bug (to watch the checker catch it).
    let bug = if args.iter().any(|a| a == "--early-flush") { Bug::EarlyFlush } else { Bug::None };
    let config = |seed| SimConfig { sim_secs: secs, nodes, store, bug, ..SimConfig::new(seed) };
    if let Some(seed) = arg("--seed") {
        let out = run(config(seed));
        for line in &out.trace {
            println!("{line}");
        }
        for v in &out.violations {
            println!("VIOLATION (seed {seed}): {v}");
        }
        return if out.violations.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let n = arg("--seeds").unwrap_or(10);
    let from = arg("--from").unwrap_or(0);
    let mut failed = 0;
    let t0 = std::time::Instant::now();
    for seed in from..from + n {
        let out = run(config(seed));
        if !out.violations.is_empty() {
            failed += 1;
            println!("seed {seed}: {}", out.violations.join("; "));
            println!(
                "  replay: cargo run --release -p sim-tests -- --seed {seed} --secs {secs} --nodes {nodes}{store_arg}"
            );
        }
    }
    println!(
        "{} seeds x {secs} s simulated, {nodes} nodes{store_arg}: {} passed, {failed} failed ({:.1} s)",
        n,
        n - failed,
        t0.elapsed().as_secs_f64()
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
