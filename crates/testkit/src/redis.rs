//! Real `redis-server` processes for integration tests: a standalone [`RedisServer`] and a
//! [`RedisCluster`], each on free 127.0.0.1 ports with private temp dirs. Nothing here is mocked.
//!
//! Every call blocks (std::process + std::net). From an async test, start servers before awaiting
//! anything timing-sensitive, or wrap the call in `tokio::task::spawn_blocking`.
//!
//! # No orphans
//! Each redis-server runs under the harness's watchdog ([`crate::process::Watched`]), which
//! SIGKILLs it when the test process lets go of it in any way (`kill9`, drop, exit, panic,
//! SIGKILL). So a dead test binary never leaves a redis-server behind.
//!
//! # Readiness
//! A server counts as up when, on its port, `INFO` reports *our* process id and `loading:0` and
//! `PING` answers `PONG`. Checking the pid matters: a port picked as free can be taken by another
//! test's redis before ours binds it, and then ours exits with "Address already in use" while the
//! port still answers. Those start-up races are retried on a fresh port.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::free_ports;
use crate::process::{tail_of_file, TempDir, Watched};

/// Number of hash slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one RESP round trip; MIGRATE below uses a shorter server-side timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Readiness probes give up sooner: whatever holds a port we lost the race for may accept
/// connections and never answer, and the loop must get back to noticing that our redis exited.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const MIGRATE_TIMEOUT_MS: &str = "5000";
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Fresh ports tried before giving up when redis keeps losing the race for its port.
const BIND_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 30;
const INSTALL_HINT: &str = "install it with `apt-get install redis-server redis-tools` (Debian/Ubuntu)";

/// How a standalone server (or every node of a cluster) is configured.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub appendonly: bool,
    /// `"always"`, `"everysec"` or `"no"`.
    pub appendfsync: &'static str,
    /// Passed to redis-server after the harness's own arguments, so they can override them
    /// (redis keeps the last value), e.g. `["--cluster-node-timeout", "1000"]`.
    pub extra_args: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self { appendonly: false, appendfsync: "everysec", extra_args: Vec::new() }
    }
}

// ---------------------------------------------------------------------------------------------
// Standalone server
// ---------------------------------------------------------------------------------------------

/// A private redis-server on a free 127.0.0.1 port with its own data dir (also used for every
/// cluster node). Killed and its dir removed on drop.
pub struct RedisServer {
    port: u16,
    /// Cluster bus port; `Some` only for cluster nodes.
    bus_port: Option<u16>,
    opts: RedisOptions,
    /// Removed on drop, after the process is gone (fields drop after `Drop::drop`).
    dir: TempDir,
    process: Option<Watched>,
}

impl RedisServer {
    /// Starts redis-server with `--save ""` (no RDB snapshots) and blocks until it answers.
    pub fn start(opts: RedisOptions) -> RedisServer {
        Self::start_instance(opts, false)
    }

