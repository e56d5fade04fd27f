//! The crate graph's invariants (ARCHITECTURE.md), read from `cargo metadata`: stages never
//! import each other, and core, at the bottom, imports no layerwise crate.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::BTreeMap;

/// The stage crates: each a library with a thin binary, sharing nothing but files.
const STAGES: [&str; 4] = ["layerwise-prepare", "layerwise-train", "layerwise-evaluate", "layerwise-report"];

/// Each workspace crate and the layerwise crates it depends on (normal and dev).
fn graph() -> BTreeMap<String, Vec<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(xtask::repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| n.starts_with("layerwise-"))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// What breaks an invariant in `graph`, one line each.
fn violations(graph: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (krate, deps) in graph {
        for dep in deps {
            if STAGES.contains(&krate.as_str()) && STAGES.contains(&dep.as_str()) {
                out.push(format!("stage {krate} depends on stage {dep}: what they share belongs in a library crate"));
            }
            if krate == "layerwise-core" {
                out.push(format!("layerwise-core depends on {dep}: core is the bottom of the graph"));
            }
        }
    }
    out
}

#[test]
fn stages_never_import_each_other_and_core_imports_no_layerwise_crate() {
    let g = graph();
    for s in STAGES.iter().chain(&["layerwise-core", "layerwise-nn", "xtask"]) {
        assert!(g.contains_key(*s), "{s} is not in the workspace: {:?}", g.keys());
    }
    let found = violations(&g);
    assert!(found.is_empty(), "{found:#?}");
    // The check fails when an invariant is broken.
    let mut broken = g.clone();
    broken.get_mut("layerwise-train").unwrap().push("layerwise-evaluate".into());
    broken.get_mut("layerwise-core").unwrap().push("layerwise-nn".into());
    assert_eq!(violations(&broken).len(), 2, "{:?}", violations(&broken));
}
