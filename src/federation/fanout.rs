//! The fan-out of a federated search, independent of the protocol that carries it: the caller's
//! budget, asking each region in parallel within it, how each region answered, and the overall
//! outcome. The gRPC service (`api::grpc::federated_locator_service`) plans the fan-out (which
//! regions, through `Registry::locate`) and supplies how one region is asked (its own store, or
//! the region's node over `api::grpc::peer_client`).
//!
//! A partial answer is an answer: a region that fails gets an outcome, never an error for the call.

use crate::domain::RegionCode;
use crate::error::RegistryError;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::time::{Duration, Instant};

/// Budget when the caller gives neither `deadline_ms` nor a deadline of its own.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(2000);
/// Kept back from each regional call's budget for merging and answering.
pub const MARGIN: Duration = Duration::from_millis(25);

/// The time by which every region must have answered: the caller's budget less what is kept back
/// to merge, audit and send the answer. A tenth of the budget, at least [`MARGIN`] and at most
/// 250 ms: a fixed 25 ms was too little on a loaded machine, where auditing the search and
/// answering took longer and the partial answer reached the caller after its own deadline.
pub fn regions_deadline(start: std::time::Instant, budget: Duration) -> std::time::Instant {
    let kept = (budget / 10).clamp(MARGIN, Duration::from_millis(250));
    start + budget.saturating_sub(kept)
}

/// The caller's budget: `deadline_ms` when given, else the call's own deadline, else the default.
pub fn budget(deadline_ms: u32, call_deadline: Option<Duration>) -> Duration {
    if deadline_ms > 0 {
        return Duration::from_millis(u64::from(deadline_ms));
    }
    call_deadline.unwrap_or(DEFAULT_BUDGET)
}

/// How one region answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionOutcome {
    Ok,
    /// The region holds nothing for the patient (or nothing the caller may see): not an error.
    NoMatch,
    Timeout,
    Unavailable,
    PermissionDenied,
    Error,
}

/// How the whole federated search went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Overall {
    Success,
    Partial,
    Failure,
}

/// One region's answer: its pointers (in the carrying protocol's form) or why there are none.
#[derive(Clone, Debug)]
pub struct RegionAnswer<P> {
    pub region: RegionCode,
    pub outcome: RegionOutcome,
    pub pointers: Vec<P>,
    pub message: String,
    pub latency: Duration,
}

impl<P> RegionAnswer<P> {
    /// A region asked for that holds nothing for the patient.
    pub fn no_match(region: RegionCode) -> Self {
        Self {
            region,
            outcome: RegionOutcome::NoMatch,
            pointers: Vec::new(),
            message: String::new(),
            latency: Duration::ZERO,
        }
    }
}

/// The outcome a failed regional call counts as.
pub fn outcome_of(error: &RegistryError) -> RegionOutcome {
    match error {
        RegistryError::DeadlineExceeded(_) => RegionOutcome::Timeout,
        RegistryError::Unavailable(_) => RegionOutcome::Unavailable,
        RegistryError::PermissionDenied(_) | RegistryError::Unauthenticated(_) => RegionOutcome::PermissionDenied,
        _ => RegionOutcome::Error,
    }
}

/// Asks one region and times it.
pub async fn ask<P, Fut>(region: RegionCode, call: Fut) -> RegionAnswer<P>
where
    Fut: Future<Output = Result<Vec<P>, RegistryError>>,
{
    let started = Instant::now();
    let (outcome, pointers, message) = match call.await {
        Ok(pointers) if pointers.is_empty() => (RegionOutcome::NoMatch, pointers, String::new()),
        Ok(pointers) => (RegionOutcome::Ok, pointers, String::new()),
        Err(error) => (outcome_of(&error), Vec::new(), error.message()),
    };
    RegionAnswer { region, outcome, pointers, message, latency: started.elapsed() }
}

