use super::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn limits(max_connections: usize) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        handshake_timeout: Duration::from_millis(150),
        idle_timeout: Duration::from_millis(300),
        call_timeout: None,
    }
}

/// A listener, and a way to get the server side of one new client connection, admitted or not.
struct Rig {
    listener: TcpListener,
    connections: Arc<Connections>,
    clients: Vec<TcpStream>,
}

impl Rig {
    async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self { listener, connections: Connections::new(Arc::new(Metrics::new("memory"))), clients: Vec::new() }
    }

    async fn connect(&mut self, limits: ConnectionLimits) -> Option<TrackedStream> {
        self.connections.set_cap(Listener::Grpc, limits.max_connections);
        let client = TcpStream::connect(self.listener.local_addr().expect("addr")).await.expect("connect");
        self.clients.push(client);
        let (stream, _) = self.listener.accept().await.expect("accept");
        self.connections.admit(stream, Listener::Grpc, limits).ok()
    }

    fn metrics(&self) -> String {
        self.connections.metrics().render().expect("render")
    }
}

/// How long a read on `stream` waits before the connection is closed under it.
async fn time_to_close(stream: &mut TrackedStream) -> (Duration, io::ErrorKind) {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let result = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time");
    let kind = result.expect_err("the read fails when the deadline passes").kind();
    (started.elapsed(), kind)
}

#[tokio::test]
async fn a_connection_that_never_calls_is_closed_at_the_handshake_timeout() {
    let mut rig = Rig::new().await;
    let mut stream = rig.connect(limits(10)).await.expect("admitted");
    assert_eq!(rig.connections.open(Listener::Grpc), 1);
    let (after, kind) = time_to_close(&mut stream).await;
    assert_eq!(kind, io::ErrorKind::TimedOut);
    assert!(after >= Duration::from_millis(100) && after < Duration::from_secs(2), "{after:?}");
    assert!(
        rig.metrics().contains(r#"nrl_connections_closed_total{listener="grpc",reason="handshake_timeout"} 1"#),
        "{}",
        rig.metrics()
    );
    drop(stream);
    assert_eq!(rig.connections.open(Listener::Grpc), 0, "a dropped stream leaves the table");
}

#[tokio::test]
async fn a_call_in_flight_holds_the_connection_open_and_the_idle_clock_starts_when_it_ends() {
    let mut rig = Rig::new().await;
    let mut stream = rig.connect(limits(10)).await.expect("admitted");
    let call = rig.connections.call_started(stream.key()).expect("our connection");
    let mut buf = [0u8; 16];
    // Well past the handshake and idle timeouts: nothing closes a busy connection.
    let waited = tokio::time::timeout(Duration::from_millis(600), stream.read(&mut buf)).await;
    assert!(waited.is_err(), "still open while the call runs: {waited:?}");
    drop(call);
    let (after, kind) = time_to_close(&mut stream).await;
    assert_eq!(kind, io::ErrorKind::TimedOut);
    assert!(after >= Duration::from_millis(250), "the idle timeout counts from the end of the call: {after:?}");
    assert!(rig.metrics().contains(r#"reason="idle_timeout"} 1"#), "{}", rig.metrics());
}

#[tokio::test]
async fn a_full_listener_closes_its_longest_idle_connection_or_refuses_if_none_is_idle() {
    let mut rig = Rig::new().await;
    let mut first = rig.connect(limits(2)).await.expect("admitted");
    let second = rig.connect(limits(2)).await.expect("admitted");
    let _busy = rig.connections.call_started(second.key()).expect("ours");
    // Full: the third takes the place of the first, the only idle one.
    let third = rig.connect(limits(2)).await.expect("admitted in place of the idle one");
    let (after, kind) = time_to_close(&mut first).await;
    assert_eq!(kind, io::ErrorKind::ConnectionAborted);
    assert!(after < Duration::from_millis(100), "evicted at once: {after:?}");
    drop(first);
    let _also_busy = rig.connections.call_started(third.key()).expect("ours");
    // Full of busy connections: the fourth is refused.
    assert!(rig.connect(limits(2)).await.is_none());
    let metrics = rig.metrics();
    assert!(metrics.contains(r#"nrl_connections_closed_total{listener="grpc",reason="evicted"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"nrl_connections_refused_total{listener="grpc",reason="limit"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"nrl_connections_open{listener="grpc"} 2"#), "{metrics}");
}

#[tokio::test]
async fn out_of_descriptors_any_listener_frees_the_longest_idle_connection() {
    let mut rig = Rig::new().await;
    let mut idle = rig.connect(limits(10)).await.expect("admitted");
    let busy = rig.connect(limits(10)).await.expect("admitted");
    let _call = rig.connections.call_started(busy.key()).expect("ours");
    assert!(rig.connections.out_of_descriptors(Listener::Admin));
    assert_eq!(time_to_close(&mut idle).await.1, io::ErrorKind::ConnectionAborted);
    assert!(!rig.connections.out_of_descriptors(Listener::Admin), "the busy one is never taken, nor one closing");
}

#[tokio::test]
async fn out_of_descriptors_a_listener_lowers_its_cap_below_what_it_holds() {
    let mut rig = Rig::new().await;
    // Long deadlines: only the cap closes anything here.
    let patient = ConnectionLimits { handshake_timeout: Duration::from_secs(30), ..limits(100) };
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(rig.connect(patient).await.expect("admitted"));
    }
    rig.connections.out_of_descriptors(Listener::Grpc);
    assert!(rig.metrics().contains(r#"nrl_connections_max{listener="grpc"} 18"#), "{}", rig.metrics());
    // The next connection is admitted by closing the idle ones over the new cap.
    let client = TcpStream::connect(rig.listener.local_addr().expect("addr")).await.expect("connect");
    let (stream, _) = rig.listener.accept().await.expect("accept");
    let _new = rig.connections.admit(stream, Listener::Grpc, patient).expect("admitted");
    let mut closed = 0;
    for stream in &mut streams {
        let mut buf = [0u8; 1];
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 3, "one evicted for the descriptors, two more to admit the new one under the cap of 18");
    drop(client);
}
