//! The gRPC server's per-call admission, a tower layer in front of every service:
//!
//! 1. The call's connection is marked busy (see [`crate::limits::connection`]) until its response ends.
//! 2. Request metadata over `NRL_MAX_METADATA_BYTES` is answered at once with a status naming its
//!    largest entry, rather than left to the transport's HTTP 431 or GOAWAY.
//! 3. If `NRL_MAX_IN_FLIGHT` calls are already in flight, across all connections, the call is
//!    refused at once with RESOURCE_EXHAUSTED and a retry hint: a server past its capacity answers
//!    the excess in microseconds instead of queueing everyone until all are late. grpc.health.v1
//!    is not counted, so probes keep answering under load.
//! 4. The call gets the server's request timeout (or the client's `grpc-timeout`, if shorter),
//!    counted from here, the moment its headers arrived; past it, the work is dropped and the
//!    answer is DEADLINE_EXCEEDED (tonic's own timeout answers CANCELLED, which clients retry
//!    differently and which `/metrics` would have to guess at).
//!
//! An admitted call holds its place until its handler has produced the response (for a streaming
//! call, until the stream starts), not while a long stream runs.

use super::budget::deadline_of;
use super::status;
use crate::limits::connection::{ActiveCall, CallBody, ConnectionKey, Connections};
use crate::metrics::Metrics;
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// What a refused call is told to wait before trying again, jittered ±50 % so that the callers
/// refused together do not all come back together.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Shedding is warned about at most this often; each refused call is counted in `nrl_calls_shed`.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The service whose calls are never shed: probes must tell "busy" from "down".
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Admission for every call of one gRPC server.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    request_timeout: Duration,
    max_metadata_bytes: usize,
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    /// Milliseconds since `started` of the last shedding warning, plus one (0: never).
    warned: AtomicU64,
    started: Instant,
}

impl AdmissionLayer {
    pub fn new(
        max_in_flight: usize,
        request_timeout: Duration,
        max_metadata_bytes: usize,
        connections: Arc<Connections>,
    ) -> Self {
        let metrics = connections.metrics().clone();
        Self {
            shared: Arc::new(Shared {
                in_flight: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                request_timeout,
                max_metadata_bytes,
                connections,
                metrics,
                warned: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, shared: self.shared.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Admission<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = AdmissionFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let call = ConnectionKey::of_request(request.extensions()).and_then(|key| shared.connections.call_started(key));
        if let Some((largest, size)) = over_limit(request.headers(), shared.max_metadata_bytes) {
            return AdmissionFuture::answered(
                status::metadata_too_large(largest, size, shared.max_metadata_bytes),
                call,
            );
        }
        let permit = if request.uri().path().starts_with(HEALTH_PREFIX) {
            None
        } else {
            match shared.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    shared.shed();
                    return AdmissionFuture::answered(status::overloaded(jittered(RETRY_AFTER)), call);
                }
            }
        };
        let deadline = deadline_of(request.headers()).map_or(shared.request_timeout, |d| d.min(shared.request_timeout));
        AdmissionFuture {
            inner: Some(self.inner.call(request)),
            sleep: Some(tokio::time::sleep(deadline)),
            answer: None,
            permit,
            call,
            deadline,
            body: PhantomData,
        }
    }
}

impl Shared {
    fn shed(&self) {
        self.metrics.call_shed();
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due && self.warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(
                max_in_flight = self.max_in_flight,
                "shedding load: the in-flight cap is reached; refusing calls with RESOURCE_EXHAUSTED"
            );
        }
    }
}

pin_project! {
    /// The call: the handler's future under its deadline, or an answer given at once.
    pub struct AdmissionFuture<F, B> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        answer: Option<tonic::Status>,
        permit: Option<OwnedSemaphorePermit>,
        call: Option<ActiveCall>,
        deadline: Duration,
        body: PhantomData<fn() -> B>,
    }
}

impl<F, B> AdmissionFuture<F, B> {
    fn answered(status: tonic::Status, call: Option<ActiveCall>) -> Self {
        Self {
            inner: None,
            sleep: None,
            answer: Some(status),
            permit: None,
            call,
            deadline: Duration::ZERO,
            body: PhantomData,
        }
    }
}

impl<F, B, E> Future for AdmissionFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<CallBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(answer) = this.answer.take() {
            return Poll::Ready(Ok(answer.into_http::<B>().map(|body| CallBody::new(body, this.call.take()))));
        }
        if let Some(inner) = this.inner.as_mut().as_pin_mut() {
            if let Poll::Ready(result) = inner.poll(cx) {
                this.permit.take();
                let call = this.call.take();
                return Poll::Ready(result.map(|response| response.map(|body| CallBody::new(body, call))));
            }
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                // Dropping the handler's future stops its work; its place goes to the next call.
                this.inner.set(None);
                this.permit.take();
                let answer = status::timed_out(*this.deadline).into_http::<B>();
                return Poll::Ready(Ok(answer.map(|body| CallBody::new(body, this.call.take()))));
            }
        }
        Poll::Pending
    }
}

/// The size of `headers` as HTTP/2 counts a header list (name + value + 32 per entry), and its
/// largest entry's name, if the size is over `limit`.
fn over_limit(headers: &HeaderMap, limit: usize) -> Option<(&str, usize)> {
    let entry = |(name, value): (&http::HeaderName, &http::HeaderValue)| name.as_str().len() + value.len() + 32;
    let size: usize = headers.iter().map(entry).sum();
    if size <= limit {
        return None;
    }
    let largest = headers.iter().max_by_key(|&header| entry(header)).map(|(name, _)| name.as_str())?;
    Some((largest, size))
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_measured_as_http2_does_and_its_largest_entry_named() {
        let mut headers = HeaderMap::new();
        headers.insert("te", http::HeaderValue::from_static("trailers"));
        assert_eq!(over_limit(&headers, 1024), None);
        let token = "x".repeat(2000);
        headers.insert("authorization", http::HeaderValue::from_str(&token).expect("ascii"));
        let expected = (2 + 8 + 32) + (13 + 2000 + 32);
        assert_eq!(over_limit(&headers, 1024), Some(("authorization", expected)));
        assert_eq!(over_limit(&headers, expected), None, "the limit itself is allowed");
    }

    #[test]
    fn retry_hints_are_jittered_around_the_base() {
        for _ in 0..100 {
            let hint = jittered(RETRY_AFTER);
            assert!(hint >= RETRY_AFTER / 2 && hint <= RETRY_AFTER * 3 / 2, "{hint:?}");
        }
    }
}
