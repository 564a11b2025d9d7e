//! `nrl.v1.FederatedLocator`: ask every region holding a patient, in parallel, within the caller's
//! deadline; merge; say how each region answered. A partial answer is a normal response.
//!
//! The plan (which regions) comes from `Registry::locate`, which authorises and audits the caller
//! here; `federation::fanout` runs the asks and judges the outcomes. Each regional node gets the
//! caller's own `authorization`, purpose of use, end user and request id (`peer_client`), so it
//! authorises and audits the real user, not this node.

use super::budget::deadline_of;
use super::conversions as conv;
use super::interceptor::caller_of;
use super::peer_client::search_region;
use crate::auth::{Caller, END_USER_HEADER, PURPOSE_HEADER};
use crate::domain::query::PageRequest;
use crate::domain::RegionCode;
use crate::error::RegistryError;
use crate::federation::fanout::{self, Overall, RegionAnswer, RegionOutcome};
use crate::federation::peers::Peers;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::federated_locator_server::FederatedLocator;
use crate::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

const FORWARDED: [&str; 4] = ["authorization", PURPOSE_HEADER, END_USER_HEADER, "x-request-id"];

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

fn outcome(outcome: RegionOutcome) -> pb::RegionOutcome {
    match outcome {
        RegionOutcome::Ok => pb::RegionOutcome::Ok,
        RegionOutcome::NoMatch => pb::RegionOutcome::NoMatch,
        RegionOutcome::Timeout => pb::RegionOutcome::Timeout,
        RegionOutcome::Unavailable => pb::RegionOutcome::Unavailable,
        RegionOutcome::PermissionDenied => pb::RegionOutcome::PermissionDenied,
        RegionOutcome::Error => pb::RegionOutcome::Error,
    }
}

fn overall(overall: Overall) -> pb::OverallOutcome {
    match overall {
        Overall::Success => pb::OverallOutcome::Success,
        Overall::Partial => pb::OverallOutcome::Partial,
        Overall::Failure => pb::OverallOutcome::Failure,
    }
}

fn region_result(answer: RegionAnswer<pb::Pointer>) -> pb::RegionResult {
    pb::RegionResult {
        region: answer.region.to_string(),
        outcome: outcome(answer.outcome) as i32,
        pointers: answer.pointers,
        message: answer.message,
        latency_ms: answer.latency.as_millis().min(u128::from(u32::MAX)) as u32,
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
    /// `operation` names the RPC, for the record of a request that fails validation.
    async fn plan(
        &self,
        caller: &Caller,
        operation: &'static str,
        request: Request<pb::FederatedSearchRequest>,
    ) -> Result<Plan, Status> {
        let call_deadline = deadline_of(request.metadata().as_ref());
        let deadline =
            fanout::regions_deadline(Instant::now(), fanout::budget(request.get_ref().deadline_ms, call_deadline));
        let mut forwarded = MetadataMap::new();
        for name in FORWARDED {
            if let Some(value) = request.metadata().get(name) {
                forwarded.insert(name, value.clone());
            }
        }
        let req = request.into_inner();
        let reference = self.registry.reference();
        let parsed = conv::query(req.query.as_ref(), reference).and_then(|query| {
            let targets: BTreeSet<RegionCode> = req
                .target_regions
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    reference
                        .regions
                        .parse_code(r)
                        .map_err(|e| RegistryError::invalid(format!("target_regions[{i}]"), e))
                })
                .collect::<Result<_, _>>()?;
            Ok((query, targets))
        });
        let (query, targets) = super::validation::recorded(&self.registry, caller, operation, parsed).await?;
        let located: BTreeSet<RegionCode> =
            self.registry.locate(caller, query.nhs_number).await?.into_iter().map(|s| s.region).collect();
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

    /// One region's pointers: a central or regional node answers its own regions from its own
    /// store; a national node asks the region's node.
    async fn ask(
        &self,
        plan: &Plan,
        region: &RegionCode,
        url: Option<&str>,
        caller: &Caller,
    ) -> Result<Vec<pb::Pointer>, RegistryError> {
        if self.peers.is_empty() {
            let mut query = conv::query(Some(&plan.query), self.registry.reference())?;
            query.regions = [region.clone()].into_iter().collect();
            let page = PageRequest { size: usize::MAX, after: None };
            let found = self.registry.search(caller, &query, page).await?;
            return Ok(found.pointers.into_iter().map(Into::into).collect());
        }
        let Some(url) = url else {
            return Err(RegistryError::precondition("region", "no record-locator endpoint is known for this region"));
        };
        search_region(&self.peers, url, region, &plan.query, &plan.forwarded, plan.deadline).await
    }
}

type RegionStream = Pin<Box<dyn Stream<Item = Result<pb::RegionResult, Status>> + Send>>;

#[tonic::async_trait]
impl FederatedLocator for FederatedLocatorService {
    async fn federated_search(
        &self,
        request: Request<pb::FederatedSearchRequest>,
    ) -> Result<Response<pb::FederatedSearchResponse>, Status> {
        let caller = caller_of(&request)?;
        let plan = self.plan(&caller, "FederatedSearch", request).await?;
        let asks =
            plan.regions.iter().map(|(region, url)| (region.clone(), self.ask(&plan, region, url.as_deref(), &caller)));
        let mut answers = fanout::ask_all(asks).await;
        answers.extend(plan.no_match.iter().cloned().map(RegionAnswer::no_match));
        answers.sort_by(|a, b| a.region.cmp(&b.region));
        let overall = overall(fanout::overall(&answers));
        let regions: Vec<pb::RegionResult> = answers.into_iter().map(region_result).collect();
        // Merge, de-duplicated on id, newest first (ids are time-ordered).
        let mut merged: BTreeMap<String, pb::Pointer> = BTreeMap::new();
        for pointer in regions.iter().flat_map(|r| r.pointers.iter()) {
            merged.entry(pointer.id.clone()).or_insert_with(|| pointer.clone());
        }
        Ok(Response::new(pb::FederatedSearchResponse {
            overall: overall as i32,
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
        let plan = Arc::new(self.plan(&caller, "FederatedSearchStream", request).await?);
        let service = Arc::new(Self { registry: self.registry.clone(), peers: self.peers.clone() });
        let (sender, receiver) = tokio::sync::mpsc::channel(plan.regions.len() + plan.no_match.len() + 1);
        for region in &plan.no_match {
            let _ = sender.try_send(Ok(region_result(RegionAnswer::no_match(region.clone()))));
        }
        for (region, url) in plan.regions.clone() {
            let (service, plan, caller, sender) = (service.clone(), plan.clone(), caller.clone(), sender.clone());
            // In the call's span, as the unary variant's asks are: their log lines carry its
            // request id, and each region's trace span is a child of this call's.
            let ask = async move {
                let call = service.ask(&plan, &region, url.as_deref(), &caller);
                let answer = fanout::ask(region.clone(), call).await;
                let _ = sender.send(Ok(region_result(answer))).await;
            };
            tokio::spawn(ask.instrument(tracing::Span::current()));
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
