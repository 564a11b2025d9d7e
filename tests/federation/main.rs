//! Federation, end to end, with real processes only: a national `nrl serve --federation national`
//! and regional `nrl serve --node-regions CODE` nodes on 127.0.0.1 (`testkit::nodes`), wired by a
//! region directory whose regions carry `record-locator` endpoints, on the memory store or on real
//! redis-servers (`testkit::redis`), with and without JWT authentication.
//!
//! 1. LocatePatient on the national node follows the regions' writes (create, supersede, delete);
//!    a write sent to the wrong node (regional or national) is refused naming the right one.
//! 2. FederatedSearch merges, de-duplicates, orders newest first and tags; `target_regions` and
//!    the query's own region filter narrow; the streaming variant yields one result per region.
//! 3. A frozen (SIGSTOP) region is a TIMEOUT, within `deadline_ms` or the gRPC deadline; a killed
//!    one is UNAVAILABLE, promptly. Either way the answer is a normal, partial response.
//! 4. Killing and restarting the national node and a regional node during writes (Redis): the
//!    national index converges to the regions' own truth, nothing lost, no phantom region. Also:
//!    a regional node restarted on the memory store, and a national node that fell behind a
//!    regional feed's retention.
//! 5. The change feed resumes from a cursor exactly once (memory; Redis with authentication); a
//!    cursor past retention is OUT_OF_RANGE; the feed needs the `peer` role.
//! 6. With authentication, the national node follows with its peer token and forwards the
//!    caller's own token, so each region audits the real caller; a patient restricted at their
//!    regional node is not located by the national node.
//!
//! Timing: every wait is bounded and says what it waited for; a failing test keeps the node logs
//! (their directory is printed).

use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::audit_log_client::AuditLogClient;
use nrl_registry::proto::nrl::v1::change_feed_client::ChangeFeedClient;
use nrl_registry::proto::nrl::v1::federated_locator_client::FederatedLocatorClient;
use nrl_registry::proto::nrl::v1::patient_admin_client::PatientAdminClient;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use testkit::auth::{token, Authed, Credentials, AUDIENCE, ISSUER, SECRET};
use testkit::eventually;
use testkit::fixtures::{assert_field_error, content, input, new_patient, query, CRISIS_PLAN, NEWS2, RESPECT_FORM};
use testkit::nodes::{Federation, FederationPlan, NrlNode, START_LIMIT};
use testkit::process::TempDir;
use testkit::redis::{RedisOptions, RedisServer};
use testkit::writer::{Ack, Journal, Workload, Writer};
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::{Code, Response, Status};

mod authentication;
mod convergence;
mod feed;
mod locate;
mod metrics;
mod search;
mod slow_regions;

/// The two regions with a node of their own.
const A: &str = "QWO";
const B: &str = "QF7";
/// A region in the directory with no node and no pointers.
const NOBODY: &str = "QE1";
const CUSTODIAN: &str = "RR8";
/// Emergency health care plan (a type; `fixtures::CARE_PLAN` is its category).
const EHCP: &str = "887701000000100";
/// "Within seconds": how long the national index may lag a regional write.
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
/// How long the national index may take to converge after restarts.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// The client gives up on any single call after this long (a hang is reported, not waited out).
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// A FederatedSearch must answer within its deadline plus this much.
const DEADLINE_SLACK: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Clients and calls
// ---------------------------------------------------------------------------------------------

/// Clients of one node, all sending the same credentials (none when authentication is off).
#[derive(Clone)]
struct Api {
    registry: PointerRegistryClient<Authed>,
    locator: RecordLocatorClient<Authed>,
    federated: FederatedLocatorClient<Authed>,
    feed: ChangeFeedClient<Authed>,
    audit: AuditLogClient<Authed>,
}

impl Api {
    fn new(node: &NrlNode, credentials: Credentials) -> Self {
        let channel = node.channel();
        Self {
            registry: PointerRegistryClient::with_interceptor(channel.clone(), credentials.clone()),
            locator: RecordLocatorClient::with_interceptor(channel.clone(), credentials.clone()),
            federated: FederatedLocatorClient::with_interceptor(channel.clone(), credentials.clone()),
            feed: ChangeFeedClient::with_interceptor(channel.clone(), credentials.clone()),
            audit: AuditLogClient::with_interceptor(channel, credentials),
        }
    }

    /// No credentials: with authentication off every caller is the local developer.
    fn open(node: &NrlNode) -> Self {
        Self::new(node, Credentials::default())
    }
}

/// One call, bounded on the client side too.
async fn call<T>(call: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(result) => result.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("client side: no answer within {CALL_LIMIT:?}"))),
    }
}

