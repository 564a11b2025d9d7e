//! The FHIR R4 edge: NRL "Futures"-compatible `DocumentReference` over HTTP, beside gRPC and over
//! the same `Registry` (same rules, authorisation, audit and stores).
//!
//! Served under `/FHIR/R4/` and NRLF's own prefixes `/producer/FHIR/R4/` and `/consumer/FHIR/R4/`,
//! so an NRLF client changes only its base URL. Each request passes, outermost first:
//! - request ids: `X-Request-ID` (else `X-Correlation-ID`) echoed when log-safe, else a new one;
//! - admission: the in-flight cap (429 + `Retry-After`), the request deadline (504; 408 for a body
//!   not all sent by it) and the call's store budget, content negotiation (406, 415) and the body
//!   limit (413);
//! - authentication (not for `metadata` and `_status`): the same credentials as gRPC, through the
//!   same `auth::Authenticator`.
//!
//! The listener ([`listener`]) speaks TLS when the gRPC listener does, from the same certificates,
//! and an mTLS client certificate identifies its caller as on gRPC.
//!
//! Modules: [`listener`] (connections, TLS), [`handlers`] (one per interaction),
//! [`document_reference`] (the resource ↔ pointer mapping), [`search`] (parameters and Bundles),
//! [`audit_event`] (the access log), [`capability`] (`/metadata`), [`outcome`] (the one error →
//! HTTP + OperationOutcome map), [`codes`] (systems and urls).

pub mod audit_event;
mod capability;
pub mod codes;
pub mod document_reference;
mod handlers;
mod listener;
pub mod outcome;
pub mod search;

pub use listener::serve;

use crate::auth::{Authenticator, Credentials, END_USER_HEADER, PURPOSE_HEADER};
use crate::metrics::Metrics;
use crate::otel;
use crate::registry::Registry;
use crate::store::budget;
use crate::telemetry::{self, CORRELATION_ID_HEADER, REQUEST_ID_HEADER};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use outcome::{FhirError, SpineCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// The base paths served: FHIR's own, and NRLF's producer and consumer bases.
pub const BASE_PATHS: [&str; 3] = ["/FHIR/R4", "/producer/FHIR/R4", "/consumer/FHIR/R4"];
/// The largest request body taken (a DocumentReference with the most content is a few KB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_FHIR_LISTEN: &str = "127.0.0.1:8080";

/// What the FHIR edge holds: the registry and how to authenticate, and its limits.
#[derive(Clone)]
pub struct FhirApi {
    registry: Registry,
    authenticator: Authenticator,
    /// Published as the CapabilityStatement's date.
    started: DateTime<Utc>,
    limits: FhirLimits,
    in_flight: Arc<Semaphore>,
    /// `https` when the listener speaks TLS.
    scheme: &'static str,
    metrics: Option<Arc<Metrics>>,
    /// The listener's own address, named in links when the request's `Host` will not do.
    local_host: Option<String>,
}

/// The per-request limits of the FHIR listener.
#[derive(Clone, Copy, Debug)]
pub struct FhirLimits {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// What one request may spend on the store (the Redis timeout, or the request timeout).
    pub store_budget: Duration,
    pub max_body_bytes: usize,
}

impl FhirApi {
    pub fn new(registry: Registry, authenticator: Authenticator, limits: FhirLimits, tls: bool) -> Self {
        Self {
            registry,
            authenticator,
            started: Utc::now(),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            scheme: if tls { "https" } else { "http" },
            metrics: None,
            local_host: None,
        }
    }

    /// The listener's own address (`127.0.0.1:8080`), for links when the request's Host is unusable.
    pub fn with_local_address(mut self, address: std::net::SocketAddr) -> Self {
        self.local_host = Some(address.to_string());
        self
    }

    /// Counts every request in `metrics` (`nrl_fhir_requests`, `nrl_fhir_request_duration`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Which interaction a request is, as the metrics label it: one of a fixed set.
fn interaction(method: &Method, path: &str) -> &'static str {
    let rest = BASE_PATHS.iter().filter_map(|base| path.strip_prefix(base)).min_by_key(|rest| rest.len());
    let Some(rest) = rest else { return "other" };
    match (method.as_str(), rest) {
        ("GET", "/DocumentReference") | ("POST", "/DocumentReference/_search") => "search",
        ("POST", "/DocumentReference") => "create",
        ("PUT", "/DocumentReference") => "create-with-id",
        ("GET", "/DocumentReference/_count") => "count",
        ("GET", "/AuditEvent") => "audit-event",
        ("GET", "/metadata") => "capabilities",
        ("GET", "/_status") => "status",
        (method, rest) => match rest.strip_prefix("/DocumentReference/") {
            Some(id) if !id.is_empty() && !id.contains('/') => match method {
                "GET" => "read",
                "PUT" => "update",
                "DELETE" => "delete",
                _ => "other",
            },
            _ => "other",
        },
    }
}

/// The request's FHIR base url (`http://host:port/producer/FHIR/R4`), for links and `Location`.
#[derive(Clone, Debug)]
pub struct Base {
    pub url: String,
}

/// Every route, for every base path.
pub fn router(api: FhirApi) -> Router {
    let mut open = Router::new();
    let mut authenticated = Router::new();
    for base in BASE_PATHS {
        authenticated = authenticated
            .route(
                &format!("{base}/DocumentReference"),
                get(handlers::search_get).post(handlers::create).put(handlers::create_with_client_id),
            )
            .route(&format!("{base}/DocumentReference/_search"), post(handlers::search_post))
            .route(&format!("{base}/DocumentReference/_count"), get(handlers::count))
            .route(
                &format!("{base}/DocumentReference/{{id}}"),
                get(handlers::read).put(handlers::update).delete(handlers::delete),
            )
            .route(&format!("{base}/AuditEvent"), get(handlers::audit_events));
        open = open
            .route(&format!("{base}/metadata"), get(handlers::metadata))
            .route(&format!("{base}/_status"), get(handlers::status));
    }
    let authenticated = authenticated.route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    open.merge(authenticated)
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), admit))
        .layer(middleware::from_fn_with_state(api.clone(), request_ids))
        .with_state(api)
}

