//! The module graph of the library stays acyclic: a test over the paths each file of
//! `src/` names (`use crate::…`, `use super::…`, and the same paths written inline), at
//! file level. It fails naming every circle it finds, with the line that makes each step.
//!
//! How a path becomes an edge:
//! - `crate::a::b::Item` points at the deepest file module it names (`src/a/b.rs`, else
//!   `src/a/mod.rs` or `src/a.rs`); if that module only re-exports `Item` (`pub use x::Item`),
//!   the edge follows the re-export to the file that defines it.
//! - `super::` counts from the file's own module; a module's use of its own submodules
//!   (`mod x; pub use x::…`, `self::x`, `crate::this::x`) is containment, not an edge.
//! - Comments, doc links and each file's `#[cfg(test)] mod tests` are not read: a unit
//!   test may use whatever it tests against.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// One file of the library.
struct File {
    path: String,
    module: Module,
    /// The code, without comments and without the unit-test module (lines kept in place,
    /// so offsets still give line numbers).
    code: String,
}

fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn read_files(root: &Path) -> Vec<File> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root.join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p != &src.join("main.rs") && !p.starts_with(src.join("bin")))
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src/");
            let text = std::fs::read_to_string(&p).expect("a readable source file");
            File { path: format!("src/{}", rel.display()), module: module_of(rel), code: code_lines(&text) }
        })
        .collect()
}

/// The code without comments and the `#[cfg(test)] mod` part; a removed line stays as an
/// empty one.
fn code_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines[i + 1..]
                .iter()
                .map(|l| l.trim_start())
                .find(|l| !l.is_empty())
                .is_some_and(|l| l.starts_with("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            out.push('\n');
            continue;
        }
        let code = match line.find("//") {
            // A `//` inside a string (a URL) is kept; one after the code is a comment.
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The paths a piece of code names after `prefix` (`crate::`, `super::`, `self::`, or a
/// relative `use` path), with brace groups expanded: `a::{b, c::D}` gives `a::b`, `a::c::D`.
fn paths_after(code: &str, prefix: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix).map(|i| i + from) {
        from = at + prefix.len();
        let boundary =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':');
        if boundary {
            let mut chars = code[from..].chars().peekable();
            out.extend(group(&mut chars).into_iter().map(|path| (at, path)));
        }
    }
    out
}

/// Parses `seg::seg::{…}` or `seg::seg` from `chars`, returning every full path.
fn group(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Vec<Vec<String>> {
    let mut path = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut out = Vec::new();
            loop {
                for tail in group(chars) {
                    out.push(path.iter().cloned().chain(tail).collect());
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                match chars.peek() {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {
                        chars.next();
                        return out;
                    }
                    None => return out,
                    _ => {
                        // `x as y` or something unparsed: skip to the next item.
                        while chars.peek().is_some_and(|c| !matches!(c, ',' | '}')) {
                            chars.next();
                        }
                    }
                }
            }
        }
        let segment: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_')).collect();
        if segment.is_empty() {
            return if path.is_empty() { Vec::new() } else { vec![path] };
        }
        path.push(segment);
        if chars.clone().take(2).collect::<String>() == "::" {
            chars.next();
            chars.next();
        } else {
            return vec![path];
        }
    }
}

/// The names a `pub use` line of `file` re-exports, with the path each stands for
/// (`pub use drm::{Drm as D}` gives `D` → `crate::m::drm::Drm`).
fn reexports(file: &File, modules: &BTreeSet<Module>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let starts =
        ["pub use ", "pub(crate) use ", "pub(super) use "].into_iter().flat_map(|p| file.code.match_indices(p));
    for (at, prefix) in starts {
        let rest = &file.code[at + prefix.len()..];
        let rest = &rest[..rest.find(';').unwrap_or(rest.len())];
        let mut chars = rest.chars().peekable();
        // Aliases: `a::b as c` keeps the name `c`.
        let aliases: BTreeMap<String, String> = rest
            .split([',', '{', '}', ';'])
            .filter_map(|item| {
                let (path, alias) = item.split_once(" as ")?;
                Some((path.trim().rsplit("::").next()?.to_string(), alias.trim().to_string()))
            })
            .collect();
        for path in group(&mut chars) {
            let absolute = absolute(&file.module, &path, modules, true);
            if let (Some(absolute), Some(last)) = (absolute, path.last()) {
                let name = aliases.get(last).cloned().unwrap_or_else(|| last.clone());
                out.push((name, absolute));
            }
        }
    }
    out
}

/// `path` as written in `module`, made absolute (without `crate`); `relative` also takes
/// a path that starts with a submodule's name.
fn absolute(module: &Module, path: &[String], modules: &BTreeSet<Module>, relative: bool) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.clone();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => return Some(rest[1..].to_vec()),
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) if relative => {
            let mut child = base.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
        }
        _ => return None,
    }
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

/// The file module an absolute path lands in, following re-exports.
fn resolve(
    path: &[String],
    modules: &BTreeSet<Module>,
    exports: &BTreeMap<Module, BTreeMap<String, Vec<String>>>,
) -> Module {
    let mut path = path.to_vec();
    for _ in 0..8 {
        let depth = (0..=path.len()).rev().find(|&n| modules.contains(&path[..n].to_vec())).unwrap_or(0);
        let module = path[..depth].to_vec();
        match path.get(depth).and_then(|item| exports.get(&module)?.get(item)) {
            Some(target) if target != &path => path = target.clone(),
            _ => return module,
        }
    }
    path
}

