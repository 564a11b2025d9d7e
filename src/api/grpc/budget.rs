//! The gRPC side of the per-call store budget (`store::budget`): every call gets the store
//! timeout to spend on the store, or the caller's own deadline (`grpc-timeout`) if that is
//! shorter, so a call against a hung Redis answers on time instead of once per store call.

use crate::store::budget;
use http::Request;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline a gRPC request carries, if any.
pub fn deadline_of(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
}

/// Opens a store budget around every call.
#[derive(Clone, Copy, Debug)]
pub struct CallBudgetLayer {
    store: Duration,
}

impl CallBudgetLayer {
    /// `store`: what one call may spend on the store (`NRL_REDIS_TIMEOUT_MS` on Redis).
    pub fn new(store: Duration) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for CallBudgetLayer {
    type Service = CallBudget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallBudget { inner, store: self.store }
    }
}

#[derive(Clone, Debug)]
pub struct CallBudget<S> {
    inner: S,
    store: Duration,
}

impl<S, ReqBody> Service<Request<ReqBody>> for CallBudget<S>
where
    S: Service<Request<ReqBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let spend = deadline_of(request.headers()).map_or(self.store, |deadline| deadline.min(self.store));
        let call = self.inner.call(request);
        Box::pin(budget::within(spend, call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("99999999999999999H"), None, "overflow is no deadline, not a panic");
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