/// One call that must succeed.
async fn ok<T>(what: &str, future: impl Future<Output = Result<Response<T>, Status>>) -> T {
    call(future).await.unwrap_or_else(|s| panic!("{what}: {:?} {}", s.code(), s.message()))
}

/// Waits until the wall clock has moved past the current millisecond. Pointer ids are time-ordered
/// to the millisecond (and strictly within one node), so ids minted by two nodes in the same
/// millisecond have no defined "newest first" order; a test that asserts one spaces its writes.
async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

async fn create(api: &mut Api, patient: &str, region: &str, type_code: &str) -> pb::Pointer {
    let request = pb::CreatePointerRequest { pointer: Some(input(patient, region, CUSTODIAN, type_code)) };
    let created = ok(&format!("create a {type_code} pointer in {region}"), api.registry.create_pointer(request)).await;
    assert!(created.created, "a fresh pointer is created");
    created.pointer.expect("the created pointer")
}

/// The input that registered `pointer`, with new content: what an update or supersede sends.
fn input_of(pointer: &pb::Pointer) -> pb::PointerInput {
    pb::PointerInput {
        nhs_number: pointer.nhs_number.clone(),
        region: pointer.region.clone(),
        custodian: pointer.custodian.clone(),
        author: pointer.author.clone(),
        r#type: pointer.r#type.as_ref().map(|t| t.code.clone()).unwrap_or_default(),
        category: String::new(),
        content: vec![content(&format!(
            "https://{}.example.nhs.uk/records/{}",
            pointer.region.to_lowercase(),
            rand::random::<u32>()
        ))],
        practice_setting: pointer.practice_setting.clone(),
        document_date: pointer.document_date,
        producer_reference: pointer.producer_reference.clone(),
        related_asid: pointer.related_asid.clone(),
    }
}

/// Supersedes `old` with a new pointer of the same patient, region, custodian and type.
async fn supersede(api: &mut Api, old: &pb::Pointer) -> (pb::Pointer, Vec<pb::Pointer>) {
    let mut replacement = input_of(old);
    replacement.producer_reference = String::new();
    let request = pb::SupersedePointerRequest { pointer: Some(replacement), supersedes: vec![old.id.clone()] };
    let answer = ok(&format!("supersede {}", old.id), api.registry.supersede_pointer(request)).await;
    (answer.pointer.expect("the new pointer"), answer.superseded)
}

async fn delete(api: &mut Api, pointer: &pb::Pointer) -> pb::Pointer {
    let request = pb::DeletePointerRequest { id: pointer.id.clone(), version: 0 };
    ok(&format!("delete {}", pointer.id), api.registry.delete_pointer(request)).await.pointer.expect("deleted pointer")
}

/// Every pointer of `patient` on a node matching `query`, walking every page.
async fn search_all(api: &mut Api, query: pb::PointerQuery) -> Result<Vec<pb::Pointer>, Status> {
    let mut pointers = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::SearchPointersRequest { query: Some(query.clone()), page_size: 500, page_token };
        let page = call(api.registry.search_pointers(request)).await?;
        pointers.extend(page.pointers);
        if page.next_page_token.is_empty() {
            return Ok(pointers);
        }
        page_token = page.next_page_token;
    }
}

fn type_of(pointer: &pb::Pointer) -> String {
    pointer.r#type.as_ref().map(|t| t.code.clone()).unwrap_or_default()
}

/// Where a patient's records are, as LocatePatient puts it: region → pointer type → count.
type Located = BTreeMap<String, BTreeMap<String, u32>>;

