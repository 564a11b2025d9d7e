//! OpenTelemetry traces, off unless `--otlp-endpoint` names a collector (README, Observe, Traces).
//!
//! When on, [`start`] builds an OTLP/gRPC exporter behind a batch span processor, and
//! `telemetry::init` adds a `tracing-opentelemetry` layer that turns this crate's spans, never its
//! log events, into OTel spans: the per-call `rpc` span and the FHIR listener's `fhir` span
//! (servers, each a child of the caller's span when the call carries W3C trace context), and this
//! node's calls to other nodes (clients, which carry their context on: [`inject`]).
//!
//! Bounded: a finished span waits in a queue of [`QUEUE_SPANS`]; when the queue is full it is
//! dropped, so a call never waits for the collector. One thread exports, a batch at a time, each
//! export bounded by [`EXPORT_TIMEOUT`] and never retried; shutdown flushes for at most
//! [`SHUTDOWN_FLUSH`]. When off, nothing is built, no thread runs, and each function here returns
//! at its first branch.
//!
//! No patient data leaves: span names are method paths and fixed words, attributes are the spans'
//! log-safe fields (`telemetry::log_safe`) and fixed vocabularies, and inbound trace context that
//! holds a valid NHS number is ignored ([`holds_nhs_number`]), as a request id holding one is.

use crate::domain::NhsNumber;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::trace::{Status as SpanStatus, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, IdGenerator, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// `service.name` unless `--otlp-service-name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "nrl-registry";
/// Finished spans waiting for export; past this, new ones are dropped (the SDK warns once).
pub const QUEUE_SPANS: usize = 2048;
/// Spans per export call; a batch this full is exported at once, without waiting for the delay.
pub const BATCH_SPANS: usize = 512;
/// The longest a finished span waits before its batch is exported.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export call, connection included; a failed export is not retried (its spans are lost).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting to the collector (TCP and TLS), within [`EXPORT_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last spans to be exported.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// The target of the spans this module opens itself (the outbound calls).
const PEER_TARGET: &str = "nrl_registry::peer";

/// Set once the OTel layer is installed: the one check every call makes when traces are off.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Where spans go and how this node is named in them (`resource` attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port` or `https://host:port`.
    pub endpoint: http::Uri,
    /// `service.name`.
    pub service_name: String,
    /// `nrl.node.role`: `national`, `regional` or `central`.
    pub role: &'static str,
    /// `nrl.node.regions`: the regions a regional node holds, comma-separated (omitted otherwise).
    pub regions: String,
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running export: hand it to [`Exporting::shutdown`] when the server has stopped.
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// From now on spans are exported: the layer from [`start`] is installed.
    pub fn activate(&self) {
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// Exports what is queued and stops, within [`SHUTDOWN_FLUSH`]. It blocks: call it outside the
    /// async runtime, while the runtime still runs (the collector connection lives on it).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        match self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
            Ok(()) => tracing::debug!("trace export flushed and stopped"),
            Err(e) => tracing::warn!(error = %e, "trace export did not flush within its bound; spans lost"),
        }
    }
}

/// Builds the exporter, its batch processor and thread, and the layer that feeds them. Call it
/// inside the tokio runtime: the collector channel's worker is spawned on it. Connecting waits
/// for the first export, so an absent collector does not stop the server from starting.
pub fn start<S>(config: &OtlpConfig) -> Result<(impl Layer<S>, Exporting), String>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let mut endpoint = Endpoint::from(config.endpoint.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true);
    if config.endpoint.scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|e| format!("OTLP endpoint TLS: {e}"))?;
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(endpoint.connect_lazy())
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE_SPANS)
        .with_max_export_batch_size(BATCH_SPANS)
        .with_scheduled_delay(BATCH_DELAY)
        .build();
    let mut node =
        vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION")), KeyValue::new("nrl.node.role", config.role)];
    if !config.regions.is_empty() {
        node.push(KeyValue::new("nrl.node.regions", config.regions.clone()));
    }
    let resource = Resource::builder().with_service_name(config.service_name.clone()).with_attributes(node).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_resource(resource)
        .with_id_generator(NeverAnNhsNumber)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("nrl-registry"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        // This crate's spans only: not its log lines (they stay in the logs), not the spans of
        // libraries (h2, hyper, tower), and so never the exporter's own calls.
        .with_filter(filter_fn(|meta| meta.is_span() && meta.target().starts_with("nrl_registry")));
    Ok((layer, Exporting { provider }))
}

