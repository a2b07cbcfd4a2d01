//! The layout check: dependencies point one way.
//!
//! - Between crates: each of silo's crates may depend only on crates of a lower layer
//!   (`LAYERS`), so the order is visible and a lower crate never reaches up.
//! - Inside each crate: the graph of its top-level modules (an edge where a file of module
//!   `a` names `crate::b`) has no cycle. `KNOWN_CYCLES` may list one while a change is under
//!   way, and may only shrink: a new cycle, or a known one that grew, fails the test, and so
//!   does a known one that shrank or went away until the list says so.
//! - Inside the control plane, modules name only modules of their own layer or below
//!   (`CONTROL_PLANE_LAYERS`, the layers of docs/architecture.md).
//!
//! Run alone: `cargo test -p silo-e2e --test layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// silo's crates, lowest layer first. A crate may depend on crates before it, never after.
const LAYERS: &[(&str, &str)] = &[
    ("silo-types", "types"),
    ("silo-api", "api"),
    ("silo-crypto", "crypto"),
    ("silo-tenant-runtime", "tenant-runtime"),
    ("silo-provisioner", "provisioner"),
    ("silo-control-plane", "control-plane"),
];

/// Cycles between top-level modules that are allowed for now, by crate: each entry one
/// strongly connected component, its modules sorted. Empty since issue 16 broke the last
/// one; keep it so.
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let root = workspace();
    for (i, (name, dir)) in LAYERS.iter().enumerate() {
        let manifest =
            std::fs::read_to_string(root.join(dir).join("Cargo.toml")).expect("read manifest");
        // [dependencies] only: dev-dependencies may reach anywhere (tests drive from above).
        let deps = manifest
            .split("\n[")
            .find(|section| section.starts_with("dependencies]"))
            .unwrap_or("");
        for (j, (other, _)) in LAYERS.iter().enumerate() {
            let named = deps.lines().any(|l| {
                l.trim_start().starts_with(&format!("{other} "))
                    || l.trim_start().starts_with(&format!("{other}."))
            });
            assert!(
                !named || j < i,
                "{name} depends on {other}, which is not below it in the layers ({LAYERS:?})"
            );
        }
    }
}

#[test]
fn modules_form_no_new_cycle() {
    let root = workspace();
    let mut problems = Vec::new();
    for (_, dir) in LAYERS {
        let src = root.join(dir).join("src");
        let graph = module_graph(&src);
        let cycles = cycles(&graph);
        let known: Vec<BTreeSet<String>> = KNOWN_CYCLES
            .iter()
            .filter(|(c, _)| c == dir)
            .map(|(_, m)| m.iter().map(|s| (*s).to_owned()).collect())
            .collect();
        for cycle in &cycles {
            if !known.contains(cycle) {
                problems.push(format!(
                    "{dir}: modules {cycle:?} import each other in a cycle (edges: {})",
                    edges_within(&graph, cycle)
                ));
            }
        }
        for k in &known {
            if !cycles.contains(k) {
                problems.push(format!(
                    "{dir}: the known cycle {k:?} is now {:?}: good; update KNOWN_CYCLES in tests/tests/layout.rs to match",
                    cycles.iter().filter(|c| !c.is_disjoint(k)).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The edges between the modules of `cycle`, as `a -> b` text.
fn edges_within(graph: &BTreeMap<String, BTreeSet<String>>, cycle: &BTreeSet<String>) -> String {
    let mut out = Vec::new();
    for a in cycle {
        for b in graph.get(a).into_iter().flatten() {
            if cycle.contains(b) {
                out.push(format!("{a} -> {b}"));
            }
        }
    }
    out.join(", ")
}

/// Top-level module of each file under `src`, and which top-level modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    for file in &files {
        let Some(from) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let entry = graph.entry(from.clone()).or_default();
        for to in crate_references(&text) {
            if to != from && tops.contains(&to) {
                entry.insert(to);
            }
        }
    }
    graph
}

/// The top-level module a file belongs to (`http/hrana.rs` → `http`); none for the crate
/// roots, which only declare modules.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Modules named after `crate::` in code (comments left out), including the items of
/// `use crate::{a::X, b};` groups, on one line or several.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: Vec<&str> = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let code = code.join("\n");
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        match after.strip_prefix('{') {
            Some(group) => group_items(group, &mut names),
            None => push_first_segment(after, &mut names),
        }
        rest = after;
    }
    names
}

/// The first segment of each top-level item of a `{…}` group, up to its closing brace.
fn group_items(group: &str, names: &mut BTreeSet<String>) {
    let mut depth = 0;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                push_first_segment(&current, names);
                current.clear();
            }
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    push_first_segment(&current, names);
}

fn push_first_segment(path: &str, names: &mut BTreeSet<String>) {
    let ident: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !ident.is_empty() && ident != "self" {
        names.insert(ident);
    }
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            graph
                .entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
            graph.entry((*b).to_owned()).or_default();
        }
        graph
    };
    assert!(cycles(&g(&[("a", "b"), ("b", "c")])).is_empty());
    let found = cycles(&g(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
    ]));
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.contains(&set(&["a", "b", "c"])));
    assert!(found.contains(&set(&["d", "e"])));
}