/// LocatePatient, reduced to [`Located`], checking each region's total against its counts.
async fn locate(api: &mut Api, patient: &str) -> Result<Located, String> {
    let answer = call(api.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.into() }))
        .await
        .map_err(|s| format!("LocatePatient: {:?} {}", s.code(), s.message()))?;
    let mut located = Located::new();
    for location in answer.regions {
        let code = location.region.as_ref().map(|r| r.code.clone()).unwrap_or_default();
        let counts: BTreeMap<String, u32> = location
            .pointer_counts
            .iter()
            .map(|c| (c.r#type.as_ref().map(|t| t.code.clone()).unwrap_or_default(), c.count))
            .collect();
        let sum: u32 = counts.values().sum();
        if sum != location.total {
            return Err(format!("region {code}: total {} but the counts add up to {sum}", location.total));
        }
        if located.insert(code.clone(), counts).is_some() {
            return Err(format!("region {code} listed twice"));
        }
    }
    Ok(located)
}

/// The ground truth of one region: its node's own current pointers of the patient, by type.
fn tally(pointers: &[pb::Pointer]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for pointer in pointers {
        *counts.entry(type_of(pointer)).or_default() += 1;
    }
    counts
}

/// Waits until LocatePatient on `national` says exactly `expected`; returns how long it took.
async fn wait_located(national: &Api, patient: &str, expected: &Located, what: &str) -> Duration {
    let (_, took) = eventually(what, VISIBLE_WITHIN, || {
        let mut national = national.clone();
        async move {
            let located = locate(&mut national, patient).await?;
            if &located == expected {
                Ok(())
            } else {
                Err(format!("LocatePatient says {located:?}, expected {expected:?}"))
            }
        }
    })
    .await;
    took
}

fn located(entries: &[(&str, &[(&str, u32)])]) -> Located {
    entries
        .iter()
        .map(|(region, counts)| (region.to_string(), counts.iter().map(|(t, n)| (t.to_string(), *n)).collect()))
        .collect()
}

fn federated_request(patient: &str, targets: &[&str], deadline_ms: u32) -> pb::FederatedSearchRequest {
    pb::FederatedSearchRequest {
        query: Some(query(patient)),
        target_regions: targets.iter().map(|t| t.to_string()).collect(),
        deadline_ms,
    }
}

fn outcome(result: &pb::RegionResult) -> pb::RegionOutcome {
    pb::RegionOutcome::try_from(result.outcome).unwrap_or(pb::RegionOutcome::Unspecified)
}

fn overall(response: &pb::FederatedSearchResponse) -> pb::OverallOutcome {
    pb::OverallOutcome::try_from(response.overall).unwrap_or(pb::OverallOutcome::Unspecified)
}

/// `region → outcome` of a federated answer, for assertions that read like the spec.
fn outcomes(results: &[pb::RegionResult]) -> BTreeMap<String, pb::RegionOutcome> {
    let mut map = BTreeMap::new();
    for result in results {
        assert!(
            map.insert(result.region.clone(), outcome(result)).is_none(),
            "region {} answered twice",
            result.region
        );
    }
    map
}

fn outcome_map(entries: &[(&str, pb::RegionOutcome)]) -> BTreeMap<String, pb::RegionOutcome> {
    entries.iter().map(|(r, o)| (r.to_string(), *o)).collect()
}

fn ids(pointers: &[pb::Pointer]) -> Vec<String> {
    pointers.iter().map(|p| p.id.clone()).collect()
}

fn describe(response: &pb::FederatedSearchResponse) -> String {
    let regions: Vec<String> = response
        .regions
        .iter()
        .map(|r| {
            format!("{} {:?} {}ms {} pointers {:?}", r.region, outcome(r), r.latency_ms, r.pointers.len(), r.message)
        })
        .collect();
    format!("overall {:?}; {}", overall(response), regions.join("; "))
}

/// Asserts the merged list: each region's pointers exactly once, de-duplicated on id, newest first.
fn assert_merged(response: &pb::FederatedSearchResponse) {
    let mut from_regions: Vec<pb::Pointer> = Vec::new();
    for result in &response.regions {
        for pointer in &result.pointers {
            assert_eq!(
                pointer.region, result.region,
                "a pointer in {}'s result is tagged {}",
                result.region, pointer.region
            );
            if !from_regions.iter().any(|p| p.id == pointer.id) {
                from_regions.push(pointer.clone());
            }
        }
    }
    let merged = &response.pointers;
    let unique: BTreeSet<&String> = merged.iter().map(|p| &p.id).collect();
    assert_eq!(unique.len(), merged.len(), "the merged list repeats a pointer: {:?}", ids(merged));
    let mut expected = from_regions;
    expected.sort_by(|a, b| b.id.cmp(&a.id));
    assert_eq!(
        ids(merged),
        ids(&expected),
        "the merged list is every region's pointers once, newest (highest id) first"
    );
    assert_eq!(merged, &expected, "the merged pointers are the regions' pointers unchanged");
    let created: Vec<i64> =
        merged.iter().map(|p| p.created_at.map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))).collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "merged pointers are not newest first by created_at: {created:?}"
    );
}

/// A private redis-server, started off the async workers (the harness blocks).
async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default())).await.expect("start redis")
}

/// The flags that make a node verify the suite's HS256 tokens (SECRET in the file `secret`).
fn auth_args(secret: &std::path::Path) -> Vec<String> {
    vec![
        "--jwt-hs256-secret-file".into(),
        secret.to_string_lossy().to_string(),
        "--jwt-issuer".into(),
        ISSUER.into(),
        "--jwt-audience".into(),
        AUDIENCE.into(),
    ]
}
