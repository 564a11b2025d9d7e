//! Assembles and runs the gRPC server: the registry services, grpc.health.v1, reflection, limits,
//! and graceful shutdown.

use crate::admin::AdminServer;
use crate::api;
use crate::api::fhir::{FhirApi, FhirLimits};
use crate::api::grpc::admission::AdmissionLayer;
use crate::api::grpc::budget::CallBudgetLayer;
use crate::api::grpc::peer_client::GrpcRegionalFeed;
use crate::clock::SystemClock;
use crate::config::{ServerConfig, StoreConfig};
use crate::federation::follower;
use crate::federation::peers::Peers;
use crate::limits::accept::{self, Acceptor};
use crate::limits::connection::Listener;
use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::registry::Registry;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{PointerStore, Stores};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Service names reported by grpc.health.v1 besides the overall "" entry.
pub const SERVICE_NAMES: [&str; 6] = [
    "nrl.v1.PointerRegistry",
    "nrl.v1.RecordLocator",
    "nrl.v1.PatientAdmin",
    "nrl.v1.AuditLog",
    "nrl.v1.ChangeFeed",
    "nrl.v1.FederatedLocator",
];

/// How often the health service re-checks the store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection descriptor: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot listen on the admin address: {0}")]
    Admin(std::io::Error),
    #[error("cannot listen on the FHIR address: {0}")]
    Fhir(std::io::Error),
}

