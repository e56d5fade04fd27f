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

/// Each module of a crate's `src` (a file, the root `lib.rs`/`main.rs` included, named
/// `lib`/`main`) and the modules of the same crate it names. A module names another with
/// `crate::module`, `super::module` or, in the root, `module::`; a name the root
/// re-exports from a module (`pub use optim::Optimizer` makes `crate::Optimizer` a use of
/// `optim`); and the root itself with `use super::*` (a prelude of everything the root
/// holds) or a name the root defines.
fn module_graph(src: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    // Code only: a doc link or a comment is not an import.
    let code = |text: String| -> String {
        text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    };
    let root_name = if src.join("lib.rs").exists() { "lib" } else { "main" };
    // A module is a file `m.rs` or a folder `m/` with its `mod.rs`.
    let file_of = |m: &str| {
        let file = src.join(format!("{m}.rs"));
        if file.exists() {
            file
        } else {
            src.join(m).join("mod.rs")
        }
    };
    let mut modules: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            match name.strip_suffix(".rs") {
                Some(m) => Some(m.to_string()),
                None => e.path().join("mod.rs").exists().then_some(name),
            }
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    modules.sort();
    let root = code(read(src.join(format!("{root_name}.rs"))));
    // Names the root re-exports, and the module each comes from (statements may span lines).
    let mut reexport: BTreeMap<String, String> = BTreeMap::new();
    for stmt in root.split(';').map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")) {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else { continue };
        let Some((module, names)) = rest.split_once("::") else { continue };
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
    // Items the root defines itself.
    let defined: Vec<String> = root
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| ["fn", "struct", "enum", "const", "static", "type", "trait", "macro_rules!"].contains(&w[0]))
        .map(|w| w[1].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .collect();
    let words = |text: &str, prefix: &str| -> Vec<String> {
        // `crate::a`, `crate::{a, b::c}`, `super::a`, `super::*`.
        let mut out = Vec::new();
        for (i, _) in text.match_indices(prefix) {
            let before = text[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[i + prefix.len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group.split('}').next().unwrap_or("").split(',').collect()
            } else {
                vec![rest]
            };
            for n in names {
                let n = n.trim();
                let n: String = if n.starts_with('*') {
                    "*".into()
                } else {
                    n.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
                };
                out.push(n);
            }
        }
        out
    };
    let resolve = |n: &String| -> Option<String> {
        if modules.contains(n) {
            Some(n.clone())
        } else if let Some(m) = reexport.get(n) {
            Some(m.clone())
        } else if n == "*" || defined.contains(n) {
            Some(root_name.to_string())
        } else {
            None
        }
    };
    let mut graph: BTreeMap<String, Vec<String>> = modules
        .iter()
        .map(|m| {
            let text = code(read(file_of(m)));
            // A test module's `use super::*` imports its own file, not the root.
            let text = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            let mut deps: Vec<String> = words(&text, "crate::")
                .into_iter()
                .chain(words(&text, "super::"))
                .filter_map(|n| resolve(&n))
                .filter(|d| d != m)
                .collect();
            deps.sort();
            deps.dedup();
            (m.clone(), deps)
        })
        .collect();
    // The root names a module by a path through it (`conv::train_cnn`, `pub use optim::X`);
    // declaring it (`mod conv;`) is not a use.
    let mut root_deps: Vec<String> = modules
        .iter()
        .filter(|m| {
            root.match_indices(&format!("{m}::"))
                .any(|(i, _)| !root[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':'))
        })
        .cloned()
        .collect();
    root_deps.sort();
    graph.insert(root_name.to_string(), root_deps);
    graph
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
    assert!(checked > 60, "only {checked} modules found");
    // No glob import of a parent anywhere, tests included: each file names what it uses.
    let mut globbed = Vec::new();
    let mut stack = vec![root.join("crates"), root.join("xtask")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("target") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                if text.lines().any(|l| l.trim() == concat!("use super::", "*;")) {
                    globbed.push(p.display().to_string());
                }
            }
        }
    }
    assert!(globbed.is_empty(), "`use super::*` in {globbed:?}: import each name from the module that defines it");
    // The roots are in the graph, with the modules they use.
    let nn = module_graph(&root.join("crates/nn/src"));
    assert!(nn["lib"].contains(&"optim".to_string()), "{:?}", nn["lib"]);
    // The check finds a cycle when there is one (the one xtask had: greedy ↔ slurm).
    let mut g = module_graph(&root.join("xtask/src"));
    assert!(g["schedule"].contains(&"judge".to_string()), "{g:?}");
    g.get_mut("judge").unwrap().push("schedule".into());
    assert!(module_cycle(&g).is_some());
}

#[test]
fn a_child_importing_its_roots_reexports_back_is_a_cycle() {
    // A deliberately added back-import: a root re-exporting a child, and that child
    // taking the root's prelude (`use super::*`) or one of the root's own items.
    let dir = std::env::temp_dir().join(format!("layerwise-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("lib.rs", "mod a;\nmod b;\npub use a::{\n    Alpha,\n};\npub struct Root;\nfn f() { b::g(); }\n");
    write("b.rs", "pub fn g() {}\n");
    write("a.rs", "//! uses crate::Root in a comment only\npub struct Alpha;\n");
    assert!(module_cycle(&module_graph(&dir)).is_none(), "{:?}", module_graph(&dir));
    for back in ["use super::*;", "use crate::Root;", "use crate::{b::g, Root};"] {
        write("a.rs", &format!("{back}\npub struct Alpha;\n"));
        let g = module_graph(&dir);
        assert_eq!(module_cycle(&g).as_deref().map(|c| c.len()), Some(3), "{back}: {g:?}");
    }
    // A test module's `use super::*` imports its own file: no cycle.
    write("a.rs", "pub struct Alpha;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n");
    assert!(module_cycle(&module_graph(&dir)).is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
