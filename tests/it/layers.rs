//! The layers of ARCHITECTURE.md, checked on the code itself:
//!
//! - the core crate's dependency tree holds no adapter crate;
//! - in `service/src`, no module imports one from a higher layer, handlers
//!   and jobs never import each other, and the modules import each other
//!   in no circle.
//!
//! The module graph is read from the source text: every `crate::…`,
//! `super::…`, `self::…` path and every path through a child module a file
//! declares is an arrow from the file's module to the module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. `lib.rs` and `main.rs` stand above everything.
const LAYERS: &[(&str, u8)] = &[
    ("adapters", 2),
    ("lifecycle", 3),
    ("handlers", 4),
    ("jobs", 4),
    ("app", 5),
];

const ADAPTER_CRATES: &[&str] = &[
    "tokio",
    "sea-orm",
    "sqlx",
    "async-nats",
    "reqwest",
    "quick-xml",
    "axum",
    "clap",
    "hyper",
    "entities",
    "migration",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_core_crate_depends_on_no_adapter_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "shell-query-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(
        names.contains("shell-query-core") && names.contains("sqlparser"),
        "{tree}"
    );
    for forbidden in ADAPTER_CRATES {
        assert!(
            !names.contains(forbidden),
            "the core crate reaches {forbidden}:\n{tree}"
        );
    }
}

/// A module path such as `["adapters", "store", "runs"]`.
type ModPath = Vec<String>;

struct Source {
    module: ModPath,
    /// `mod.rs`/`lib.rs`: its children are named relative to itself.
    is_dir_module: bool,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, module: &ModPath, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut child = module.clone();
                child.push(name);
                walk(&path, &child, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let (module, is_dir_module) = match name.as_str() {
                    "mod" | "lib" => (module.clone(), true),
                    "main" => (vec!["main".to_string()], false),
                    _ => {
                        let mut m = module.clone();
                        m.push(name);
                        (m, false)
                    }
                };
                out.push(Source {
                    module,
                    is_dir_module,
                    text: std::fs::read_to_string(&path).unwrap(),
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("service/src"), &Vec::new(), &mut out);
    out
}

/// The code of a file without its comments (line comments only: the
/// service uses no block comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file's code before its inline `mod tests {`, and from there on.
fn split_tests(code: &str) -> (&str, &str) {
    let at = code.find("\nmod tests {").map_or(code.len(), |i| i + 1);
    code.split_at(at)
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// Every path a piece of code names after `prefix::`, braces expanded one
/// level (`crate::a::{b::C, d}` names `a::b` and `a::d`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut path = Vec::new();
        let mut tail = rest;
        loop {
            if let Some(inner) = tail.strip_prefix('{') {
                let close = inner.find('}').unwrap_or(inner.len());
                for item in inner[..close].split(',') {
                    let mut p = path.clone();
                    p.extend(item.trim().split("::").map_while(ident_at).map(str::to_string));
                    if p.len() > path.len() {
                        found.push(p);
                    }
                }
                path.clear();
                break;
            }
            let Some(id) = ident_at(tail) else { break };
            path.push(id.to_string());
            tail = &tail[id.len()..];
            match tail.strip_prefix("::") {
                Some(t) => tail = t,
                None => break,
            }
        }
        if !path.is_empty() {
            found.push(path);
        }
    }
    found
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// The unit the graph is drawn between: a top-level module's child (or the
/// top-level module itself for its own file).
fn unit(module: &ModPath) -> String {
    module.iter().take(2).cloned().collect::<Vec<_>>().join("::")
}

fn layer(module: &ModPath) -> u8 {
    let top = module.first().map(String::as_str).unwrap_or("");
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, l)| *l)
        .unwrap_or(9)
}

