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

// ---------------------------------------------------------------------------------------------
// 1. LocatePatient on the national node follows the regions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_on_the_national_node_follows_creates_supersedes_and_deletes_in_each_region() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();

    let crisis = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let news = create(&mut b, &patient, B, NEWS2).await;
    let care = create(&mut b, &patient, B, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    let took = wait_located(&national, &patient, &both, "both regions on the national node").await;
    eprintln!("both regions visible on the national node {took:?} after the last write");

    // The national node's answer names each region's own node.
    let answer =
        ok("LocatePatient", national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() }))
            .await;
    for location in &answer.regions {
        let region = location.region.as_ref().expect("region");
        let node = federation.node(&region.code);
        assert!(
            region.endpoints.iter().any(|e| e.purpose == "record-locator" && e.url == node.url()),
            "region {} should name its node {}: {:?}",
            region.code,
            node.url(),
            region.endpoints
        );
        assert!(!region.name.is_empty(), "region {} has a name", region.code);
    }

    // A supersede keeps the region, now holding the new pointer (the latest update is the new one's).
    let (replacement, retired) = supersede(&mut a, &crisis).await;
    assert_eq!(ids(&retired), vec![crisis.id.clone()], "the supersede retired the old pointer");
    let (_, took) = eventually("the supersede on the national node", VISIBLE_WITHIN, || {
        let (mut national, patient, replacement) = (national.clone(), patient.clone(), replacement.clone());
        async move {
            let answer = call(national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient }))
                .await
                .map_err(|s| format!("{s:?}"))?;
            let location = answer
                .regions
                .iter()
                .find(|r| r.region.as_ref().is_some_and(|r| r.code == A))
                .ok_or("region A is gone")?;
            match (location.total, location.last_updated) {
                (1, Some(at)) if Some(at) == replacement.updated_at => Ok(()),
                (total, at) => Err(format!(
                    "A: total {total}, last updated {at:?}; the new pointer is {:?}",
                    replacement.updated_at
                )),
            }
        }
    })
    .await;
    eprintln!("supersede visible {took:?} after it was acknowledged");
    let after_supersede = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    assert_eq!(locate(&mut national, &patient).await.expect("locate"), after_supersede);

    // Deleting one of B's pointers lowers its count; deleting B's last removes B.
    delete(&mut b, &news).await;
    wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(EHCP, 1)])]), "B down to one").await;
    delete(&mut b, &care).await;
    let took = wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)])]), "B gone").await;
    eprintln!("the last pointer's delete removed B {took:?} later");

    // And back: a new pointer in B brings B back.
    create(&mut b, &patient, B, RESPECT_FORM).await;
    wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(RESPECT_FORM, 1)])]), "B back").await;
    // A patient nobody registered is located nowhere.
    assert_eq!(locate(&mut national, &new_patient()).await.expect("locate"), Located::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_the_wrong_regional_node_is_refused_naming_the_right_node() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let mut a = Api::open(federation.node(A));
    let b_url = federation.node(B).url();
    let patient = new_patient();
    let names_b = |status: &Status, what: &str| {
        assert_field_error(status, Code::FailedPrecondition, "pointer.region");
        assert!(
            status.message().contains(&b_url),
            "{what}: the refusal should name B's node {b_url}: {:?}",
            status.message()
        );
    };

    let status = call(
        a.registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, B, CUSTODIAN, CRISIS_PLAN)) }),
    )
    .await
    .expect_err("a create for region B on A's node must be refused");
    names_b(&status, "create");

    let mine = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let mut elsewhere = input_of(&mine);
    elsewhere.region = B.into();
    let status = call(a.registry.supersede_pointer(pb::SupersedePointerRequest {
        pointer: Some(elsewhere),
        supersedes: vec![mine.id.clone()],
    }))
    .await
    .expect_err("a supersede into region B on A's node must be refused");
    names_b(&status, "supersede");

    let batch = ok(
        "batch",
        a.registry.batch_create_pointers(pb::BatchCreatePointersRequest {
            pointers: vec![input(&patient, A, CUSTODIAN, NEWS2), input(&patient, B, CUSTODIAN, NEWS2)],
        }),
    )
    .await;
    assert!(
        matches!(batch.outcomes[0].result, Some(pb::batch_outcome::Result::Created(_))),
        "A's entry: {:?}",
        batch.outcomes[0]
    );
    match &batch.outcomes[1].result {
        Some(pb::batch_outcome::Result::Error(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32, "B's entry: {e:?}");
            assert!(e.message.contains(&b_url), "B's entry should name B's node {b_url}: {e:?}");
        }
        other => panic!("a batch entry for region B was not refused on A's node: {other:?}"),
    }
    // Nothing of B's reached A's node.
    let held = search_all(&mut a, query(&patient)).await.expect("search A");
    assert!(held.iter().all(|p| p.region == A), "A's node holds a pointer of another region: {held:?}");
    assert_eq!(held.len(), 2, "A's node holds its own two pointers: {held:?}");
}

