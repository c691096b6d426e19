//! The shape of the house (issue 20): the crate's modules form layers that depend only
//! downward, with no cycle, and no source file is longer than a reader can hold.
//!
//! Both checks read the sources, so they run with any feature set and fail in `cargo test` (and
//! so in CI) on the first new upward import, cycle or oversized file. The layer table below is
//! the one drawn in the crate docs (`src/lib.rs`, "Layers") and described per layer in
//! `docs/layers/`; a new top-level module must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first, and the top-level modules of each. A module may use modules of
/// its own layer or of a lower one; within a layer the graph must still be acyclic.
const LAYERS: &[(&str, &[&str])] = &[
    ("vocabulary", &["error", "types", "atomic"]),
    (
        "host and platform facets",
        &["heap", "sync", "collect", "platform"],
    ),
    ("range and pages", &["stats", "pages", "range"]),
    ("pagemap and migrate", &["pagemap", "migrate"]),
    ("policy and placement", &["policy", "placement"]),
    ("fault service and Svm", &["svm"]),
    ("consumers: simulator, conformance kit", &["sim", "testkit"]),
    ("documentation (no code)", &["layers"]),
];

/// The longest source file accepted (issue 20: "no file over ~800 lines").
const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file that the library build sees: comment lines blanked (line numbers stay), and everything from
/// the first `#[cfg(...test...)]` module on (unit tests sit at the end of a file; they may use
/// the simulator).
fn library_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(") && t.contains("test") && !t.contains("not(test)") {
            if let Some(next) = lines.peek() {
                let n = next.trim_start();
                if n.starts_with("mod ") || n.starts_with("pub(crate) mod ") {
                    break;
                }
            }
        }
        if t.starts_with("//") {
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every identifier `x` of a `crate::x` path in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(pos) = code[i..].find("crate::") {
        let start = i + pos;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut j = start + "crate::".len();
        let id_start = j;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        if before_ok && j > id_start {
            out.push(code[id_start..j].to_string());
        }
        i = j.max(start + 1);
    }
    out
}

/// What a crate-root name (`crate::Svm`) stands for: the top-level module its `pub use` in
/// `src/lib.rs` names.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let code = library_code(lib);
    for stmt in code.split(';') {
        let s = stmt.trim();
        let Some(rest) = s.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                map.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    map
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The module graph: top-level module → (used module → first place that uses it).
fn module_graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = root().join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src").to_path_buf();
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path")
            .trim_end_matches(".rs")
            .to_string();
        if first == "lib" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        let code = library_code(&text);
        let uses = graph.entry(first.clone()).or_default();
        for (n, line) in code.lines().enumerate() {
            for id in crate_paths(line) {
                let target = if id.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    match reexports.get(&id) {
                        Some(m) => m.clone(),
                        None => continue,
                    }
                } else {
                    id
                };
                if target != first {
                    uses.entry(target)
                        .or_insert_with(|| format!("src/{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer() {
    let graph = module_graph();
    let unknown: Vec<_> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unknown.is_empty(),
        "top-level modules without a layer in tests/house.rs LAYERS: {unknown:?}"
    );
}

#[test]
fn layers_depend_only_downward() {
    let graph = module_graph();
    let mut bad = Vec::new();
    for (from, uses) in &graph {
        let Some(lf) = layer_of(from) else { continue };
        for (to, at) in uses {
            match layer_of(to) {
                Some(lt) if lt <= lf => {}
                Some(lt) => bad.push(format!(
                    "{at}: `{from}` ({}) uses `{to}` ({}), a layer above it",
                    LAYERS[lf].0, LAYERS[lt].0
                )),
                None => bad.push(format!("{at}: `{from}` uses `{to}`, which has no layer")),
            }
        }
    }
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn module_graph_has_no_cycle() {
    let graph = module_graph();
    // Depth-first search with colours; report the first cycle found, with where each edge is.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if done.contains(m) {
            return None;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        stack.push(m.to_string());
        if let Some(uses) = graph.get(m) {
            for to in uses.keys() {
                if let Some(c) = visit(to, graph, done, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(m, &graph, &mut done, &mut stack) {
            let edges: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("module cycle:\n{}", edges.join("\n"));
        }
    }
}

/// The checker itself: it sees `crate::` paths, root re-exports and ignores comments and unit
/// tests.
#[test]
fn checker_reads_paths_reexports_and_skips_tests() {
    assert_eq!(
        crate_paths("use crate::range::{Range}; x = $crate::heap::Vec; notcrate::x"),
        ["range", "heap"]
    );
    let lib = "pub use svm::{Svm, SvmConfig};\npub use types::{Access, Window};\n";
    let r = root_reexports(lib);
    assert_eq!(r["Svm"], "svm");
    assert_eq!(r["Window"], "types");
    let code = library_code(
        "use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n use crate::sim;\n}\n",
    );
    assert_eq!(crate_paths(&code), ["a"]);
}

/// Files a reader can hold: every Rust, C and script source of the repository (the crate, its
/// tests, examples, benches, fuzz targets, the C ABI and the host recipes) is at most
/// `MAX_LINES` long.
#[test]
fn no_source_file_over_800_lines() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for p in entries.flatten().map(|e| e.path()) {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if name.starts_with("target") || name.starts_with('.') {
                    continue;
                }
                if matches!(name, "corpus" | "artifacts" | "coverage") {
                    continue;
                }
                walk(&p, out);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("rs" | "c" | "h" | "py" | "sh")
            ) {
                out.push(p);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    for dir in [
        "src",
        "tests",
        "examples",
        "benches",
        "fuzz",
        "gpusvm-ffi",
        "hosts",
        ".ci",
    ] {
        walk(&root.join(dir), &mut files);
    }
    let mut long = Vec::new();
    for f in &files {
        // Generated: the C header is cbindgen's output.
        if f.ends_with("include/gpusvm.h") {
            continue;
        }
        let n = fs::read_to_string(f)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n > MAX_LINES {
            long.push(format!(
                "{}: {n} lines",
                f.strip_prefix(&root).unwrap_or(f).display()
            ));
        }
    }
    assert!(files.len() > 50, "the walk found the sources");
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
