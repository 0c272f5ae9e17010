//! The map stays true (`ARCHITECTURE.md`): it names only crates and files that exist and
//! every module of the host and of hosting; the host's modules import no cycle; the
//! hosting models are matched in one module; and no function or file in either crate
//! outgrows the size the map promises without a reason written here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, relative to the workspace root.
fn sources(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    let mut names: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace("crates/host/../../", "")
        })
        .collect();
    names.sort();
    names
}

/// Source without comments (with `docs`, doc comments stay: a doc link to a module is a
/// dependency a reader follows), and without its unit tests (`#[cfg(test)] mod tests { … }`
/// at the end of a file, or a `tests.rs`).
fn code(path: &str, docs: bool) -> String {
    if path.ends_with("tests.rs") {
        return String::new();
    }
    let text = read(&root().join(path));
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("//") || (docs && (l.starts_with("///") || l.starts_with("//!")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths in backticks that `ARCHITECTURE.md` names (`crates/host/src/slot.rs`).
fn named_paths(map: &str) -> BTreeSet<String> {
    map.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            ["crates/", "providers/", "examples/", "docs/", "bench/"]
                .iter()
                .any(|p| s.starts_with(p))
                && !s.contains(' ')
        })
        .map(|s| s.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn the_map_names_what_exists_and_every_module_of_the_host_and_hosting() {
    let map = read(&root().join("ARCHITECTURE.md"));
    let named = named_paths(&map);
    let missing: Vec<&String> = named.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist: {missing:?}"
    );
    let unmapped: Vec<String> = sources("crates/host/src")
        .into_iter()
        .chain(sources("crates/hosting/src"))
        .filter(|f| !f.ends_with("tests.rs") && !f.ends_with("lib.rs"))
        .filter(|f| !named.contains(f))
        .collect();
    assert!(
        unmapped.is_empty(),
        "modules ARCHITECTURE.md does not map: {unmapped:?}"
    );
}

/// The host's top-level modules and the others each imports (`crate::x`).
fn host_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources("crates/host/src") {
        let module = file
            .trim_start_matches("crates/host/src/")
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let text = code(&file, true);
        let mut deps = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(list) = rest.strip_prefix('{') {
                let end = list.find('}').unwrap_or(list.len());
                for item in list[..end].split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    deps.insert(name.to_string());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                deps.insert(name);
            }
        }
        deps.remove(&module);
        // Items re-exported at the crate root (`crate::Host`) are the façade's.
        deps.retain(|d| d.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        graph.entry(module).or_default().extend(deps);
    }
    graph
}

#[test]
fn the_hosts_modules_import_no_cycle() {
    let graph = host_graph();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let from = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            panic!("the host's modules import a cycle: {}", cycle.join(" -> "));
        }
    }
    // The leaves stay leaves: a push sink and the lifecycle rules know nothing else.
    for leaf in ["push", "policy", "config_file", "socket"] {
        assert!(graph[leaf].is_empty(), "{leaf} imports {:?}", graph[leaf]);
    }
}

#[test]
fn the_hosting_models_are_matched_in_one_module() {
    let matching: Vec<String> = sources("crates/host/src")
        .into_iter()
        .chain(sources("crates/hosting/src"))
        .filter(|f| code(f, false).contains("Backend::"))
        .collect();
    assert_eq!(matching, ["crates/hosting/src/hosted.rs"]);
}

/// Functions longer than 80 lines, and files longer than 750, with the reason each may be.
const LONG_BY_DESIGN: &[(&str, &str)] = &[
    (
        "crates/host/src/self_provider.rs:classes",
        "a declarative table of the host's five schemas",
    ),
    (
        "crates/host/src/requests/mod.rs:route",
        "the request table: one arm per request",
    ),
    (
        "crates/host/src/server.rs:handshake",
        "the hello's checks in the order the protocol gives them",
    ),
    (
        "crates/host/src/connection.rs:serve",
        "the connection's select loop: one arm per event, each a method call",
    ),
    (
        "crates/hosting/src/procedures.rs:serve",
        "one arm per I/O call of the provider channel, each a line or a method",
    ),
    (
        "crates/hosting/src/worker/direct.rs:direct_call",
        "one direct call: decode, check, call, check, answer",
    ),
];

#[test]
fn no_function_or_file_outgrows_the_map() {
    let mut long = Vec::new();
    for file in sources("crates/host/src")
        .into_iter()
        .chain(sources("crates/hosting/src"))
    {
        if file.ends_with("tests.rs") {
            continue;
        }
        let text = read(&root().join(&file));
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 750 {
            long.push(format!("{file} ({} lines)", lines.len()));
        }
        let body = code(&file, false);
        let lines: Vec<&str> = body.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let signature = trimmed
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("async ")
                .trim_start_matches("unsafe ");
            let Some(name) = signature.strip_prefix("fn ") else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{indent}}}");
            let Some(end) = lines[i + 1..].iter().position(|l| *l == close) else {
                continue;
            };
            let key = format!("{file}:{name}");
            if end > 80 && !LONG_BY_DESIGN.iter().any(|(k, _)| *k == key) {
                long.push(format!("{key} ({end} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "too long for the map (split them, or say why in LONG_BY_DESIGN): {long:#?}"
    );
}
