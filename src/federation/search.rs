//! `nrl.v1.FederatedLocator`: ask every region holding a patient, in parallel, within the caller's
//! deadline; merge; say how each region answered. A partial answer is a normal response.
//!
//! Each regional node gets the caller's own `authorization`, purpose of use, end user and request
//! id, so it authorises and audits the real user, not this node.

use super::peers::Peers;
use crate::api::conversions as conv;
use crate::auth::caller_of;
use crate::domain::query::PageRequest;
use crate::domain::RegionCode;
use crate::error::RegistryError;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::federated_locator_server::FederatedLocator;
use crate::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use crate::registry::Registry;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Budget when the caller gives neither `deadline_ms` nor a gRPC deadline.
const DEFAULT_BUDGET: Duration = Duration::from_millis(2000);
/// Kept back from each regional call's budget for merging and answering.
const MARGIN: Duration = Duration::from_millis(25);
const FORWARDED: [&str; 4] =
    ["authorization", crate::auth::PURPOSE_HEADER, crate::auth::END_USER_HEADER, "x-request-id"];

pub struct FederatedLocatorService {
    registry: Registry,
    /// Regional nodes to fan out to: empty on a central node, which answers from its own store.
    peers: Arc<Peers>,
}

impl FederatedLocatorService {
    pub fn new(registry: Registry, peers: Arc<Peers>) -> Self {
        Self { registry, peers }
    }
}

/// The caller's budget: `deadline_ms`, else the gRPC deadline header, else the default.
fn budget(deadline_ms: u32, metadata: &MetadataMap) -> Duration {
    if deadline_ms > 0 {
        return Duration::from_millis(u64::from(deadline_ms));
    }
    metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).unwrap_or(DEFAULT_BUDGET)
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn outcome_of(status: &Status, timed_out: bool) -> pb::RegionOutcome {
    use tonic::Code;
    if timed_out || status.code() == Code::DeadlineExceeded {
        return pb::RegionOutcome::Timeout;
    }
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown => pb::RegionOutcome::Unavailable,
        Code::PermissionDenied | Code::Unauthenticated => pb::RegionOutcome::PermissionDenied,
        _ => pb::RegionOutcome::Error,
    }
}

struct Plan {
    query: pb::PointerQuery,
    /// Regions to ask, with the node holding each (`None`: no node known).
    regions: Vec<(RegionCode, Option<String>)>,
    /// Regions asked for that hold nothing for the patient.
    no_match: Vec<RegionCode>,
    forwarded: MetadataMap,
    deadline: Instant,
}

