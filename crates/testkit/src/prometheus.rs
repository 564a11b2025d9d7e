//! A real Prometheus server (Debian's `prometheus` package) scraping the registry's admin
//! listeners and evaluating a rules file, for the tests that check the shipped alerts and
//! dashboard the way an operator's Prometheus would read them, over its HTTP API.
//!
//! It runs under the harness's watchdog ([`crate::process::Watched`]), on a free port below the
//! ephemeral range ([`crate::ports`]), with its configuration, TSDB and log in a temp dir of its
//! own (kept if the test panics). Not installed is a failure, never a skip: CI installs it.

use crate::process::{listens_on, tail_of_file, TempDir, Watched};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// How long Prometheus gets to say it is ready (TSDB opened, rules loaded).
const START_LIMIT: Duration = Duration::from_secs(30);
/// One API call's limit.
const CALL_LIMIT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;

/// What a [`Prometheus`] scrapes and evaluates.
pub struct ScrapePlan<'a> {
    /// The scrape job's name: the `job` label of every series.
    pub job: &'a str,
    /// Admin listeners (`/metrics`), one target each.
    pub targets: &'a [SocketAddr],
    /// Extra labels on every target (as a ServiceMonitor adds `namespace`).
    pub labels: &'a [(&'a str, &'a str)],
    /// Rules files, loaded as given.
    pub rule_files: &'a [&'a Path],
    /// The scrape and the rule evaluation interval (and the scrape timeout).
    pub interval: Duration,
}

/// `prometheus` on the PATH; panics, saying how to install it, if there is none.
pub fn prometheus_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|bin| bin.is_file()).unwrap_or_else(|| {
        panic!(
            "no `prometheus` on the PATH: apt-get install prometheus (Debian's package ships the server and \
             promtool; .ci/run installs it)"
        )
    })
}

/// A running Prometheus. Dropping it kills it.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    process: Watched,
    log: PathBuf,
    http: reqwest::Client,
    /// Configuration, TSDB and log; declared last so the process is gone before it is removed
    /// (kept, and its path printed, if the test panics).
    _dir: TempDir,
}

impl Prometheus {
    /// Writes `prometheus.yml` for `plan`, starts `prometheus` on a free loopback port and waits
    /// until it says it is ready (`/-/ready`), which it does once the rules are loaded. Panics
    /// with its log if it exits first (a rules file it cannot load, say) or is not ready within
    /// 30 s.
    pub async fn start(plan: &ScrapePlan<'_>) -> Prometheus {
        let bin = prometheus_bin();
        let dir = TempDir::new("nrl-prometheus");
        let interval = format!("{}ms", plan.interval.as_millis());
        let labels: serde_json::Map<String, serde_json::Value> =
            plan.labels.iter().map(|(name, value)| (name.to_string(), (*value).into())).collect();
        let targets: Vec<String> = plan.targets.iter().map(SocketAddr::to_string).collect();
        let rule_files: Vec<String> = plan.rule_files.iter().map(|path| path.to_string_lossy().into_owned()).collect();
        // JSON is YAML, so serde_json writes the configuration with every string quoted.
        let config = serde_json::json!({
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": plan.job,
                "static_configs": [{ "targets": targets, "labels": labels }],
            }],
        });
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_json::to_string_pretty(&config).expect("serialise the configuration"))
            .unwrap_or_else(|e| panic!("write {}: {e}", config_file.display()));

        let port = crate::ports::free_port();
        let log = dir.join("prometheus.log");
        let mut command = Command::new(bin);
        command
            .current_dir(dir.path())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = Watched::spawn(&command, &log);
        let http = reqwest::Client::builder().timeout(CALL_LIMIT).build().expect("an HTTP client");
        let mut prometheus = Prometheus { url: format!("http://127.0.0.1:{port}"), process, log, http, _dir: dir };
        prometheus.wait_ready(port).await;
        prometheus
    }

    async fn wait_ready(&mut self, port: u16) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.exited() {
                panic!("prometheus exited before it was ready ({status})\n{}", self.log_tail());
            }
            let last = match self.http.get(format!("{}/-/ready", self.url)).send().await {
                // Ready, and our own child: not another suite's process on a port ours lost.
                Ok(answer) if answer.status().is_success() && listens_on(self.process.pid(), port) => return,
                Ok(answer) if answer.status().is_success() => {
                    format!("port {port} answers, but not from our prometheus")
                }
                Ok(answer) => format!("/-/ready answered {}", answer.status()),
                Err(error) => format!("/-/ready: {error}"),
            };
            if started.elapsed() >= START_LIMIT {
                panic!("prometheus was not ready within {START_LIMIT:?}; last: {last}\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/PATH?PARAMS`: the answer's `data`, or why there is none (the API's error
    /// type and message, an HTTP failure).
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let url = format!("{}/api/v1/{path}", self.url);
        let answer = self.http.get(&url).query(params).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = answer.status();
        let body: serde_json::Value =
            answer.json().await.map_err(|e| format!("GET {url} {params:?}: {status}, not JSON: {e}"))?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(format!("GET {url} {params:?}: {status}: {} {}", body["errorType"], body["error"])),
        }
    }

    /// An instant query at the current time: the `data` of `/api/v1/query` (`resultType`, `result`).
    pub async fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        self.api("query", &[("query", expr)]).await
    }

    /// The lines Prometheus logged at `level=warn` or `level=error`: what it did not fail a call
    /// for, such as samples of a scrape it dropped, or a rule whose evaluation failed.
    pub fn warnings(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_else(|e| panic!("read {}: {e}", self.log.display()));
        log.lines()
            .filter(|line| line.contains("level=warn") || line.contains("level=error"))
            .map(String::from)
            .collect()
    }

    /// The last lines of Prometheus's log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!("---- prometheus ({}) log tail ----\n{}", self.log.display(), tail_of_file(&self.log, LOG_TAIL_LINES))
    }
}
