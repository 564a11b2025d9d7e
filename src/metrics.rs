//! Prometheus metrics: every series the service exports, under one [`Metrics`] per server.
//!
//! Each server owns its registry (`prometheus-client`, no global recorder), so two servers in one
//! process, as in the tests, never mix their counts. Every label is bounded by construction: a
//! gRPC method is one the server serves (anything else is `other`), a code is one of the 17 gRPC
//! codes, a store operation and outcome, and an audited operation, come from fixed lists. Nothing from a request reaches a
//! label, so neither can an NHS number.
//!
//! - [`rpc`]: the tower layer that counts and times every call.
//! - `limits` counts the connections it holds, refuses and closes, and the calls it sheds.
//! - The store's metering decorator (`store/metered.rs`) times every store call with these series.

pub mod federation;
pub mod fhir;
pub mod rpc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use prost::Message;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The method label of a request for a path the server does not serve.
pub const OTHER_METHOD: &str = "other";

/// gRPC call latency buckets (seconds): the target is p99 ≤ 5 ms, the ceiling the request timeout.
const RPC_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Store call latency buckets (seconds): a Redis round trip is ~0.1-1 ms; the timeout is 1 s.
const STORE_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    grpc_method: Arc<str>,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

/// The labels of one refused or failed call the audit recorded (`nrl_refusals_total`), each from
/// a fixed list: an operation the audit records, and a gRPC code name. Anything else is `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    operation: &'static str,
    code: &'static str,
}

/// The operations the registry records audit events for: the `operation` label's values.
pub const AUDITED_OPERATIONS: [&str; 15] = [
    "CreatePointer",
    "BatchCreatePointers",
    "GetPointer",
    "UpdatePointer",
    "DeletePointer",
    "SupersedePointer",
    "SearchPointers",
    "CountPointers",
    "LocatePatient",
    "SetRestriction",
    "GetRestriction",
    "GetAccessLog",
    "StreamAuditEvents",
    "FederatedSearch",
    "FederatedSearchStream",
];

