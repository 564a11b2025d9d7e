//! Real `nrl serve` processes on 127.0.0.1 for the federation tests and benchmark: a national node
//! and regional nodes, wired together by a region directory file whose regions carry a
//! `record-locator` endpoint naming their node.
//!
//! Each node runs under the harness's watchdog ([`crate::process::Watched`]), which SIGKILLs `nrl`
//! in [`NrlNode::kill9`], on drop, and when the test process dies in any way, so no `nrl serve`
//! outlives its test. A node can be killed and restarted on the same port with the same flags,
//! and frozen (SIGSTOP) and thawed (SIGCONT) to play a slow node.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The endpoint purpose that names a region's registry node.
pub const LOCATOR_PURPOSE: &str = "record-locator";
/// How long a node gets to start serving (the debug binary on a busy CI machine, Redis startup).
pub const START_LIMIT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;

/// The `nrl` binary under test: `NRL_BIN` if set (e.g. a release build), else Cargo's build of it.
///
/// Cargo tells only the integration tests and benchmarks of nrl-registry where it built `nrl`
/// (`CARGO_BIN_EXE_nrl`, at compile time, and at run time under recent Cargo); this crate is a
/// library, so it reads the variable at run time and otherwise looks where Cargo puts it: beside
/// the `deps/` directory the running test or benchmark binary is in.
pub fn nrl_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NRL_BIN").or_else(|| std::env::var_os("CARGO_BIN_EXE_nrl")) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let beside_deps = exe.parent().and_then(Path::parent).map(|profile_dir| profile_dir.join("nrl"));
    match beside_deps {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "no `nrl` binary beside {}: run the tests with `cargo test` (which builds it), or build it with \
             `cargo build --bin nrl` and set NRL_BIN to its path",
            exe.display()
        ),
    }
}

/// Ports that were free a moment ago (the nodes bind them themselves, later).
use crate::ports::free_ports;
use crate::process::{tail_of_file, TempDir, Watched};

/// A command for the `nrl` binary under test that only its arguments configure: every `NRL_*`
/// variable the test runs under is removed.
pub fn nrl_command() -> Command {
    let mut command = Command::new(nrl_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NRL_") {
            command.env_remove(name);
        }
    }
    command
}

