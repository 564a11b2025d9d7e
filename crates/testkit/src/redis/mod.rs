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

mod cluster;
mod resp;
mod server;
mod slots;

pub use cluster::RedisCluster;
use resp::{call_ok, parse_info, reply_text, run_cli, run_with_timeout, Reply, RespConnection};
pub use server::RedisServer;
pub use slots::{key_slot, key_slot_bytes, CLUSTER_SLOTS};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one RESP round trip; MIGRATE (cluster.rs) uses a shorter server-side timeout.
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
