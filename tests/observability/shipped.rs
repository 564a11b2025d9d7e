//! What the chart ships for operators (helm/nrl-registry/files): the alerts, a plain Prometheus
//! rules file, and the Grafana dashboard, read for the metric names they use. The rules file is
//! read as text (the tree has no YAML parser): its layout is the one promtool checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// helm/nrl-registry/files
fn files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/nrl-registry/files")
}

fn alerts() -> String {
    std::fs::read_to_string(files().join("alerts.yaml")).expect("read alerts.yaml")
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(files().join("dashboard.json")).expect("read dashboard.json");
    serde_json::from_str(&text).expect("dashboard.json is JSON")
}

/// A metric name in a shipped file: in a query, where it must be a series a scrape shows, or in
/// prose (a summary, a description), where a family's name will do.
pub struct Named {
    pub name: String,
    pub source: &'static str,
    pub in_query: bool,
}

/// Every `nrl_*` name in alerts.yaml and dashboard.json.
pub fn metric_names() -> Vec<Named> {
    let alerts = alerts();
    let dashboard = dashboard();
    let mut dashboard_queries = Vec::new();
    json_strings(&dashboard, &["expr", "definition"], &mut dashboard_queries);
    let sources = [
        ("alerts.yaml, expr", alert_exprs(&alerts), true),
        ("dashboard.json, query", dashboard_queries, true),
        ("alerts.yaml", vec![alerts], false),
        ("dashboard.json", vec![dashboard.to_string()], false),
    ];
    let mut named = Vec::new();
    for (source, texts, in_query) in sources {
        let names: BTreeSet<String> = texts.iter().flat_map(|text| names_in(text)).collect();
        assert!(names.contains("nrl_store_up") && names.len() > 5, "{source}: read no metric names: {names:?}");
        named.extend(names.into_iter().map(|name| Named { name, source, in_query }));
    }
    named
}

/// Every `nrl_…` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("nrl_") {
        if text[..at].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let name: String = text[at..].chars().take_while(|c| is_name_char(*c)).collect();
        // `nrl_*` in prose is a pattern, not a name.
        if name.len() > "nrl_".len() {
            names.insert(name);
        }
    }
    names
}

/// The `expr` of every rule in a Prometheus rules file: inline (`expr: x`) or a block (`expr: |`).
fn alert_exprs(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else { continue };
        if !value.trim().starts_with('|') {
            exprs.push(value.trim().to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.next_if(|next| next.len() - next.trim_start().len() > indent) {
            block.push_str(next.trim());
            block.push('\n');
        }
        exprs.push(block);
    }
    assert!(exprs.len() >= 10, "read only {} exprs from the rules file", exprs.len());
    exprs
}

/// The string values under any of `keys`, anywhere in `value` (a dashboard's queries).
fn json_strings(value: &serde_json::Value, keys: &[&str], found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(text) if keys.contains(&key.as_str()) => found.push(text.clone()),
                    _ => json_strings(value, keys, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| json_strings(item, keys, found)),
        _ => {}
    }
}