/// Names a server span (created with empty `otel.name` and `otel.kind` fields, not yet entered)
/// and makes it a child of the caller's span when `headers` carry usable W3C trace context. A
/// missing, malformed or NHS-number-holding `traceparent` leaves it a new root: never an error.
pub fn server_span(span: &Span, headers: &HeaderMap, name: &str, attributes: &[(&'static str, &str)]) {
    if !enabled() {
        return;
    }
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Err only when the layer is absent or the span disabled or started: a root is what we want then.
    let _ = span.set_parent(parent);
    for (key, value) in attributes {
        span.set_attribute(*key, value.to_string());
    }
}

/// The gRPC server span's semantic attributes, from the method path (`/package.Service/Method`).
pub fn grpc_server_span(span: &Span, headers: &HeaderMap, path: &str) {
    if !enabled() {
        return;
    }
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    server_span(span, headers, name, &[("rpc.system", "grpc"), ("rpc.service", service), ("rpc.method", method)]);
}

/// A client span for a call to another node: a child of the current span (a FederatedSearch's
/// ask of one region), or a root of its own (the follower's feed reads, which no call started).
/// `Span::none()` when traces are off.
pub fn peer_span(service: &'static str, method: &'static str, region: &str, root: bool) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("{service}/{method}");
    if root {
        tracing::info_span!(target: PEER_TARGET, parent: None, "peer", otel.name = %name, otel.kind = "client",
            rpc.system = "grpc", rpc.service = service, rpc.method = method, nrl.region = region)
    } else {
        tracing::info_span!(target: PEER_TARGET, "peer", otel.name = %name, otel.kind = "client",
            rpc.system = "grpc", rpc.service = service, rpc.method = method, nrl.region = region)
    }
}

/// Puts `span`'s trace context in an outbound call's metadata (`traceparent`, `tracestate`).
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut Metadata(metadata));
}

/// Records how a gRPC call ended on its span: the code, and an error status when `failed`
/// (a server marks only its own failures; a client, any code but OK).
pub fn grpc_status(span: &Span, code: tonic::Code, failed: bool) {
    if !enabled() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if failed {
        span.set_status(SpanStatus::error(format!("{code:?}")));
    }
}

/// Records an HTTP answer's status on a server span: an error status for 5xx.
pub fn http_status(span: &Span, status: u16) {
    if !enabled() {
        return;
    }
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(SpanStatus::error(status.to_string()));
    }
}

/// Whether `text` holds ten digits in a row that make a valid NHS number (Modulus 11). Trace and
/// span ids are random hex, so about one in eleven would hold some run of ten digits; the check
/// digit narrows that to the ones that could be a patient, which a caller must not smuggle into
/// our telemetry and onward to other nodes.
pub fn holds_nhs_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(9)).any(|start| {
        let window = &bytes[start..start + 10];
        window.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(window).is_ok_and(|digits| NhsNumber::parse(digits).is_ok())
    })
}

/// Trace and span ids of ours never hold an NHS number: the next node ignores inbound trace
/// context that does ([`holds_nhs_number`]), so such an id (about 1 span id in 170 at random)
/// would start a new trace there and break the federated search's one trace in two.
#[derive(Debug)]
struct NeverAnNhsNumber;

/// Random ids drawn before giving up on avoiding a run (each is refused with p < 0.01).
const ID_ATTEMPTS: usize = 16;

impl NeverAnNhsNumber {
    fn draw<T: std::fmt::Display + PartialEq>(invalid: T, random: impl Fn() -> T) -> T {
        let mut id = random();
        for _ in 1..ID_ATTEMPTS {
            if id != invalid && !holds_nhs_number(&id.to_string()) {
                break;
            }
            id = random();
        }
        id
    }
}

impl IdGenerator for NeverAnNhsNumber {
    fn new_trace_id(&self) -> TraceId {
        Self::draw(TraceId::INVALID, || TraceId::from(rand::random::<u128>()))
    }

    fn new_span_id(&self) -> SpanId {
        Self::draw(SpanId::INVALID, || SpanId::from(rand::random::<u64>()))
    }
}

/// An inbound call's headers as the propagator reads them, without trace context holding an NHS
/// number.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok()).filter(|value| !holds_nhs_number(value))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// An outbound call's metadata as the propagator writes it.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_trace_and_span_ids_never_hold_an_nhs_number() {
        // At random about 1 span id in 170 and 1 trace id in 60 would (the test draws enough
        // that a generator without the check fails it).
        let ids = NeverAnNhsNumber;
        for _ in 0..20_000 {
            let span = ids.new_span_id();
            assert!(span != SpanId::INVALID && !holds_nhs_number(&span.to_string()), "{span}");
            let trace = ids.new_trace_id();
            assert!(trace != TraceId::INVALID && !holds_nhs_number(&trace.to_string()), "{trace}");
        }
    }

    #[test]
    fn only_a_valid_nhs_number_in_a_run_of_digits_counts() {
        for holds in [
            "00-4bf92f3577b34da6a39434765919e473-00f067aa0ba902b7-01",
            "9434765919",
            "vendor=x9434765919y",
            "99434765919",
        ] {
            assert!(holds_nhs_number(holds), "{holds}");
        }
        for not in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "9434765918",
            "943476591",
            "943-476-5919",
            "",
            "nrl=1",
        ] {
            assert!(!holds_nhs_number(not), "{not}");
        }
    }

    #[test]
    fn off_means_no_parent_no_injection_and_no_span() {
        assert!(!enabled(), "no unit test installs the layer");
        let mut metadata = MetadataMap::new();
        inject(&Span::current(), &mut metadata);
        assert!(metadata.is_empty());
        assert!(peer_span("nrl.v1.PointerRegistry", "SearchPointers", "QWO", false).is_none());
    }
}
