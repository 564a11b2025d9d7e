//! The admin HTTP listener, on its own port (`NRL_ADMIN_LISTEN`, default `127.0.0.1:9090`):
//!
//! - `GET /metrics`: every series of [`crate::metrics`], OpenMetrics text.
//! - `GET /live`: 200 while the process runs. It never looks at the store, so an orchestrator
//!   does not restart the registry because Redis is down.
//! - `GET /ready`: 200 while the store answers the health ping and the server is not draining,
//!   else 503 with the reason.
//!
//! A separate port keeps probes and scrapes from queueing behind API calls and lets the cluster's
//! monitoring reach them without reaching the API. Nothing here carries patient data.
//! [`AdminServer`] also owns the server's [`Metrics`], so it hands out the metered store and the
//! per-call layers that feed them, and the table of open [`Connections`] of both listeners.
//!
//! The listener has its own connection cap (`NRL_ADMIN_MAX_CONNECTIONS`), so a flood of API
//! connections never takes `/live` down with it, and closes connections that send no complete
//! request, sit idle, or take longer over one request than the handshake timeout.

use crate::limits::accept::Acceptor;
use crate::limits::connection::{CallBody, ConnectionKey, Connections, Listener};
use crate::limits::ConnectionLimits;
use crate::metrics::rpc::RpcMetricsLayer;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::telemetry::RequestIdLayer;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_layer::Stack;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Where the admin listener goes. `listen: None` turns it off (metrics are still kept).
#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// Reports the address actually bound, for listening on port 0 (tests).
    pub bound: BoundAddress,
    /// Its connection cap and timeouts.
    pub connections: ConnectionLimits,
}

impl AdminConfig {
    /// Parses `NRL_ADMIN_LISTEN`: an address, or empty / `off` for none.
    pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
        match value.trim() {
            "" | "off" => Ok(None),
            address => address.parse().map(Some).map_err(|e| format!("{e} (expected host:port, or `off`)")),
        }
    }
}

/// The admin listener's bound address, once it is bound. Clones share it.
#[derive(Clone, Default)]
pub struct BoundAddress(Arc<watch::Sender<Option<SocketAddr>>>);

impl BoundAddress {
    /// Waits until the server has bound the admin listener.
    pub async fn wait(&self) -> SocketAddr {
        let mut receiver = self.0.subscribe();
        loop {
            if let Some(address) = *receiver.borrow_and_update() {
                return address;
            }
            // `self` holds the sender, so `changed` cannot fail while we wait.
            let _ = receiver.changed().await;
        }
    }

    pub fn set(&self, address: SocketAddr) {
        self.0.send_replace(Some(address));
    }
}

impl fmt::Debug for BoundAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoundAddress").field(&*self.0.borrow()).finish()
    }
}

/// What `/ready` reads: the store's health (kept by the metered store's ping) and the drain flag.
struct Readiness {
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Readiness {
    fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining: shutting down")
        } else if !self.metrics.store_up() {
            Err("store not answering")
        } else {
            Ok(())
        }
    }
}

/// The admin side of one server: its metrics, its readiness, and the listener serving them. The
/// listener stops when this is dropped.
pub struct AdminServer {
    readiness: Arc<Readiness>,
    connections: Arc<Connections>,
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds the listener (unless off) and serves it. Called before the store is opened, so
    /// `/live` answers and `/ready` says why not while a Redis is still awaited.
    /// `backend` is the store's short name, as `PointerStore::backend` reports it.
    pub async fn start(config: &AdminConfig, backend: &'static str) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::new(backend));
        let connections = Connections::new(metrics.clone());
        let readiness = Arc::new(Readiness { metrics, draining: AtomicBool::new(false) });
        let Some(listen) = config.listen else {
            return Ok(Self { readiness, connections, task: None });
        };
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        config.bound.set(local_addr);
        tracing::info!(admin_listen = %local_addr, "admin endpoints: /metrics /live /ready");
        let acceptor = Acceptor::new(listener, Listener::Admin, config.connections, connections.clone())
            .refusing_with(crate::limits::accept::Refusal::Http1);
        let app = router(readiness.clone(), connections.clone()).into_make_service_with_connect_info::<ConnectionKey>();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(acceptor, app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        Ok(Self { readiness, connections, task: Some(task) })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.readiness.metrics
    }

    /// The open connections of both listeners: the gRPC listener's accept loop and per-call
    /// layer add theirs here, so that either listener can free a descriptor held by the other.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// The per-call layers for the gRPC server: a request id and span (outer), then metrics.
    pub fn rpc_layer(&self, request_timeout: Duration) -> Stack<RpcMetricsLayer, RequestIdLayer> {
        Stack::new(
            RpcMetricsLayer::new(self.metrics().clone(), Some(request_timeout)),
            RequestIdLayer::new(self.metrics().methods().clone()),
        )
    }

    /// From now on `/ready` answers 503, so load balancers stop sending new calls.
    pub fn begin_drain(&self) {
        self.readiness.draining.store(true, Ordering::Release);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn router(readiness: Arc<Readiness>, connections: Arc<Connections>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(readiness)
        .layer(middleware::from_fn_with_state(connections, track_call))
}

/// Marks the request's connection busy until the response is sent, so the idle deadline does not
/// cut it off mid-answer (and the request deadline does, if the client reads too slowly).
async fn track_call(
    State(connections): State<Arc<Connections>>,
    ConnectInfo(key): ConnectInfo<ConnectionKey>,
    request: Request,
    next: Next,
) -> Response {
    let call = connections.call_started(key);
    next.run(request).await.map(|body| Body::new(CallBody::new(body, call)))
}

async fn metrics(State(readiness): State<Arc<Readiness>>) -> Response {
    match readiness.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}
