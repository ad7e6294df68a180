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

/// horcrux-http's modules (one per file) and the modules each one's code refers to
/// (`crate::a::b`, `crate::{a, b}`, `super::x`), resolved to the longest module path.
fn http_module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("horcrux-http/src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let module_of = |p: &std::path::Path| -> String {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let parts: Vec<&str> =
            parts.iter().map(String::as_str).filter(|c| *c != "mod" && *c != "lib").collect();
        parts.join("::")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let resolve = |path: &[&str]| -> Option<String> {
        (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m))
    };
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        // Code only: a module's tests may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut refs = BTreeSet::new();
        let ident = |s: &str| {
            s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect::<String>()
        };
        for (prefix, base) in
            [("crate::", Vec::<&str>::new()), ("super::", me.split("::").collect::<Vec<_>>())]
        {
            let base: Vec<&str> =
                if prefix == "super::" { base[..base.len().saturating_sub(1)].to_vec() } else { base };
            for chunk in code.split(prefix).skip(1) {
                let names: Vec<String> = match chunk.strip_prefix('{') {
                    Some(group) => {
                        group.split('}').next().unwrap().split(',').map(|n| ident(n.trim())).collect()
                    }
                    None => vec![ident(chunk)],
                };
                for n in names {
                    let mut path = base.clone();
                    path.extend(n.split("::").filter(|s| !s.is_empty()));
                    if let Some(m) = resolve(&path) {
                        if m != me {
                            refs.insert(m);
                        }
                    }
                }
            }
        }
        // Paths through a module imported by name (`use crate::{vms, ...}`, then `vms::x`).
        let imported: Vec<String> = refs.iter().filter(|m| !m.contains("::")).cloned().collect();
        for top in imported {
            for (i, _) in code.match_indices(&format!("{top}::")) {
                let before = code[..i].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == ':' {
                    continue;
                }
                let path = ident(&code[i..]);
                if let Some(m) = resolve(&path.split("::").filter(|s| !s.is_empty()).collect::<Vec<_>>()) {
                    if m != me {
                        refs.insert(m);
                    }
                }
            }
        }
        graph.insert(me, refs);
    }
    graph
}

/// ../shared/ARCHITECTURE.md: one folder per resource family, shared state and helpers
/// in modules that import no family, so the files form a tree (no import circle).
#[test]
fn http_modules_form_no_import_circle() {
    let graph = http_module_graph();
    for family in ["vms", "access", "cluster", "pools", "nodes"] {
        assert!(graph.contains_key(family), "no {family}/ in horcrux-http");
        assert!(graph.contains_key(&format!("{family}::compat")), "{family}/ has no compat.rs");
    }
    // The shared modules reach no resource family (nor the router), even indirectly.
    let families = ["vms", "access", "cluster", "pools", "nodes", "routes"];
    for shared in ["state", "pve", "error", "caller", "throttle", "tickets", "auth", "authz", "forward"] {
        let mut seen = BTreeSet::new();
        let mut todo = vec![shared.to_string()];
        while let Some(m) = todo.pop() {
            for d in &graph[&m] {
                let family = families.iter().any(|f| d == f || d.starts_with(&format!("{f}::")));
                assert!(!family, "{shared} reaches {d} (through {m})");
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            panic!("import circle in horcrux-http: {} -> {m}", stack[i..].join(" -> "));
        }
        stack.push(m.to_string());
        for d in &graph[m] {
            visit(d, graph, stack, done);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