/// The request id, echoed with the caller's correlation id (each only when log-safe), and a span
/// for the request. The path is logged only when it cannot hold an NHS number; the query never.
async fn request_ids(State(api): State<FhirApi>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let interaction = interaction(request.method(), request.uri().path());
    let id = telemetry::request_id(request.headers());
    let correlation = request
        .headers()
        .get(CORRELATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| telemetry::is_log_safe(v))
        .map(str::to_string);
    let path = request.uri().path();
    let path = if telemetry::has_digit_run(path) || path.len() > 200 { telemetry::REDACTED } else { path };
    // Any method but the standard ones is `_OTHER`: the caller chooses an extension method's text,
    // which could hold a patient's number; in a log line or an exported span it must not.
    let method = request.method();
    let known = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::HEAD, Method::OPTIONS, Method::PATCH];
    let method = if known.contains(method) { method.as_str() } else { "_OTHER" };
    let span = if otel::enabled() {
        let span = tracing::info_span!("fhir", request_id = %id, method = %method, path = %path,
            caller_org = tracing::field::Empty, otel.name = tracing::field::Empty, otel.kind = tracing::field::Empty);
        let attributes = [("http.request.method", method), ("nrl.fhir.interaction", interaction)];
        otel::server_span(&span, request.headers(), &format!("FHIR {interaction}"), &attributes);
        span
    } else {
        tracing::info_span!("fhir", request_id = %id, method = %method, path = %path, caller_org = tracing::field::Empty)
    };
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    otel::http_status(&span, status);
    let elapsed = started.elapsed();
    if let Some(metrics) = &api.metrics {
        metrics.fhir().answered(interaction, status, elapsed);
    }
    // The access line, as the gRPC edge writes one per call (`nrl_registry::access`): warn for the
    // server's failures, debug otherwise.
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if response.status().is_server_error() {
            tracing::warn!(target: "nrl_registry::access", interaction, http_status = status, duration_ms, "request failed");
        } else {
            tracing::debug!(target: "nrl_registry::access", interaction, http_status = status, duration_ms, "request finished");
        }
    });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    if let Some(value) = correlation.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(CORRELATION_ID_HEADER, value);
    }
    response
}