/// The national node in federated mode answers LocatePatient from its index and FederatedSearch
/// from the regional nodes, so a pointer it stored itself for a region that has a node of its own
/// would be acknowledged and then never shown: it is the wrong node for that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_the_national_node_is_refused_naming_the_regional_node() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let mut national = Api::open(&federation.national);
    let a_url = federation.node(A).url();
    let patient = new_patient();
    let request = pb::CreatePointerRequest { pointer: Some(input(&patient, A, CUSTODIAN, CRISIS_PLAN)) };
    match call(national.registry.create_pointer(request)).await {
        Err(status) => {
            assert_field_error(&status, Code::FailedPrecondition, "pointer.region");
            assert!(
                status.message().contains(&a_url),
                "the refusal should name A's node {a_url}: {:?}",
                status.message()
            );
        }
        Ok(created) => {
            // Show what became of the acknowledged write.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let located = locate(&mut national, &patient).await;
            let federated = call(national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
            panic!(
                "the national node (federated mode) acknowledged a write for region {A}, which has its own node at \
                 {a_url}: pointer {:?}. One second later LocatePatient on the national node says {located:?} and \
                 FederatedSearch says {:?}: the acknowledged pointer is shown by neither",
                created.pointer.map(|p| p.id),
                federated.map(|r| describe(&r))
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. FederatedSearch: merge, tags, narrowing, streaming
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_search_merges_every_region_newest_first_tagged_and_narrows_to_target_regions() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    // Interleaved in time, so the merge has to interleave the regions. Ids order by their
    // millisecond; two nodes' ids minted in the same millisecond have no defined order, so the
    // creates are spaced a few milliseconds apart for "newest first" to be a fact the test can check.
    let a1 = create(&mut a, &patient, A, CRISIS_PLAN).await;
    next_millisecond().await;
    let b1 = create(&mut b, &patient, B, NEWS2).await;
    next_millisecond().await;
    let a2 = create(&mut a, &patient, A, RESPECT_FORM).await;
    next_millisecond().await;
    let b2 = create(&mut b, &patient, B, EHCP).await;
    next_millisecond().await;
    let (b3, _) = supersede(&mut b, &b1).await;
    let expected = located(&[(A, &[(CRISIS_PLAN, 1), (RESPECT_FORM, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    wait_located(&national, &patient, &expected, "both regions on the national node").await;
    // The supersede must have reached the index too (B's latest update is b3's).
    eventually("the supersede in the index", VISIBLE_WITHIN, || {
        let (mut national, patient, b3) = (national.clone(), patient.clone(), b3.clone());
        async move {
            let answer = call(national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient }))
                .await
                .map_err(|s| format!("{s:?}"))?;
            let b = answer.regions.iter().find(|r| r.region.as_ref().is_some_and(|r| r.code == B)).ok_or("no B")?;
            (b.last_updated == b3.updated_at).then_some(()).ok_or(format!("B last updated {:?}", b.last_updated))
        }
    })
    .await;

    let truth_a = search_all(&mut a, query(&patient)).await.expect("search A");
    let truth_b = search_all(&mut b, query(&patient)).await.expect("search B");
    assert_eq!(ids(&truth_a), vec![a2.id.clone(), a1.id.clone()]);
    assert_eq!(ids(&truth_b), vec![b3.id.clone(), b2.id.clone()]);

    let started = Instant::now();
    let all = ok("FederatedSearch", national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    let took = started.elapsed();
    assert_eq!(overall(&all), pb::OverallOutcome::Success, "{}", describe(&all));
    assert_eq!(
        outcomes(&all.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok)]),
        "{}",
        describe(&all)
    );
    for result in &all.regions {
        let truth = if result.region == A { &truth_a } else { &truth_b };
        assert_eq!(&result.pointers, truth, "{}'s result is what its node's SearchPointers says", result.region);
        assert!(result.message.is_empty(), "an OK region carries no message: {:?}", result.message);
        assert!(
            u128::from(result.latency_ms) <= took.as_millis(),
            "{} latency {} ms > the call's {took:?}",
            result.region,
            result.latency_ms
        );
    }
    assert_merged(&all);
    assert_eq!(
        ids(&all.pointers),
        vec![b3.id.clone(), b2.id.clone(), a2.id.clone(), a1.id.clone()],
        "newest first across regions"
    );
    eprintln!("FederatedSearch over two regions: {took:?}; {}", describe(&all));

    // include_superseded is passed on; filters apply in every region.
    let mut with_superseded = federated_request(&patient, &[], 2000);
    with_superseded.query.as_mut().expect("query").include_superseded = true;
    let history = ok("FederatedSearch with superseded", national.federated.federated_search(with_superseded)).await;
    assert_eq!(
        ids(&history.pointers),
        vec![b3.id.clone(), b2.id.clone(), a2.id.clone(), b1.id.clone(), a1.id.clone()],
        "{}",
        describe(&history)
    );
    assert_merged(&history);
    let mut crisis_only = federated_request(&patient, &[], 2000);
    crisis_only.query.as_mut().expect("query").types = vec![CRISIS_PLAN.into()];
    let crisis = ok("FederatedSearch for crisis plans", national.federated.federated_search(crisis_only)).await;
    assert_eq!(
        outcomes(&crisis.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::NoMatch)]),
        "{}",
        describe(&crisis)
    );
    assert_eq!(overall(&crisis), pb::OverallOutcome::Success, "NO_MATCH is an answer: {}", describe(&crisis));
    assert_eq!(ids(&crisis.pointers), vec![a1.id.clone()]);

    // target_regions narrows; a region asked for that holds nothing is NO_MATCH.
    let only_a =
        ok("FederatedSearch for A", national.federated.federated_search(federated_request(&patient, &[A], 2000))).await;
    assert_eq!(outcomes(&only_a.regions), outcome_map(&[(A, pb::RegionOutcome::Ok)]), "{}", describe(&only_a));
    assert_eq!(ids(&only_a.pointers), ids(&truth_a));
    assert_eq!(overall(&only_a), pb::OverallOutcome::Success);
    let with_empty = ok(
        "FederatedSearch for B and an empty region",
        national.federated.federated_search(federated_request(&patient, &[B, NOBODY], 2000)),
    )
    .await;
    assert_eq!(
        outcomes(&with_empty.regions),
        outcome_map(&[(B, pb::RegionOutcome::Ok), (NOBODY, pb::RegionOutcome::NoMatch)]),
        "{}",
        describe(&with_empty)
    );
    assert_eq!(overall(&with_empty), pb::OverallOutcome::Success, "{}", describe(&with_empty));
    assert_eq!(ids(&with_empty.pointers), ids(&truth_b));
    let status = call(national.federated.federated_search(federated_request(&patient, &["XXX"], 2000)))
        .await
        .expect_err("an unknown target region is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let stranger = new_patient();
    let nobody = ok(
        "FederatedSearch for an unknown patient",
        national.federated.federated_search(federated_request(&stranger, &[], 2000)),
    )
    .await;
    assert!(nobody.regions.is_empty() && nobody.pointers.is_empty(), "{}", describe(&nobody));
    assert_eq!(overall(&nobody), pb::OverallOutcome::Success);

    // The streaming variant: one RegionResult per region, the same as the unary answer's.
    let mut stream = ok(
        "FederatedSearchStream",
        national.federated.federated_search_stream(federated_request(&patient, &[A, B, NOBODY], 2000)),
    )
    .await;
    let mut streamed = Vec::new();
    loop {
        match tokio::time::timeout(CALL_LIMIT, stream.message()).await {
            Ok(Ok(Some(result))) => streamed.push(result),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("FederatedSearchStream failed: {status:?}"),
            Err(_) => panic!("FederatedSearchStream did not end within {CALL_LIMIT:?}; so far {streamed:?}"),
        }
    }
    assert_eq!(
        outcomes(&streamed),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok), (NOBODY, pb::RegionOutcome::NoMatch)]),
        "one result per region"
    );
    for result in &streamed {
        let truth = match result.region.as_str() {
            A => &truth_a,
            B => &truth_b,
            _ => &Vec::new(),
        };
        assert_eq!(&result.pointers, truth, "{}'s streamed result", result.region);
    }
}

/// `query` carries the filters "as for SearchPointers", `regions` among them: a FederatedSearch
/// for region A's pointers must not return region B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_search_honours_the_region_filter_of_its_query() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    let in_a = create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut b, &patient, B, CRISIS_PLAN).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(CRISIS_PLAN, 1)])]);
    wait_located(&national, &patient, &both, "both regions").await;

    // SearchPointers semantics, on A's own node, for reference.
    let filtered = pb::PointerQuery { regions: vec![A.into()], ..query(&patient) };
    assert_eq!(ids(&search_all(&mut a, filtered.clone()).await.expect("search A")), vec![in_a.id.clone()]);

    let request = pb::FederatedSearchRequest { query: Some(filtered), target_regions: vec![], deadline_ms: 2000 };
    let answer = ok("FederatedSearch for region A", national.federated.federated_search(request)).await;
    assert_eq!(
        ids(&answer.pointers),
        vec![in_a.id.clone()],
        "query.regions = [{A}] should return A's pointers only: {}",
        describe(&answer)
    );
    assert!(
        answer.regions.iter().all(|r| r.region == A || outcome(r) == pb::RegionOutcome::NoMatch),
        "no region other than A should answer with pointers: {}",
        describe(&answer)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Slow and dead regions
// ---------------------------------------------------------------------------------------------

/// Two regions, and a patient with two pointers in A and one in B, visible on the national node
/// and answered once by FederatedSearch (so every channel is connected).
struct Slow {
    federation: Federation,
    national: Api,
    patient: String,
    truth_a: Vec<pb::Pointer>,
}

async fn slow_setup() -> Slow {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut a, &patient, A, NEWS2).await;
    create(&mut b, &patient, B, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1), (NEWS2, 1)]), (B, &[(EHCP, 1)])]);
    wait_located(&national, &patient, &both, "both regions").await;
    let truth_a = search_all(&mut a, query(&patient)).await.expect("search A");
    let request = federated_request(&patient, &[], 2000);
    let warm = ok("a first FederatedSearch", national.federated.federated_search(request)).await;
    assert_eq!(overall(&warm), pb::OverallOutcome::Success, "{}", describe(&warm));
    Slow { federation, national, patient, truth_a }
}

