//! A tower layer that counts and times every gRPC call, by method and final status code.
//!
//! The code of a gRPC call is known only at its end: in the response headers for an error answered
//! at once (trailers-only), otherwise in the trailers after the last message. So the layer wraps the
//! response body and settles the call when the body ends or is dropped. The server's own deadline
//! is answered inside this layer (`api::grpc::admission`, DEADLINE_EXCEEDED), so it is counted from
//! the status like any other; a call that still ends without a status (the client cancelled it,
//! or the connection died) is counted as `DEADLINE_EXCEEDED` once its deadline has passed, else
//! `CANCELLED`.
//!
//! The same settlement writes the access log line, inside the request's span (request id, method):
//! at `debug` for answers, at `warn` for server-side failures.

use super::{code_name, Metrics};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

/// Counts and times every call through the services it wraps.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    request_timeout: Option<Duration>,
}

impl RpcMetricsLayer {
    /// `request_timeout` is the server's own per-call timeout, used to tell a timed-out call from a
    /// cancelled one.
    pub fn new(metrics: Arc<Metrics>, request_timeout: Option<Duration>) -> Self {
        Self { metrics, request_timeout }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: self.metrics.clone(), request_timeout: self.request_timeout }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    request_timeout: Option<Duration>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let deadline = match (self.request_timeout, client_timeout(request.headers())) {
            (Some(server), Some(client)) => Some(server.min(client)),
            (server, client) => server.or(client),
        };
        let call = Call::start(self.metrics.clone(), request.uri().path(), deadline);
        MeteredFuture { inner: self.inner.call(request), call: Some(call) }
    }
}

pin_project! {
    /// The inner service's response future; hands the call on to the response body.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(call), Some(code)) = (call.as_mut(), status_in(response.headers())) {
                    call.code = Some(code);
                }
                Ok(response.map(|body| MeteredBody { inner: body, call }))
            }
            Err(error) => {
                if let Some(call) = call.as_mut() {
                    call.code = Some(Code::Unknown);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// The response body; settles the call at its end (or when dropped unfinished).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(call), Some(code)) = (this.call.as_mut(), frame.trailers_ref().and_then(status_in)) {
                    call.code = Some(code);
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.as_mut() {
                    call.code.get_or_insert(Code::Unknown);
                }
            }
            None => {
                // The body ended: a call without a status is UNKNOWN, per the gRPC spec.
                if let Some(mut call) = this.call.take() {
                    call.code.get_or_insert(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call in flight. Dropping it records it, whatever path ended it.
struct Call {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    started: Instant,
    deadline: Option<Duration>,
    code: Option<Code>,
    /// The request's span (opened by `telemetry::RequestIdLayer`), for the access log line.
    span: tracing::Span,
}

impl Call {
    fn start(metrics: Arc<Metrics>, path: &str, deadline: Option<Duration>) -> Self {
        let method = metrics.methods().label(path);
        metrics.rpc_started(&method);
        Self { metrics, method, started: Instant::now(), deadline, code: None, span: tracing::Span::current() }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let code = self.code.unwrap_or(match self.deadline {
            Some(deadline) if elapsed >= deadline => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        });
        self.metrics.rpc_finished(&self.method, code, elapsed);
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        crate::otel::grpc_status(&self.span, code, is_server_failure(code));
        let _entered = self.span.enter();
        if is_server_failure(code) {
            tracing::warn!(target: "nrl_registry::access", grpc_code = code_name(code), duration_ms, "call failed");
        } else {
            tracing::debug!(target: "nrl_registry::access", grpc_code = code_name(code), duration_ms, "call finished");
        }
    }
}

/// Codes that mean the service, not the caller, is at fault. RESOURCE_EXHAUSTED is not among
/// them: it is the answer of a server shedding load, counted in `nrl_calls_shed_total` and warned
/// about at most every few seconds by the admission layer, since a log line per refused call would
/// add work exactly when the server has none to spare.
fn is_server_failure(code: Code) -> bool {
    matches!(code, Code::Unknown | Code::DeadlineExceeded | Code::Internal | Code::Unavailable | Code::DataLoss)
}

fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|value| Code::from_bytes(value.as_bytes()))
}

/// The client's deadline from `grpc-timeout` (`<up to 8 digits><unit>`, unit one of H M S m u n).
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_str(value).expect("header value"));
        client_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_are_read_from_headers_or_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(status_in(&headers), Some(Code::InvalidArgument));
    }
}
