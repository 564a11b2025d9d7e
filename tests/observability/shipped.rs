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

/// The rules file, for a Prometheus to load.
pub fn alerts_path() -> PathBuf {
    files().join("alerts.yaml")
}

/// The rule groups of alerts.yaml in order: each group's name and its rules' names (`alert:` or
/// `record:`), in order.
pub fn rule_groups() -> Vec<(String, Vec<String>)> {
    let unquote = |value: &str| value.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for line in alerts().lines() {
        let item = line.trim_start();
        if let Some(name) = item.strip_prefix("- name:") {
            groups.push((unquote(name), Vec::new()));
        } else if let Some(rule) = item.strip_prefix("- alert:").or_else(|| item.strip_prefix("- record:")) {
            groups.last_mut().expect("every rule is in a group").1.push(unquote(rule));
        }
    }
    let rules = groups.iter().map(|(_, rules)| rules.len()).sum::<usize>();
    assert!(rules >= 10, "read only {rules} rules from alerts.yaml: {groups:?}");
    groups
}

/// What Grafana puts in for its own interval variables, on a dashboard showing the last few
/// minutes: `$__rate_interval` is at least four scrape intervals, so a minute holds enough samples
/// for `rate()` at the 1 s scrapes of the tests, and at the usual 15 s.
const GRAFANA_BUILTINS: [(&str, &str); 6] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("interval", "15s"),
    ("__range", "5m"),
    ("__range_s", "300"),
];

/// One query of the dashboard, with Grafana's variables filled in.
pub struct DashboardQuery {
    /// Which panel and target, for messages: `panel 2 "Calls by method" A`.
    pub panel: String,
    pub expr: String,
}

/// Every query of every panel (rows' panels included), each variable filled in as Grafana does
/// with "All" chosen: a dashboard variable by its `allValue`, Grafana's intervals as above. Panics
/// on a variable it does not know, naming it.
pub fn dashboard_queries() -> Vec<DashboardQuery> {
    let dashboard = dashboard();
    let variables = dashboard_variable_values(&dashboard);
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut todo: Vec<&serde_json::Value> = dashboard["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = todo.pop() {
        panels.push(panel);
        todo.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str().filter(|expr| !expr.trim().is_empty()) else { continue };
            let name = format!("panel {} {} {}", panel["id"], panel["title"], target["refId"].as_str().unwrap_or("?"));
            let expr = fill(expr, &variables).unwrap_or_else(|e| panic!("dashboard.json, {name}: {e}: {expr}"));
            queries.push(DashboardQuery { panel: name, expr });
        }
    }
    assert!(queries.len() >= 10, "read only {} queries from dashboard.json", queries.len());
    queries
}

/// A dashboard variable filled from `label_values(SELECTOR, LABEL)`: what Grafana asks
/// Prometheus for (`/api/v1/label/LABEL/values?match[]=SELECTOR`).
pub struct VariableQuery {
    pub name: String,
    pub label: String,
    /// With the variables it uses filled in; `None` for `label_values(LABEL)`.
    pub selector: Option<String>,
}

/// The dashboard's query variables. Panics on a query other than `label_values(...)`.
pub fn dashboard_variable_queries() -> Vec<VariableQuery> {
    let dashboard = dashboard();
    let values = dashboard_variable_values(&dashboard);
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().expect("a variable has a name").to_string();
        let definition = variable["definition"].as_str().or(variable["query"]["query"].as_str()).unwrap_or_default();
        let arguments =
            definition.trim().strip_prefix("label_values(").and_then(|rest| rest.strip_suffix(')')).unwrap_or_else(
                || panic!("dashboard.json, variable ${name}: not a label_values() query: {definition}"),
            );
        let (selector, label) = match arguments.rsplit_once(',') {
            Some((selector, label)) => (Some(selector.trim()), label.trim()),
            None => (None, arguments.trim()),
        };
        let selector = selector
            .map(|selector| fill(selector, &values))
            .transpose()
            .unwrap_or_else(|e| panic!("dashboard.json, variable ${name}: {e}: {definition}"));
        queries.push(VariableQuery { name, label: label.to_string(), selector });
    }
    queries
}

/// Each variable's value with "All" chosen: its `allValue` (`.*` where it has none, as Grafana's
/// regex of every value matches what this one does), else its current value; then Grafana's own.
fn dashboard_variable_values(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut values: Vec<(String, String)> = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().expect("a variable has a name");
        let value = match (variable["includeAll"].as_bool(), variable["current"]["value"].as_str()) {
            (Some(true), _) => variable["allValue"].as_str().unwrap_or(".*"),
            (_, Some(current)) => current,
            _ => continue,
        };
        values.push((name.to_string(), value.to_string()));
    }
    values.extend(GRAFANA_BUILTINS.iter().map(|(name, value)| (name.to_string(), value.to_string())));
    values
}

/// `text` with every `$name` and `${name}` replaced by its value; an unknown variable is an error
/// naming it. A `$` with no name after it (a regex's end anchor) stays.
fn fill(text: &str, values: &[(String, String)]) -> Result<String, String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        filled.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
                (&braced[..end], end + 2)
            }
            None => {
                let end = after.find(|c: char| !is_name_char(c)).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            filled.push('$');
        } else {
            let value = values
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value)
                .ok_or_else(|| format!("the Grafana variable ${name}, which this test does not know"))?;
            filled.push_str(value);
        }
        rest = &after[used..];
    }
    filled.push_str(rest);
    Ok(filled)
}