fn media_type(value: &HeaderValue) -> String {
    value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn accepts_json(request: &Request) -> bool {
    let Some(accept) = request.headers().get(header::ACCEPT) else { return true };
    let Ok(accept) = accept.to_str() else { return false };
    accept.split(',').any(|item| {
        let kind = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(
            kind.as_str(),
            "" | "*/*" | "application/*" | codes::FHIR_JSON | "application/json" | "application/json+fhir"
        )
    })
}

/// The in-flight cap, the deadline and store budget, content negotiation and the body limit; and
/// the request's [`Base`].
async fn admit(State(api): State<FhirApi>, request: Request, next: Next) -> Response {
    let unread_body = carries_body(&request);
    let Ok(_permit) = api.in_flight.clone().try_acquire_owned() else {
        return closing_if(
            unread_body,
            FhirError {
                retry_after: Some(1),
                ..FhirError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    SpineCode::TooManyRequests,
                    "server busy: too many requests in flight; retry in a second",
                )
            }
            .into_response(),
        );
    };
    if !accepts_json(&request) {
        return closing_if(
            unread_body,
            FhirError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                SpineCode::NotAcceptable,
                "only application/fhir+json (or application/json) is served",
            )
            .at("Accept")
            .into_response(),
        );
    }
    // One deadline for the whole request, its body included: a client that stops sending its
    // body must not hold a place in flight for longer than any other request may.
    let timeout = api.limits.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut parts, body) = request.into_parts();
    let limit = api.limits.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let bytes = match receive(body, limit, declared, deadline).await {
        Received::Body(bytes) => bytes,
        Received::TooLarge { drained } => return closing_if(!drained, too_large(limit)),
        Received::Late => {
            let error = FhirError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                SpineCode::Timeout,
                format!("the request body did not arrive within {} ms", timeout.as_millis()),
            );
            return closing_if(true, error.into_response());
        }
        Received::Broken => {
            let error = FhirError::new(
                StatusCode::BAD_REQUEST,
                "structure",
                SpineCode::BadRequest,
                "the body could not be read",
            );
            return closing_if(true, error.into_response());
        }
    };
    if matches!(parts.method, Method::POST | Method::PUT) && !bytes.is_empty() {
        let kind = parts.headers.get(header::CONTENT_TYPE).map(media_type).unwrap_or_default();
        let form = parts.uri.path().ends_with("/_search") && kind == "application/x-www-form-urlencoded";
        if !(form || kind == codes::FHIR_JSON || kind == "application/json") {
            return FhirError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                SpineCode::UnsupportedMediaType,
                "send Content-Type: application/fhir+json",
            )
            .at("Content-Type")
            .into_response();
        }
    }
    let host = base_host(parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()), api.local_host.as_deref());
    let path = parts.uri.path();
    let prefix = BASE_PATHS.iter().filter(|b| path.starts_with(**b)).max_by_key(|b| b.len()).unwrap_or(&BASE_PATHS[0]);
    parts.extensions.insert(Base { url: format!("{}://{host}{prefix}", api.scheme) });
    let request = Request::from_parts(parts, Body::from(bytes));
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let call = budget::within(api.limits.store_budget.min(left), next.run(request));
    match tokio::time::timeout_at(deadline, call).await {
        Ok(response) => response,
        Err(_) => FhirError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            SpineCode::Timeout,
            format!("deadline exceeded: the request took more than {} ms", timeout.as_millis()),
        )
        .into_response(),
    }
}

/// The host the links and `Location` name: the request's `Host`, unless it could carry an NHS
/// number (ten digits in a row, in any format) and is not the listener's own address, or is not a
/// plain host[:port]; then the listener's own address.
fn base_host(requested: Option<&str>, local: Option<&str>) -> String {
    let fallback = || local.unwrap_or("localhost").to_string();
    let Some(host) = requested.map(str::trim) else { return fallback() };
    let plain = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if plain && (Some(host) == local || !telemetry::has_digit_run(host)) {
        host.to_string()
    } else {
        fallback()
    }
}

fn too_large(limit: usize) -> Response {
    FhirError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-costly",
        SpineCode::PayloadTooLarge,
        format!("the body is over the limit of {limit} bytes"),
    )
    .into_response()
}

/// A body over the limit is still read, and dropped, up to this much: the client is most likely
/// still sending it, and one that is answered before it has finished sees its connection reset
/// rather than the 413. Past this (declared, or sent), the answer comes at once and the
/// connection closes.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// What became of a request body.
enum Received {
    Body(Bytes),
    /// Over the limit; `drained` when all of it was read (the connection can take another request).
    TooLarge {
        drained: bool,
    },
    /// Not all there by the request's deadline.
    Late,
    /// The connection failed mid-body.
    Broken,
}

/// Reads a body of at most `limit` bytes by `deadline` (see [`DRAIN_BYTES`] for one over it).
async fn receive(body: Body, limit: usize, declared: Option<u64>, deadline: tokio::time::Instant) -> Received {
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        return Received::TooLarge { drained: false };
    }
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    let mut seen: u64 = 0;
    loop {
        let over = seen > limit as u64;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) if over => return Received::TooLarge { drained: false },
            Err(_) => return Received::Late,
            Ok(None) if over => return Received::TooLarge { drained: true },
            Ok(None) => return Received::Body(bytes.freeze()),
            Ok(Some(Err(_))) => return Received::Broken,
            Ok(Some(Ok(chunk))) => {
                seen += chunk.len() as u64;
                if seen > DRAIN_BYTES {
                    return Received::TooLarge { drained: false };
                }
                if seen <= limit as u64 {
                    bytes.extend_from_slice(&chunk);
                } else if !bytes.is_empty() {
                    bytes = BytesMut::new();
                }
            }
        }
    }
}

