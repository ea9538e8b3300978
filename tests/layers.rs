//! The crate's shape, kept: reads the layer picture of `src/lib.rs`'s crate map and every
//! `crate::` (and, in the binaries, `kube_audit_stream::`) path of `src/`, then fails on an
//! edge to a higher layer, on a circle among modules, on a module the picture leaves out,
//! and on `ingest` and `watch` knowing each other (data flows ingest → bus → watch).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Module → layer, from the `//! L<n> a · b · c: …` lines of the crate map.
fn layers(lib_rs: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(rest) = line.strip_prefix("//! L") else {
            continue;
        };
        let (level, rest) = rest.split_once(' ').expect("`L<n> modules: …`");
        let level: u32 = level.parse().expect("a layer number");
        let (modules, _) = rest.split_once(':').expect("`L<n> modules: what they do`");
        for m in modules.split('·').map(str::trim).filter(|m| !m.is_empty()) {
            assert!(
                out.insert(m.to_owned(), level).is_none(),
                "{m} is drawn twice in the crate map"
            );
        }
    }
    out
}

/// The top-level module a file of `src/` belongs to: `bus.rs` and `bus/queue.rs` are
/// `bus`; `bin/kubectl-audit.rs` is `bin`; `lib.rs` is the crate root (no module).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names after `prefix` (`crate::bus::X`,
/// `crate::{bus, nats}`), comments left out.
fn named_after(line: &str, prefix: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        // `kube_audit_stream::` must not be the tail of a longer name; `crate::` is a keyword.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a group, up to its closing brace (nested groups skipped).
            let mut depth = 0;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => out.push(std::mem::take(&mut name)),
                    c if depth == 0 => name.push(c),
                    _ => {}
                }
            }
            out.push(name);
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out.into_iter()
        .map(|n| n.trim().split("::").next().unwrap_or("").trim().to_owned())
        .filter(|n| !n.is_empty() && n != "self")
        .collect()
}

/// Every edge between top-level modules: (from, to) → the first file and line showing it.
fn edges() -> BTreeMap<(String, String), String> {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(SRC).unwrap();
        let Some(from) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let named = [
                named_after(line, "crate::"),
                named_after(line, "kube_audit_stream::"),
            ];
            for to in named.into_iter().flatten() {
                if to != from {
                    out.entry((from.clone(), to))
                        .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    out
}

#[test]
fn imports_point_down_the_crate_map() {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let layer = layers(&lib);
    assert!(
        layer.len() > 10,
        "the crate map's picture is missing: {layer:?}"
    );

    // Every module of the crate is in the picture, and the picture names no other.
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .chain(["main".to_owned(), "bin".to_owned()])
        .collect();
    let drawn: BTreeSet<String> = layer.keys().cloned().collect();
    assert_eq!(
        declared, drawn,
        "modules declared in lib.rs vs drawn in its map"
    );

    let edges = edges();
    assert!(
        edges.len() > 30,
        "too few imports found: the parser is broken"
    );
    let mut wrong = Vec::new();
    for ((from, to), at) in &edges {
        let (Some(f), Some(t)) = (layer.get(from), layer.get(to)) else {
            wrong.push(format!(
                "{at}: {from} → {to}: a module the map does not draw"
            ));
            continue;
        };
        if t > f {
            wrong.push(format!("{at}: {from} (L{f}) → {to} (L{t}): points up"));
        }
    }
    for (a, b) in [("ingest", "watch"), ("watch", "ingest")] {
        if let Some(at) = edges.get(&(a.to_owned(), b.to_owned())) {
            wrong.push(format!(
                "{at}: {a} → {b}: data flows ingest → bus → watch only"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the crate map:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_circle_among_modules() {
    let edges = edges();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first search; a node met again while on the path closes a circle.
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut circle = path[i..].to_vec();
            circle.push(n);
            return Some(circle);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(circle) = visit(n, &next, &mut Vec::new(), &mut done) {
            let at: Vec<_> = circle
                .windows(2)
                .map(|w| edges[&(w[0].to_owned(), w[1].to_owned())].clone())
                .collect();
            panic!("import circle {}: {}", circle.join(" → "), at.join(", "));
        }
    }
}

#[test]
fn the_parser_reads_groups_paths_and_skips_comments() {
    assert_eq!(
        named_after("use crate::{budget, bus::Bus, nats};", "crate::"),
        ["budget", "bus", "nats"]
    );
    assert_eq!(
        named_after("x = crate::event::Field::Verb; // crate::watch", "crate::"),
        ["event"]
    );
    assert_eq!(
        named_after("use crate::{a::{b, c}, d};", "crate::"),
        ["a", "d"]
    );
    assert!(named_after("use my_kube_audit_stream::x;", "kube_audit_stream::").is_empty());
    assert_eq!(
        layers("//! L3 ingest · watch: a\n//! L0 status: b\n"),
        BTreeMap::from([
            ("ingest".into(), 3),
            ("watch".into(), 3),
            ("status".into(), 0)
        ])
    );
}
