//! The crate arrows of ../shared/ARCHITECTURE.md, checked over `cargo metadata`: core
//! depends on no other Horcrux crate, raft and drivers on core only, actors on core, raft
//! and drivers, http on core, raft and actors (never drivers: it reaches the host only
//! through the actors), the simulation on everything but http.

use std::collections::{BTreeMap, BTreeSet};

#[test]
fn crates_depend_only_along_the_arrows() {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            // Normal and build dependencies; tests may use anything.
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str())
            .filter(|d| d.starts_with("horcrux-"))
            .map(str::to_string)
            .collect();
        found.insert(name, deps);
    }
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("horcrux-core", &[][..]),
        ("horcrux-raft", &["horcrux-core"][..]),
        ("horcrux-drivers", &["horcrux-core"][..]),
        ("horcrux-actors", &["horcrux-core", "horcrux-raft", "horcrux-drivers"][..]),
        ("horcrux-http", &["horcrux-core", "horcrux-raft", "horcrux-actors"][..]),
        ("sim-tests", &["horcrux-core", "horcrux-raft", "horcrux-actors", "horcrux-drivers"][..]),
    ]);
    for (krate, ok) in &allowed {
        let deps = found.get(*krate).unwrap_or_else(|| panic!("{krate} is not in the workspace"));
        let extra: Vec<&String> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "{krate} depends on {extra:?}, against the arrows");
    }
}