/// Asserts a FederatedSearch answer with A answered and B timed out, on time.
fn assert_b_timed_out(answer: &pb::FederatedSearchResponse, truth_a: &[pb::Pointer], took: Duration, budget: Duration) {
    assert!(
        took <= budget + DEADLINE_SLACK,
        "a budget of {budget:?} but the answer took {took:?}: {}",
        describe(answer)
    );
    assert_eq!(
        outcomes(&answer.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Timeout)]),
        "a frozen region is a TIMEOUT: {}",
        describe(answer)
    );
    assert_eq!(overall(answer), pb::OverallOutcome::Partial, "{}", describe(answer));
    assert_eq!(answer.pointers, truth_a, "the answer holds A's pointers");
    let b = answer.regions.iter().find(|r| r.region == B).expect("B's result");
    assert!(!b.message.is_empty(), "a TIMEOUT says why");
    assert!(
        u128::from(b.latency_ms) >= budget.as_millis() / 2,
        "B's TIMEOUT came after {} ms: it should have waited for most of the {budget:?} budget",
        b.latency_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_region_is_a_timeout_and_the_answer_comes_within_deadline_ms() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    // B frozen (SIGSTOP): its socket still accepts, nothing answers.
    const DEADLINE_MS: u32 = 600;
    let deadline = Duration::from_millis(u64::from(DEADLINE_MS));
    federation.node_mut(B).freeze();
    let started = Instant::now();
    let slow = call(national.federated.federated_search(federated_request(&patient, &[], DEADLINE_MS))).await;
    let took = started.elapsed();
    let slow = slow.unwrap_or_else(|s| panic!("a partial answer is a normal response, not {s:?}"));
    eprintln!("frozen B, deadline_ms {DEADLINE_MS}: answered in {took:?}; {}", describe(&slow));
    assert_b_timed_out(&slow, &truth_a, took, deadline);

    // The stream yields A's result as soon as A answers, and B's TIMEOUT at the deadline.
    let started = Instant::now();
    let request = federated_request(&patient, &[], DEADLINE_MS);
    let mut stream = ok("FederatedSearchStream", national.federated.federated_search_stream(request)).await;
    let mut arrivals = Vec::new();
    loop {
        match tokio::time::timeout(CALL_LIMIT, stream.message()).await {
            Ok(Ok(Some(result))) => arrivals.push((started.elapsed(), result)),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("FederatedSearchStream failed: {status:?}"),
            Err(_) => panic!("FederatedSearchStream did not end within {CALL_LIMIT:?}"),
        }
    }
    let ended = started.elapsed();
    let order: Vec<(String, pb::RegionOutcome, Duration)> =
        arrivals.iter().map(|(at, r)| (r.region.clone(), outcome(r), *at)).collect();
    eprintln!("stream with frozen B: {order:?}, ended {ended:?}");
    assert_eq!(order.len(), 2, "one result per region: {order:?}");
    assert_eq!((order[0].0.as_str(), order[0].1), (A, pb::RegionOutcome::Ok), "A first: {order:?}");
    assert_eq!((order[1].0.as_str(), order[1].1), (B, pb::RegionOutcome::Timeout), "then B's timeout: {order:?}");
    assert!(order[0].2 < deadline / 2, "A's result should not wait for B's: {order:?}");
    assert!(ended <= deadline + DEADLINE_SLACK, "the stream ended after {ended:?}: {order:?}");
    assert_eq!(arrivals[0].1.pointers, truth_a);

    // B thawed: everything answers again.
    federation.node_mut(B).thaw();
    eventually("B answering again after SIGCONT", VISIBLE_WITHIN, || {
        let (mut national, patient) = (national.clone(), patient.clone());
        async move {
            let answer = call(national.federated.federated_search(federated_request(&patient, &[], 1000)))
                .await
                .map_err(|s| format!("{s:?}"))?;
            (overall(&answer) == pb::OverallOutcome::Success).then_some(()).ok_or_else(|| describe(&answer))
        }
    })
    .await;
}