    fn start_instance(opts: RedisOptions, cluster_node: bool) -> RedisServer {
        // Fail fast, with install instructions, if either tool is missing.
        redis_server_bin();
        redis_cli_bin();
        let dir = TempDir::new(if cluster_node { "nrl-redis-node" } else { "nrl-redis-server" });
        let mut server = RedisServer { port: 0, bus_port: None, opts, dir, process: None };
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A cluster node needs a second port for the cluster bus. We pick it ourselves and pass
            // `--cluster-port` instead of relying on port+10000, which overflows 65535 for ports
            // from the top of the ephemeral range.
            let ports = free_ports(if cluster_node { 2 } else { 1 });
            server.port = ports[0];
            server.bus_port = ports.get(1).copied();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortInUse) if attempt < BIND_ATTEMPTS => continue,
                Err(error) => panic!("{}", server.failure("start", &error)),
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the redis-server itself (not its watchdog), if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Watched::pid)
    }

    /// True from start/restart until kill9 (a crash on its own is not noticed here).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Data dir (AOF files, `nodes.conf`, `redis.log`); removed on drop.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Last lines of the redis log, for panic messages.
    pub fn log_tail(&self) -> String {
        tail_of_file(&self.log_path(), LOG_TAIL_LINES)
    }

    /// SIGKILLs the redis-server (no shutdown, no final fsync) and waits until it has exited.
    /// Panics if it is not running.
    pub fn kill9(&mut self) {
        let mut process =
            self.process.take().unwrap_or_else(|| panic!("kill9: redis-server on port {} is not running", self.port));
        if let Err(error) = process.kill9_and_wait() {
            panic!("kill9 of redis-server on port {}: {error}\n{}", self.port, self.log_tail());
        }
    }

    /// Starts redis again on the same port and data dir, so an AOF (or a cluster node's
    /// `nodes.conf`) is loaded again. Kills the running process first, if any. Returns once the
    /// server answers and has finished loading.
    pub fn restart(&mut self) {
        if self.process.is_some() {
            self.kill9();
        }
        // The port was ours a moment ago, and redis sets SO_REUSEADDR, so "in use" here means some
        // other process grabbed it; a few short retries cover a socket that is still closing.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.launch() {
                Ok(()) => return,
                Err(LaunchError::PortInUse) if attempt < BIND_ATTEMPTS => thread::sleep(Duration::from_millis(200)),
                Err(error) => panic!("{}", self.failure("restart", &error)),
            }
        }
    }

    /// Runs `redis-cli -p PORT args...` and returns its stdout, trimmed. Panics (with redis-cli's
    /// stderr and the server log) if redis-cli fails, including on an error reply.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|error| panic!("{error}\nredis log (port {}):\n{}", self.port, self.log_tail()))
    }

    /// Like [`cli`](Self::cli) but returns failures (connection refused, error replies) as `Err`.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        run_cli(self.port, args)
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--dir",
            &self.dir.path().to_string_lossy(),
            "--logfile",
            &self.log_path().to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            if self.opts.appendonly { "yes" } else { "no" },
            "--appendfsync",
            self.opts.appendfsync,
            // Replicas would otherwise wait 5s for more replicas before their first full sync.
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if let Some(bus_port) = self.bus_port {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus_port.to_string(),
                    // Only matters for automatic failover after kill9_node; the default 15s would
                    // make such tests slow, and much lower risks false failure detection on a busy CI box.
                    "--cluster-node-timeout",
                    "3000",
                ]
                .iter()
                .map(|arg| arg.to_string()),
            );
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    /// Spawns redis under its watchdog and waits until it is ready; on failure it is killed again.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let log = self.log_path();
        // Only log lines written by this launch decide whether the port was taken.
        let log_offset = std::fs::metadata(&log).map(|meta| meta.len()).unwrap_or(0);
        let mut process = Watched::spawn(Command::new(redis_server_bin()).args(self.args()), &log);
        match wait_ready(&mut process, self.port, STARTUP_TIMEOUT) {
            Ok(()) => {
                self.process = Some(process);
                Ok(())
            }
            Err(error) => {
                drop(process);
                let new_log = read_from(&log, log_offset);
                match error {
                    LaunchError::Exited(_) if new_log.contains("Address already in use") => Err(LaunchError::PortInUse),
                    other => Err(other),
                }
            }
        }
    }

    fn failure(&self, what: &str, error: &LaunchError) -> String {
        format!(
            "could not {what} redis-server on 127.0.0.1:{} (dir {}): {error}\n--- redis log tail ---\n{}",
            self.port,
            self.dir.path().display(),
            self.log_tail()
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The process must be gone before the dir is removed, or redis could write into it again.
        drop(self.process.take());
    }
}

#[derive(Debug)]
enum LaunchError {
    /// Redis exited because its port (or cluster bus port) was taken; retry on another.
    PortInUse,
    Exited(ExitStatus),
    /// Not ready in time; holds the last probe error.
    Timeout(String),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::PortInUse => write!(f, "port already in use on every attempt"),
            LaunchError::Exited(status) => write!(f, "redis-server exited during start-up ({status})"),
            LaunchError::Timeout(last) => write!(f, "not ready after {STARTUP_TIMEOUT:?}; last probe: {last}"),
        }
    }
}

fn wait_ready(process: &mut Watched, port: u16, timeout: Duration) -> Result<(), LaunchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return Err(LaunchError::Exited(status));
        }
        let probe = probe(port, process.pid());
        if probe.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::Timeout(probe.err().unwrap_or_default()));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Ok once the redis answering on `port` is the process `pid`, has finished loading, and PINGs.
