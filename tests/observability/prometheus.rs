//! The shipped alerts and dashboard read by a real Prometheus (Debian's `prometheus`, started by
//! `testkit::prometheus`) scraping real servers, asked over its HTTP API what an operator's
//! Prometheus would find: every target up and parsed, every rule loaded and healthy after two
//! evaluations, a series for every metric the alerts and the dashboard query, every dashboard
//! query answered, and nothing in its log at warn or error (dropped samples, failed rules). A
//! renamed metric fails the build here, not the pager.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use testkit::prometheus::{Prometheus, ScrapePlan};

/// The scrape and rule evaluation interval: short, so that two evaluations, and the two samples
/// `rate()` needs, take seconds.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long each wait may take: generous, for debug binaries on a loaded 2-core machine (a pass
/// takes a few seconds).
const WITHIN: Duration = Duration::from_secs(30);
/// The scrape job the alerts select (alerts.yaml: `job="nrl-registry"`).
const JOB: &str = "nrl-registry";
/// A rule group's `lastEvaluation` until its first evaluation.
const NEVER: &str = "0001-01-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_every_metric_the_alerts_and_dashboard_query_and_evaluates_them() {
    // First, so that a machine without Prometheus fails at once, saying how to install it.
    testkit::prometheus::prometheus_bin();
    let started = std::time::Instant::now();
    let nodes = Exercised::start().await;
    let exercised = started.elapsed();
    let targets = [nodes.admin, nodes.national_admin];
    let alerts = shipped::alerts_path();
    let plan = ScrapePlan {
        job: JOB,
        targets: &targets,
        // As a ServiceMonitor's scrape would have it; the dashboard's $namespace lists it.
        labels: &[("namespace", "nrl")],
        rule_files: &[&alerts],
        interval: INTERVAL,
    };
    let prometheus = Prometheus::start(&plan).await;
    let ready = started.elapsed();

    every_target_is_up_and_parsed(&prometheus, &targets).await;
    let up = started.elapsed();
    let names = every_queried_metric_has_a_series(&prometheus).await;
    let stored = started.elapsed();
    let rules = every_rule_is_loaded_and_healthy_after_two_evaluations(&prometheus).await;
    let evaluated = started.elapsed();
    let (queries, empty) = every_dashboard_query_is_answered(&prometheus, &targets).await;
    let warnings = prometheus.warnings();
    assert!(warnings.is_empty(), "Prometheus logged warnings or errors:\n{}", warnings.join("\n"));
    eprintln!(
        "servers exercised at {exercised:?}, prometheus ready at {ready:?}, {} targets up at {up:?}, \
         {names} metrics stored at {stored:?}, {rules} rules healthy twice at {evaluated:?}, \
         {queries} dashboard queries answered at {:?}, with no data: {empty:?}",
        targets.len(),
        started.elapsed()
    );
    drop(prometheus);
    nodes.stop().await;
}