/// A caller that sets only a gRPC deadline (deadline_ms 0) gets the partial answer before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_region_is_a_timeout_and_the_answer_comes_before_the_grpc_deadline() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    federation.node_mut(B).freeze();
    let grpc_deadline = Duration::from_millis(800);
    let mut request = tonic::Request::new(federated_request(&patient, &[], 0));
    request.set_timeout(grpc_deadline);
    let started = Instant::now();
    let answer = call(national.federated.federated_search(request)).await;
    let took = started.elapsed();
    let answer = answer.unwrap_or_else(|s| {
        panic!("with a gRPC deadline of {grpc_deadline:?} and B frozen, the answer should be a partial one before the deadline, not {s:?} after {took:?}")
    });
    eprintln!("frozen B, gRPC deadline {grpc_deadline:?}: answered in {took:?}; {}", describe(&answer));
    assert_b_timed_out(&answer, &truth_a, took, grpc_deadline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_region_is_unavailable_and_the_answer_still_comes_promptly() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    // B killed: UNAVAILABLE, promptly, with A's pointers still there.
    federation.node_mut(B).kill9();
    let started = Instant::now();
    let dead = call(national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    let took = started.elapsed();
    let dead = dead.unwrap_or_else(|s| panic!("a partial answer is a normal response, not {s:?}"));
    eprintln!("killed B: answered in {took:?}; {}", describe(&dead));
    assert_eq!(
        outcomes(&dead.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Unavailable)]),
        "{}",
        describe(&dead)
    );
    assert_eq!(overall(&dead), pb::OverallOutcome::Partial, "{}", describe(&dead));
    assert_eq!(dead.pointers, truth_a);
    assert!(took <= Duration::from_millis(1000), "a dead region should not use up the 2 s budget: {took:?}");
    let b = dead.regions.iter().find(|r| r.region == B).expect("B's result");
    assert!(!b.message.is_empty(), "UNAVAILABLE says why");

    // Both killed: still an answer, FAILURE, and LocatePatient (the index) still answers.
    federation.node_mut(A).kill9();
    let request = federated_request(&patient, &[], 2000);
    let none = ok("FederatedSearch with every region down", national.federated.federated_search(request)).await;
    assert_eq!(
        outcomes(&none.regions),
        outcome_map(&[(A, pb::RegionOutcome::Unavailable), (B, pb::RegionOutcome::Unavailable)]),
        "{}",
        describe(&none)
    );
    assert_eq!(overall(&none), pb::OverallOutcome::Failure);
    assert!(none.pointers.is_empty());
    assert_eq!(
        locate(&mut national, &patient).await.expect("locate"),
        located(&[(A, &[(CRISIS_PLAN, 1), (NEWS2, 1)]), (B, &[(EHCP, 1)])]),
        "LocatePatient answers from the national index whatever the regions' state"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Restarts during writes: the national index converges
// ---------------------------------------------------------------------------------------------

/// How long a writer may take to get the writes a test waits for acknowledged.
const WRITES_WITHIN: Duration = Duration::from_secs(20);

/// The writes of one region's writer: for a random patient, read its current pointers on the
/// region's node, then create, supersede or delete one (`testkit::writer::Writer` runs it).
struct RegionWrites {
    api: Api,
    region: &'static str,
    patients: Vec<String>,
    rng: StdRng,
}

impl RegionWrites {
    fn spawn(api: Api, region: &'static str, patients: Vec<String>, seed: u64) -> Writer {
        Writer::start(RegionWrites { api, region, patients, rng: StdRng::seed_from_u64(seed) })
    }
}

/// The pointer an OK answer carries, or a failure if it carries none.
fn answered(op: &'static str, pointer: Option<pb::Pointer>) -> Result<pb::Pointer, (&'static str, Status)> {
    pointer.ok_or((op, Status::internal("test: an OK answer without a pointer")))
}

impl Workload for RegionWrites {
    async fn write(&mut self, _n: usize, journal: &Mutex<Journal>) -> bool {
        let types = [CRISIS_PLAN, NEWS2, EHCP];
        let (api, rng, region) = (&mut self.api, &mut self.rng, self.region);
        let patient = &self.patients[rng.random_range(0..self.patients.len())];
        let started = Instant::now();
        let result = match search_all(api, query(patient)).await {
            Err(status) => Err(("search", status)),
            Ok(current) => {
                let roll: f64 = rng.random();
                if current.is_empty() || roll < 0.45 {
                    let ty = types[rng.random_range(0..types.len())];
                    let request = pb::CreatePointerRequest { pointer: Some(input(patient, region, CUSTODIAN, ty)) };
                    call(api.registry.create_pointer(request))
                        .await
                        .map_err(|s| ("create", s))
                        .and_then(|r| answered("create", r.pointer))
                        .map(Ack::Created)
                } else if roll < 0.75 {
                    let old = &current[rng.random_range(0..current.len())];
                    let mut replacement = input_of(old);
                    replacement.producer_reference = String::new();
                    let request =
                        pb::SupersedePointerRequest { pointer: Some(replacement), supersedes: vec![old.id.clone()] };
                    call(api.registry.supersede_pointer(request))
                        .await
                        .map_err(|s| ("supersede", s))
                        .and_then(|r| Ok(Ack::Superseded { new: answered("supersede", r.pointer)?, old: r.superseded }))
                } else {
                    let old = &current[rng.random_range(0..current.len())];
                    let request = pb::DeletePointerRequest { id: old.id.clone(), version: 0 };
                    call(api.registry.delete_pointer(request))
                        .await
                        .map_err(|s| ("delete", s))
                        .and_then(|r| answered("delete", r.pointer))
                        .map(Ack::Deleted)
                }
            }
        };
        let mut journal = journal.lock().expect("journal lock");
        match result {
            Ok(ack) => {
                journal.acked.push(ack);
                true
            }
            Err((op, status)) => {
                journal.fail(op, String::new(), &status, started, started.elapsed());
                false
            }
        }
    }
}

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default())).await.expect("start redis")
}