struct Graph {
    files: BTreeMap<Module, String>,
    /// from → to → the first line that makes the edge (`src/x.rs:12`).
    edges: BTreeMap<Module, BTreeMap<Module, String>>,
}

fn graph(root: &Path) -> Graph {
    let files = read_files(root);
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let exports: BTreeMap<Module, BTreeMap<String, Vec<String>>> =
        files.iter().map(|f| (f.module.clone(), reexports(f, &modules).into_iter().collect())).collect();
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for file in &files {
        for prefix in ["crate::", "super::"] {
            for (at, path) in paths_after(&file.code, prefix) {
                let head = prefix.trim_end_matches("::").to_string();
                let path: Vec<String> = std::iter::once(head).chain(path).collect();
                let Some(absolute) = absolute(&file.module, &path, &modules, false) else { continue };
                let target = resolve(&absolute, &modules, &exports);
                if target.is_empty() || target.starts_with(&file.module) {
                    continue; // the crate root, the file itself, or its own submodules
                }
                let number = file.code[..at].matches('\n').count() + 1;
                let place = edges.entry(file.module.clone()).or_default().entry(target).or_default();
                let here = format!("{}:{number}", file.path);
                if place.is_empty() || prefix == "crate::" && place.as_str() > here.as_str() {
                    *place = here;
                }
            }
        }
    }
    Graph { files: files.into_iter().map(|f| (f.module, f.path)).collect(), edges }
}

/// Every knot of `edges` (a strongly connected component): one shortest circle through it,
/// as the files in order, and all the files it holds.
fn cycles(edges: &BTreeMap<Module, BTreeMap<Module, String>>) -> Vec<(Vec<Module>, Vec<Module>)> {
    // Tarjan's strongly connected components, then one shortest circle through each.
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, String>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        components: Vec<Vec<&'a Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.components.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.components
        .iter()
        .map(|component| {
            let inside: BTreeSet<&Module> = component.iter().copied().collect();
            let start = *component.iter().min().expect("not empty");
            // Breadth-first from `start` back to itself, inside the component.
            let mut previous: BTreeMap<&Module, &Module> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            'search: while let Some(v) = queue.pop_front() {
                for w in edges[v].keys().filter(|w| inside.contains(w)) {
                    if w == start {
                        previous.insert(start, v);
                        break 'search;
                    }
                    if !previous.contains_key(w) {
                        previous.insert(w, v);
                        queue.push_back(w);
                    }
                }
            }
            let mut circle = vec![start.clone()];
            let mut at = previous[start];
            while at != start {
                circle.push(at.clone());
                at = previous[at];
            }
            circle.push(start.clone());
            circle.reverse();
            (circle, inside.into_iter().cloned().collect())
        })
        .collect()
}

#[test]
fn the_module_graph_has_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let g = graph(root);
    assert!(g.files.len() > 40, "src/ read: {} files", g.files.len());
    assert!(!g.edges.is_empty(), "no edge found: the path reader is broken");
    let checked = cycles(&g.edges);
    let show = |(circle, knot): &(Vec<Module>, Vec<Module>)| {
        let steps: Vec<String> = circle
            .windows(2)
            .map(|step| format!("  {} → {} ({})", g.files[&step[0]], g.files[&step[1]], g.edges[&step[0]][&step[1]]))
            .collect();
        let files: Vec<&str> = knot.iter().map(|m| g.files[m].as_str()).collect();
        format!(
            "{}\n  (one circle of {} files that all reach each other: {})",
            steps.join("\n"),
            files.len(),
            files.join(", ")
        )
    };
    if !checked.is_empty() {
        let text: Vec<String> = checked.iter().map(show).collect();
        panic!(
            "{} circle(s) in the module graph (a lower layer imports an upper one; move the shared name down, or the code up):\n{}",
            checked.len(),
            text.join("\n\n")
        );
    }
}

#[test]
fn the_path_reader_finds_grouped_relative_and_inline_paths() {
    let paths = paths_after("use crate::{a::{B, c::D}, e as f}; let x = crate::g::h();", "crate::");
    let paths: Vec<String> = paths.iter().map(|(_, p)| p.join("::")).collect();
    assert_eq!(paths, ["a::B", "a::c::D", "e", "g::h"]);
    assert_eq!(paths_after("use super::super::x;", "super::").len(), 1);
    let modules: BTreeSet<Module> = [vec![], vec!["a".to_string()], vec!["a".into(), "b".into()]].into_iter().collect();
    let exports = BTreeMap::from([(
        vec!["a".to_string()],
        BTreeMap::from([("X".to_string(), vec!["a".into(), "b".into(), "X".into()])]),
    )]);
    assert_eq!(resolve(&["a".into(), "X".into()], &modules, &exports), ["a", "b"]);
    assert_eq!(resolve(&["a".into(), "Y".into()], &modules, &exports), ["a"]);
    let circle = cycles(&BTreeMap::from([
        (vec!["a".to_string()], BTreeMap::from([(vec!["b".to_string()], String::new())])),
        (vec!["b".to_string()], BTreeMap::from([(vec!["a".to_string()], String::new())])),
    ]));
    assert_eq!(circle[0].0, [vec!["a".to_string()], vec!["b".to_string()], vec!["a".to_string()]]);
}