/// `/api/v1/targets`: each admin listener is an active target whose last scrape was healthy (it
/// reached the listener and parsed as OpenMetrics); and `up` is 1 for each.
async fn every_target_is_up_and_parsed(prometheus: &Prometheus, targets: &[SocketAddr]) {
    let what = "every admin listener scraped: health up, no scrape error, up == 1";
    testkit::eventually(what, WITHIN, || async {
        let data = prometheus.api("targets", &[("state", "active")]).await?;
        let active = data["activeTargets"].as_array().ok_or_else(|| format!("no activeTargets: {data}"))?;
        let mut problems = Vec::new();
        for target in targets {
            let instance = target.to_string();
            match active.iter().find(|t| t["labels"]["instance"] == instance.as_str()) {
                None => problems.push(format!("{instance}: not a target: {active:?}")),
                Some(t) if t["health"] != "up" || t["lastError"].as_str().is_some_and(|e| !e.is_empty()) => {
                    problems.push(format!("{instance}: health {}, last error {}", t["health"], t["lastError"]))
                }
                Some(_) => {}
            }
        }
        let up = prometheus.query(&format!("up{{job=\"{JOB}\"}}")).await?;
        let up: BTreeMap<String, String> = results(&up)
            .iter()
            .map(|r| (r["metric"]["instance"].as_str().unwrap_or("?").to_string(), sample(r)))
            .collect();
        let expected: BTreeMap<String, String> = targets.iter().map(|t| (t.to_string(), "1".to_string())).collect();
        if up != expected {
            problems.push(format!("up{{job=\"{JOB}\"}} is {up:?}, expected {expected:?}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    })
    .await;
}

/// Every `nrl_*` name in an alert expression or a dashboard query (panels and variables) has a
/// series in the TSDB, scraped from the job the alerts select. (Names from other exporters, such
/// as kube-state-metrics' in NrlReadinessFlapping, are not the registry's to export.)
async fn every_queried_metric_has_a_series(prometheus: &Prometheus) -> usize {
    let mut queried: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for named in shipped::metric_names().into_iter().filter(|named| named.in_query) {
        queried.entry(named.name).or_default().push(named.source);
    }
    let query = format!("count by (__name__) ({{__name__=~\"nrl_.+\", job=\"{JOB}\"}})");
    let what = "a series in Prometheus of every metric the shipped alerts and dashboard query";
    testkit::eventually(what, WITHIN, || async {
        let data = prometheus.query(&query).await?;
        let stored: BTreeSet<String> =
            results(&data).iter().filter_map(|r| r["metric"]["__name__"].as_str().map(String::from)).collect();
        let missing: Vec<String> = queried
            .iter()
            .filter(|(name, _)| !stored.contains(*name))
            .map(|(name, sources)| format!("{name} (in {})", sources.join("; ")))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no series of {missing:?}; the job's metrics are {stored:?}"))
        }
    })
    .await;
    queried.len()
}

/// `/api/v1/rules`: Prometheus loaded exactly alerts.yaml's groups and rules, has evaluated each
/// group at least twice over the scraped series, and every rule's last evaluation was healthy
/// with no error.
async fn every_rule_is_loaded_and_healthy_after_two_evaluations(prometheus: &Prometheus) -> usize {
    let expected = shipped::rule_groups();
    // Each group's distinct evaluation times seen so far.
    let evaluations: Mutex<BTreeMap<String, BTreeSet<String>>> = Mutex::new(BTreeMap::new());
    let what = "every rule of alerts.yaml loaded, evaluated twice, health ok and no error";
    testkit::eventually(what, WITHIN, || async {
        let data = prometheus.api("rules", &[]).await?;
        let groups = data["groups"].as_array().ok_or_else(|| format!("no groups: {data}"))?;
        let loaded: Vec<(String, Vec<String>)> = groups
            .iter()
            .map(|g| {
                let rules = g["rules"].as_array().into_iter().flatten();
                (text(&g["name"]), rules.map(|r| text(&r["name"])).collect())
            })
            .collect();
        if loaded != expected {
            return Err(format!("Prometheus loaded {loaded:?}; alerts.yaml has {expected:?}"));
        }
        let mut problems = Vec::new();
        let mut evaluations = evaluations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for group in groups {
            let name = text(&group["name"]);
            let seen = evaluations.entry(name.clone()).or_default();
            let last = text(&group["lastEvaluation"]);
            if last != NEVER {
                seen.insert(last);
            }
            // The first evaluation seen may have run before the series were stored; the next two
            // ran after.
            if seen.len() < 3 {
                problems.push(format!("group {name}: {} evaluation(s) seen so far, waiting for 3", seen.len()));
            }
            for rule in group["rules"].as_array().into_iter().flatten() {
                let error = rule["lastError"].as_str().unwrap_or_default();
                if rule["health"] != "ok" || !error.is_empty() {
                    let rule_name = text(&rule["name"]);
                    problems.push(format!("{name}/{rule_name}: health {}, last error {error:?}", rule["health"]));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", problems.join("\n"), prometheus.log_tail()))
        }
    })
    .await;
    expected.iter().map(|(_, rules)| rules.len()).sum()
}

/// Every panel query, with Grafana's variables filled in, parses and evaluates, and every
/// variable's `label_values()` finds values (else the dashboard's pickers are empty). First, three
/// scrapes of each target, so that `rate()` has samples to work on. Returns how many queries there
/// are, and which had no data (some watch for what never happened here, such as audit write
/// failures).
async fn every_dashboard_query_is_answered(prometheus: &Prometheus, targets: &[SocketAddr]) -> (usize, Vec<String>) {
    let scrapes = format!("count_over_time(up{{job=\"{JOB}\"}}[1m]) >= 3");
    testkit::eventually("three scrapes of each target", WITHIN, || async {
        let done = results(&prometheus.query(&scrapes).await?).len();
        match done == targets.len() {
            true => Ok(()),
            false => Err(format!("{done} of {} targets scraped three times", targets.len())),
        }
    })
    .await;
    let queries = shipped::dashboard_queries();
    let mut empty = Vec::new();
    let mut failures = Vec::new();
    for query in &queries {
        match prometheus.query(&query.expr).await {
            Ok(data) if results(&data).is_empty() => empty.push(query.panel.clone()),
            Ok(_) => {}
            Err(error) => failures.push(format!("{}: {}\n    {error}", query.panel, query.expr)),
        }
    }
    for variable in shipped::dashboard_variable_queries() {
        let path = format!("label/{}/values", variable.label);
        let params: Vec<(&str, &str)> = variable.selector.iter().map(|s| ("match[]", s.as_str())).collect();
        match prometheus.api(&path, &params).await {
            Ok(values) if values.as_array().is_some_and(|v| !v.is_empty()) => {}
            Ok(values) => failures
                .push(format!("variable ${}: no values of {} ({params:?}): {values}", variable.name, variable.label)),
            Err(error) => failures.push(format!("variable ${}: {error}", variable.name)),
        }
    }
    assert!(failures.is_empty(), "dashboard.json queries Prometheus does not answer:\n{}", failures.join("\n"));
    (queries.len(), empty)
}

/// The `result` array of an instant query's `data`.
fn results(data: &serde_json::Value) -> Vec<serde_json::Value> {
    data["result"].as_array().cloned().unwrap_or_default()
}

/// A vector result's sample value, as Prometheus writes it ("1", "NaN").
fn sample(result: &serde_json::Value) -> String {
    text(&result["value"][1])
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}
