//! Logging setup: structured tracing to stderr, as text or JSON (`NRL_LOG_FORMAT=json`), filtered
//! by `RUST_LOG` (default `info`). NHS numbers never reach a log: `NhsNumber`'s Debug hides them,
//! no handler logs request bodies, and a caller-supplied value (a request id, a token's subject or
//! organisation) is logged only when [`is_log_safe`]: no ten digits in a row in any format.
//!
//! [`RequestIdLayer`] gives every gRPC call a request id and a span (`rpc`: method, request_id,
//! caller_org), so every log line of the call carries them; the id goes back in `x-request-id`.
//! With traces on (`otel`), the same span is the call's server span, a child of the caller's.

use crate::metrics::ServedMethods;
use crate::otel::{self, Exporting, OtlpConfig};
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower_layer::Layer;
use tower_service::Service;
use tracing::instrument::Instrumented;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

/// Installs the global subscriber: logs to stderr and, with `otlp`, the OpenTelemetry layer
/// (`otel`), each with its own filter, so `RUST_LOG` sets what is logged, not what is traced.
/// Returns the running export, for the caller to shut down after the server stops. With `otlp`,
/// call it inside the tokio runtime.
pub fn init(json: bool, otlp: Option<&OtlpConfig>) -> Result<Option<Exporting>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: formatting them cost ~5 % of a bare call's instructions
    // when stderr is a log file (loadtest/PROFILE.md, item 2).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let Some(otlp) = otlp else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
        // A second init (tests, embedding) is harmless: keep the first subscriber.
        let _ = if json { builder.json().try_init() } else { builder.try_init() };
        return Ok(None);
    };
    let (traces, exporting) = otel::start(otlp)?;
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = if json { logs.json().boxed() } else { logs.boxed() };
    if tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init().is_ok() {
        exporting.activate();
    }
    Ok(Some(exporting))
}

/// Response (and normalised request) metadata carrying the call's request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Accepted instead of `x-request-id` when that is absent.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// Longest request id taken from a caller; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// What a caller-supplied value that may not be logged is logged as.
pub const REDACTED: &str = "redacted";
/// How many UUIDs to try for a generated id before falling back to one with letters for digits
/// (a UUID's hex has ten digits in a row, across its dashes, in about 1 of 12 ids).
const GENERATE_ATTEMPTS: usize = 16;

/// The call's request id, in the request's extensions for handlers (and audit) to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

/// The caller's `x-request-id` (else `x-correlation-id`) when it is [`log_safe`], else a new id.
/// A caller using the patient as its correlation id, in whatever format, must not put the patient
/// in our logs or have it echoed back in our answers.
pub fn request_id(headers: &HeaderMap) -> Arc<str> {
    [REQUEST_ID_HEADER, CORRELATION_ID_HEADER]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .find(|id| is_log_safe(id))
        .map(Arc::from)
        .unwrap_or_else(generated_id)
}

/// A new request id that is itself log-safe: a UUIDv7 (ordered by time, to the millisecond) when
/// one of a few is, else a random UUIDv4. The v7 ids of one millisecond share their time prefix,
/// so they can all carry the same run of ten digits; v4 ids are random throughout, so a safe one
/// comes within a few tries.
fn generated_id() -> Arc<str> {
    let mut attempts = 0;
    safe_id_from(|| {
        attempts += 1;
        if attempts <= 4 {
            v7_now().to_string()
        } else {
            uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string()
        }
    })
}

/// A UUIDv7 of this millisecond with random bits from the thread's generator. `Uuid::now_v7` asks
/// the kernel for its random bits (a `getrandom` system call on every call); request ids need
/// uniqueness, not a fresh seed each.
fn v7_now() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid()
}

/// The first log-safe id of [`GENERATE_ATTEMPTS`] from `next`; failing that, the last with its
/// digits mapped to letters outside hex, which keeps it unique and takes every digit out. (The
/// ids of one millisecond share their first 12 hex digits, so all of them can fail together.)
fn safe_id_from(mut next: impl FnMut() -> String) -> Arc<str> {
    let mut id = next();
    for _ in 1..GENERATE_ATTEMPTS {
        if is_log_safe(&id) {
            return Arc::from(id);
        }
        id = next();
    }
    if is_log_safe(&id) {
        return Arc::from(id);
    }
    Arc::from(id.chars().map(|c| c.to_digit(10).map_or(c, |d| char::from(b'g' + d as u8))).collect::<String>())
}

