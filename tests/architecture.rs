//! ARCHITECTURE.md's invariants, checked by reading `src/` (the pattern of rust-analyzer's tidy
//! test). Each check names the invariant it keeps; a failure lists every offending file and line.
//! The checks read text, not the compiler's view: comments count as uses, so a comment that names
//! a forbidden path must be reworded rather than exempted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may grow before it is split by what it holds.
const MAX_LINES: usize = 800;

struct Source {
    /// Path below `src/`, with `/` separators, e.g. `api/grpc/status.rs`.
    path: String,
    text: String,
}

impl Source {
    /// The top-level module the file belongs to (`api`, `store`, ...); `lib`, `main` and `bin`
    /// for the crate roots and the binaries.
    fn module(&self) -> &str {
        let first = self.path.split('/').next().unwrap_or_default();
        first.strip_suffix(".rs").unwrap_or(first)
    }

    fn under(&self, prefix: &str) -> bool {
        self.path.starts_with(prefix)
    }
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let relative = path.strip_prefix(root).expect("below src").to_string_lossy().replace('\\', "/");
                out.push(Source { path: relative, text });
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    assert!(out.len() > 50, "expected the whole source tree under {}, found {} files", root.display(), out.len());
    out
}

/// Every line of `sources` (as `path:line: text`) for which `offends` holds.
fn offences(sources: &[Source], exempt: impl Fn(&Source) -> bool, offends: impl Fn(&str) -> bool) -> Vec<String> {
    sources
        .iter()
        .filter(|s| !exempt(s))
        .flat_map(|s| {
            s.text
                .lines()
                .enumerate()
                .filter(|(_, line)| offends(line))
                .map(move |(i, line)| format!("src/{}:{}: {}", s.path, i + 1, line.trim()))
        })
        .collect()
}

fn assert_none(invariant: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{invariant}\n  broken at:\n    {}", found.join("\n    "));
}

/// `word` used as a path root: `redis::cmd`, `use redis`, but not `store::redis::RedisConfig`.
fn uses_crate(line: &str, word: &str) -> bool {
    let mut rest = line;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + word.len()..];
        let rooted = !matches!(before, Some(c) if c.is_alphanumeric() || c == '_' || c == ':');
        if rooted && (after.starts_with("::") || (after.starts_with(';') && rest[..at].ends_with("use "))) {
            return true;
        }
        rest = &rest[at + word.len()..];
    }
    false
}

#[test]
fn only_store_redis_imports_redis() {
    let found = offences(
        &sources(),
        |s| s.path == "store/redis.rs" || s.under("store/redis/"),
        |line| uses_crate(line, "redis"),
    );
    assert_none("Only `store::redis` imports `redis`.", found);
}

#[test]
fn generated_proto_types_stay_at_the_edge() {
    // The client programs (the operator CLI, the load runner and its binary) are gRPC clients of
    // the public API, not layers of the server; `lib.rs` declares the generated module.
    let exempt = |s: &Source| {
        s.under("api/")
            || s.path == "api.rs"
            || s.under("cli/")
            || s.path == "cli.rs"
            || s.under("load/")
            || s.path == "load.rs"
            || s.under("bin/")
            || s.path == "lib.rs"
    };
    let found = offences(&sources(), exempt, |line| line.contains("proto::nrl") || uses_crate(line, "pb"));
    assert_none("Generated proto types go no deeper than `api/`.", found);
}

#[test]
fn statuses_are_built_only_by_the_edges_error_map() {
    // A `tonic::Status` is built from a `RegistryError` in `api::grpc::status` and nowhere else in
    // the server. The client programs (CLI, load runner) are exempt: they describe their own
    // client-side failures (a connection not ready, a client deadline) as statuses.
    let builds_status = |line: &str| {
        line.match_indices("Status::").any(|(at, _)| {
            let named = !line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            let rest = &line[at + "Status::".len()..];
            named && rest.starts_with(|c: char| c.is_ascii_lowercase()) && !rest.starts_with("from(")
        })
    };
    let exempt = |s: &Source| {
        s.path == "api/grpc/status.rs" || s.under("cli/") || s.path == "cli.rs" || s.under("load/") || s.under("bin/")
    };
    let found = offences(&sources(), exempt, builds_status);
    assert_none("Only `api::grpc::status` turns errors into gRPC statuses.", found);
}