/// The ground truth for `patient`: each region's own current pointers, by type.
async fn truth(federation: &Federation, patient: &str) -> Located {
    let mut truth = Located::new();
    for region in &federation.regions {
        let mut api = Api::open(federation.node(region));
        let held = search_all(&mut api, query(patient)).await.unwrap_or_else(|s| panic!("search {region}: {s:?}"));
        assert!(held.iter().all(|p| &p.region == region), "{region}'s node holds another region's pointer");
        if !held.is_empty() {
            truth.insert(region.clone(), tally(&held));
        }
    }
    truth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_national_index_converges_after_national_and_regional_restarts_during_writes() {
    let (redis_a, redis_b, redis_n) = tokio::join!(start_redis(), start_redis(), start_redis());
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.regional_stores = vec![redis_a.url(), redis_b.url()];
    plan.national_store = redis_n.url();
    plan.common_args = ["--redis-timeout-ms", "2000", "--redis-startup-wait-secs", "10"].map(String::from).to_vec();
    let mut federation = Federation::start(plan).await;
    let national = Api::open(&federation.national);
    let patients: Vec<String> = (0..12).map(|_| new_patient()).collect();
    // Patients 0-3 only in A, 4-7 only in B, 8-11 in both.
    let writer_a =
        RegionWrites::spawn(Api::open(federation.node(A)), A, [&patients[0..4], &patients[8..12]].concat(), 1);
    let writer_b = RegionWrites::spawn(Api::open(federation.node(B)), B, patients[4..12].to_vec(), 2);
    writer_a.wait_acked(30, WRITES_WITHIN, "A's writes before the restarts").await;
    writer_b.wait_acked(30, WRITES_WITHIN, "B's writes before the restarts").await;

    // The national node dies; the regions keep taking writes.
    let national_down = Instant::now();
    federation.national.kill9();
    let (acked_a, acked_b) = (writer_a.acked(), writer_b.acked());
    writer_a.wait_acked(acked_a + 30, WRITES_WITHIN, "A's writes while the national node is down").await;
    writer_b.wait_acked(acked_b + 30, WRITES_WITHIN, "B's writes while the national node is down").await;
    let (failed_a, failed_b) = (writer_a.failures_since(national_down), writer_b.failures_since(national_down));
    assert!(
        failed_a.is_empty() && failed_b.is_empty(),
        "regional writes failed while the national node was down: A {failed_a:?}, B {failed_b:?}"
    );
    federation.national.restart();
    let took = federation.national.wait_serving(START_LIMIT).await;
    eprintln!(
        "national node down {:?} (A +{}, B +{} writes meanwhile), serving again {took:?} after its restart",
        national_down.elapsed(),
        writer_a.acked() - acked_a,
        writer_b.acked() - acked_b
    );

    // Then A's node dies mid-writes and comes back.
    writer_a.wait_acked(writer_a.acked() + 20, WRITES_WITHIN, "A's writes after the national restart").await;
    let a_down = Instant::now();
    federation.node_mut(A).kill9();
    let acked_b = writer_b.acked();
    eventually("A's writer to see A gone", Duration::from_secs(10), || async {
        match writer_a.failures_since(a_down).len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since A was killed")),
        }
    })
    .await;
    writer_b.wait_acked(acked_b + 20, WRITES_WITHIN, "B's writes while A is down").await;
    federation.node_mut(A).restart();
    federation.node_mut(A).wait_serving(START_LIMIT).await;
    let acked_a = writer_a.acked();
    writer_a.wait_acked(acked_a + 30, WRITES_WITHIN, "A's writes after A's restart").await;
    let (log_a, log_b) = (writer_a.stop().await, writer_b.stop().await);
    eprintln!(
        "writes: A {} acknowledged {:?}, {} failed; B {} acknowledged {:?}, {} failed",
        log_a.acked.len(),
        log_a.ops(),
        log_a.failures.len(),
        log_b.acked.len(),
        log_b.ops(),
        log_b.failures.len()
    );
    assert!(
        log_b.failures.is_empty(),
        "B's writes failed although B never went down: {:?}",
        log_b.failures.iter().take(3).map(|f| (f.code, &f.message)).collect::<Vec<_>>()
    );

    // After the restarts: a region's last pointer goes (it must leave the index), for a patient
    // in both regions, so "no phantom" is tested whatever the random writes did.
    let mut a = Api::open(federation.node(A));
    for pointer in search_all(&mut a, query(&patients[8])).await.expect("search A") {
        delete(&mut a, &pointer).await;
    }
    let mut b = Api::open(federation.node(B));
    if search_all(&mut b, query(&patients[8])).await.expect("search B").is_empty() {
        create(&mut b, &patients[8], B, NEWS2).await;
    }

    let started = Instant::now();
    let mut mismatches = Vec::new();
    let mut regions_seen = BTreeMap::new();
    for patient in &patients {
        let expected = truth(&federation, patient).await;
        for region in expected.keys() {
            *regions_seen.entry(region.clone()).or_insert(0) += 1;
        }
        let within = CONVERGE_WITHIN.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let mut national = national.clone();
        let result = tokio::time::timeout(within, async {
            loop {
                match locate(&mut national, patient).await {
                    Ok(located) if located == expected => return Ok(()),
                    Ok(located) => {
                        if started.elapsed() >= within {
                            return Err(located);
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(located)) => mismatches.push(format!(
                "patient #{}: national {located:?}, regions {expected:?}",
                patients.iter().position(|p| p == patient).unwrap_or(0)
            )),
            Err(_) => {
                let located = locate(&mut national, patient).await;
                mismatches.push(format!(
                    "patient #{}: national {located:?}, regions {expected:?}",
                    patients.iter().position(|p| p == patient).unwrap_or(0)
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "the national index did not converge within {CONVERGE_WITHIN:?}:\n{}\n{}",
        mismatches.join("\n"),
        federation.log_tails()
    );
    assert_eq!(
        truth(&federation, &patients[8]).await.keys().collect::<Vec<_>>(),
        vec![B],
        "patient #8 is in B only now"
    );
    eprintln!(
        "the national index converged {:?} after the writes stopped; patients per region {regions_seen:?}",
        started.elapsed()
    );
    drop(federation);
    drop((redis_a, redis_b, redis_n));
}

/// A regional node on the memory store starts a new, empty feed when it restarts. The national
/// node's stored cursor then points past the end of that feed; the new feed's changes must still
/// reach the index (the cursor is not one this feed issued: resynchronise), not be skipped until
/// the new feed's sequence numbers pass the old cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_node_restarted_on_the_memory_store_is_followed_from_its_new_feed() {
    let mut federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let national = Api::open(&federation.national);
    let mut a = Api::open(federation.node(A));
    // Enough history that the national node's cursor for A is well ahead of a fresh feed.
    let before = new_patient();
    for _ in 0..5 {
        create(&mut a, &before, A, CRISIS_PLAN).await;
    }
    wait_located(&national, &before, &located(&[(A, &[(CRISIS_PLAN, 5)])]), "A's first writes").await;

    federation.node_mut(A).kill9();
    federation.node_mut(A).restart();
    federation.node_mut(A).wait_serving(START_LIMIT).await;
    let mut a = Api::open(federation.node(A));
    let after = new_patient();
    create(&mut a, &after, A, NEWS2).await;
    create(&mut a, &after, A, EHCP).await;
    let (_, took) = eventually("A's writes after its restart on the national node", Duration::from_secs(15), || {
        let mut national = national.clone();
        let after = after.clone();
        async move {
            let now = locate(&mut national, &after).await?;
            let expected = located(&[(A, &[(NEWS2, 1), (EHCP, 1)])]);
            (now == expected).then_some(()).ok_or(format!("LocatePatient says {now:?}, expected {expected:?}"))
        }
    })
    .await;
    eprintln!("A's writes after its restart reached the national index {took:?} later");
    // A's memory store lost what it held before the restart, so the region has left the patient
    // registered then: the national node resynchronised from A's snapshot and swept it.
    wait_located(&national, &before, &Located::new(), "the region A no longer holds, gone from the index").await;
}

/// The national node is down while a regional node writes far more than its feed keeps: its cursor
/// is then OUT_OF_RANGE. It resynchronises from the region's snapshot: a pointer deleted meanwhile
/// leaves no phantom region, a pointer created meanwhile is found, and following resumes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_national_node_behind_the_feed_retention_resynchronises_without_losing_or_inventing_regions() {
    let (redis_a, redis_b, redis_n) = tokio::join!(start_redis(), start_redis(), start_redis());
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.regional_stores = vec![redis_a.url(), redis_b.url()];
    plan.national_store = redis_n.url();
    plan.regional_args = vec!["--feed-retention".into(), "10".into()];
    let mut federation = Federation::start(plan).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let national = Api::open(&federation.national);

    // Both regions hold `moved`; A also holds `stays`.
    let (moved, stays) = (new_patient(), new_patient());
    let gone = create(&mut a, &moved, A, CRISIS_PLAN).await;
    create(&mut b, &moved, B, NEWS2).await;
    create(&mut a, &stays, A, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1)])]);
    wait_located(&national, &moved, &both, "both regions before the outage").await;
    wait_located(&national, &stays, &located(&[(A, &[(EHCP, 1)])]), "A before the outage").await;

    // While the national node is down, A deletes `moved`'s pointer, registers a new patient, and
    // writes 300 more changes: the delete and the create are long trimmed from A's feed.
    federation.national.kill9();
    delete(&mut a, &gone).await;
    let arrived = new_patient();
    create(&mut a, &arrived, A, RESPECT_FORM).await;
    let others: Vec<String> = (0..30).map(|_| new_patient()).collect();
    let batch = pb::BatchCreatePointersRequest {
        pointers: (0..300).map(|i| input(&others[i % others.len()], A, CUSTODIAN, NEWS2)).collect(),
    };
    let outcomes = ok("a batch of 300 in A", a.registry.batch_create_pointers(batch)).await.outcomes;
    assert!(outcomes.iter().all(|o| matches!(o.result, Some(pb::batch_outcome::Result::Created(_)))));

    federation.national.restart();
    federation.national.wait_serving(START_LIMIT).await;
    let national = Api::open(&federation.national);
    let (_, took) = eventually("the national index matches every region again", CONVERGE_WITHIN, || {
        let (mut national, federation) = (national.clone(), &federation);
        let patients: Vec<String> =
            [moved.clone(), stays.clone(), arrived.clone()].into_iter().chain(others.iter().take(5).cloned()).collect();
        async move {
            for patient in &patients {
                let (now, truth) = (locate(&mut national, patient).await?, truth(federation, patient).await);
                if now != truth {
                    return Err(format!("{patient}: the index says {now:?}, the regions hold {truth:?}"));
                }
            }
            Ok(())
        }
    })
    .await;
    eprintln!("resynchronised {took:?} after the national restart");
    assert_eq!(locate(&mut national.clone(), &moved).await.expect("locate"), located(&[(B, &[(NEWS2, 1)])]));
    assert_eq!(locate(&mut national.clone(), &arrived).await.expect("locate"), located(&[(A, &[(RESPECT_FORM, 1)])]));

    // Following resumed from the snapshot's cursor: a new write still arrives.
    let later = new_patient();
    create(&mut a, &later, A, CRISIS_PLAN).await;
    wait_located(&national, &later, &located(&[(A, &[(CRISIS_PLAN, 1)])]), "a write after the resync").await;
    drop((redis_a, redis_b, redis_n));
}

// ---------------------------------------------------------------------------------------------
// 5. The change feed: exactly-once resume, retention, the peer role
// ---------------------------------------------------------------------------------------------

/// One change as a follower sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    cursor: String,
    kind: pb::ChangeKind,
    id: String,
    version: u64,
    type_code: String,
}

fn seen(change: pb::PointerChange) -> Seen {
    let pointer = change.pointer.unwrap_or_default();
    Seen {
        kind: pb::ChangeKind::try_from(change.kind).unwrap_or(pb::ChangeKind::Unspecified),
        cursor: change.cursor,
        version: pointer.version,
        type_code: type_of(&pointer),
        id: pointer.id,
    }
}

/// A cursor's position, for order checks: `N` (memory) or `ms-seq` (a Redis stream id).
fn position(cursor: &str) -> (u64, u64) {
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("cursor {cursor:?} is not a position"));
    match cursor.split_once('-') {
        Some((ms, seq)) => (parse(ms), parse(seq)),
        None => (parse(cursor), 0),
    }
}