fn probe(port: u16, pid: u32) -> Result<(), String> {
    let mut conn = RespConnection::connect(port, PROBE_TIMEOUT)?;
    let info = parse_info(&reply_text(conn.command(&["INFO", "server", "persistence"])?)?);
    let answering_pid = info.get("process_id").map(String::as_str).unwrap_or("?");
    if answering_pid != pid.to_string() {
        return Err(format!("port {port} is answered by redis pid {answering_pid}, not ours ({pid})"));
    }
    if info.get("loading").map(String::as_str) != Some("0") {
        return Err("still loading its data".to_string());
    }
    match conn.command(&["PING"])? {
        Reply::Simple(pong) if pong == "PONG" => Ok(()),
        other => Err(format!("PING answered {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of private nodes, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    /// Masters (ordered by their lowest slot at start) first, then replicas. Roles can change
    /// later (failover); this order does not.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes and forms a cluster; returns once every
    /// node reports `cluster_state:ok`, all 16384 slots are covered, all nodes agree on the slot
    /// owners and every replica is in sync with its master.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, RedisOptions::default())
    }

    /// [`start`](Self::start) with options for every node.
    pub fn start_with(masters: usize, replicas_per_master: usize, opts: RedisOptions) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses fewer)");
        let total = masters * (1 + replicas_per_master);
        let nodes = (0..total).map(|_| RedisServer::start_instance(opts.clone(), true)).collect();
        let mut cluster = RedisCluster { nodes };

        let mut create = Command::new(redis_cli_bin());
        create.args(["--cluster", "create"]);
        create.args(cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)));
        create.args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"]);
        match run_with_timeout(create, CLUSTER_TIMEOUT) {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "redis-cli --cluster create failed ({}):\n{}\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                cluster.diagnostics()
            ),
            Err(error) => panic!("redis-cli --cluster create: {error}\n{}", cluster.diagnostics()),
        }
        cluster.wait_for("the new cluster to become healthy", || cluster.check_health());

        // Put masters first, in slot order, so url() and ports() start with them.
        let view = cluster.live_view();
        let first_slot = |port: u16| {
            view.iter()
                .find(|node| node.port == port && node.is_master())
                .and_then(|node| node.slots.iter().map(|&(start, _)| start).min())
        };
        cluster.nodes.sort_by_key(|node| (first_slot(node.port).is_none(), first_slot(node.port)));
        let master_count = cluster.nodes.iter().filter(|node| first_slot(node.port).is_some()).count();
        assert_eq!(
            master_count,
            masters,
            "cluster created with the wrong number of masters\n{}",
            cluster.diagnostics()
        );
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with every node, masters first.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis://127.0.0.1:P` for every node, masters first.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("redis://127.0.0.1:{}", node.port)).collect()
    }

    /// Every node's port, masters first (as of start).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// Ports of the nodes that are masters now, by lowest slot served.
    pub fn master_ports(&self) -> Vec<u16> {
        let view = self.live_view();
        let mut masters: Vec<&NodeEntry> = view
            .iter()
            .filter(|node| node.is_master() && !node.slots.is_empty() && self.is_running(node.port))
            .collect();
        masters.sort_by_key(|node| node.slots.iter().map(|&(start, _)| start).min());
        masters.iter().map(|node| node.port).collect()
    }

    /// `redis-cli -p port args...` against one node; see [`RedisServer::cli`].
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.node(port).cli(args)
    }

    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        self.node(port).try_cli(args)
    }

    /// Port of the master serving `slot`, according to a live node's `CLUSTER NODES`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        assert!(slot < CLUSTER_SLOTS, "slot {slot} out of range");
        slot_owner(&self.live_view(), slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}\n{}", self.diagnostics()))
    }

    /// Moves `slot` and its keys to the master on `to_port`, the way `redis-cli --cluster reshard`
    /// does it, and waits until every live node agrees on the new owner. No-op if it owns it already.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) {
        let view = self.live_view();
        let source_port = self.master_of_slot(slot);
        if source_port == to_port {
            return;
        }
        let entry = |port: u16| {
            view.iter()
                .find(|node| node.port == port && node.is_master())
                .unwrap_or_else(|| panic!("port {port} is not a master\n{}", self.diagnostics()))
        };
        let source_id = entry(source_port).id.as_str();
        let target_id = entry(to_port).id.as_str();
        let slot_arg = slot.to_string();
        let slot_arg = slot_arg.as_str();
        let admin = |port: u16, args: &[&str]| {
            call_ok(port, args).unwrap_or_else(|error| panic!("{args:?} on :{port}: {error}\n{}", self.diagnostics()));
        };

        // Order matters: the target must accept ASK-redirected clients before the source starts
        // sending them there.
        admin(to_port, &["CLUSTER", "SETSLOT", slot_arg, "IMPORTING", source_id]);
        admin(source_port, &["CLUSTER", "SETSLOT", slot_arg, "MIGRATING", target_id]);

        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let keys = match call_ok(source_port, &["CLUSTER", "GETKEYSINSLOT", slot_arg, "100"]) {
                Ok(Reply::Array(Some(keys))) => keys,
                other => panic!("CLUSTER GETKEYSINSLOT {slot} on :{source_port}: {other:?}\n{}", self.diagnostics()),
            };
            if keys.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "keys of slot {slot} still not migrated after {CLUSTER_TIMEOUT:?}");
            let mut migrate: Vec<Vec<u8>> = ["MIGRATE", "127.0.0.1", &to_port.to_string(), "", "0", MIGRATE_TIMEOUT_MS]
                .iter()
                .map(|arg| arg.as_bytes().to_vec())
                .collect();
            migrate.push(b"KEYS".to_vec());
            for key in keys {
                match key {
                    Reply::Bulk(Some(key)) => migrate.push(key),
                    other => panic!("CLUSTER GETKEYSINSLOT returned {other:?}"),
                }
            }
            // NOKEY only means the keys expired in between.
            match call_ok(source_port, &migrate) {
                Ok(Reply::Simple(reply)) if reply == "OK" || reply == "NOKEY" => {}
                other => panic!(
                    "MIGRATE of slot {slot} from :{source_port} to :{to_port}: {other:?}\n{}",
                    self.diagnostics()
                ),
            }
        }

        // Target first (it bumps its config epoch so the change wins), then source, then the other
        // masters so they stop redirecting to the old owner without waiting for gossip.
        let mut assign_on = vec![to_port, source_port];
        assign_on.extend(
            view.iter()
                .filter(|node| node.is_master() && self.is_running(node.port))
                .map(|node| node.port)
                .filter(|port| *port != to_port && *port != source_port),
        );
        for port in assign_on {
            admin(port, &["CLUSTER", "SETSLOT", slot_arg, "NODE", target_id]);
        }

        self.wait_for(&format!("all nodes to agree that slot {slot} moved to :{to_port}"), || {
            self.check_health()?;
            self.check_every_view(|port, view| match slot_owner(view, slot) {
                Some(owner) if owner == to_port => Ok(()),
                owner => Err(format!(":{port} says slot {slot} is served by {owner:?}")),
            })
        });
    }

    /// Manual failover (`CLUSTER FAILOVER` on a replica of `master_port`); waits until the replica
    /// is master, every live node agrees and the cluster is healthy. Returns the new master's port.
    /// Needs `replicas_per_master >= 1`.
    pub fn failover(&self, master_port: u16) -> u16 {
        // A manual failover only starts once the replica has caught up with its master.
        self.wait_for("the cluster to be healthy before failover", || self.check_health());
        let view = self.live_view();
        let master = view
            .iter()
            .find(|node| node.port == master_port && node.is_master())
            .unwrap_or_else(|| panic!("failover: :{master_port} is not a master\n{}", self.diagnostics()));
        let replica_port = view
            .iter()
            .find(|node| node.master_id.as_deref() == Some(master.id.as_str()) && self.is_running(node.port))
            .map(|node| node.port)
            .unwrap_or_else(|| {
                panic!("failover: master :{master_port} has no live replica (start with replicas_per_master >= 1)")
            });
        let slots = master.slots.clone();

        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        'failover: loop {
            call_ok(replica_port, &["CLUSTER", "FAILOVER"])
                .unwrap_or_else(|error| panic!("CLUSTER FAILOVER on :{replica_port}: {error}\n{}", self.diagnostics()));
            // Redis gives up on a manual failover after 5s (CLUSTER_MF_TIMEOUT); ask again if so.
            let attempt_deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < attempt_deadline {
                if role(replica_port).as_deref() == Ok("master") {
                    break 'failover;
                }
                thread::sleep(POLL_INTERVAL);
            }
            assert!(
                Instant::now() < deadline,
                "replica :{replica_port} did not become master within {CLUSTER_TIMEOUT:?}\n{}",
                self.diagnostics()
            );
        }

        self.wait_for(&format!("all nodes to agree that :{replica_port} replaced :{master_port}"), || {
            self.check_health()?;
            self.check_every_view(|port, view| {
                for &(start, _) in &slots {
                    let owner = slot_owner(view, start);
                    if owner != Some(replica_port) {
                        return Err(format!(":{port} says slot {start} is served by {owner:?}"));
                    }
                }
                Ok(())
            })
        });
        replica_port
    }

    /// SIGKILLs one node and waits for it to exit. The rest of the cluster is left to notice.
    pub fn kill9_node(&mut self, port: u16) {
        self.node_mut(port).kill9();
    }

    /// Restarts a node on its port with its `nodes.conf`; returns once it answers. Call
    /// [`wait_healthy`](Self::wait_healthy) to wait for the cluster to take it back.
    pub fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart();
    }

    /// Waits (30s) until every live node reports `cluster_state:ok` with all slots covered, all live
    /// nodes agree on slot owners (all of them alive), no slot is mid-migration, and every live
    /// replica's link to its master is up.
    pub fn wait_healthy(&self) {
        self.wait_for("the cluster to become healthy", || self.check_health());
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {:?})", self.ports()))
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        let ports = self.ports();
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {ports:?})"))
    }

    fn is_running(&self, port: u16) -> bool {
        self.nodes.iter().any(|node| node.port == port && node.is_running())
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|node| node.is_running()).map(|node| node.port).collect()
    }

    /// `CLUSTER NODES` as seen by the first live node that answers.
    fn live_view(&self) -> Vec<NodeEntry> {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match cluster_view(port) {
                Ok(view) => return view,
                Err(error) => errors.push(format!(":{port}: {error}")),
            }
        }
        panic!("no live cluster node answered CLUSTER NODES: {errors:?}\n{}", self.diagnostics());
    }

    fn check_every_view(&self, check: impl Fn(u16, &[NodeEntry]) -> Result<(), String>) -> Result<(), String> {
        for port in self.live_ports() {
            check(port, &cluster_view(port)?)?;
        }
        Ok(())
    }

    fn check_health(&self) -> Result<(), String> {
        let live = self.live_ports();
        if live.is_empty() {
            return Err("no cluster node is running".to_string());
        }
        let mut reference: Option<(u16, Topology)> = None;
        for &port in &live {
            let info = parse_info(&reply_text(call_ok(port, &["CLUSTER", "INFO"])?)?);
            let field = |name: &str| info.get(name).map(String::as_str).unwrap_or("?");
            if field("cluster_state") != "ok" {
                return Err(format!(":{port} has cluster_state:{}", field("cluster_state")));
            }
            for name in ["cluster_slots_assigned", "cluster_slots_ok"] {
                if field(name) != CLUSTER_SLOTS.to_string() {
                    return Err(format!(":{port} has {name}:{}", field(name)));
                }
            }
            if field("cluster_known_nodes") != self.nodes.len().to_string() {
                return Err(format!(":{port} knows {} of {} nodes", field("cluster_known_nodes"), self.nodes.len()));
            }

            let view = cluster_view(port)?;
            let myself = view.iter().find(|node| node.is_myself()).ok_or(format!(":{port}: no `myself` line"))?;
            if myself.migrating {
                return Err(format!(":{port} has a slot migration in progress"));
            }
            let topology = Topology::of(&view, &live);
            if let Some(&(_, _, owner)) = topology.slots.iter().find(|&&(_, _, owner)| !live.contains(&owner)) {
                return Err(format!(":{port} still routes slots to :{owner}, which is not running"));
            }
            match &reference {
                None => reference = Some((port, topology)),
                Some((first, expected)) if *expected != topology => {
                    return Err(format!(":{first} and :{port} disagree on the topology: {expected:?} vs {topology:?}"));
                }
                Some(_) => {}
            }
            if myself.is_replica() {
                let replication = parse_info(&reply_text(call_ok(port, &["INFO", "replication"])?)?);
                if replication.get("master_link_status").map(String::as_str) != Some("up") {
                    return Err(format!(":{port} is a replica whose link to its master is not up"));
                }
            }
        }
        Ok(())
    }

    /// Polls `check` until it passes; panics after 30s with its last error and cluster diagnostics.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            match check() {
                Ok(()) => return,
                Err(error) if Instant::now() >= deadline => {
                    panic!("timed out after {CLUSTER_TIMEOUT:?} waiting for {what}: {error}\n{}", self.diagnostics())
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Each node's own `CLUSTER NODES` view and log tail, for panic messages.
    fn diagnostics(&self) -> String {
        let mut out = String::from("=== cluster diagnostics ===\n");
        for node in &self.nodes {
            let view = if node.is_running() {
                match call_ok(node.port, &["CLUSTER", "NODES"]).and_then(reply_text) {
                    Ok(text) => text,
                    Err(error) => format!("CLUSTER NODES failed: {error}"),
                }
            } else {
                "(not running)".to_string()
            };
            let _ = write!(
                out,
                "--- node :{} ({}) ---\n{}\n--- log tail ---\n{}\n",
                node.port,
                node.dir.path().display(),
                view.trim(),
                tail_of_file(&node.log_path(), 12)
            );
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Cut every node's lifeline first so they all die at once instead of spending the
        // shutdown noticing each other's deaths; each node's own Drop then waits and cleans up.
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_mut() {
                process.cut_lifeline();
            }
        }
        for node in &mut self.nodes {
            drop(node.process.take());
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeEntry {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
    /// A `[slot->-id]` or `[slot-<-id]` entry: a migration or import is in progress (only shown
    /// on the `myself` line).
    migrating: bool,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }
}

fn cluster_view(port: u16) -> Result<Vec<NodeEntry>, String> {
    parse_cluster_nodes(&reply_text(call_ok(port, &["CLUSTER", "NODES"])?)?)
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeEntry>, String> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line: {line:?}"));
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or(0);
        let mut slots = Vec::new();
        let mut migrating = false;
        for token in &fields[8..] {
            if token.starts_with('[') {
                migrating = true;
                continue;
            }
            let (start, end) = token.split_once('-').unwrap_or((token, token));
            match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) => slots.push((start, end)),
                _ => return Err(format!("bad slot range {token:?} in {line:?}")),
            }
        }
        nodes.push(NodeEntry {
            id: fields[0].to_string(),
            port,
            flags: fields[2].split(',').map(str::to_string).collect(),
            master_id: Some(fields[3]).filter(|id| *id != "-").map(str::to_string),
            slots,
            migrating,
        });
    }
    Ok(nodes)
}

