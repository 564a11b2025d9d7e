//! The test harness of nrl-registry, shared by every test binary in `tests/` and the benchmarks in
//! `loadtest/benches/`: a real registry server on 127.0.0.1:0 with real gRPC clients over a real
//! socket ([`TestServer`]), real `redis-server`s ([`redis`]), real `nrl serve` processes
//! ([`nodes`]), and the fixtures, credentials, writers and audit checks the suites share, and the
//! FHIR R4 model every FHIR response body is read with ([`fhir`]). Nothing is mocked.
//!
//! A crate of its own (dev-only, never published) so that the benchmarks use the same code as the
//! tests instead of including files by path.

pub mod audit_trail;
pub mod auth;
pub mod backend;
pub mod fhir;
pub mod fixtures;
pub mod nodes;
pub mod ports;
pub mod process;
pub mod redis;
pub mod writer;

pub use backend::Backend;

use nrl_registry::config::{ServerConfig, StoreConfig};
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

pub struct TestServer {
    pub addr: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), nrl_registry::server::ServeError>>>,
}

impl TestServer {
    pub async fn start(store: StoreConfig) -> Self {
        let mut config = ServerConfig::for_tests();
        config.store = store;
        Self::start_with(config).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nrl_registry::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to test server");
        Self { addr, channel, stop: Some(stop), task: Some(task) }
    }

    pub fn registry(&self) -> PointerRegistryClient<Channel> {
        PointerRegistryClient::new(self.channel.clone())
    }

    pub fn locator(&self) -> RecordLocatorClient<Channel> {
        RecordLocatorClient::new(self.channel.clone())
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), nrl_registry::server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task panicked"),
            None => Ok(()),
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), nrl_registry::server::ServeError> {
        match self.task.take() {
            Some(task) => task.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `attempt` until it succeeds, every 50 ms; panics after `within` with what was awaited and
/// the last error. Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut attempt: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return (value, started.elapsed()),
            Err(last) if started.elapsed() >= within => panic!("{what}: not within {within:?}; last attempt: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