async fn watch(api: &mut Api, after: &str, types: &[&str]) -> Result<Streaming<pb::PointerChange>, Status> {
    let request = pb::WatchPointersRequest {
        after: after.into(),
        regions: Vec::new(),
        types: types.iter().map(|t| t.to_string()).collect(),
    };
    call(api.feed.watch_pointers(request)).await
}

/// The next `count` changes on `stream`, each within a few seconds.
async fn read_changes(stream: &mut Streaming<pb::PointerChange>, count: usize, what: &str) -> Vec<Seen> {
    let mut changes = Vec::new();
    while changes.len() < count {
        match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
            Ok(Ok(Some(change))) => changes.push(seen(change)),
            Ok(Ok(None)) => panic!("{what}: the feed ended after {} of {count} changes", changes.len()),
            Ok(Err(status)) => panic!("{what}: the feed failed after {} of {count} changes: {status:?}", changes.len()),
            Err(_) => {
                panic!("{what}: only {} of {count} changes within {VISIBLE_WITHIN:?}: {changes:?}", changes.len())
            }
        }
    }
    changes
}

/// Nothing more arrives on `stream` for a while.
async fn assert_quiet(stream: &mut Streaming<pb::PointerChange>, what: &str) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(400), stream.message()).await {
        panic!("{what}: expected no further change, got {:?}", next.map(|c| c.map(seen)));
    }
}

/// What each write should put in the feed: (kind, id, version), in any order within a write.
type Expected = Vec<Vec<(pb::ChangeKind, String, u64)>>;

/// Writes to one region in a fixed cycle (create, create, update, supersede, delete), recording
/// the changes each write should make.
struct Ops {
    api: Api,
    region: String,
    patients: Vec<String>,
    current: Vec<pb::Pointer>,
    n: usize,
    expected: Expected,
}

impl Ops {
    fn new(api: Api, region: &str) -> Self {
        Self {
            api,
            region: region.into(),
            patients: (0..3).map(|_| new_patient()).collect(),
            current: Vec::new(),
            n: 0,
            expected: Vec::new(),
        }
    }

    fn changes(&self) -> usize {
        self.expected.iter().map(Vec::len).sum()
    }

    async fn run(&mut self, writes: usize) {
        use pb::ChangeKind::{Created, Deleted, Superseded, Updated};
        for _ in 0..writes {
            let step = if self.current.is_empty() { 0 } else { self.n % 5 };
            let patient = self.patients[self.n % self.patients.len()].clone();
            let ty = if self.n % 2 == 0 { CRISIS_PLAN } else { NEWS2 };
            self.n += 1;
            let changes = match step {
                0 | 1 => {
                    let region = self.region.clone();
                    let created = create(&mut self.api, &patient, &region, ty).await;
                    let change = vec![(Created, created.id.clone(), 1)];
                    self.current.push(created);
                    change
                }
                2 => {
                    let old = self.current.pop().expect("a current pointer");
                    let request = pb::UpdatePointerRequest {
                        id: old.id.clone(),
                        version: old.version,
                        pointer: Some(input_of(&old)),
                    };
                    let updated =
                        ok("update", self.api.registry.update_pointer(request)).await.pointer.expect("updated");
                    assert_eq!(updated.version, old.version + 1);
                    let change = vec![(Updated, updated.id.clone(), updated.version)];
                    self.current.push(updated);
                    change
                }
                3 => {
                    let old = self.current.remove(0);
                    let (new, retired) = supersede(&mut self.api, &old).await;
                    let mut change = vec![(Created, new.id.clone(), 1)];
                    change.extend(retired.iter().map(|r| (Superseded, r.id.clone(), r.version)));
                    self.current.push(new);
                    change
                }
                _ => {
                    let old = self.current.remove(0);
                    let gone = delete(&mut self.api, &old).await;
                    vec![(Deleted, gone.id.clone(), gone.version)]
                }
            };
            self.expected.push(changes);
        }
    }
}

