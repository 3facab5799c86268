//! The reference implementation of the Sonzai webhooks API: API keys and tenancy,
//! storage on SQLite (embedded default) or PostgreSQL (scale-out), and the delivery
//! engine that signs, sends, retries and records every attempt. The binary
//! `sonzai-webhooks` wraps this library; Rust programs (and the tests) can embed it:
//! [`config::DatabaseArgs::connect`] opens a database and [`server::start_with_store`]
//! runs the API and the workers on it.

// Public: what the binary, the tests and embedding programs use. Everything else is
// private to the crate, so the compiler reports what nothing calls.
mod api;
pub mod auth;
mod bootstrap;
pub mod cli;
pub mod config;
mod delivery;
mod duration;
mod engine;
mod listener;
pub mod log_buffer;
mod metrics;
mod portal;
mod receive;
mod recovery;
mod remote;
mod retention;
pub mod server;
mod stdout;
pub mod store;
mod wake;

#[cfg(test)]
mod layering {
    //! The crate's modules import in one direction only: a change to a low layer
    //! (the store, the wake-up signal) never has to reason about the ones above it.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module -> the other top-level modules its source names as `crate::x`.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        fn visit(dir: &Path, top: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                let module = top.map_or(stem.clone(), str::to_owned);
                if path.is_dir() {
                    visit(&path, Some(&module), graph);
                    continue;
                }
                if top.is_none() && matches!(stem.as_str(), "lib" | "main") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let used = graph.entry(module.clone()).or_default();
                for (i, _) in text.match_indices("crate::") {
                    let name: String = text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        used.insert(name);
                    }
                }
            }
        }
        let mut graph = BTreeMap::new();
        visit(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            None,
            &mut graph,
        );
        graph
    }

    #[test]
    fn modules_import_in_one_direction() {
        let graph = imports();
        assert!(graph.len() > 5, "modules found: {graph:?}");
        assert!(!graph["store"].contains("delivery"), "{:?}", graph["store"]);
        assert!(!graph["server"].contains("cli"), "{:?}", graph["server"]);
        // Depth-first search for a cycle, reporting the path that closes it.
        fn cycle(
            graph: &BTreeMap<String, BTreeSet<String>>,
            node: &str,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|n| n == node) {
                let mut found = path[at..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            if !done.insert(node.to_owned()) {
                return None;
            }
            path.push(node.to_owned());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(found) = cycle(graph, next, path, done) {
                    return Some(found);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            let found = cycle(&graph, node, &mut Vec::new(), &mut done);
            assert!(
                found.is_none(),
                "import cycle: {}",
                found.unwrap().join(" -> ")
            );
        }
    }
}