/// Arrows between units, each with the file-level module that drew it.
fn arrows() -> BTreeMap<(String, String), ModPath> {
    let sources = sources();
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut arrows = BTreeMap::new();
    for s in &sources {
        let code = code(&s.text);
        let mut named: Vec<ModPath> = paths_after(&code, "crate::");
        for p in paths_after(&code, "service::") {
            named.push(p);
        }
        // `super` of `a::b` (a/b.rs, or a/b/mod.rs) is `a`; inside the
        // file's inline `mod tests`, it is `a::b` itself.
        let (body, tests) = split_tests(&code);
        for p in paths_after(body, "super::") {
            let mut base = s.module[..s.module.len().saturating_sub(1)].to_vec();
            base.extend(p);
            named.push(base);
        }
        for p in paths_after(tests, "super::") {
            let mut base = s.module.clone();
            base.extend(p);
            named.push(base);
        }
        for p in paths_after(&code, "self::") {
            let mut base = s.module.clone();
            base.extend(p);
            named.push(base);
        }
        // Children a directory module declares, named without a prefix.
        if s.is_dir_module {
            for child in modules
                .iter()
                .filter(|m| m.len() == s.module.len() + 1 && m.starts_with(&s.module))
            {
                let name = child.last().unwrap();
                for p in paths_after(&code, &format!("{name}::")) {
                    let mut full = child.clone();
                    full.extend(p);
                    named.push(full);
                }
            }
        }
        for path in named {
            let target = module_of(&path, &modules);
            if target.is_empty() {
                continue;
            }
            let (from, to) = (unit(&s.module), unit(&target));
            if from != to {
                arrows.entry((from, to)).or_insert_with(|| s.module.clone());
            }
        }
    }
    arrows
}

#[test]
fn no_module_imports_a_higher_layer_and_handlers_and_jobs_stay_apart() {
    let arrows = arrows();
    assert!(
        arrows
            .keys()
            .any(|(from, to)| from == "handlers::poll" && to == "lifecycle::end"),
        "the graph is read at all: {arrows:?}"
    );
    let mut wrong = Vec::new();
    for ((from, to), file) in &arrows {
        let top = |u: &str| u.split("::").next().unwrap_or("").to_string();
        let (f, t) = (vec![top(from)], vec![top(to)]);
        let siblings = matches!(
            (f[0].as_str(), t[0].as_str()),
            ("handlers", "jobs") | ("jobs", "handlers")
        );
        if layer(&t) > layer(&f) || siblings {
            wrong.push(format!("{from} -> {to} (in {})", file.join("::")));
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that run up a layer or across:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_modules_import_each_other_in_no_circle() {
    let arrows = arrows();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in arrows.keys() {
        graph.entry(from).or_default().push(to);
    }
    // Depth-first search; a grey node met again closes a circle.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|n| *n == node).unwrap_or(0);
                let mut circle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                circle.push(node.to_string());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(node, 1);
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(node, 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys().copied().collect::<Vec<_>>() {
        let mut stack = Vec::new();
        if let Some(circle) = visit(node, &graph, &mut state, &mut stack) {
            panic!("modules import each other in a circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_graph_reader_sees_arrows_through_braces_super_and_children() {
    let code = "use crate::adapters::{store::runs, mce::Session};\nuse super::Failure;\nlet x = poll::Poll;";
    assert_eq!(
        paths_after(code, "crate::"),
        vec![
            vec!["adapters".to_string(), "store".into(), "runs".into()],
            vec!["adapters".to_string(), "mce".into(), "Session".into()],
        ]
    );
    assert_eq!(paths_after(code, "super::"), vec![vec!["Failure".to_string()]]);
    let file = "use super::Failure;\n#[cfg(test)]\nmod tests {\n    use super::Tick;\n}";
    let (body, tests) = split_tests(file);
    assert_eq!(paths_after(body, "super::"), vec![vec!["Failure".to_string()]]);
    assert_eq!(paths_after(tests, "super::"), vec![vec!["Tick".to_string()]]);
    assert_eq!(paths_after(code, "poll::"), vec![vec!["Poll".to_string()]]);
    assert!(paths_after("use shell_query_core::poll::x;", "poll::").is_empty());
}
