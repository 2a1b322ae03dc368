//! The layout's rules (ARCHITECTURE.md), checked on the source: no import circle between the
//! library's modules (top-level modules, and sibling files inside one), no SQL outside `src/store/`,
//! no development code in the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A file's code without its unit tests and comments: what the module itself depends on.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The module names `text` refers to as `<prefix><name>` (also inside `use <prefix>{a, b::c}`).
fn references(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| {
        s.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect::<String>()
    };
    for (i, _) in text.match_indices(prefix) {
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|item| ident(item.trim())).filter(|n| !n.is_empty()));
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The library's top-level modules and the `.rs` files of each.
fn top_level_modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" || name == "bin" {
            continue;
        }
        // `name.rs` and `name/` (its children) are one module.
        let files = if path.is_dir() { rust_files(&path) } else { vec![path] };
        modules.entry(name).or_default().extend(files);
    }
    modules
}

#[test]
fn modules_do_not_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &modules {
        let deps = graph.entry(name.clone()).or_default();
        for file in files {
            deps.extend(
                references(&code(file), "crate::").into_iter().filter(|d| d != name && modules.contains_key(d)),
            );
        }
    }
    assert!(graph["pipeline"].contains("source"), "the scan finds imports: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "top-level modules import each other in a circle");

    // Inside a module directory: sibling files (a file may use its parent's types; a parent
    // declares its children).
    for (name, files) in &modules {
        let dir = src.join(name);
        if !dir.is_dir() {
            continue;
        }
        let child = |f: &Path| match f.strip_prefix(&dir) {
            Ok(rel) => {
                rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned()
            }
            Err(_) => "mod".to_owned(), // src/<name>.rs, the parent
        };
        let siblings: BTreeSet<String> = files.iter().map(|f| child(f)).filter(|c| c != "mod").collect();
        let mut inner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let me = child(file);
            if me == "mod" {
                continue;
            }
            let text = code(file);
            let nested = file.parent() != Some(dir.as_path()) && !file.ends_with("mod.rs");
            let mut refs = references(&text, &format!("crate::{name}::"));
            refs.extend(references(&text, if nested { "super::super::" } else { "super::" }));
            inner.entry(me.clone()).or_default().extend(refs.into_iter().filter(|r| r != &me && siblings.contains(r)));
        }
        assert_eq!(find_cycle(&inner), None, "files of src/{name}/ import each other in a circle: {inner:?}");
    }
}

#[test]
fn sql_lives_in_the_store_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    for dir in ["src", "dev/src"] {
        for file in rust_files(&root.join(dir)) {
            if file.starts_with(root.join("src/store")) {
                continue;
            }
            let text = code(&file);
            for needle in ["sqlx::query", "query_as(", "query_scalar(", "PgListener", ".execute(&"] {
                if text.contains(needle) {
                    offenders.push(format!("{} ({needle})", file.strip_prefix(root).unwrap().display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "SQL outside src/store/: {offenders:?}");
}

#[test]
fn development_code_stays_out_of_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    for file in rust_files(&root.join("src")) {
        let text = code(&file);
        for needle in ["devtools", "s3s::", "s3s_fs", "blip2idc_dev"] {
            if text.contains(needle) {
                offenders.push(format!("{} ({needle})", file.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert!(offenders.is_empty(), "development code in the library: {offenders:?}");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dependencies =
        &manifest[manifest.find("[dependencies]").unwrap()..manifest.find("[dev-dependencies]").unwrap()];
    assert!(!dependencies.contains("s3s"), "the S3 server is a dependency of the library");
}
