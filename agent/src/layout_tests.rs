//! The crate's layout, checked: no import cycles between the top-level
//! modules (issue 11). Reads the sources; test code (`tests.rs`,
//! `*_tests.rs`, inline `mod tests`) may import anything and is skipped.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read agent/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`sweep_runtime.rs` is included
/// by `sweep.rs` through `#[path]`); `None` for the crate root and tests.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let name = rel.file_stem()?.to_str()?;
    if name == "tests" || name.ends_with("_tests") {
        return None;
    }
    let first = rel.components().next()?.as_os_str().to_str()?;
    let top = first.trim_end_matches(".rs");
    match top {
        "lib" | "main" => None,
        "sweep_runtime" => Some("sweep".into()),
        t => Some(t.to_string()),
    }
}

/// The top-level modules named after `crate::` in `text` (outside comments
/// and an inline `#[cfg(test)] mod tests`), including inside
/// `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut refs = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at depth 1 of the group: after `{` or `,`.
            let mut depth = 1;
            let mut expect_name = true;
            let mut chars = group.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && (c.is_ascii_alphabetic() || c == '_') => {
                        let name = ident(&group[i..]);
                        for _ in 1..name.len() {
                            chars.next();
                        }
                        refs.insert(name);
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

/// A cycle in `graph`, if there is one, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(top) = top_module(&src, &file) else {
            continue;
        };
        let text = fs::read_to_string(&file).expect("read source");
        let refs = graph.entry(top.clone()).or_default();
        refs.extend(crate_refs(&text).into_iter().filter(|r| *r != top));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for refs in graph.values_mut() {
        refs.retain(|r| modules.contains(r));
    }
    graph
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let graph = module_graph();
    assert!(graph.len() > 30, "found only {} modules", graph.len());
    assert!(graph["server"].contains("agent"), "the scan misses imports");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_scan_reads_grouped_imports_and_finds_a_cycle() {
    let refs = crate_refs(
        "//! see [`crate::metrics`]\nuse crate::{\n    audit::{AuditEvent, query},\n    clock,\n    control::{self, Reply},\n};\nlet x = crate::state::load();\n#[cfg(test)]\nmod tests {\n    use crate::lock;\n}\n",
    );
    let want: BTreeSet<String> = ["audit", "clock", "control", "state"]
        .map(String::from)
        .into();
    assert_eq!(refs, want);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(find_cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