#[test]
fn roles_are_checked_only_in_the_policy() {
    // `auth.rs` defines the roles and `auth/jwt.rs` parses them from claims; only `auth::policy`
    // decides with them (the JWT unit tests check what a token grants).
    let exempt = |s: &Source| {
        s.path == "auth/policy.rs" || s.path == "auth.rs" || s.path == "auth/jwt.rs" || s.path == "auth/jwt/tests.rs"
    };
    let found = offences(&sources(), exempt, |line| line.contains("Role::") || line.contains(".has("));
    assert_none("Every authorisation decision is in `auth::policy`: nothing else names a role.", found);
}

#[test]
fn no_source_file_grows_past_the_limit() {
    let found: Vec<String> = sources()
        .iter()
        .map(|s| (s.path.clone(), s.text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("src/{path}: {lines} lines"))
        .collect();
    assert_none(&format!("No source file is over {MAX_LINES} lines: split it by what it holds."), found);
}

#[test]
fn no_test_or_harness_file_grows_past_the_limit() {
    // The same rule for the tests and the harness: a suite that grows is split into modules by
    // section (`tests/federation/`, `tests/security/`, ...).
    fn long_files(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                long_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
                if lines > MAX_LINES {
                    out.push(format!("{}: {lines} lines", path.display()));
                }
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["tests", "crates/testkit/src", "loadtest/benches"] {
        long_files(&root.join(dir), &mut found);
    }
    assert_none(&format!("No test, harness or bench file is over {MAX_LINES} lines."), found);
}

/// Which top-level modules each module names (`crate::X`), test code included.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let from = source.module().to_string();
        if matches!(from.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        for (at, _) in source.text.match_indices("crate::") {
            let rest = &source.text[at + "crate::".len()..];
            let to: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !to.is_empty() && to != from {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
        graph.entry(from).or_default();
    }
    graph
}

#[test]
fn layers_only_import_downwards() {
    // api → registry → store → domain; auth, error, clock, metrics beside. What each layer must
    // not name (`proto` is the generated code, only for the edge).
    let forbidden: [(&str, &[&str]); 7] = [
        ("domain", &["api", "registry", "store", "auth", "federation", "server", "config", "metrics", "proto"]),
        ("error", &["api", "registry", "store", "auth", "federation", "server", "domain", "proto"]),
        ("store", &["api", "registry", "auth", "federation", "server", "config", "admin", "proto"]),
        ("auth", &["api", "registry", "store", "federation", "server", "config", "proto"]),
        ("registry", &["api", "federation", "server", "config", "admin", "proto"]),
        ("federation", &["api", "server", "config", "admin", "proto"]),
        ("admin", &["config", "server", "api", "registry"]),
    ];
    let graph = module_graph(&sources());
    let mut found = Vec::new();
    for (module, banned) in forbidden {
        for target in graph.get(module).into_iter().flatten() {
            if banned.contains(&target.as_str()) {
                found.push(format!("{module} -> {target}"));
            }
        }
    }
    assert_none("No import runs back up the layers (api → registry → store → domain).", found);
}

#[test]
fn top_level_modules_form_no_circle() {
    let graph = module_graph(&sources());
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            circles.push(format!("{} -> {node}", path[at..].join(" -> ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert_none("Top-level modules import each other in no circle.", circles);
}

#[test]
fn the_scanners_see_what_they_look_for() {
    // The checks above pass trivially if their matchers are blind; this keeps them honest.
    assert!(uses_crate("use redis::AsyncCommands;", "redis"));
    assert!(uses_crate("    let v = redis::cmd(\"GET\");", "redis"));
    assert!(!uses_crate("use crate::store::redis::RedisConfig;", "redis"));
    assert!(!uses_crate("let redis_url = x;", "redis"));
    let graph = module_graph(&[
        Source { path: "a.rs".into(), text: "use crate::b::X;".into() },
        Source { path: "b/c.rs".into(), text: "fn f() { crate::a::g() }".into() },
    ]);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(graph["b"], BTreeSet::from(["a".to_string()]));
}