/// `(first slot, last slot, master port)` ranges, sorted.
type SlotMap = Vec<(u16, u16, u16)>;

/// What every node must agree on before the cluster counts as settled: who serves which slots,
/// and which live node replicates which (clients that read from replicas rely on the latter).
#[derive(Debug, PartialEq)]
struct Topology {
    slots: SlotMap,
    /// `(port, Some(master port))` for replicas, `(port, None)` for masters; live nodes only.
    roles: Vec<(u16, Option<u16>)>,
}

impl Topology {
    fn of(view: &[NodeEntry], live: &[u16]) -> Topology {
        let port_of = |id: &str| view.iter().find(|node| node.id == id).map(|node| node.port).unwrap_or(0);
        let mut roles: Vec<(u16, Option<u16>)> = view
            .iter()
            .filter(|node| live.contains(&node.port))
            .map(|node| (node.port, node.master_id.as_deref().map(port_of)))
            .collect();
        roles.sort_unstable();
        Topology { slots: slot_map(view), roles }
    }
}

fn slot_map(view: &[NodeEntry]) -> SlotMap {
    let mut map: SlotMap = view
        .iter()
        .filter(|node| node.is_master())
        .flat_map(|node| node.slots.iter().map(move |&(start, end)| (start, end, node.port)))
        .collect();
    map.sort_unstable();
    map
}

