//! What the server takes on at once (README, Limits), over real sockets against real servers:
//!
//! - `connections`: idle TCP connections, half-open HTTP/2 connections and slowly sent admin
//!   headers are closed at the handshake timeout; idle connections at the idle timeout; a client
//!   that stops answering HTTP/2 PINGs at the keepalive timeout; a full listener makes room by
//!   closing its longest-idle connection, and refuses only when every connection is busy.
//! - `descriptors`: `nrl serve` at a lowered open-file limit, flooded with more connections than it
//!   has descriptors, still answers grpc.health.v1 and `/live` within a second, and does not spin.
//! - `shedding`: past the in-flight cap, calls are refused at once with RESOURCE_EXHAUSTED and a
//!   retry hint while the admitted ones stay fast.
//! - `deadlines`: the server's request timeout reaches the client as DEADLINE_EXCEEDED, and is
//!   counted so in `/metrics`.
//! - `headers`: oversized `authorization` headers get the documented answer at each size.

mod connections;
mod deadlines;
mod descriptors;
mod headers;
mod shedding;
mod writes;

use nrl_registry::config::ServerConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use testkit::nodes::{nrl_bin, START_LIMIT};
use testkit::ports::free_ports;
use testkit::process::{tail_of_file, TempDir, Watched};
use testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// One test at a time in this binary: they flood servers with connections and load, and time
/// what the servers do, so two at once would measure each other.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    ALONE.lock().await
}

/// The client connection preface of HTTP/2 and an empty SETTINGS frame: what a client sends
/// before anything else. A connection that sends this and then nothing is "half-open".
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// `config` with its admin listener on an ephemeral port: the server, and the admin address.
async fn start(mut config: ServerConfig) -> (TestServer, SocketAddr) {
    config.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let bound = config.admin.bound.clone();
    let server = TestServer::start_with(config).await;
    let admin = tokio::time::timeout(Duration::from_secs(5), bound.wait()).await.expect("admin listener bound");
    (server, admin)
}

/// GET over HTTP/1.1 on a new connection, or `None` when the connection is closed without an
/// answer (a listener at its descriptor or connection limit may take a connection and drop it).
async fn try_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// [`try_get`] until it answers, for up to `limit`.
async fn get_within(admin: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(1), try_get(admin, path)).await {
            return answer;
        }
        assert!(Instant::now() < deadline, "no answer to {path} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET over HTTP/1.1 on a new connection: (status, body). Panics if there is no answer in 5 s.
async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await.expect("connect to the admin listener");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("an answer from the admin listener");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    (status, body.to_string())
}

/// The scrape as `series{labels}` → value.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    parse_scrape(&text)
}

/// An OpenMetrics text as `series{labels}` → value.
fn parse_scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
        .collect()
}

/// A series' value; a counter never incremented is absent, which is 0.
fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    series.get(key).copied().unwrap_or(0.0)
}

fn closed(listener: &str, reason: &str) -> String {
    format!(r#"nrl_connections_closed_total{{listener="{listener}",reason="{reason}"}}"#)
}

/// Reads (and drops) what the server sends until it closes the connection; how long that took.
/// Panics if it is still open after `limit`.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let drained = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drained).await.unwrap_or_else(|_| panic!("still open after {limit:?}"));
    started.elapsed()
}

/// A channel that connects on its first call, on a connection of its own.
fn lazy_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// grpc.health.v1 Check on a new connection; how long the answer took (panics past `limit`).
async fn health_on_a_new_connection(addr: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut health = HealthClient::new(lazy_channel(addr));
    let check = health.check(HealthCheckRequest { service: String::new() });
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(_)) => started.elapsed(),
        Ok(Err(status)) => panic!("health answered {status:?}"),
        Err(_) => panic!("no health answer within {limit:?}"),
    }
}

/// `/live` on a new connection; how long the answer took (panics past `limit`).
async fn live_on_a_new_connection(admin: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    let answer = tokio::time::timeout(limit, get(admin, "/live")).await;
    let (status, body) = answer.unwrap_or_else(|_| panic!("no /live answer within {limit:?}"));
    assert_eq!((status, body.as_str()), (200, "live\n"));
    started.elapsed()
}

