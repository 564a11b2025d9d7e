//! Connections that do nothing are closed, and a full listener makes room.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::Code;

/// Short, so the tests are quick; long enough that a loaded machine meets it.
const HANDSHAKE: Duration = Duration::from_millis(400);
/// What a close may take beyond its deadline on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

fn config(handshake: Duration, idle: Duration) -> ServerConfig {
    let mut config = ServerConfig::for_tests();
    config.limits.connections.handshake_timeout = handshake;
    config.limits.connections.idle_timeout = idle;
    config.admin.connections = nrl_registry::limits::ConnectionLimits::admin(64, handshake);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_and_slow_header_connections_are_closed_at_the_handshake_timeout() {
    let _alone = alone().await;
    let (server, admin) = start(config(HANDSHAKE, Duration::from_secs(60))).await;
    let before = scrape(admin).await;

    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut half_open = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(H2_PREFACE).await.expect("send the preface");
        half_open.push(stream);
    }
    let mut slow_headers = Vec::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(admin).await.expect("connect");
        stream.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n").await.expect("send half the headers");
        slow_headers.push(stream);
    }
    // One more trickles a header byte every 100 ms: sending something does not buy time.
    let mut trickle = TcpStream::connect(admin).await.expect("connect");
    let trickling = tokio::spawn(async move {
        let started = Instant::now();
        let _ = trickle.write_all(b"GET /live HTTP/1.1\r\n").await;
        while trickle.write_all(b"X").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > HANDSHAKE + SLACK {
                return None;
            }
        }
        Some(started.elapsed())
    });

    // The first connection opened: closed at its handshake timeout, not before.
    time_until_closed(&mut idle[0], HANDSHAKE + SLACK).await;
    let first = opened.elapsed();
    assert!(first >= HANDSHAKE - Duration::from_millis(50), "closed before the handshake timeout: {first:?}");
    // Every other one by its own deadline (they were opened after the first).
    for stream in idle.iter_mut().chain(&mut half_open).chain(&mut slow_headers) {
        time_until_closed(stream, HANDSHAKE + SLACK).await;
    }
    let all = opened.elapsed();
    assert!(all < HANDSHAKE + SLACK, "{all:?}");
    let trickled = trickling.await.expect("trickler").expect("the trickling connection is closed too");
    assert!(trickled < HANDSHAKE + SLACK, "{trickled:?}");

    let after = scrape(admin).await;
    let grpc =
        value(&after, &closed("grpc", "handshake_timeout")) - value(&before, &closed("grpc", "handshake_timeout"));
    let admin_closed =
        value(&after, &closed("admin", "handshake_timeout")) - value(&before, &closed("admin", "handshake_timeout"));
    assert!(grpc >= 200.0, "gRPC closes counted: {grpc}");
    assert!(admin_closed >= 31.0, "admin closes counted: {admin_closed}");
    assert_eq!(value(&after, r#"nrl_connections_open{listener="grpc"}"#), 0.0, "{after:#?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_client_reconnects_by_itself_but_a_long_call_is_never_cut() {
    let _alone = alone().await;
    let idle = Duration::from_millis(500);
    let (server, admin) = start(config(Duration::from_secs(30), idle)).await;
    let channel = lazy_channel(server.addr);
    let mut health = HealthClient::new(channel.clone());
    health.check(HealthCheckRequest { service: String::new() }).await.expect("first call");
    // A stream open on a connection of its own, far longer than the idle timeout.
    let mut watcher = HealthClient::new(lazy_channel(server.addr));
    let mut watch = watcher.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    watch.message().await.expect("first status").expect("a status");

    tokio::time::sleep(idle * 4).await;
    let series = scrape(admin).await;
    assert!(value(&series, &closed("grpc", "idle_timeout")) >= 1.0, "{series:#?}");
    let quiet = tokio::time::timeout(idle * 2, watch.message()).await;
    assert!(quiet.is_err(), "the watch stream is still open, with nothing to say: {quiet:?}");
    // The closed connection is replaced on the next call, without an error.
    health.check(HealthCheckRequest { service: String::new() }).await.expect("a call after the idle close");
    drop(server);
}

/// A TCP proxy for one connection that can stop passing bytes (both ways) while keeping both
/// sockets open: a client that stopped answering. Reports when the server closed its side.
struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    server_closed: tokio::sync::oneshot::Receiver<Instant>,
}