fn slot_owner(view: &[NodeEntry], slot: u16) -> Option<u16> {
    slot_map(view).into_iter().find(|&(start, end, _)| (start..=end).contains(&slot)).map(|(_, _, port)| port)
}

fn role(port: u16) -> Result<String, String> {
    let info = parse_info(&reply_text(call_ok(port, &["INFO", "replication"])?)?);
    info.get("role").cloned().ok_or_else(|| format!(":{port}: INFO replication has no role"))
}

// ---------------------------------------------------------------------------------------------
// Key slots
// ---------------------------------------------------------------------------------------------

/// The cluster hash slot of `key`, exactly as Redis computes it: CRC16/XMODEM mod 16384 of the
/// hash tag — the bytes between the first `{` and the first `}` after it — if that is non-empty,
/// else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    key_slot_bytes(key.as_bytes())
}

pub fn key_slot_bytes(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            tag.iter().position(|&b| b == b'}').filter(|&len| len > 0).map(|len| &tag[..len])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % CLUSTER_SLOTS
}

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection (Redis's `crc16`).
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

// ---------------------------------------------------------------------------------------------
// Talking to redis: redis-cli and a minimal RESP client
// ---------------------------------------------------------------------------------------------

fn run_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(redis_cli_bin());
    // -e: exit non-zero on an error reply, which redis-cli otherwise prints with exit status 0.
    command.args(["-e", "-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    let output = run_with_timeout(command, CLI_TIMEOUT)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`redis-cli -p {port} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

/// Runs `command` to completion, killing it after `timeout`.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output, String> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("spawn {description}: {error}"))?;
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
                return Err(format!(
                    "{description} timed out after {timeout:?}; output so far:\n{}\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(error) => return Err(format!("wait for {description}: {error}")),
        }
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buffer = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buffer);
        }
        buffer
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Just enough RESP2 for readiness probes and cluster administration, so those loops neither
/// spawn a process per poll nor depend on redis-cli's output format.
struct RespConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConnection {
    fn connect(port: u16, timeout: Duration) -> Result<RespConnection, String> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))
            .map_err(|error| format!("connect to {address}: {error}"))?;
        let setup = |stream: &TcpStream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.set_nodelay(true)?;
            stream.try_clone()
        };
        let writer = setup(&stream).map_err(|error| format!("configure socket to {address}: {error}"))?;
        Ok(RespConnection { reader: BufReader::new(stream), writer })
    }

    fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&request).map_err(|error| format!("send to redis: {error}"))?;
        read_reply(&mut self.reader)
    }
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(|error| format!("read from redis: {error}"))?;
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(format!("connection closed mid-reply (got {:?})", String::from_utf8_lossy(&line)));
    };
    let (&kind, rest) = line.split_first().ok_or("empty RESP line")?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let length = || text.parse::<i64>().map_err(|_| format!("bad RESP length {text:?}"));
    Ok(match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(length()?),
        b'$' => match usize::try_from(length()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data).map_err(|error| format!("read bulk reply: {error}"))?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match usize::try_from(length()?) {
            Err(_) => Reply::Array(None),
            Ok(count) => Reply::Array(Some((0..count).map(|_| read_reply(reader)).collect::<Result<_, _>>()?)),
        },
        other => return Err(format!("unexpected RESP type byte {:?}", char::from(other))),
    })
}

/// One command on a fresh connection; an error reply becomes `Err`.
fn call_ok<A: AsRef<[u8]>>(port: u16, args: &[A]) -> Result<Reply, String> {
    match RespConnection::connect(port, IO_TIMEOUT)?.command(args)? {
        Reply::Error(error) => Err(format!(":{port} replied {error}")),
        reply => Ok(reply),
    }
}

fn reply_text(reply: Reply) -> Result<String, String> {
    match reply {
        Reply::Simple(text) => Ok(text),
        Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        other => Err(format!("expected text, got {other:?}")),
    }
}

/// `key:value` lines of INFO / CLUSTER INFO.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Logs and binaries
// ---------------------------------------------------------------------------------------------

fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The executable `name` from the directories in `path_var` (a `PATH`-style list); panics with
/// install instructions if there is none.
pub fn find_tool_in(name: &str, path_var: &OsStr) -> PathBuf {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("`{name}` was not found on PATH ({}); {INSTALL_HINT}", path_var.to_string_lossy()))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_tool(name: &str) -> PathBuf {
    find_tool_in(name, &std::env::var_os("PATH").unwrap_or_default())
}

fn redis_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_tool("redis-server"))
}

fn redis_cli_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_tool("redis-cli"))
}