/// Is `value` safe to log and echo: 1-64 characters from `A-Z a-z 0-9 . _ : -`, and no ten digits
/// in a row once separators are ignored (`9434765919`, `req-9434765919`, `943.476.5919`,
/// `943-476-5919`, `nhs:943_476_5919`): an NHS number in any format, or anything that could hide one.
pub fn is_log_safe(value: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        && !has_digit_run(value)
}

/// Ten digits in a row, reading across anything that is not a letter (separators, spaces,
/// punctuation): how an NHS number is written in any format.
pub fn has_digit_run(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 10 {
                return true;
            }
        } else if c.is_alphabetic() {
            run = 0;
        }
    }
    false
}

/// A caller-supplied value (a token's subject or organisation, an end user) as a log line may
/// show it: itself when [`is_log_safe`], else [`REDACTED`].
pub fn log_safe(value: &str) -> &str {
    if is_log_safe(value) {
        value
    } else {
        REDACTED
    }
}

/// Wraps the gRPC services: a request id and an `rpc` span per call. Outermost, so everything
/// beneath (auth, metrics, handlers) logs inside the span.
#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    methods: Arc<ServedMethods>,
}

impl RequestIdLayer {
    /// `methods` bounds the span's `method` field to paths the server serves.
    pub fn new(methods: Arc<ServedMethods>) -> Self {
        Self { methods }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner, methods: self.methods.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    methods: Arc<ServedMethods>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = request_id(request.headers());
        // Only log-safe characters get here, so the header value is always valid.
        let header = HeaderValue::from_str(&id).ok();
        if let Some(header) = &header {
            request.headers_mut().insert(REQUEST_ID_HEADER, header.clone());
        }
        let method = self.methods.label(request.uri().path());
        let span = if otel::enabled() {
            // The same span, with room for its name and kind in the trace (`otel::grpc_server_span`).
            let span = tracing::info_span!(
                "rpc",
                method = %method,
                request_id = %id,
                caller_org = tracing::field::Empty,
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
            );
            otel::grpc_server_span(&span, request.headers(), &method);
            span
        } else {
            tracing::info_span!("rpc", method = %method, request_id = %id, caller_org = tracing::field::Empty)
        };
        request.extensions_mut().insert(RequestId(id));
        let inner = span.in_scope(|| self.inner.call(request));
        RequestIdFuture { inner: inner.instrument(span), header }
    }
}