impl FederatedLocatorService {
    /// Which regions to ask: the ones the national index says hold the patient (LocatePatient,
    /// which authorises and audits the caller here), narrowed to `target_regions`.
    async fn plan(&self, request: Request<pb::FederatedSearchRequest>) -> Result<Plan, Status> {
        let caller = caller_of(&request)?;
        let deadline = Instant::now() + budget(request.get_ref().deadline_ms, request.metadata());
        let mut forwarded = MetadataMap::new();
        for name in FORWARDED {
            if let Some(value) = request.metadata().get(name) {
                forwarded.insert(name, value.clone());
            }
        }
        let req = request.into_inner();
        let reference = self.registry.reference();
        let query = conv::query(req.query.as_ref(), reference)?;
        let targets: BTreeSet<RegionCode> = req
            .target_regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                reference.regions.parse_code(r).map_err(|e| RegistryError::invalid(format!("target_regions[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let located: BTreeSet<RegionCode> =
            self.registry.locate(&caller, query.nhs_number).await?.into_iter().map(|s| s.region).collect();
        let mut wanted: BTreeSet<RegionCode> = if targets.is_empty() { located.clone() } else { targets.clone() };
        // The query's own region filter narrows the fan-out as target_regions does.
        if !query.regions.is_empty() {
            wanted.retain(|r| query.regions.contains(r));
        }
        let regions = wanted
            .iter()
            .filter(|r| located.contains(*r))
            .map(|r| (r.clone(), self.peers.url(r).map(str::to_string)))
            .collect();
        let no_match = wanted.difference(&located).cloned().collect();
        let mut pb_query = req.query.unwrap_or_default();
        pb_query.nhs_number = query.nhs_number.to_string();
        Ok(Plan { query: pb_query, regions, no_match, forwarded, deadline })
    }

    /// Asks one region. A central or regional node answers its own regions from its own store.
    async fn ask(
        &self,
        plan: &Plan,
        region: RegionCode,
        url: Option<String>,
        caller: &crate::auth::Caller,
    ) -> pb::RegionResult {
        let started = Instant::now();
        let mut result = pb::RegionResult { region: region.to_string(), ..Default::default() };
        let answer = match (&url, self.peers.is_empty()) {
            (_, true) => self.ask_locally(plan, &region, caller).await,
            (Some(url), false) => self.ask_peer(plan, &region, url).await,
            (None, false) => {
                Err((Status::failed_precondition("no record-locator endpoint is known for this region"), false))
            }
        };
        match answer {
            Ok(pointers) => {
                result.outcome =
                    if pointers.is_empty() { pb::RegionOutcome::NoMatch } else { pb::RegionOutcome::Ok } as i32;
                result.pointers = pointers;
            }
            Err((status, timed_out)) => {
                result.outcome = outcome_of(&status, timed_out) as i32;
                result.message = status.message().to_string();
            }
        }
        result.latency_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        result
    }

    async fn ask_locally(
        &self,
        plan: &Plan,
        region: &RegionCode,
        caller: &crate::auth::Caller,
    ) -> Result<Vec<pb::Pointer>, (Status, bool)> {
        let mut query = conv::query(Some(&plan.query), self.registry.reference()).map_err(|e| (e.into(), false))?;
        query.regions = [region.clone()].into_iter().collect();
        let page = PageRequest { size: usize::MAX, after: None };
        let found = self.registry.search(caller, &query, page).await.map_err(|e| (e.into(), false))?;
        Ok(found.pointers.iter().map(Into::into).collect())
    }

    async fn ask_peer(&self, plan: &Plan, region: &RegionCode, url: &str) -> Result<Vec<pb::Pointer>, (Status, bool)> {
        let channel = self.peers.channel(url).map_err(|e| (Status::unavailable(e), false))?;
        let mut client = PointerRegistryClient::new(channel);
        let mut pointers = Vec::new();
        let mut token = String::new();
        loop {
            let remaining = plan.deadline.saturating_duration_since(Instant::now()).saturating_sub(MARGIN);
            if remaining.is_zero() {
                return Err((Status::deadline_exceeded("no time left in the caller's budget"), true));
            }
            let mut query = plan.query.clone();
            query.regions = vec![region.to_string()];
            let mut request =
                Request::new(pb::SearchPointersRequest { query: Some(query), page_size: 500, page_token: token });
            *request.metadata_mut() = plan.forwarded.clone();
            request.set_timeout(remaining);
            let call_deadline = Instant::now() + remaining;
            let page = match tokio::time::timeout(remaining, client.search_pointers(request)).await {
                Ok(Ok(page)) => page.into_inner(),
                // tonic's own client timeout may fire first ("Timeout expired"): any failure at the
                // call's deadline is a timeout, whatever code it came with.
                Ok(Err(status)) => return Err((status, Instant::now() + MARGIN >= call_deadline)),
                Err(_) => return Err((Status::deadline_exceeded(format!("no answer within {remaining:?}")), true)),
            };
            pointers.extend(page.pointers);
            if page.next_page_token.is_empty() {
                return Ok(pointers);
            }
            token = page.next_page_token;
        }
    }
}

fn overall(results: &[pb::RegionResult]) -> pb::OverallOutcome {
    let answered = |r: &&pb::RegionResult| {
        r.outcome == pb::RegionOutcome::Ok as i32 || r.outcome == pb::RegionOutcome::NoMatch as i32
    };
    match results.iter().filter(answered).count() {
        n if n == results.len() => pb::OverallOutcome::Success,
        0 => pb::OverallOutcome::Failure,
        _ => pb::OverallOutcome::Partial,
    }
}

fn no_match(region: &RegionCode) -> pb::RegionResult {
    pb::RegionResult { region: region.to_string(), outcome: pb::RegionOutcome::NoMatch as i32, ..Default::default() }
}

type RegionStream = Pin<Box<dyn Stream<Item = Result<pb::RegionResult, Status>> + Send>>;

#[tonic::async_trait]
impl FederatedLocator for FederatedLocatorService {
    async fn federated_search(
        &self,
        request: Request<pb::FederatedSearchRequest>,
    ) -> Result<Response<pb::FederatedSearchResponse>, Status> {
        let caller = caller_of(&request)?;
        let plan = self.plan(request).await?;
        let mut asks: FuturesUnordered<_> =
            plan.regions.iter().map(|(region, url)| self.ask(&plan, region.clone(), url.clone(), &caller)).collect();
        let mut regions: Vec<pb::RegionResult> = plan.no_match.iter().map(no_match).collect();
        while let Some(result) = asks.next().await {
            regions.push(result);
        }
        regions.sort_by(|a, b| a.region.cmp(&b.region));
        // Merge, de-duplicated on id, newest first (ids are time-ordered).
        let mut merged: BTreeMap<String, pb::Pointer> = BTreeMap::new();
        for pointer in regions.iter().flat_map(|r| r.pointers.iter()) {
            merged.entry(pointer.id.clone()).or_insert_with(|| pointer.clone());
        }
        Ok(Response::new(pb::FederatedSearchResponse {
            overall: overall(&regions) as i32,
            regions,
            pointers: merged.into_values().rev().collect(),
        }))
    }

    type FederatedSearchStreamStream = RegionStream;

    async fn federated_search_stream(
        &self,
        request: Request<pb::FederatedSearchRequest>,
    ) -> Result<Response<Self::FederatedSearchStreamStream>, Status> {
        let caller = caller_of(&request)?;
        let plan = Arc::new(self.plan(request).await?);
        let service = Arc::new(Self { registry: self.registry.clone(), peers: self.peers.clone() });
        let (sender, receiver) = tokio::sync::mpsc::channel(plan.regions.len() + plan.no_match.len() + 1);
        for region in &plan.no_match {
            let _ = sender.try_send(Ok(no_match(region)));
        }
        for (region, url) in plan.regions.clone() {
            let (service, plan, caller, sender) = (service.clone(), plan.clone(), caller.clone(), sender.clone());
            tokio::spawn(async move {
                let result = service.ask(&plan, region, url, &caller).await;
                let _ = sender.send(Ok(result)).await;
            });
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn overall_outcome_follows_the_regions() {
        let r = |o: pb::RegionOutcome| pb::RegionResult { outcome: o as i32, ..Default::default() };
        assert_eq!(overall(&[]), pb::OverallOutcome::Success);
        assert_eq!(overall(&[r(pb::RegionOutcome::Ok), r(pb::RegionOutcome::NoMatch)]), pb::OverallOutcome::Success);
        assert_eq!(overall(&[r(pb::RegionOutcome::Ok), r(pb::RegionOutcome::Timeout)]), pb::OverallOutcome::Partial);
        assert_eq!(overall(&[r(pb::RegionOutcome::Unavailable)]), pb::OverallOutcome::Failure);
    }
}
