//! The layers of ARCHITECTURE.md, checked on the code itself:
//!
//! - the core crate's dependency tree holds no adapter crate;
//! - in `service/src`, no file imports one from a higher layer, handlers
//!   and jobs never import each other, and no files import each other in a
//!   circle (each file is its own module: `adapters::mce::batch` and
//!   `adapters::mce::client` are two);
//! - the invariants that name one place: only `adapters/store/` names
//!   `sea_orm`, only the consumer loop names `AckKind`, only
//!   `lifecycle/end.rs` moves a run into a terminal state, only
//!   `adapters/nats.rs` declares streams, consumers and buckets.
//!
//! The module graph is read from the source text: every `crate::…`,
//! `super::…`, `self::…` path and every path through a child module a file
//! declares is an arrow from the file's module to the module it names. A
//! `mod child;` alone draws none; a `pub use child::X` is a path through the
//! child, so it does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Lowest first. `lib.rs` and `main.rs` stand above everything.
const LAYERS: &[(&str, u8)] = &[
    ("adapters", 2),
    ("lifecycle", 3),
    ("handlers", 4),
    ("jobs", 4),
    ("runtime", 5),
    ("app", 6),
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

/// The only place that names `sea_orm`.
const STORE: &str = "service/src/adapters/store/";

/// The consumer loop, the only files that name `AckKind` (`settle.rs` sends
/// the acknowledgements the loop decides).
const CONSUMER_LOOP: &[&str] = &["service/src/runtime/consumer.rs", "service/src/runtime/settle.rs"];

/// Where a run ends (`end_run`), the only caller of the store's functions
/// that move a run into a terminal state.
const END_RUN: &str = "service/src/lifecycle/end.rs";
const ENDING_CALLS: &[&str] = &["finish", "claim_api_cancel"];

/// The home of the streams, the lease bucket and the consumers: the only
/// file that names async-nats's calls that declare, change or delete one.
const NATS_HOME: &str = "service/src/adapters/nats.rs";
const DECLARING_CALLS: &[&str] = &[
    "create_stream",
    "get_or_create_stream",
    "update_stream",
    "create_or_update_stream",
    "delete_stream",
    "create_consumer",
    "create_consumer_on_stream",
    "create_consumer_strict",
    "create_consumer_strict_on_stream",
    "get_or_create_consumer",
    "update_consumer",
    "update_consumer_on_stream",
    "delete_consumer",
    "delete_consumer_from_stream",
    "create_key_value",
    "update_key_value",
    "create_or_update_key_value",
    "delete_key_value",
    "create_object_store",
    "delete_object_store",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_core_crate_depends_on_no_adapter_crate() {
    let names = tests::dependency_tree("shell-query-core", &[]);
    assert!(
        names.contains("shell-query-core") && names.contains("sqlparser"),
        "{names:?}"
    );
    for forbidden in ADAPTER_CRATES {
        assert!(
            !names.contains(*forbidden),
            "the core crate reaches {forbidden}: {names:?}"
        );
    }
}

/// A module path such as `["adapters", "store", "runs"]`; `[]` is `lib.rs`.
type ModPath = Vec<String>;

/// One file of `service/src`.
struct Source {
    /// From the workspace root: `service/src/adapters/mce/batch.rs`.
    file: String,
    module: ModPath,
    text: String,
}

/// The module a file of `service/src` is: `a/b.rs` and `a/b/mod.rs` are
/// `a::b`, `lib.rs` is the crate itself.
fn module_of_file(file: &str) -> ModPath {
    let rel = file.trim_start_matches("service/src/").trim_end_matches(".rs");
    let mut module: ModPath = rel.split('/').map(str::to_string).collect();
    if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
        module.pop();
    }
    module
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let rel = format!("{rel}/{}", path.file_name().unwrap().to_string_lossy());
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(Source {
                    module: module_of_file(&rel),
                    text: std::fs::read_to_string(&path).unwrap(),
                    file: rel,
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("service/src"), "service/src", &mut out);
    out
}

/// The code of a file: comments, and the insides of string and character
/// literals, turned into spaces (lines stay where they were).
fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let before = i.checked_sub(1).and_then(|b| chars.get(b));
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                let pair = (chars[i], chars.get(i + 1).copied());
                if pair == ('/', Some('*')) || pair == ('*', Some('/')) {
                    depth += if pair.0 == '/' { 1 } else { -1 };
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (!ident(before) || (before == Some(&'b') && !ident(i.checked_sub(2).and_then(|b| chars.get(b)))))
        {
            // A raw string: r"…", r#"…"#.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            out.push('r');
            out.extend(std::iter::repeat_n('#', hashes));
            out.push('"');
            i += 2 + hashes;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.extend(&close);
            i += close.len();
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let n = if chars[i] == '\\' { 2 } else { 1 };
                out.extend(chars[i..(i + n).min(chars.len())].iter().map(|c| blank(*c)));
                i += n;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\'', '\u{7f}'), not a lifetime.
            let close = if next == Some('\\') { i + 3 } else { i + 2 };
            let close = (close..chars.len()).find(|k| chars[*k] == '\'').unwrap_or(chars.len());
            out.push('\'');
            out.extend(std::iter::repeat_n(' ', close - i - 1));
            out.push('\'');
            i = close + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
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

fn line_of(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

/// The paths of the use tree that starts `tail`, each after `path`:
/// `a::{b::C, d::{e, f}}` names `a::b::C`, `a::d::e` and `a::d::f`; `a::*`
/// names `a`.
fn use_tree(mut tail: &str, mut path: Vec<String>, found: &mut Vec<Vec<String>>) {
    let start = path.len();
    loop {
        if let Some(inner) = tail.strip_prefix('{') {
            let (mut depth, mut item) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    ',' | '}' if depth == 0 => {
                        use_tree(inner[item..i].trim_start(), path.clone(), found);
                        if c == '}' {
                            return;
                        }
                        item = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        if tail.starts_with('*') {
            found.push(path);
            return;
        }
        let Some(id) = ident_at(tail) else { break };
        path.push(id.to_string());
        tail = &tail[id.len()..];
        match tail.strip_prefix("::") {
            Some(t) => tail = t,
            None => break,
        }
    }
    if path.len() > start {
        found.push(path);
    }
}

/// Every path a piece of code names after `prefix::`, with the offset of
/// its `prefix`.
fn paths_at(code: &str, prefix: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut paths = Vec::new();
        use_tree(&code[from..], Vec::new(), &mut paths);
        found.extend(paths.into_iter().map(|p| (at, p)));
    }
    found
}

/// Every path a piece of code names after `prefix::`, braces expanded
/// (`crate::a::{b::C, d}` names `a::b::C` and `a::d`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    paths_at(code, prefix).into_iter().map(|(_, p)| p).collect()
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

fn layer(module: &str) -> u8 {
    let top = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, l)| *l)
        .unwrap_or(9)
}

/// Arrows between files (by their modules' names, `adapters::mce::batch`),
/// each with the first `file:line` that draws it.
type Arrows = BTreeMap<(String, String), String>;

fn file_arrows(sources: &[Source]) -> Arrows {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut arrows = Arrows::new();
    for s in sources {
        let code = code(&s.text);
        let mut named: Vec<(usize, ModPath)> = paths_at(&code, "crate::");
        named.extend(paths_at(&code, "service::"));
        // `super` of `a::b` (a/b.rs, or a/b/mod.rs) is `a`; inside the
        // file's inline `mod tests`, it is `a::b` itself.
        let (body, tests) = split_tests(&code);
        let parent = &s.module[..s.module.len().saturating_sub(1)];
        for (at, p) in paths_at(body, "super::") {
            named.push((at, [parent, &p].concat()));
        }
        for (at, p) in paths_at(tests, "super::") {
            named.push((body.len() + at, [&s.module[..], &p].concat()));
        }
        for (at, p) in paths_at(&code, "self::") {
            named.push((at, [&s.module[..], &p].concat()));
        }
        // Children the file declares (a/b/mod.rs's, or a/b.rs's in a/b/),
        // named without a prefix.
        for child in modules
            .iter()
            .filter(|m| m.len() == s.module.len() + 1 && m.starts_with(&s.module))
        {
            let child_name = child.last().unwrap();
            for (at, p) in paths_at(&code, &format!("{child_name}::")) {
                named.push((at, [&child[..], &p].concat()));
            }
        }
        for (at, path) in named {
            let target = module_of(&path, &modules);
            if target.is_empty() || target == s.module {
                continue;
            }
            arrows
                .entry((name(&s.module), name(&target)))
                .or_insert_with(|| format!("{}:{}", s.file, line_of(&code, at)));
        }
    }
    arrows
}

/// Circles of arrows, each as `a -> b -> a`: the shortest one back to each
/// file no circle found so far passes through.
fn circles(arrows: &Arrows) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in arrows.keys() {
        next.entry(from).or_default().push(to);
    }
    let mut on_a_circle: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for &start in next.keys() {
        if on_a_circle.contains(start) {
            continue;
        }
        // Breadth first from `start` until an arrow leads back to it.
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for &to in next.get(node).into_iter().flatten() {
                if to == start {
                    last = Some(node);
                    break 'search;
                }
                if !came_from.contains_key(to) {
                    came_from.insert(to, node);
                    queue.push_back(to);
                }
            }
        }
        let Some(mut node) = last else { continue };
        let mut circle = vec![start.to_string()];
        while node != start {
            circle.insert(1, node.to_string());
            node = came_from[node];
        }
        circle.push(start.to_string());
        on_a_circle.extend(circle.iter().cloned());
        found.push(circle);
    }
    found
}

/// The circles of `arrows`, each with the place of each of its arrows.
fn circles_report(arrows: &Arrows) -> String {
    let mut out = String::new();
    for circle in circles(arrows) {
        out.push_str(&circle.join(" -> "));
        out.push('\n');
        for pair in circle.windows(2) {
            let at = &arrows[&(pair[0].clone(), pair[1].clone())];
            out.push_str(&format!("  {} -> {} at {at}\n", pair[0], pair[1]));
        }
    }
    out
}

#[test]
fn no_module_imports_a_higher_layer_and_handlers_and_jobs_stay_apart() {
    let arrows = file_arrows(&sources());
    assert!(
        arrows
            .keys()
            .any(|(from, to)| from == "handlers::poll" && to == "lifecycle::end"),
        "the graph is read at all: {arrows:?}"
    );
    let mut wrong = Vec::new();
    for ((from, to), at) in &arrows {
        let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
        let siblings = matches!(
            (top(from).as_str(), top(to).as_str()),
            ("handlers", "jobs") | ("jobs", "handlers")
        );
        if layer(to) > layer(from) || siblings {
            wrong.push(format!("{from} -> {to} (at {at})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that run up a layer or across:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let arrows = file_arrows(&sources());
    assert!(
        arrows.contains_key(&("adapters::mce::client".to_string(), "adapters::mce::error".to_string())),
        "the graph is read file by file: {arrows:?}"
    );
    let report = circles_report(&arrows);
    assert!(report.is_empty(), "files import each other in a circle:\n{report}");
}

fn source(file: &str, text: &str) -> Source {
    Source {
        file: file.to_string(),
        module: module_of_file(file),
        text: text.to_string(),
    }
}

#[test]
fn a_circle_of_two_files_is_found() {
    let mce = |text: &str| source("service/src/adapters/mce/mod.rs", text);
    let batch = |text: &str| source("service/src/adapters/mce/batch.rs", text);
    let client = |text: &str| source("service/src/adapters/mce/client.rs", text);
    let declares = "pub mod batch;\npub mod client;\n";
    let uses_client = "use super::client::Session;\n\npub struct StatusBatcher;\n";
    let uses_batch = "pub struct Session;\n\npub struct Mce {\n    statuses: super::batch::StatusBatcher,\n}\n";

    let arrows = file_arrows(&[mce(declares), batch(uses_client), client(uses_batch)]);
    assert_eq!(
        circles_report(&arrows),
        "adapters::mce::batch -> adapters::mce::client -> adapters::mce::batch\n\
         \x20 adapters::mce::batch -> adapters::mce::client at service/src/adapters/mce/batch.rs:1\n\
         \x20 adapters::mce::client -> adapters::mce::batch at service/src/adapters/mce/client.rs:4\n"
    );

    // One way only, and a file's tests naming it through `super`: no circle.
    let tested = "pub struct Session;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::Session;\n}\n";
    let arrows = file_arrows(&[mce(declares), batch(uses_client), client(tested)]);
    assert!(circles(&arrows).is_empty(), "{arrows:?}");

    // A parent that re-exports a child, and the child taking an item
    // through the parent: a circle (the child should name its sibling).
    let reexports = "pub mod batch;\npub mod client;\npub use batch::StatusBatcher;\n";
    let through_parent = "use super::Session;\n\npub struct StatusBatcher;\n";
    let arrows = file_arrows(&[mce(reexports), batch(through_parent), client(tested)]);
    assert_eq!(
        circles(&arrows),
        vec![vec!["adapters::mce", "adapters::mce::batch", "adapters::mce"]]
    );
}

#[test]
fn the_graph_reader_sees_arrows_through_braces_super_and_children() {
    let code_text = "use crate::adapters::{store::runs, mce::Session};\nuse super::Failure;\nlet x = poll::Poll;";
    assert_eq!(
        paths_after(code_text, "crate::"),
        vec![
            vec!["adapters".to_string(), "store".into(), "runs".into()],
            vec!["adapters".to_string(), "mce".into(), "Session".into()],
        ]
    );
    assert_eq!(paths_after(code_text, "super::"), vec![vec!["Failure".to_string()]]);
    let file = "use super::Failure;\n#[cfg(test)]\nmod tests {\n    use super::Tick;\n}";
    let (body, tests) = split_tests(file);
    assert_eq!(paths_after(body, "super::"), vec![vec!["Failure".to_string()]]);
    assert_eq!(paths_after(tests, "super::"), vec![vec!["Tick".to_string()]]);
    assert_eq!(paths_after(code_text, "poll::"), vec![vec!["Poll".to_string()]]);
    assert!(paths_after("use shell_query_core::poll::x;", "poll::").is_empty());
    // Nested braces, and a glob naming the module itself.
    assert_eq!(
        paths_after("use crate::a::{\n    b::{C, d},\n    *,\n};", "crate::"),
        vec![
            vec!["a".to_string(), "b".into(), "C".into()],
            vec!["a".to_string(), "b".into(), "d".into()],
            vec!["a".to_string()],
        ]
    );
    assert_eq!(paths_after("use super::*;", "super::"), vec![Vec::<String>::new()]);
    // Comments, strings (raw ones too) and characters name nothing; lines
    // stay.
    let text = r##"let s = "crate::x // \" crate::y"; // crate::z
let c = '"'; /* crate::v */ let r = r#"crate::q"#; use crate::w;"##;
    let lexed = code(text);
    assert_eq!(
        paths_at(&lexed, "crate::"),
        vec![(text.find("crate::w").unwrap(), vec!["w".to_string()])]
    );
    assert_eq!(line_of(&lexed, text.find("crate::w").unwrap()), 2);
}

/// A place in `service/src` where the code (not a comment, not a string)
/// names a word.
struct Place {
    file: String,
    line: usize,
    /// The code on that line before the word.
    before: String,
    text: String,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text)
    }
}

fn places(sources: &[Source], word: &str) -> Vec<Place> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for s in sources {
        let code = code(&s.text);
        for (n, (line, original)) in code.lines().zip(s.text.lines()).enumerate() {
            let mut from = 0;
            while let Some(i) = line[from..].find(word) {
                let at = from + i;
                from = at + word.len();
                if line[..at].chars().last().is_some_and(is_ident) || line[from..].chars().next().is_some_and(is_ident)
                {
                    continue;
                }
                found.push(Place {
                    file: s.file.clone(),
                    line: n + 1,
                    before: line[..at].to_string(),
                    text: original.trim().to_string(),
                });
            }
        }
    }
    found
}

fn listed(places: &[&Place]) -> String {
    places.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn only_the_store_names_sea_orm() {
    let all = places(&sources(), "sea_orm");
    assert!(
        all.iter().any(|p| p.file.starts_with(STORE)),
        "sea_orm is looked for at all"
    );
    let wrong: Vec<&Place> = all.iter().filter(|p| !p.file.starts_with(STORE)).collect();
    assert!(wrong.is_empty(), "`sea_orm` named outside {STORE}:\n{}", listed(&wrong));
}

#[test]
fn only_the_consumer_loop_names_ack_kind() {
    let all = places(&sources(), "AckKind");
    assert!(
        all.iter().any(|p| CONSUMER_LOOP.contains(&p.file.as_str())),
        "AckKind is looked for at all (the consumer loop: {CONSUMER_LOOP:?})"
    );
    let wrong: Vec<&Place> = all
        .iter()
        .filter(|p| !CONSUMER_LOOP.contains(&p.file.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "`AckKind` named outside the consumer loop ({}):\n{}",
        CONSUMER_LOOP.join(", "),
        listed(&wrong)
    );
}

#[test]
fn a_run_ends_only_through_end_run() {
    let sources = sources();
    let mut calls = Vec::new();
    for name in ENDING_CALLS {
        calls.extend(places(&sources, name).into_iter().filter(|p| {
            // Not its definition, not a method of something else (`.finish()`).
            let before = p.before.trim_end();
            !before.ends_with('.') && before.split_whitespace().last() != Some("fn")
        }));
    }
    assert!(
        calls
            .iter()
            .any(|p| p.file == END_RUN && p.text.contains("runs::finish(")),
        "runs::finish is looked for at all"
    );
    let wrong: Vec<&Place> = calls.iter().filter(|p| p.file != END_RUN).collect();
    assert!(
        wrong.is_empty(),
        "a run moved into a terminal state ({}) outside {END_RUN} (end_run):\n{}",
        ENDING_CALLS.join(", "),
        listed(&wrong)
    );
}

#[test]
fn streams_consumers_and_buckets_are_declared_only_in_the_nats_adapter() {
    let sources = sources();
    let mut calls = Vec::new();
    for name in DECLARING_CALLS {
        calls.extend(places(&sources, name));
    }
    assert!(
        calls
            .iter()
            .any(|p| p.file == NATS_HOME && p.text.contains(".create_key_value(")),
        "the declarations are looked for at all"
    );
    let wrong: Vec<&Place> = calls.iter().filter(|p| p.file != NATS_HOME).collect();
    assert!(
        wrong.is_empty(),
        "a stream, consumer or bucket declared outside {NATS_HOME}:\n{}",
        listed(&wrong)
    );
}
