//! A standalone `redis-server` ([`RedisServer`]), also the building block of every cluster node:
//! start on a free port, readiness, kill -9 and restart on the same port and data dir.

use super::*;

/// A private redis-server on a free 127.0.0.1 port with its own data dir (also used for every
/// cluster node). Killed and its dir removed on drop.
pub struct RedisServer {
    pub(super) port: u16,
    /// Cluster bus port; `Some` only for cluster nodes.
    bus_port: Option<u16>,
    opts: RedisOptions,
    /// Removed on drop, after the process is gone (fields drop after `Drop::drop`).
    pub(super) dir: TempDir,
    pub(super) process: Option<Watched>,
    /// SIGSTOPped and not yet SIGCONTed.
    frozen: bool,
}

impl RedisServer {
    /// Starts redis-server with `--save ""` (no RDB snapshots) and blocks until it answers.
    pub fn start(opts: RedisOptions) -> RedisServer {
        Self::start_instance(opts, false)
    }

    pub(super) fn start_instance(opts: RedisOptions, cluster_node: bool) -> RedisServer {
        // Fail fast, with install instructions, if either tool is missing.
        redis_server_bin();
        redis_cli_bin();
        let dir = TempDir::new(if cluster_node { "nrl-redis-node" } else { "nrl-redis-server" });
        let mut server = RedisServer { port: 0, bus_port: None, opts, dir, process: None, frozen: false };
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
        self.frozen = false;
        if let Err(error) = process.kill9_and_wait() {
            panic!("kill9 of redis-server on port {}: {error}\n{}", self.port, self.log_tail());
        }
    }

    /// SIGSTOP: redis stops answering but keeps its sockets, so the kernel still accepts
    /// connections and buffers what clients send; it runs those commands once thawed. A hung
    /// store, not a dead one. Panics if it is not running.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    /// True between [`freeze`](Self::freeze) and [`thaw`](Self::thaw) (or a kill).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn signal(&self, signal: &str) {
        let process = self
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("signal {signal}: redis-server on port {} is not running", self.port));
        process.signal(signal).unwrap_or_else(|error| panic!("{error}"));
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
        if let Some(process) = self.process.take() {
            if self.frozen {
                // SIGKILL works on a stopped process too; this just lets it go quietly.
                let _ = process.signal("-CONT");
            }
        }
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