/// Asks every region at once; answers in region order.
pub async fn ask_all<P, Fut>(asks: impl IntoIterator<Item = (RegionCode, Fut)>) -> Vec<RegionAnswer<P>>
where
    Fut: Future<Output = Result<Vec<P>, RegistryError>>,
{
    let mut pending: FuturesUnordered<_> = asks.into_iter().map(|(region, call)| ask(region, call)).collect();
    let mut answers = Vec::new();
    while let Some(answer) = pending.next().await {
        answers.push(answer);
    }
    answers.sort_by(|a, b| a.region.cmp(&b.region));
    answers
}

/// Success when every region answered (with pointers or with none), failure when none did.
pub fn overall<P>(answers: &[RegionAnswer<P>]) -> Overall {
    let answered = answers.iter().filter(|a| matches!(a.outcome, RegionOutcome::Ok | RegionOutcome::NoMatch)).count();
    match answered {
        n if n == answers.len() => Overall::Success,
        0 => Overall::Failure,
        _ => Overall::Partial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(code: &str) -> RegionCode {
        RegionCode::parse(code).expect("region code")
    }

    fn answer(outcome: RegionOutcome) -> RegionAnswer<u8> {
        RegionAnswer { outcome, ..RegionAnswer::no_match(region("QWO")) }
    }

    #[test]
    fn overall_outcome_follows_the_regions() {
        assert_eq!(overall::<u8>(&[]), Overall::Success);
        assert_eq!(overall(&[answer(RegionOutcome::Ok), answer(RegionOutcome::NoMatch)]), Overall::Success);
        assert_eq!(overall(&[answer(RegionOutcome::Ok), answer(RegionOutcome::Timeout)]), Overall::Partial);
        assert_eq!(overall(&[answer(RegionOutcome::Unavailable)]), Overall::Failure);
    }

    #[test]
    fn regions_get_the_budget_less_a_tenth_kept_to_answer_within_bounds() {
        let start = std::time::Instant::now();
        let kept = |budget_ms: u64| {
            let budget = Duration::from_millis(budget_ms);
            budget - regions_deadline(start, budget).duration_since(start)
        };
        assert_eq!(kept(800), Duration::from_millis(80));
        assert_eq!(kept(100), MARGIN, "never less than MARGIN");
        assert_eq!(kept(10_000), Duration::from_millis(250), "never more than 250 ms");
        assert_eq!(kept(10), Duration::from_millis(10), "a budget under MARGIN leaves the regions none");
    }

    #[test]
    fn the_budget_is_deadline_ms_then_the_call_deadline_then_the_default() {
        assert_eq!(budget(250, Some(Duration::from_secs(3))), Duration::from_millis(250));
        assert_eq!(budget(0, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(budget(0, None), DEFAULT_BUDGET);
    }

    #[tokio::test]
    async fn every_region_is_asked_and_answers_in_region_order_with_its_outcome() {
        let answers = ask_all(vec![
            (region("QWO"), Box::pin(async { Ok(vec![1u8, 2]) }) as std::pin::Pin<Box<dyn Future<Output = _>>>),
            (region("QHM"), Box::pin(async { Ok(vec![]) })),
            (region("QOP"), Box::pin(async { Err(RegistryError::DeadlineExceeded("slow".into())) })),
            (region("QKK"), Box::pin(async { Err(RegistryError::Unauthenticated("no".into())) })),
        ])
        .await;
        let seen: Vec<(&str, RegionOutcome, usize)> =
            answers.iter().map(|a| (a.region.as_str(), a.outcome, a.pointers.len())).collect();
        assert_eq!(
            seen,
            vec![
                ("QHM", RegionOutcome::NoMatch, 0),
                ("QKK", RegionOutcome::PermissionDenied, 0),
                ("QOP", RegionOutcome::Timeout, 0),
                ("QWO", RegionOutcome::Ok, 2),
            ]
        );
        assert_eq!(overall(&answers), Overall::Partial);
    }
}