impl Refusal {
    /// The labels for an event's operation and outcome, bounded whatever they say.
    pub fn of(operation: &str, code: &str) -> Self {
        let operation = AUDITED_OPERATIONS.iter().find(|known| **known == operation).copied().unwrap_or("other");
        let code = (0..17).map(|n| code_name(Code::from_i32(n))).find(|known| *known == code).unwrap_or("other");
        Self { operation, code }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Events per group-commit batch of the audit writer.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics of one server, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    methods: Arc<ServedMethods>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<MethodLabels>,
    rpc_in_flight: Family<MethodLabels, Gauge>,
    store_calls: Family<StoreCallLabels, Counter>,
    store_duration: HistogramFamily<OperationLabels>,
    store_up: Gauge,
    audit_batch_events: Histogram,
    audit_batch_wait: Histogram,
    audit_events_dropped: Counter,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_max: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerReasonLabels, Counter>,
    connections_closed: Family<ListenerReasonLabels, Counter>,
    accept_errors: Family<ListenerReasonLabels, Counter>,
    calls_shed: Counter,
    grpc_socket_writes: Counter,
    refusals: Family<Refusal, Counter>,
    federation: federation::FederationMetrics,
    fhir: fhir::FhirMetrics,
}

impl Metrics {
    /// Registers every series. `backend` names the store ("memory", "redis", "redis-cluster").
    pub fn new(backend: &'static str) -> Self {
        let mut registry = Registry::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register("nrl_grpc_requests", "gRPC calls finished, by method and status code", rpc_requests.clone());
        let rpc_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS.iter().copied()));
        registry.register_with_unit(
            "nrl_grpc_request_duration",
            "gRPC call latency, from the request headers to the last byte of the response",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let rpc_in_flight = Family::<MethodLabels, Gauge>::default();
        registry.register(
            "nrl_grpc_requests_in_flight",
            "gRPC calls started and not yet finished (open Health/Watch streams count)",
            rpc_in_flight.clone(),
        );
        let store_calls = Family::<StoreCallLabels, Counter>::default();
        registry.register(
            "nrl_store_operations",
            "Store operations by outcome: ok, condition_failed (a lost race, retried or ABORTED), unavailable, corrupt",
            store_calls.clone(),
        );
        let store_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(|| Histogram::new(STORE_BUCKETS.iter().copied()));
        registry.register_with_unit(
            "nrl_store_operation_duration",
            "Store call latency, including Redis round trips",
            Unit::Seconds,
            store_duration.clone(),
        );
        let store_up_family = Family::<BackendLabels, Gauge>::default();
        let store_up = store_up_family.get_or_create_owned(&BackendLabels { backend });
        registry.register(
            "nrl_store_up",
            "1 while the store answers the health ping (every second), else 0: the Redis connection state",
            store_up_family,
        );
        let audit_batch_events = Histogram::new(BATCH_BUCKETS.iter().copied());
        registry.register(
            "nrl_audit_batch_events",
            "Audit events per group-commit batch: concurrent calls' events recorded in one store call",
            audit_batch_events.clone(),
        );
        let audit_batch_wait = Histogram::new(STORE_BUCKETS.iter().copied());
        registry.register_with_unit(
            "nrl_audit_batch_wait",
            "How long a call waited for its audit event to be recorded (queue and store call)",
            Unit::Seconds,
            audit_batch_wait.clone(),
        );
        let audit_events_dropped = Counter::default();
        registry.register(
            "nrl_audit_events_dropped",
            "Audit events the memory store dropped, oldest first, past its retention (always 0 on Redis)",
            audit_events_dropped.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "nrl_connections_open",
            "Connections open, by listener (grpc, admin)",
            connections_open.clone(),
        );
        let connections_max = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "nrl_connections_max",
            "Each listener's connection cap in force: its setting, lowered to fit the open-file limit",
            connections_max.clone(),
        );
        let connections_refused = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "nrl_connections_refused",
            "Connections closed as soon as accepted: the listener was full and none of its connections was idle",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "nrl_connections_closed",
            "Connections the server closed itself: handshake_timeout, idle_timeout, call_timeout, evicted (to make room)",
            connections_closed.clone(),
        );
        let accept_errors = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "nrl_accept_errors",
            "Failed accepts, after each of which the listener pauses: fd_limit (out of file descriptors) or other",
            accept_errors.clone(),
        );
        let calls_shed = Counter::default();
        registry.register(
            "nrl_calls_shed",
            "Calls refused with RESOURCE_EXHAUSTED at once because NRL_MAX_IN_FLIGHT calls were in flight",
            calls_shed.clone(),
        );
        let grpc_socket_writes = Counter::default();
        registry.register(
            "nrl_grpc_socket_writes",
            "Writes to the gRPC connections' sockets; over nrl_grpc_requests_total, how many answers share a system call",
            grpc_socket_writes.clone(),
        );
        let refusals = Family::<Refusal, Counter>::default();
        registry.register(
            "nrl_refusals",
            "Calls refused or failed (any outcome but OK), recorded in the audit export only, by operation and gRPC code",
            refusals.clone(),
        );
        let federation = federation::FederationMetrics::register(&mut registry);
        let fhir = fhir::FhirMetrics::register(&mut registry);
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: option_env!("NRL_BUILD_REVISION").unwrap_or("unknown"),
            })
            .set(1);
        registry.register("nrl_build_info", "Always 1; the labels say which build is running", build);
        Self {
            registry,
            methods: Arc::new(ServedMethods::from_descriptors()),
            rpc_requests,
            rpc_duration,
            rpc_in_flight,
            store_calls,
            store_duration,
            store_up,
            audit_batch_events,
            audit_batch_wait,
            audit_events_dropped,
            connections_open,
            connections_max,
            connections_refused,
            connections_closed,
            accept_errors,
            calls_shed,
            grpc_socket_writes,
            refusals,
            federation,
            fhir,
        }
    }

    /// The OpenMetrics text exposition of every series.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The FHIR listener's requests.
    pub fn fhir(&self) -> &fhir::FhirMetrics {
        &self.fhir
    }

    /// The national node's follow state of each regional feed.
    pub fn federation(&self) -> &federation::FederationMetrics {
        &self.federation
    }

    /// The gRPC methods the server serves, which bound every method label.
    pub fn methods(&self) -> &Arc<ServedMethods> {
        &self.methods
    }

    /// True while the last store health ping succeeded.
    pub fn store_up(&self) -> bool {
        self.store_up.get() == 1
    }

    fn rpc_started(&self, method: &Arc<str>) {
        self.rpc_in_flight.get_or_create(&MethodLabels { grpc_method: method.clone() }).inc();
    }

    fn rpc_finished(&self, method: &Arc<str>, code: Code, elapsed: Duration) {
        let labels = MethodLabels { grpc_method: method.clone() };
        self.rpc_in_flight.get_or_create(&labels).dec();
        self.rpc_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.rpc_requests
            .get_or_create(&RpcLabels { grpc_method: labels.grpc_method, grpc_code: code_name(code) })
            .inc();
    }

    pub fn store_call(&self, operation: &'static str, outcomes: &[&'static str], elapsed: Duration) {
        self.store_duration.get_or_create(&OperationLabels { operation }).observe(elapsed.as_secs_f64());
        for &outcome in outcomes {
            self.store_calls.get_or_create(&StoreCallLabels { operation, outcome }).inc();
        }
    }

    /// One group-commit batch of `events`, and how long each of its callers waited.
    pub fn audit_batch(&self, events: usize, waits: impl Iterator<Item = Duration>) {
        self.audit_batch_events.observe(events as f64);
        for wait in waits {
            self.audit_batch_wait.observe(wait.as_secs_f64());
        }
    }

    /// `n` audit events dropped past the memory store's retention.
    pub fn audit_events_dropped(&self, n: u64) {
        self.audit_events_dropped.inc_by(n);
    }

    /// A refused or failed call whose audit event was recorded.
    pub fn refusal(&self, refusal: &Refusal) {
        self.refusals.get_or_create(refusal).inc();
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn set_connections_open(&self, listener: &'static str, open: usize) {
        self.connections_open.get_or_create(&ListenerLabels { listener }).set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn set_connections_max(&self, listener: &'static str, max: usize) {
        self.connections_max.get_or_create(&ListenerLabels { listener }).set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused.get_or_create(&ListenerReasonLabels { listener, reason }).inc();
    }

    pub fn connection_closed(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed.get_or_create(&ListenerReasonLabels { listener, reason }).inc();
    }

    pub fn accept_error(&self, listener: &'static str, reason: &'static str) {
        self.accept_errors.get_or_create(&ListenerReasonLabels { listener, reason }).inc();
    }

    /// The counter each gRPC connection adds its socket writes to (its coalesced writes).
    pub fn grpc_socket_writes(&self) -> Counter {
        self.grpc_socket_writes.clone()
    }

    pub fn call_shed(&self) {
        self.calls_shed.inc();
    }
}

/// Every `/package.Service/Method` path the server answers: the registry's own descriptor set,
/// grpc.health.v1 and both reflection versions. New RPCs in `proto/` are picked up by themselves.
#[derive(Debug)]
pub struct ServedMethods {
    paths: HashSet<Arc<str>>,
    other: Arc<str>,
}

impl ServedMethods {
    pub fn from_descriptors() -> Self {
        Self { paths: served_paths(), other: Arc::from(OTHER_METHOD) }
    }

    /// The label for a request path: the path itself when the server serves it, else
    /// [`OTHER_METHOD`], so a client cannot mint label values (or log lines) with its paths.
    pub fn label(&self, path: &str) -> Arc<str> {
        self.paths.get(path).cloned().unwrap_or_else(|| self.other.clone())
    }
}

fn served_paths() -> HashSet<Arc<str>> {
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for bytes in sets {
        // These are compiled into the binary; one that does not decode only costs its labels.
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
        for file in &set.file {
            for service in &file.service {
                let qualified = match file.package() {
                    "" => service.name().to_string(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    methods.insert(Arc::from(format!("/{qualified}/{}", method.name())));
                }
            }
        }
    }
    methods
}

/// The canonical name of a gRPC status code, as in the gRPC spec (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests;
