//! The test harness of nrl-registry, shared by every test binary in `tests/` and the benchmarks in
//! `loadtest/benches/`: a real registry server on 127.0.0.1:0 with real gRPC clients over a real
//! socket ([`TestServer`]), real `redis-server`s ([`redis`]), real `nrl serve` processes
//! ([`nodes`]), a real Prometheus scraping them ([`prometheus`]), an OTLP trace receiver
//! ([`otlp`]), and the fixtures, credentials, writers and audit checks the suites share, and the
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
pub mod otlp;
pub mod ports;
pub mod privacy;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod writer;

pub use backend::Backend;
/// The HTTP client of the FHIR tests, as the harness builds it (see [`auth::https_client`]).
pub use reqwest;

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
    /// The FHIR listener, when the config turned it on ([`TestServer::start_with_fhir`]).
    pub fhir: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), nrl_registry::server::ServeError>>>,
}

impl TestServer {
    pub async fn start(store: StoreConfig) -> Self {
        let mut config = ServerConfig::for_tests();
        config.store = store;
        Self::start_with(config).await
    }

    /// A server on `store` with the FHIR listener on too (127.0.0.1:0).
    pub async fn start_with_fhir(store: StoreConfig) -> Self {
        let mut config = ServerConfig::for_tests();
        config.store = store;
        config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        Self::start_with(config).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let fhir_bound = config.fhir.listen.map(|_| config.fhir.bound.clone());
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
        let fhir = match fhir_bound {
            Some(bound) => Some(
                tokio::time::timeout(Duration::from_secs(10), bound.wait()).await.expect("the FHIR listener binds"),
            ),
            None => None,
        };
        Self { addr, channel, fhir, stop: Some(stop), task: Some(task) }
    }

    /// `http://127.0.0.1:PORT/FHIR/R4`: the FHIR base url (panics if the FHIR listener is off).
    pub fn fhir_base(&self) -> String {
        self.fhir_base_at("/FHIR/R4")
    }

    /// The FHIR base url under one of the served base paths (`/producer/FHIR/R4`, ...).
    pub fn fhir_base_at(&self, path: &str) -> String {
        let fhir = self.fhir.expect("the FHIR listener is on: start the server with start_with_fhir");
        format!("http://{fhir}{path}")
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