/// Open a watcher, read some, disconnect mid-stream, write more, resume from the last cursor,
/// read live changes too; the concatenation must be the whole feed, once each, in order.
async fn feed_resumes_exactly_once(writer: Api, mut follower: Api, region: &str) {
    let mut ops = Ops::new(writer, region);
    ops.run(8).await;
    let first_batch = ops.changes();
    let mut stream = watch(&mut follower, "", &[]).await.expect("watch from the start");
    let mut got = read_changes(&mut stream, 5, "first connection").await;
    assert!(first_batch > 5, "the first connection is cut mid-stream");
    drop(stream);

    ops.run(8).await;
    let last = got.last().expect("changes").cursor.clone();
    let mut stream = watch(&mut follower, &last, &[]).await.expect("watch from the last cursor");
    let so_far = ops.changes();
    got.extend(read_changes(&mut stream, so_far - got.len(), "after reconnecting").await);
    ops.run(5).await;
    let live = ops.changes() - so_far;
    got.extend(read_changes(&mut stream, live, "live, after reconnecting").await);
    assert_quiet(&mut stream, "after every change was read").await;
    drop(stream);

    let mut fresh = watch(&mut follower, "", &[]).await.expect("watch the whole feed");
    let all = read_changes(&mut fresh, ops.changes(), "the whole feed").await;
    assert_quiet(&mut fresh, "the whole feed").await;
    assert_eq!(got, all, "resumed reading (first connection + resume) differs from the whole feed");
    let positions: Vec<(u64, u64)> = all.iter().map(|c| position(&c.cursor)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "cursors are not strictly increasing: {positions:?}");
    // Every write is in the feed, in write order, with exactly its changes.
    let mut at = 0;
    for (i, write) in ops.expected.iter().enumerate() {
        let mut wanted = write.clone();
        let mut found: Vec<_> = all[at..at + write.len()].iter().map(|c| (c.kind, c.id.clone(), c.version)).collect();
        wanted.sort_by(|a, b| a.1.cmp(&b.1));
        found.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(found, wanted, "write #{i}'s changes in the feed");
        at += write.len();
    }

    // Resuming from any cursor gives exactly the rest.
    let middle = all.len() / 2;
    let mut stream = watch(&mut follower, &all[middle].cursor, &[]).await.expect("watch from the middle");
    let rest = read_changes(&mut stream, all.len() - middle - 1, "from the middle").await;
    assert_eq!(rest, all[middle + 1..].to_vec());
    assert_quiet(&mut stream, "from the middle").await;
    // A type filter passes only that type.
    let mut stream = watch(&mut follower, "", &[NEWS2]).await.expect("watch NEWS2 only");
    let news: Vec<Seen> = all.iter().filter(|c| c.type_code == NEWS2).cloned().collect();
    assert!(!news.is_empty() && news.len() < all.len());
    assert_eq!(read_changes(&mut stream, news.len(), "NEWS2 only").await, news);
    assert_quiet(&mut stream, "NEWS2 only").await;
    // A region filter for another region passes nothing.
    let request = pb::WatchPointersRequest { after: String::new(), regions: vec![NOBODY.into()], types: vec![] };
    let mut stream = ok("watch another region", follower.feed.watch_pointers(request)).await;
    assert_quiet(&mut stream, "another region's changes").await;
    // A cursor this feed could not have issued is a bad argument, not a silent restart.
    let status = watch(&mut follower, "not-a-cursor", &[]).await.expect_err("a malformed cursor");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    eprintln!(
        "feed: {} changes over {} writes; resumed after {} with exactly the rest",
        all.len(),
        ops.expected.len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pointers_resumes_from_the_last_cursor_exactly_once() {
    let dir = TempDir::new("nrl-feed");
    let args = ["--node-regions", A].map(String::from).to_vec();
    let mut node = NrlNode::spawn("regional-memory", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    feed_resumes_exactly_once(Api::open(&node), Api::open(&node), A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_with_authentication_the_feed_resumes_exactly_once_for_the_peer_role_only() {
    let redis = start_redis().await;
    let dir = TempDir::new("nrl-feed-auth");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let mut args = ["--node-regions", A, "--store", &redis.url()].map(String::from).to_vec();
    args.extend(auth_args(&secret));
    let mut node = NrlNode::spawn("regional-redis-auth", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    let producer = Api::new(&node, Credentials::bearer(&token("qwo-shared-care", CUSTODIAN, &["producer"], None)));
    let peer = Api::new(&node, Credentials::bearer(&token("national-locator", "X26", &["peer"], None)));

    // Not a peer: PERMISSION_DENIED; no credentials: UNAUTHENTICATED.
    for (who, credentials, wanted) in [
        (
            "a consumer",
            Credentials::bearer(&token("leeds-portal", "B86001", &["consumer"], None)),
            Code::PermissionDenied,
        ),
        (
            "a producer",
            Credentials::bearer(&token("qwo-shared-care", CUSTODIAN, &["producer"], None)),
            Code::PermissionDenied,
        ),
        ("an auditor", Credentials::bearer(&token("audit-desk", "X26", &["auditor"], None)), Code::PermissionDenied),
        ("nobody", Credentials::anonymous(), Code::Unauthenticated),
    ] {
        let mut api = Api::new(&node, credentials);
        match watch(&mut api, "", &[]).await {
            Err(status) => assert_eq!(status.code(), wanted, "WatchPointers by {who}: {status:?}"),
            Ok(mut stream) => match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
                Ok(Err(status)) => assert_eq!(status.code(), wanted, "WatchPointers by {who}: {status:?}"),
                other => panic!("WatchPointers by {who} should be {wanted:?}, got {other:?}"),
            },
        }
    }
    feed_resumes_exactly_once(producer, peer, A).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cursor_older_than_the_retention_is_out_of_range() {
    let redis = start_redis().await;
    let dir = TempDir::new("nrl-feed-retention");
    let args = ["--node-regions", A, "--store", &redis.url(), "--feed-retention", "10"].map(String::from).to_vec();
    let mut node = NrlNode::spawn("regional-retention", testkit::ports::free_port(), args, dir.path());
    node.wait_serving(START_LIMIT).await;
    let mut api = Api::open(&node);
    let patient = new_patient();
    create(&mut api, &patient, A, CRISIS_PLAN).await;
    let mut stream = watch(&mut api, "", &[]).await.expect("watch");
    let first = read_changes(&mut stream, 1, "the first change").await.remove(0);
    drop(stream);

    // Far more than the retention (Redis trims whole stream nodes, of 100 entries by default).
    const WRITES: usize = 300;
    let patients: Vec<String> = (0..30).map(|_| new_patient()).collect();
    let batch = pb::BatchCreatePointersRequest {
        pointers: (0..WRITES).map(|i| input(&patients[i % patients.len()], A, CUSTODIAN, NEWS2)).collect(),
    };
    let outcomes = ok("batch create", api.registry.batch_create_pointers(batch)).await.outcomes;
    let created: Vec<String> = outcomes
        .iter()
        .map(|o| match &o.result {
            Some(pb::batch_outcome::Result::Created(p)) => p.id.clone(),
            other => panic!("batch entry {}: {other:?}", o.index),
        })
        .collect();
    assert_eq!(created.len(), WRITES);

    let refused = match watch(&mut api, &first.cursor, &[]).await {
        Err(status) => status,
        Ok(mut stream) => match tokio::time::timeout(VISIBLE_WITHIN, stream.message()).await {
            Ok(Err(status)) => status,
            other => panic!(
                "a cursor older than the retention should be OUT_OF_RANGE, got {:?}",
                other.map(|m| m.map(|c| c.map(seen)))
            ),
        },
    };
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(!refused.message().is_empty(), "OUT_OF_RANGE says what to do");

    // Resynchronising from the oldest retained change works, and ends at the newest write.
    let mut stream = watch(&mut api, "", &[]).await.expect("watch from the oldest retained");
    let mut retained = Vec::new();
    while let Ok(Ok(Some(change))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        retained.push(seen(change));
    }
    assert!(retained.len() >= 10, "at least the retention is kept: {} changes", retained.len());
    assert!(retained.len() <= WRITES, "older changes were trimmed: {} of {} kept", retained.len(), WRITES + 1);
    assert!(position(&retained[0].cursor) > position(&first.cursor));
    // (A batch's entries are independent writes: the feed holds them in the order they were
    // applied, which need not be the order of the batch.)
    let batch: BTreeSet<&String> = created.iter().collect();
    let kept: BTreeSet<&String> = retained.iter().map(|c| &c.id).collect();
    assert_eq!(kept.len(), retained.len(), "a change is retained twice: {retained:?}");
    assert!(kept.is_subset(&batch), "the retained changes are the newest writes (the batch's): {retained:?}");
    let positions: Vec<(u64, u64)> = retained.iter().map(|c| position(&c.cursor)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "retained cursors in order: {positions:?}");
    // The newest cursor is still good.
    let mut stream =
        watch(&mut api, &retained.last().expect("newest").cursor, &[]).await.expect("watch from the newest");
    assert_quiet(&mut stream, "from the newest cursor").await;
    eprintln!(
        "retention 10: {} of {} changes retained; the first cursor is OUT_OF_RANGE: {}",
        retained.len(),
        WRITES + 1,
        refused.message()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Authentication: peer token for the feed, the caller's own token for searches
// ---------------------------------------------------------------------------------------------

/// National + A + B on the memory store with JWT authentication; the national node follows with a
/// `peer` token. The directory holds the secret and the token: keep it while the nodes run.
async fn authenticated_federation() -> (Federation, TempDir) {
    let secrets = TempDir::new("nrl-federation-secrets");
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let peer_token = secrets.path().join("peer.token");
    std::fs::write(&peer_token, token("national-locator", "X26", &["peer"], None)).expect("write the peer token");
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.common_args = auth_args(&secret);
    plan.national_args = vec!["--peer-token-file".into(), peer_token.to_string_lossy().to_string()];
    (Federation::start(plan).await, secrets)
}

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

/// A restriction set on a regional node reaches the national node through the feed (and through a
/// snapshot after the national node restarts): LocatePatient there then shows ordinary consumers
/// nothing, break-glass still shows every region, and lifting it shows the patient again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_restricted_at_their_regional_node_is_not_located_by_the_national_node() {
    let (mut federation, _secrets) = authenticated_federation().await;

    let producer = Credentials::bearer(&token("shared-care-feed", CUSTODIAN, &["producer"], None));
    let (mut a, mut b) = (Api::new(federation.node(A), producer.clone()), Api::new(federation.node(B), producer));
    let consumer = Credentials::bearer(&token("leeds-gp-portal", "B86001", &["consumer"], None));
    let emergency = consumer.clone().purpose("emergency");
    let admin = Credentials::bearer(&token("a-records-office", "X26", &["admin"], None)).purpose("administration");
    let mut admin_a = PatientAdminClient::with_interceptor(federation.node(A).channel(), admin);
    let patient = new_patient();
    create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut b, &patient, B, NEWS2).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1)])]);
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &both, "both regions").await;

    let restrict = |restricted: bool| pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted };
    ok("restrict at A", admin_a.set_restriction(restrict(true))).await;
    let hidden = Located::new();
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &hidden, "hidden once A restricts").await;
    let mut glass = Api::new(&federation.national, emergency.clone());
    assert_eq!(locate(&mut glass, &patient).await.expect("break-glass locate"), both, "break-glass sees every region");

    ok("lift at A", admin_a.set_restriction(restrict(false))).await;
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &both, "shown once A lifts it").await;

    // Restricted again, then the national node restarts on its memory store: it rebuilds the index
    // from each region's snapshot, restriction included.
    ok("restrict at A again", admin_a.set_restriction(restrict(true))).await;
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &hidden, "hidden again").await;
    federation.national.kill9();
    federation.national.restart();
    federation.national.wait_serving(START_LIMIT).await;
    let glass = Api::new(&federation.national, emergency);
    eventually("the restarted national index, from the snapshots", CONVERGE_WITHIN, || {
        let (mut glass, patient, both) = (glass.clone(), patient.clone(), both.clone());
        async move {
            let now = locate(&mut glass, &patient).await?;
            (now == both).then_some(()).ok_or(format!("break-glass locate says {now:?}"))
        }
    })
    .await;
    let mut ordinary = Api::new(&federation.national, consumer);
    assert_eq!(locate(&mut ordinary, &patient).await.expect("locate"), hidden, "still restricted after the resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_national_node_follows_as_a_peer_and_regions_audit_the_real_caller() {
    let (federation, _secrets) = authenticated_federation().await;

    let producer = Credentials::bearer(&token("shared-care-feed", CUSTODIAN, &["producer"], None));
    let (mut a, mut b) = (Api::new(federation.node(A), producer.clone()), Api::new(federation.node(B), producer));
    let consumer = Credentials::bearer(&token("leeds-gp-portal", "B86001", &["consumer"], None)).end_user("dr.jones");
    let mut national = Api::new(&federation.national, consumer);
    let patient = new_patient();
    let a1 = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let a2 = create(&mut a, &patient, A, RESPECT_FORM).await;
    next_millisecond().await; // ids of two nodes order only by their millisecond
    let b1 = create(&mut b, &patient, B, CRISIS_PLAN).await;
    let b2 = create(&mut b, &patient, B, NEWS2).await;

    // The national node follows both feeds with its peer token.
    let both = located(&[(A, &[(CRISIS_PLAN, 1), (RESPECT_FORM, 1)]), (B, &[(CRISIS_PLAN, 1), (NEWS2, 1)])]);
    wait_located(&national, &patient, &both, "both regions, followed with the peer token").await;

    // The consumer's own token goes to each region.
    let answer =
        ok("FederatedSearch", national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    assert_eq!(overall(&answer), pb::OverallOutcome::Success, "{}", describe(&answer));
    assert_eq!(outcomes(&answer.regions), outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok)]));
    assert_eq!(ids(&answer.pointers), vec![b2.id.clone(), b1.id.clone(), a2.id.clone(), a1.id.clone()]);
    assert_merged(&answer);

    let auditor = Credentials::bearer(&token("audit-desk", "X26", &["auditor"], None)).purpose("audit");
    for (region, pointers) in [(A, vec![a2.id.clone(), a1.id.clone()]), (B, vec![b2.id.clone(), b1.id.clone()])] {
        let mut audit = Api::new(federation.node(region), auditor.clone());
        let log = ok(
            "GetAccessLog",
            audit.audit.get_access_log(pb::GetAccessLogRequest {
                nhs_number: patient.clone(),
                page_size: 50,
                page_token: String::new(),
            }),
        )
        .await;
        let searches: Vec<&pb::AuditEvent> = log.events.iter().filter(|e| e.operation == "SearchPointers").collect();
        assert_eq!(searches.len(), 1, "{region}: one search, the federated one: {:?}", log.events);
        let event = searches[0];
        assert_eq!(
            (
                event.application.as_str(),
                event.organisation.as_str(),
                event.end_user.as_str(),
                event.purpose.as_str(),
                event.outcome.as_str()
            ),
            ("leeds-gp-portal", "B86001", "dr.jones", "direct-care", "OK"),
            "{region} audits the real caller, not the national node: {event:?}"
        );
        assert_eq!(event.pointer_ids, pointers, "{region} audits the pointers it returned");
        assert!(
            log.events.iter().all(|e| e.application != "national-locator"),
            "{region}: the national node's peer identity read patient data: {:?}",
            log.events
        );
    }

    // A consumer limited to crisis plans sees crisis plans only, in the index and in every region.
    let limited = Credentials::bearer(&token("crisis-line", "B86002", &["consumer"], Some(&[CRISIS_PLAN])));
    let mut limited = Api::new(&federation.national, limited);
    assert_eq!(
        locate(&mut limited, &patient).await.expect("locate"),
        located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(CRISIS_PLAN, 1)])])
    );
    let answer =
        ok("limited FederatedSearch", limited.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    assert_eq!(ids(&answer.pointers), vec![b1.id.clone(), a1.id.clone()], "{}", describe(&answer));
    // Asking explicitly for a type it may not see is refused by the regions that hold the patient.
    let mut news = federated_request(&patient, &[], 2000);
    news.query.as_mut().expect("query").types = vec![NEWS2.into()];
    match call(limited.federated.federated_search(news)).await {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(answer) => {
            assert!(!answer.regions.is_empty(), "{}", describe(&answer));
            assert!(
                answer.regions.iter().all(|r| outcome(r) == pb::RegionOutcome::PermissionDenied),
                "{}",
                describe(&answer)
            );
            assert_eq!(overall(&answer), pb::OverallOutcome::Failure, "{}", describe(&answer));
            assert!(answer.pointers.is_empty());
        }
    }

    // No credentials: refused at the national node.
    let mut anonymous = Api::new(&federation.national, Credentials::anonymous());
    let status = call(anonymous.federated.federated_search(federated_request(&patient, &[], 2000)))
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