/// Writes the built-in region directory (`src/domain/data/regions.json`) to `path`, with a
/// `record-locator` endpoint added to each region in `nodes` (region code → node url).
pub fn write_regions_file(path: &Path, nodes: &[(&str, String)]) {
    // This crate lives in crates/testkit of the nrl-registry workspace.
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../src/domain/data/regions.json");
    let text = std::fs::read_to_string(&builtin).unwrap_or_else(|e| panic!("read {}: {e}", builtin.display()));
    let mut directory: serde_json::Value = serde_json::from_str(&text).expect("the built-in region directory is JSON");
    let regions = directory["regions"].as_array_mut().expect("the directory has a regions array");
    for (code, url) in nodes {
        let region = regions
            .iter_mut()
            .find(|r| r["code"] == *code)
            .unwrap_or_else(|| panic!("region {code} is not in the built-in directory"));
        region["endpoints"]
            .as_array_mut()
            .expect("a region has endpoints")
            .push(serde_json::json!({"purpose": LOCATOR_PURPOSE, "url": url}));
    }
    std::fs::write(path, serde_json::to_string_pretty(&directory).expect("serialise the directory"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A lazily connected channel to `url`: it connects on first use and reconnects by itself after
/// the node comes back.
pub fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("node url")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// One `nrl serve` process on a fixed 127.0.0.1 port (fixed so it can be named in the region
/// directory before it starts, and restarted on the same address).
pub struct NrlNode {
    pub name: String,
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
    /// `RUST_LOG` of the process.
    rust_log: String,
    process: Option<Watched>,
    channel: Channel,
    /// SIGSTOPped and not yet SIGCONTed.
    frozen: bool,
}

impl NrlNode {
    /// Starts `nrl serve --listen 127.0.0.1:PORT --admin-listen off ARGS...`, its output appended
    /// to `LOG_DIR/NAME.log`. Only these flags configure it, whatever `NRL_*` the test runs under.
    /// Returns at once; see [`wait_serving`](Self::wait_serving).
    pub fn spawn(name: &str, port: u16, args: Vec<String>, log_dir: &Path) -> NrlNode {
        let rust_log = std::env::var("NRL_TEST_NODE_LOG").unwrap_or_else(|_| "info".into());
        Self::spawn_logging(name, port, args, log_dir, &rust_log)
    }

    /// [`spawn`](Self::spawn) with `RUST_LOG=rust_log` (else `NRL_TEST_NODE_LOG`, else `info`).
    pub fn spawn_logging(name: &str, port: u16, args: Vec<String>, log_dir: &Path, rust_log: &str) -> NrlNode {
        let url = format!("http://127.0.0.1:{port}");
        let mut node = NrlNode {
            name: name.to_string(),
            port,
            args,
            log: log_dir.join(format!("{name}.log")),
            rust_log: rust_log.to_string(),
            process: None,
            channel: lazy_channel(&url),
            frozen: false,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let mut command = nrl_command();
        command.env("RUST_LOG", &self.rust_log).args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)]);
        // No admin or FHIR listener unless the node's arguments ask for one: their default ports
        // (9090, 8080) are shared by every process on the host.
        for (flag, off) in [("--admin-listen", "off"), ("--fhir-listen", "off")] {
            if !self.args.iter().any(|a| a == flag) {
                command.args([flag, off]);
            }
        }
        command.args(&self.args);
        let process = Watched::spawn(&command, &self.log);
        let _ = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "---- test harness: started pid {}: nrl serve {} ----", process.pid(), self.args.join(" "))
        });
        self.process = Some(process);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A shared, lazily connected channel to the node (it reconnects after a restart).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Watched::pid)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "---- {} ({}) log tail ----\n{}",
            self.name,
            self.log.display(),
            tail_of_file(&self.log, LOG_TAIL_LINES)
        )
    }

    /// The exit status, if the node has exited (it should not have, unless killed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(Watched::exited)
    }

    /// Whether this node's process holds its listening socket.
    fn listening(&self) -> bool {
        self.pid().is_some_and(|pid| crate::process::listens_on(pid, self.port))
    }

    /// Panics with the log if the node was started and has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} (nrl serve) exited unexpectedly ({status})\n{}", self.name, self.log_tail());
        }
        assert!(self.process.is_some(), "{} is not running (killed and not restarted)", self.name);
    }

    /// Polls grpc.health.v1 until the node says SERVING; panics (with its log) if it exits or is
    /// not serving within `within`. Returns how long it took.
    pub async fn wait_serving(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            self.assert_running();
            let mut health = HealthClient::new(self.channel());
            let check = health.check(HealthCheckRequest { service: String::new() });
            let last = match tokio::time::timeout(Duration::from_secs(2), check).await {
                // SERVING from our own child, not from another suite's process on a port ours lost.
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 && self.listening() => {
                    return started.elapsed()
                }
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    format!("port {} answers, but not from this node's process", self.port)
                }
                Ok(Ok(r)) => format!("health status {:?}", ServingStatus::try_from(r.get_ref().status)),
                Ok(Err(status)) => format!("health check failed: {:?} {}", status.code(), status.message()),
                Err(_) => "health check did not answer within 2 s".into(),
            };
            if started.elapsed() >= within {
                panic!("{} was not SERVING within {within:?}; last: {last}\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (via the watchdog), then waits until `nrl` and its watchdog are gone.
    pub fn kill9(&mut self) {
        let mut process = self.process.take().unwrap_or_else(|| panic!("kill9: {} is not running", self.name));
        self.frozen = false;
        if let Err(error) = process.kill9_and_wait() {
            panic!("kill9 of {}: {error}\n{}", self.name, self.log_tail());
        }
        let pid = process.pid();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{} pid {pid} still exists", self.name);
    }

    /// Starts the node again on the same port with the same flags (killing it first if it runs).
    /// Returns at once; see [`wait_serving`](Self::wait_serving).
    pub fn restart(&mut self) {
        if self.process.is_some() {
            self.kill9();
        }
        self.launch();
    }

    /// SIGSTOP: the process stops answering, but its socket stays open (the kernel still accepts
    /// connections and buffers requests): a node that is slow, not down.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    /// SIGTERM, then waits for the node to exit on its own; returns how long it took and its
    /// status. Panics (with its log) if it is still running after `within`.
    pub async fn terminate(&mut self, within: Duration) -> (Duration, ExitStatus) {
        self.signal("-TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                self.process = None;
                return (started.elapsed(), status);
            }
            if started.elapsed() >= within {
                panic!("{} still running {within:?} after SIGTERM\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let process = self.process.as_ref().unwrap_or_else(|| panic!("signal {signal}: {} is not running", self.name));
        process.signal(signal).unwrap_or_else(|error| panic!("{error}"));
    }
}

impl Drop for NrlNode {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            if self.frozen {
                // SIGKILL works on a stopped process too; this just lets it go quietly.
                let _ = process.signal("-CONT");
            }
            // Dropping it kills it and waits.
        }
    }
}

/// What to start: a national node and one regional node per region.
#[derive(Clone, Debug)]
pub struct FederationPlan {
    /// Region codes, one regional node each (`--node-regions CODE`).
    pub regions: Vec<String>,
    /// `--store` of each regional node, index-aligned with `regions`.
    pub regional_stores: Vec<String>,
    /// `--store` of the national node.
    pub national_store: String,
    /// Flags every node gets (e.g. authentication).
    pub common_args: Vec<String>,
    /// Flags only the national node gets (e.g. `--peer-token-file`).
    pub national_args: Vec<String>,
    /// Flags only the regional nodes get (e.g. `--feed-retention`).
    pub regional_args: Vec<String>,
}

impl FederationPlan {
    /// Every node on the memory store, no authentication.
    pub fn memory(regions: &[&str]) -> Self {
        Self {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            regional_stores: regions.iter().map(|_| "memory".to_string()).collect(),
            national_store: "memory".into(),
            common_args: Vec::new(),
            national_args: Vec::new(),
            regional_args: Vec::new(),
        }
    }
}

/// A national node following regional nodes, all real processes.
pub struct Federation {
    /// Region codes, index-aligned with `regional`.
    pub regions: Vec<String>,
    pub regional: Vec<NrlNode>,
    pub national: NrlNode,
    pub regions_file: PathBuf,
    /// Logs and the region directory; declared last so the nodes are gone before it is removed.
    pub dir: TempDir,
}

impl Federation {
    /// Picks ports, writes the region directory, starts the regional nodes and then the national
    /// one (`--federation national`), and waits until every node is SERVING.
    pub async fn start(plan: FederationPlan) -> Federation {
        assert_eq!(plan.regions.len(), plan.regional_stores.len(), "one store per regional node");
        let dir = TempDir::new("nrl-federation");
        let ports = free_ports(plan.regions.len() + 1);
        let nodes: Vec<(&str, String)> = plan
            .regions
            .iter()
            .zip(&ports)
            .map(|(code, port)| (code.as_str(), format!("http://127.0.0.1:{port}")))
            .collect();
        let regions_file = dir.path().join("regions.json");
        write_regions_file(&regions_file, &nodes);
        let regions_arg = regions_file.to_string_lossy().to_string();
        let mut regional = Vec::new();
        for ((code, store), port) in plan.regions.iter().zip(&plan.regional_stores).zip(&ports) {
            let mut args = vec!["--regions".to_string(), regions_arg.clone(), "--store".into(), store.clone()];
            args.extend(["--node-regions".to_string(), code.clone(), "--shutdown-grace-secs".into(), "1".into()]);
            args.extend(plan.common_args.iter().cloned());
            args.extend(plan.regional_args.iter().cloned());
            regional.push(NrlNode::spawn(&format!("regional-{code}"), *port, args, dir.path()));
        }
        let mut args = vec!["--regions".to_string(), regions_arg, "--store".into(), plan.national_store.clone()];
        args.extend(["--federation".to_string(), "national".into(), "--shutdown-grace-secs".into(), "1".into()]);
        args.extend(plan.common_args.iter().cloned());
        args.extend(plan.national_args.iter().cloned());
        let mut national = NrlNode::spawn("national", ports[plan.regions.len()], args, dir.path());
        for node in &mut regional {
            node.wait_serving(START_LIMIT).await;
        }
        national.wait_serving(START_LIMIT).await;
        Federation { regions: plan.regions, regional, national, regions_file, dir }
    }

    /// The regional node holding `region`.
    pub fn node(&self, region: &str) -> &NrlNode {
        let i = self.position(region);
        &self.regional[i]
    }

    pub fn node_mut(&mut self, region: &str) -> &mut NrlNode {
        let i = self.position(region);
        &mut self.regional[i]
    }

    fn position(&self, region: &str) -> usize {
        self.regions.iter().position(|r| r == region).unwrap_or_else(|| panic!("no regional node for {region}"))
    }

    /// Every node's log tail, for failure messages.
    pub fn log_tails(&self) -> String {
        std::iter::once(&self.national).chain(&self.regional).map(NrlNode::log_tail).collect::<Vec<_>>().join("\n")
    }
}
