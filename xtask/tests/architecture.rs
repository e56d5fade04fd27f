//! The crate graph's invariants (ARCHITECTURE.md), read from `cargo metadata`: stages never
//! import each other, and core, at the bottom, imports no layerwise crate.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::collections::BTreeMap;

/// The stage crates: each a library with a thin binary, sharing nothing but files.
const STAGES: [&str; 6] = [
    "layerwise-prepare",
    "layerwise-train",
    "layerwise-evaluate",
    "layerwise-report",
    "layerwise-predict",
    "layerwise-export",
];

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

/// Each module of a crate's `src` (a file; the root `lib.rs`/`main.rs` excluded) and the
/// modules of the same crate it names: `crate::module`, or a name the root re-exports
/// from a module (`pub use adam::Adam` makes `crate::Adam` a use of `adam`).
fn module_graph(src: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut modules: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    modules.sort();
    // Names the root re-exports, and the module each comes from.
    let mut reexport: BTreeMap<String, String> = BTreeMap::new();
    let root = read(src.join("lib.rs"));
    for line in root.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("pub use ") else { continue };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else { continue };
        if !modules.iter().any(|m| m == module) {
            continue;
        }
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() && name != "*" {
                reexport.insert(name.to_string(), module.to_string());
            }
        }
    }
    let words = |text: &str, prefix: &str| -> Vec<String> {
        // `crate::a`, `crate::{a, b::c}`, `super::a` (a sibling through the root).
        let mut out = Vec::new();
        for (i, _) in text.match_indices(prefix) {
            let rest = &text[i + prefix.len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group.split('}').next().unwrap_or("").split(',').collect()
            } else {
                vec![rest]
            };
            for n in names {
                let n: String = n.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push(n);
            }
        }
        out
    };
    modules
        .iter()
        .map(|m| {
            // Code only: a doc link is not an import.
            let text: String = read(src.join(format!("{m}.rs")))
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut deps: Vec<String> = words(&text, "crate::")
                .into_iter()
                .chain(words(&text, "super::"))
                .filter_map(|n| if modules.contains(&n) { Some(n) } else { reexport.get(&n).cloned() })
                .filter(|d| d != m)
                .collect();
            deps.sort();
            deps.dedup();
            (m.clone(), deps)
        })
        .collect()
}

/// A cycle of modules in `graph` (`a → b → a`), if there is one.
fn module_cycle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.iter().any(|d| d == m) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(m.to_string());
        None
    }
    let mut done = Vec::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = xtask::repo_root();
    let mut srcs = vec![root.join("xtask/src")];
    for e in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        srcs.push(e.path().join("src"));
    }
    let mut checked = 0;
    for src in srcs {
        let g = module_graph(&src);
        checked += g.len();
        if let Some(cycle) = module_cycle(&g) {
            panic!("{}: the modules {} import each other in a circle", src.display(), cycle.join(" → "));
        }
    }
    assert!(checked > 40, "only {checked} modules found");
    // The check finds a cycle when there is one (the one xtask had: greedy ↔ slurm).
    let mut g = module_graph(&root.join("xtask/src"));
    assert!(g["schedule"].contains(&"judge".to_string()), "{g:?}");
    g.get_mut("judge").unwrap().push("schedule".into());
    assert!(module_cycle(&g).is_some());
}