/// The `q`-quantile of `samples` (sorted in place), nearest rank.
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let rank = ((samples.len() as f64) * q).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// An `nrl serve` child with its admin listener, started through `wrapper` (e.g. `prlimit`).
struct Child {
    process: Watched,
    grpc: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Child {
    async fn start(wrapper: &[&str], args: &[&str]) -> Child {
        let dir = TempDir::new("nrl-limits-fds");
        let log = dir.join("nrl.log");
        let ports = free_ports(2);
        let (grpc, admin) =
            (SocketAddr::from(([127, 0, 0, 1], ports[0])), SocketAddr::from(([127, 0, 0, 1], ports[1])));
        let bin = nrl_bin();
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(&bin);
                command
            }
            None => Command::new(&bin),
        };
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NRL_") {
                command.env_remove(name);
            }
        }
        command
            .env("RUST_LOG", "info")
            .args([
                "serve",
                "--listen",
                &grpc.to_string(),
                "--admin-listen",
                &admin.to_string(),
                "--fhir-listen",
                "off",
            ])
            .args(args);
        let process = Watched::spawn(&command, &log);
        let server = Child { process, grpc, admin, log, _dir: dir };
        let started = Instant::now();
        loop {
            let mut health = HealthClient::new(lazy_channel(grpc));
            let check = health.check(HealthCheckRequest { service: String::new() });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), check).await {
                return server;
            }
            assert!(started.elapsed() < START_LIMIT, "nrl serve did not start\n{}", server.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        tail_of_file(&self.log, 30)
    }

    /// CPU time the process has used (user + system), in clock ticks (1/100 s on Linux).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid())).expect("read /proc/PID/stat");
        // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
        let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Share of one core the process used over `window`.
    async fn cpu_over(&self, window: Duration) -> f64 {
        let before = self.cpu_ticks();
        tokio::time::sleep(window).await;
        (self.cpu_ticks() - before) as f64 / 100.0 / window.as_secs_f64()
    }
}

/// A private `redis-server`, started off the async workers (the harness blocks).
async fn start_redis() -> testkit::redis::RedisServer {
    tokio::task::spawn_blocking(|| testkit::redis::RedisServer::start(testkit::redis::RedisOptions::default()))
        .await
        .expect("start redis-server")
}

/// SIGSTOP (`frozen`) or SIGCONT a redis-server: its sockets stay open, so nothing fails fast.
async fn set_frozen(redis: testkit::redis::RedisServer, frozen: bool) -> testkit::redis::RedisServer {
    tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        if frozen {
            redis.freeze();
        } else {
            redis.thaw();
        }
        redis
    })
    .await
    .expect("signal redis-server")
}

/// The server config for a harness Redis whose every store call may take up to `store_timeout`.
fn on_redis(redis: &testkit::redis::RedisServer, store_timeout: Duration) -> ServerConfig {
    let mut store = nrl_registry::store::redis::RedisConfig::parse(&redis.url()).expect("harness url");
    store.timeout = store_timeout;
    let mut config = ServerConfig::for_tests();
    config.store = nrl_registry::config::StoreConfig::Redis(store);
    config
}

/// A TCP proxy to `upstream` that delivers every byte `delay` late, in both directions, without
/// limiting how much is in flight: a store farther away, not a slower one. Plain threads and
/// blocking sockets, so its timing does not depend on how busy the test's async runtime is.
struct DelayProxy {
    addr: SocketAddr,
}

impl DelayProxy {
    fn start(upstream: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(upstream)) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else { continue };
                delayed_copy(client, server, delay);
                delayed_copy(server_copy, client_copy, delay);
            }
        });
        DelayProxy { addr }
    }
}

/// Copies `from` to `to` on two threads, each chunk written `delay` after it was read. Both end
/// when either side closes (the proxy lives as long as the test process; its sockets do not).
fn delayed_copy(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (sender, receiver) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        while let Ok((due, chunk)) = receiver.recv() {
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if sender.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    });
}