#[test]
fn references_are_read_from_paths_and_groups_not_comments() {
    let text = "use crate::auth::Role;\n// crate::fleet is only mentioned\nuse crate::{state::AppState, error::{ApiError, X}};\nuse crate::{\n    http::edge,\n    telemetry,\n};\nlet x = crate::keys::load();";
    let refs = crate_references(text);
    let want: BTreeSet<String> = ["auth", "state", "error", "http", "telemetry", "keys"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(refs, want);
}

/// Inside the control plane, the layers of `docs/architecture.md`, lowest first: a module
/// may name modules of its own layer or below, never above. (Within a layer the cycle
/// check above keeps the edges one way.)
const CONTROL_PLANE_LAYERS: &[&[&str]] = &[
    // What is stored and how: the catalog (with the audit chains), metrics, the key file,
    // the jobs' and exports' records, open streams and sockets.
    &[
        "catalog",
        "telemetry",
        "keys",
        "jobs",
        "exports",
        "streams",
        "sockets",
        "two_factor",
        "logging",
        "throttle",
        "plans",
        "disk",
    ],
    // The API's error, credentials and the shared state.
    &["error", "audit", "auth", "state"],
    // Operations over the state.
    &["deletion", "fleet", "service"],
    // The edges: HTTP, the command line, start-up.
    &["http", "config", "cli", "app"],
];

#[test]
fn control_plane_modules_only_reach_down() {
    let src = workspace().join("control-plane").join("src");
    let graph = module_graph(&src);
    assert!(
        graph.get("http").is_some_and(|t| t.contains("state")),
        "the module graph reads no edges: {graph:?}"
    );
    let layer_of = |m: &str| CONTROL_PLANE_LAYERS.iter().position(|l| l.contains(&m));
    let mut problems = Vec::new();
    for (from, targets) in &graph {
        let Some(lf) = layer_of(from) else {
            problems.push(format!(
                "module {from} is in no layer of CONTROL_PLANE_LAYERS"
            ));
            continue;
        };
        for to in targets {
            match layer_of(to) {
                Some(lt) if lt > lf => problems.push(format!(
                    "{from} (layer {lf}) names {to} (layer {lt}), a higher layer"
                )),
                Some(_) => {}
                None => problems.push(format!(
                    "module {to} is in no layer of CONTROL_PLANE_LAYERS"
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What a handler must not hold (issue 16: "handlers hold no SQL, no crypto and no catalog
/// calls"): the work is in `service/`, which the CLI's offline commands share.
const NOT_IN_HANDLERS: &[(&str, &str)] = &[
    ("crate::catalog", "the catalog's types"),
    (".blocking(", "a catalog call"),
    ("rusqlite", "SQL"),
    ("hash_token", "credential hashing"),
    ("random_token", "credential minting"),
    ("hash_password", "password hashing"),
    ("verify_password", "password checks"),
    ("Keyring", "sealing keys"),
    ("seal", "sealing"),
    ("constant_time_eq", "secret comparison"),
];

#[test]
fn handlers_hold_no_sql_crypto_or_catalog_calls() {
    let http = workspace().join("control-plane").join("src").join("http");
    let mut files = Vec::new();
    collect_rs(&http, &mut files);
    assert!(
        files.len() > 5,
        "found no handlers under {}",
        http.display()
    );
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read handler file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (needle, what) in NOT_IN_HANDLERS {
                if code.contains(needle) {
                    problems.push(format!(
                        "{}:{}: {what} ({needle}) in a handler file; move it to service/",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