impl Proxy {
    async fn to(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let frozen = Arc::new(AtomicBool::new(false));
        let (closed_tx, server_closed) = tokio::sync::oneshot::channel();
        let freeze = frozen.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.expect("the proxy's one client");
            let upstream = TcpStream::connect(server).await.expect("connect upstream");
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = upstream.into_split();
            let up_freeze = freeze.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    if !up_freeze.load(Ordering::SeqCst) && server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let mut buf = [0u8; 16384];
            while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                if !freeze.load(Ordering::SeqCst) {
                    let _ = client_write.write_all(&buf[..n]).await;
                }
            }
            let _ = closed_tx.send(Instant::now());
        });
        Proxy { addr, frozen, server_closed }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_at_the_keepalive_timeout_even_mid_call() {
    let _alone = alone().await;
    let mut config = config(Duration::from_secs(30), Duration::from_secs(60));
    config.limits.keepalive_interval = Duration::from_millis(300);
    config.limits.keepalive_timeout = Duration::from_millis(300);
    let (server, _admin) = start(config).await;
    let proxy = Proxy::to(server.addr).await;
    let mut watcher = HealthClient::new(lazy_channel(proxy.addr));
    let mut watch = watcher.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    watch.message().await.expect("first status").expect("a status");

    let frozen_at = Instant::now();
    proxy.frozen.store(true, Ordering::SeqCst);
    let closed_at = tokio::time::timeout(Duration::from_secs(5), proxy.server_closed)
        .await
        .expect("the server closed the connection of a client that stopped answering")
        .expect("the proxy reports");
    let after = closed_at - frozen_at;
    assert!(after >= Duration::from_millis(300), "not before an unanswered ping: {after:?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_closes_its_longest_idle_connection_and_refuses_only_when_all_are_busy() {
    let _alone = alone().await;
    let mut config = config(Duration::from_secs(30), Duration::from_secs(60));
    config.limits.connections.max_connections = 20;
    let (server, admin) = start(config).await;

    // Idle connections fill the listener; a real client still gets in, in place of the oldest.
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    health_on_a_new_connection(server.addr, Duration::from_secs(2)).await;
    // An evicted connection leaves the open count when its task has closed it, which on two busy
    // cores can come a little after the newcomer's answer.
    let settled = |series: &HashMap<String, f64>| {
        value(series, &closed("grpc", "evicted")) >= 6.0
            && value(series, r#"nrl_connections_open{listener="grpc"}"#) <= 20.0
    };
    let counted = Instant::now() + Duration::from_secs(5);
    let mut series = scrape(admin).await;
    while !settled(&series) && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(50)).await;
        series = scrape(admin).await;
    }
    assert!(value(&series, &closed("grpc", "evicted")) >= 6.0, "{series:#?}");
    assert!(value(&series, r#"nrl_connections_open{listener="grpc"}"#) <= 20.0, "{series:#?}");
    assert_eq!(value(&series, r#"nrl_connections_max{listener="grpc"}"#), 20.0);

    // Twenty connections, each with a call in flight: none can be closed for a newcomer.
    let mut watches = Vec::new();
    for _ in 0..20 {
        let mut client = HealthClient::new(lazy_channel(server.addr));
        let mut watch = client.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
        watch.message().await.expect("first status").expect("a status");
        watches.push((client, watch));
    }
    let mut refused = HealthClient::new(lazy_channel(server.addr));
    let answer = tokio::time::timeout(Duration::from_secs(5), refused.check(HealthCheckRequest::default()))
        .await
        .expect("refused at once, not left waiting");
    let status = answer.expect_err("no room");
    eprintln!("refused: {status:?}");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let series = scrape(admin).await;
    assert!(value(&series, r#"nrl_connections_refused_total{listener="grpc",reason="limit"}"#) >= 1.0, "{series:#?}");

    // One call ends: its connection is idle again, so the next newcomer gets in.
    let (_client, watch) = watches.pop().expect("a watch");
    drop(watch);
    tokio::time::sleep(Duration::from_millis(100)).await;
    health_on_a_new_connection(server.addr, Duration::from_secs(2)).await;
    drop(server);
}