/// Opens the configured store; `metrics` counts what the memory store drops past its retention.
pub async fn open_store(config: &ServerConfig, metrics: &Arc<Metrics>) -> Result<Stores, ServeError> {
    let catalogue = &config.reference.pointer_types;
    match &config.store {
        StoreConfig::Memory => {
            Ok(Stores::of(MemoryStore::with_audit_retention(config.memory_audit_retention, Some(metrics.clone()))))
        }
        StoreConfig::Redis(redis) => {
            let store = RedisStore::connect(redis, Arc::new(catalogue.clone()))
                .await
                .map_err(|e| ServeError::Store(e.to_string()))?;
            Ok(Stores::of(store))
        }
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains: health turns NOT_SERVING, no new
/// connections are taken, and in-flight calls get `config.shutdown_grace` to finish.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let admin = AdminServer::start(&config.admin, config.store.backend_name()).await.map_err(ServeError::Admin)?;
    // Every store call from here on goes through the metering decorators.
    let mut stores = open_store(&config, admin.metrics()).await?.metered(admin.metrics());
    if matches!(config.store, StoreConfig::Redis(_)) {
        // A Redis round trip is worth sharing; the memory store's append is a lock and a push,
        // cheaper than handing the event to a writer task and back.
        stores = stores.group_commit_audit(admin.metrics());
    }
    let store = stores.pointers.clone();
    let backend = store.backend();
    let reference = Arc::new(config.reference.clone());
    let mut registry = Registry::new(store.clone(), stores.audit.clone(), reference.clone(), Arc::new(SystemClock))
        .with_regions(config.node.regions.clone())
        .with_feed(stores.feed.clone());
    if config.node.national_index {
        // The national node in federated mode holds no pointers itself: writes go to the regions.
        registry = registry.with_index(stores.index.clone()).with_regions(Some(Default::default()));
    }

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(watch_store_health(store, reporter.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // A national node in federated mode fans out to, and follows, the regional nodes named in the
    // region directory; any other node answers federated searches from its own store.
    let peers = Arc::new(if config.node.national_index {
        Peers::from_directory(&config.reference.regions, None)
    } else {
        Peers::none()
    });
    let followers = if config.node.national_index {
        tracing::info!(regional_nodes = peers.regions().count(), "national node: following regional change feeds");
        let feed = GrpcRegionalFeed::new(peers.clone(), config.node.peer_token.clone(), reference.clone());
        follower::spawn(&peers, stores.index.clone(), Arc::new(feed), admin.metrics().clone())
    } else {
        Vec::new()
    };
    let (fhir_stop, fhir_task) = start_fhir(&config, &registry, admin.metrics(), admin.connections()).await?;
    let routes = Routes::new(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let routes = api::grpc::add_services(routes, &registry, peers, config.auth.authenticator.clone());

    let local = listener.local_addr().ok();
    tracing::info!(listen = ?local, store = backend, "nrl-registry serving");

    let limits = config.limits;
    let connections = admin.connections().clone();
    let mut acceptor = Acceptor::new(listener, Listener::Grpc, grpc_connection_limits(&config), connections.clone());
    if config.auth.tls.is_none() {
        // Over TLS the refusal could only come after a handshake the refused connection may not have.
        acceptor = acceptor.refusing_with(accept::Refusal::Http2);
    }
    let incoming = acceptor.into_incoming();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = Server::builder()
        // Advertised, so clients queue their own excess; the server itself queues no call.
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .http2_max_header_list_size(limits.max_header_list_bytes);
    if let Some(tls) = &config.auth.tls {
        builder = builder.tls_config(tls.grpc().timeout(limits.connections.handshake_timeout))?;
    }
    // No `Server::timeout`: the admission layer keeps the request timeout and answers
    // DEADLINE_EXCEEDED (tonic's answers CANCELLED).
    let serve = builder
        .layer(admin.rpc_layer(config.request_timeout))
        .layer(AdmissionLayer::new(
            limits.max_in_flight,
            config.request_timeout,
            limits.max_metadata_bytes,
            connections,
        ))
        .layer(CallBudgetLayer::new(store_budget(&config)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drain_rx.await;
        });
    tokio::pin!(serve);

    tokio::select! {
        result = &mut serve => {
            health_task.abort();
            if let Some(task) = &fhir_task {
                task.abort();
            }
            for follower in &followers {
                follower.abort();
            }
            return result.map_err(Into::into);
        }
        () = shutdown => {}
    }
    admin.begin_drain();

    tracing::info!(grace_secs = config.shutdown_grace.as_secs(), "shutting down: draining in-flight calls");
    health_task.abort();
    for follower in &followers {
        follower.abort();
    }
    set_all(&reporter, ServingStatus::NotServing).await;
    let _ = drain_tx.send(());
    let _ = fhir_stop.send(true);
    let fhir_drained = async {
        if let Some(task) = fhir_task {
            let _ = task.await;
        }
    };
    let serve = async { tokio::join!(serve, fhir_drained).0 };
    match tokio::time::timeout(config.shutdown_grace, serve).await {
        Ok(result) => {
            tracing::info!("drained; stopped");
            result.map_err(Into::into)
        }
        Err(_) => {
            tracing::warn!("grace period ran out with calls still in flight; stopping anyway");
            Ok(())
        }
    }
}

/// Binds and serves the FHIR listener, unless it is off. It stops taking requests when the
/// returned sender says so, and finishes those in flight.
async fn start_fhir(
    config: &ServerConfig,
    registry: &Registry,
    metrics: &Arc<Metrics>,
    connections: &Arc<crate::limits::connection::Connections>,
) -> Result<(tokio::sync::watch::Sender<bool>, Option<tokio::task::JoinHandle<()>>), ServeError> {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let Some(address) = config.fhir.listen else { return Ok((stop, None)) };
    let listener = TcpListener::bind(address).await.map_err(ServeError::Fhir)?;
    let bound = listener.local_addr().map_err(ServeError::Fhir)?;
    config.fhir.bound.set(bound);
    let limits = FhirLimits {
        max_in_flight: config.limits.max_in_flight,
        request_timeout: config.request_timeout,
        store_budget: store_budget(config),
        max_body_bytes: api::fhir::MAX_BODY_BYTES,
    };
    let api = FhirApi::new(registry.clone(), config.auth.authenticator.clone(), limits, config.auth.tls.is_some())
        .with_metrics(metrics.clone())
        .with_local_address(bound);
    // The same certificates, and the same client-certificate rule, as the gRPC listener.
    let tls = config.auth.tls.as_ref().map(|tls| tls.http());
    tracing::info!(
        fhir_listen = %bound,
        tls = tls.is_some(),
        "FHIR R4 API serving under /FHIR/R4, /producer/FHIR/R4, /consumer/FHIR/R4"
    );
    let connection_limits = grpc_connection_limits(config);
    let connections = connections.clone();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        api::fhir::serve(listener, api, tls, connection_limits, connections, shutdown).await;
    });
    Ok((stop, Some(task)))
}

/// The gRPC listener's connection limits, its cap fitted to the process's open-file limit.
fn grpc_connection_limits(config: &ServerConfig) -> ConnectionLimits {
    let wanted = config.limits.connections;
    let admin = if config.admin.listen.is_some() { config.admin.connections.max_connections } else { 0 };
    let open_files = accept::open_file_limit();
    let max_connections = accept::fit_to_descriptors(wanted.max_connections, admin, open_files);
    if max_connections < wanted.max_connections {
        tracing::warn!(
            max_connections,
            configured = wanted.max_connections,
            open_file_limit = open_files,
            "gRPC connection cap lowered to fit the open-file limit"
        );
    }
    ConnectionLimits { max_connections, ..wanted }
}

/// What one call may spend on the store: the Redis timeout, or (memory) the request timeout.
fn store_budget(config: &ServerConfig) -> Duration {
    match &config.store {
        StoreConfig::Redis(redis) => redis.timeout,
        StoreConfig::Memory => config.request_timeout,
    }
}

/// Keeps grpc.health.v1 in step with the store: SERVING while it answers, NOT_SERVING while not.
async fn watch_store_health(store: Arc<dyn PointerStore>, reporter: HealthReporter) {
    let mut last = None;
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "store health check failed");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