/// Whether the request says a body follows (a length above zero, or chunks).
fn carries_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|n| n.trim() != "0")
}

/// An answer given before the request's body was read says `Connection: close`: the server
/// closes such a connection after answering (what is left of the body cannot be told from the
/// next request), and an HTTP/1.1 client not told so would send its next request on it and fail.
fn closing_if(unread_body: bool, mut response: Response) -> Response {
    if unread_body {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The client certificate chain of an mTLS connection (leaf first), as the TLS listener leaves it
/// on each request: only a chain the handshake verified against the client CA.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

/// Establishes the caller, exactly as the gRPC interceptor does, and leaves it for the handler.
async fn authenticate(State(api): State<FhirApi>, mut request: Request, next: Next) -> Response {
    let certificates = request.extensions().get::<PeerCertificates>().cloned();
    let headers = request.headers();
    let header = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    let credentials = Credentials {
        authorization: header("authorization"),
        purpose: header(PURPOSE_HEADER),
        end_user: header(END_USER_HEADER),
        peer_certificates: certificates.as_ref().map(|c| c.0.as_slice()),
    };
    match api.authenticator.authenticate(credentials) {
        Ok(caller) => {
            tracing::Span::current().record("caller_org", telemetry::log_safe(caller.organisation.as_str()));
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let unauthenticated = matches!(error, crate::error::RegistryError::Unauthenticated(_));
            let mut error = FhirError::from(error);
            if !unauthenticated {
                // A malformed x-purpose-of-use or x-end-user: a header, not a resource element.
                error.spine = SpineCode::MissingOrInvalidHeader;
            }
            let mut response = error.into_response();
            if unauthenticated {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

async fn unknown_path() -> Response {
    FhirError::new(
        StatusCode::NOT_FOUND,
        "not-supported",
        SpineCode::NoRecordFound,
        format!(
            "no such endpoint: this server serves DocumentReference and AuditEvent under {}",
            BASE_PATHS.join(", ")
        ),
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        SpineCode::MethodNotAllowed,
        "this endpoint does not take that method (see /metadata)",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_never_echo_a_host_that_could_carry_an_nhs_number() {
        let local = Some("127.0.0.1:8080");
        assert_eq!(base_host(Some("registry.example.nhs.uk:8443"), local), "registry.example.nhs.uk:8443");
        assert_eq!(base_host(Some("127.0.0.1:8080"), local), "127.0.0.1:8080", "the listener's own address");
        for hostile in ["9434765919", "943.476.591.9:80", "94.34.76.59:19", "nhs-943-476-5919.example", "a b", ""] {
            assert_eq!(base_host(Some(hostile), local), "127.0.0.1:8080", "{hostile:?}");
        }
        assert_eq!(base_host(None, None), "localhost");
    }

    #[test]
    fn every_route_has_its_interaction_label_and_nothing_else_leaks_into_one() {
        let cases = [
            (Method::GET, "/FHIR/R4/DocumentReference", "search"),
            (Method::POST, "/consumer/FHIR/R4/DocumentReference/_search", "search"),
            (Method::POST, "/producer/FHIR/R4/DocumentReference", "create"),
            (Method::PUT, "/FHIR/R4/DocumentReference", "create-with-id"),
            (Method::GET, "/FHIR/R4/DocumentReference/_count", "count"),
            (Method::GET, "/FHIR/R4/DocumentReference/abc", "read"),
            (Method::PUT, "/FHIR/R4/DocumentReference/abc", "update"),
            (Method::DELETE, "/FHIR/R4/DocumentReference/abc", "delete"),
            (Method::GET, "/FHIR/R4/AuditEvent", "audit-event"),
            (Method::GET, "/FHIR/R4/metadata", "capabilities"),
            (Method::GET, "/producer/FHIR/R4/_status", "status"),
            (Method::GET, "/FHIR/R4/Patient/9434765919", "other"),
            (Method::PATCH, "/FHIR/R4/DocumentReference/abc", "other"),
            (Method::GET, "/elsewhere", "other"),
        ];
        for (method, path, expected) in cases {
            assert_eq!(interaction(&method, path), expected, "{method} {path}");
            assert!(crate::metrics::fhir::INTERACTIONS.contains(&expected));
        }
    }
}
