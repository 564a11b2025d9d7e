//! One time budget per call, shared by every store call the call makes.
//!
//! Each store call is bounded on its own (`NRL_REDIS_TIMEOUT_MS`), but a call makes several (a
//! read, then its audit event; a write, then the record of its failure), so a hung Redis used to
//! make a call wait once per store call. The inbound edge opens a budget for each call
//! ([`within`]: the store timeout, or the caller's deadline if shorter); every store call and every
//! wait for the audit writer takes what is left of it ([`bound`], [`remaining`]), so the whole
//! call answers within its budget. Outside a call (the follower, tools) the store's own
//! per-call timeout is the only bound.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// What is left when no budget is open: long enough never to bind before the store's own timeout.
const UNBOUNDED: Duration = Duration::from_secs(3600);

/// Runs `call` with `budget` to spend on the store.
pub async fn within<F: Future>(budget: Duration, call: F) -> F::Output {
    DEADLINE.scope(Instant::now() + budget, call).await
}

/// What is left of the current call's budget (zero once spent).
pub fn remaining() -> Duration {
    DEADLINE.try_with(|deadline| deadline.saturating_duration_since(Instant::now())).unwrap_or(UNBOUNDED)
}

/// A store call's timeout: its own, or what is left of the call's budget if that is less.
pub fn bound(timeout: Duration) -> Duration {
    timeout.min(remaining())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_bounds_every_store_call_inside_it_and_nothing_outside() {
        let own = Duration::from_millis(1000);
        assert_eq!(bound(own), own, "outside a call only the store's own timeout binds");
        within(Duration::from_millis(300), async {
            assert!(bound(own) <= Duration::from_millis(300));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let left = bound(own);
            assert!(left <= Duration::from_millis(200) && left > Duration::ZERO, "{left:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(remaining(), Duration::ZERO, "spent");
        })
        .await;
        assert_eq!(bound(own), own, "the budget ends with the call");
    }
}
