//! A real `nrl serve` out of file descriptors: flooded with more connections than its open-file
//! limit allows, it keeps answering grpc.health.v1 and `/live`, and its accept loop pauses instead
//! of spinning.

use super::*;
use std::process::Command;

/// `count` connections to `addr` that send nothing.
async fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        // Refused or reset ones are fine: the server is allowed to turn the excess away.
        if let Ok(stream) = TcpStream::connect(addr).await {
            streams.push(stream);
        }
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_health_and_live_answer_within_a_second() {
    let _alone = alone().await;
    // 256 descriptors; the flood below is 600 + 100 connections that never send a byte, and
    // the handshake timeout is long, so nothing but the connection caps makes room.
    let server = Child::start(&["prlimit", "--nofile=256:256", "--"], &["--handshake-timeout-ms", "60000"]).await;
    let _grpc_flood = idle_connections(server.grpc, 600).await;
    let _admin_flood = idle_connections(server.admin, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let health = health_on_a_new_connection(server.grpc, Duration::from_secs(1)).await;
    let live = live_on_a_new_connection(server.admin, Duration::from_secs(1)).await;
    let cpu = server.cpu_over(Duration::from_secs(2)).await;
    let series = scrape(server.admin).await;
    eprintln!("at 256 fds with 700 idle connections: health {health:?}, /live {live:?}, cpu {:.0} %", cpu * 100.0);
    assert!(
        cpu < 0.25,
        "the server is busy with nothing to do ({:.0} % of a core)\n{}",
        cpu * 100.0,
        server.log_tail()
    );
    // 256 - 64 (the admin listener's cap) - 64 (kept for the process and connections closing).
    assert_eq!(value(&series, r#"nrl_connections_max{listener="grpc"}"#), 128.0, "{series:#?}");
    assert!(value(&series, r#"nrl_connections_open{listener="grpc"}"#) <= 128.0, "{series:#?}");
    assert_eq!(value(&series, r#"nrl_accept_errors_total{listener="grpc",reason="fd_limit"}"#), 0.0, "{series:#?}");
    assert!(value(&series, r#"nrl_connections_open{listener="admin"}"#) <= 64.0, "{series:#?}");
    let turned_away = value(&series, &closed("grpc", "evicted"))
        + value(&series, r#"nrl_connections_refused_total{listener="grpc",reason="limit"}"#);
    assert!(turned_away >= 600.0 - 128.0, "{series:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_with_every_connection_busy_the_accept_loop_pauses_instead_of_spinning() {
    let _alone = alone().await;
    let server = Child::start(&[], &[]).await;
    let pid = server.process.pid().to_string();
    // The limit drops under the running server, so its caps (fitted at startup) no longer fit.
    let lowered = Command::new("prlimit").args(["--pid", &pid, "--nofile=128:128"]).status().expect("run prlimit");
    assert!(lowered.success(), "prlimit --pid {pid}");

    // Connections each with a call in flight, opened one at a time until one gets no answer: every
    // descriptor is then held by a busy connection, which is never closed to make room.
    let mut busy = Vec::new();
    loop {
        assert!(busy.len() < 200, "the server never ran out of descriptors");
        let mut client = HealthClient::new(lazy_channel(server.grpc));
        let watch = async {
            let mut stream = client.watch(HealthCheckRequest { service: String::new() }).await?.into_inner();
            stream.message().await?;
            Ok::<_, tonic::Status>(stream)
        };
        match tokio::time::timeout(Duration::from_secs(1), watch).await {
            Ok(Ok(stream)) => busy.push((client, stream)),
            _ => break,
        }
    }
    // More wait in the listen backlog, which a spinning accept loop would retry without pause.
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(TcpStream::connect(server.grpc).await.expect("connect into the backlog"));
    }
    let cpu = server.cpu_over(Duration::from_secs(2)).await;
    eprintln!("at 128 fds, {} busy connections and more waiting: cpu {:.0} %", busy.len(), cpu * 100.0);
    assert!(cpu < 0.25, "the accept loop spins ({:.0} % of a core)\n{}", cpu * 100.0, server.log_tail());

    // Ending some calls frees their descriptors; the admin listener gets one.
    busy.truncate(busy.len().saturating_sub(40));
    // The server notices the closed connections a moment later; until then a new connection may
    // be taken and dropped, so the scrape is retried (bounded).
    let (status, text) = get_within(server.admin, "/metrics", Duration::from_secs(5)).await;
    assert_eq!(status, 200, "{text}");
    let series = parse_scrape(&text);
    assert!(value(&series, r#"nrl_accept_errors_total{listener="grpc",reason="fd_limit"}"#) >= 1.0, "{series:#?}");
    assert!(value(&series, r#"nrl_connections_max{listener="grpc"}"#) < 128.0, "the cap came down: {series:#?}");
    // Once every call has ended, the listener serves newcomers again.
    busy.clear();
    health_on_a_new_connection(server.grpc, Duration::from_secs(2)).await;
    live_on_a_new_connection(server.admin, Duration::from_secs(2)).await;
}