pin_project! {
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        header: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(header)) = (result.as_mut(), this.header.take()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, header);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        headers
    }

    #[test]
    fn a_usable_caller_id_is_kept_else_one_is_generated() {
        assert_eq!(&*request_id(&headers(&[(REQUEST_ID_HEADER, "req-42")])), "req-42");
        assert_eq!(&*request_id(&headers(&[(CORRELATION_ID_HEADER, "corr:7")])), "corr:7");
        assert_eq!(
            &*request_id(&headers(&[(REQUEST_ID_HEADER, "mine"), (CORRELATION_ID_HEADER, "theirs")])),
            "mine",
            "x-request-id wins"
        );
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(&*request_id(&headers(&[(REQUEST_ID_HEADER, &longest)])), longest.as_str());
        for kept in ["01a1fc34-f9d2-7773-ade5-d1aba520e85f", "req:943.476.591", "a_b.c-d:9", "123456789x1"] {
            assert_eq!(&*request_id(&headers(&[(REQUEST_ID_HEADER, kept)])), kept);
        }
        let unusable = [
            "",
            "has space",
            "quote\"",
            "a/b",
            "a+b=c@d",
            long.as_str(),
            "9434765919",
            "943-476-5919",
            "req-9434765919",
            "943.476.5919",
            "9434765919a",
            "nhs:9434765919",
            "943_476_5919",
            "9434765919.1",
            "x94347659190",
            "9-4-3-4-7-6-5-9-1-9",
        ];
        for unusable in unusable {
            let id = request_id(&headers(&[(REQUEST_ID_HEADER, unusable), (CORRELATION_ID_HEADER, unusable)]));
            assert_ne!(&*id, unusable);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{unusable:?} replaced by a UUID, got {id}");
        }
        assert_eq!(
            &*request_id(&headers(&[(REQUEST_ID_HEADER, "req-9434765919"), (CORRELATION_ID_HEADER, "corr-8")])),
            "corr-8",
            "an unusable x-request-id gives way to a usable x-correlation-id"
        );
        assert!(uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).is_ok());
    }

    #[test]
    fn digit_runs_are_read_across_separators_but_not_letters() {
        for run in ["9434765919", "943 476 5919", "943-476-5919", "943.476.5919", "(943) 476/5919", "0123456789012"] {
            assert!(has_digit_run(run), "{run}");
        }
        for none in ["", "943476591", "943476591x9", "uuid-0193-a1b2", "RR8", "qwo-shared-care"] {
            assert!(!has_digit_run(none), "{none}");
        }
        assert_eq!(log_safe("qwo-shared-care"), "qwo-shared-care");
        assert_eq!(log_safe("RR8.X01"), "RR8.X01");
        for unsafe_value in ["943.476.5919", "app 9434765919", "dr.jones@nhs.net", ""] {
            assert_eq!(log_safe(unsafe_value), REDACTED, "{unsafe_value}");
        }
    }

    #[test]
    fn v7_ids_carry_this_millisecond_and_differ() {
        let before = chrono::Utc::now().timestamp_millis();
        let ids: std::collections::HashSet<uuid::Uuid> = (0..10_000).map(|_| v7_now()).collect();
        let after = chrono::Utc::now().timestamp_millis();
        assert_eq!(ids.len(), 10_000, "unique");
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            let (seconds, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
            let millis = i64::try_from(seconds).expect("seconds fit") * 1000 + i64::from(nanos / 1_000_000);
            assert!((before..=after).contains(&millis), "{millis} within [{before}, {after}]");
        }
    }

    #[test]
    fn generated_ids_are_log_safe() {
        // 100,000 ids in a tight loop: many milliseconds whose v7 ids all share a digit run.
        for _ in 0..100_000 {
            let id = generated_id();
            assert!(is_log_safe(&id), "{id}");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "a generated id is a UUID: {id}");
        }
        let mut calls = 0;
        let digits = safe_id_from(|| {
            calls += 1;
            "01935671-2345-7abc-8def-0123456789ab".to_string()
        });
        assert_eq!(calls, GENERATE_ATTEMPTS, "bounded attempts");
        assert_eq!(&*digits, "ghpjlmnh-ijkl-nabc-odef-ghijklmnopab", "digits become letters");
        assert!(is_log_safe(&digits));
    }

    /// Captures what the JSON formatter writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A handler that logs one line.
    struct Handler;

    impl Service<Request<()>> for Handler {
        type Response = Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let seen = request.extensions().get::<RequestId>().map(|id| id.0.to_string());
            tracing::info!(seen = ?seen, "handler ran");
            std::future::ready(Ok(Response::new(())))
        }
    }

    #[test]
    fn json_log_lines_of_a_call_carry_its_method_and_request_id_and_the_answer_returns_it() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        let mut service = RequestIdLayer::new(Arc::new(ServedMethods::from_descriptors())).layer(Handler);
        let request = Request::builder()
            .uri("/nrl.v1.PointerRegistry/GetPointer")
            .header(CORRELATION_ID_HEADER, "corr-json-1")
            .body(())
            .expect("request");
        let response =
            tracing::subscriber::with_default(subscriber, || futures::executor::block_on(service.call(request)))
                .expect("infallible");
        assert_eq!(response.headers().get(REQUEST_ID_HEADER).map(|v| v.as_bytes()), Some(&b"corr-json-1"[..]));
        let logged = String::from_utf8(capture.0.lock().expect("capture").clone()).expect("utf-8");
        let line: serde_json::Value =
            serde_json::from_str(logged.lines().next().expect("one line")).expect("a JSON log line");
        assert_eq!(line["fields"]["message"], "handler ran");
        assert_eq!(line["fields"]["seen"], r#"Some("corr-json-1")"#, "handlers find the id in the extensions");
        assert_eq!(line["span"]["name"], "rpc");
        assert_eq!(line["span"]["method"], "/nrl.v1.PointerRegistry/GetPointer");
        assert_eq!(line["span"]["request_id"], "corr-json-1");
    }
}
