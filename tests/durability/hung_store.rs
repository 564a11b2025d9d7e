//! A Redis that stops answering (SIGSTOP: its sockets stay open, so nothing fails fast) must not
//! hold a call longer than the store timeout: every call answers UNAVAILABLE (or
//! DEADLINE_EXCEEDED) within `--redis-timeout-ms`, measured from the client, plus scheduling slack.
//! A call that waits out the timeout twice (the operation, then the audit event of its failure)
//! breaks that promise.

use super::*;
use testkit::nodes::START_LIMIT;

/// The node's `--redis-timeout-ms` (the production default).
const HUNG_STORE_TIMEOUT: Duration = Duration::from_millis(1000);
/// What the client may see beyond the store timeout: the loopback round trip and scheduling.
const SLACK: Duration = Duration::from_millis(100);

/// A call's outcome without its answer, so that different calls can be listed together.
fn untyped<T>((result, took): (Result<T, Status>, Duration)) -> (Result<(), Status>, Duration) {
    (result.map(|_| ()), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_against_a_hung_redis_answers_within_the_store_timeout() {
    let mut redis = start_redis(RedisOptions::default()).await;
    let logs = TempDir::new("nrl-hung-store");
    let mut node = spawn_nrl_bounded("registry", free_port(), &redis.url(), &logs, HUNG_STORE_TIMEOUT);
    node.wait_serving(START_LIMIT).await;
    let mut client = PointerRegistryClient::new(node.channel());
    let patient = new_patient();
    let all = || Some(pb::PointerQuery { include_superseded: true, ..query(&patient) });

    // While redis answers: the connection is open and a pointer exists, so the calls below meet a
    // hung store, not a missing one or an empty patient.
    let (created, _) =
        timed(client.create_pointer(pb::CreatePointerRequest {
            pointer: Some(input(&patient, REGION, CUSTODIAN, CRISIS_PLAN)),
        }))
        .await;
    let old = created.expect("a create while redis answers").pointer.expect("the created pointer");
    timed(client.search_pointers(pb::SearchPointersRequest { query: all(), ..Default::default() }))
        .await
        .0
        .expect("a search while redis answers");

    redis = blocking(move || {
        redis.freeze();
        redis
    })
    .await;
    let mut measured = Vec::new();
    let mut sent = input(&patient, REGION, CUSTODIAN, CRISIS_PLAN);
    sent.producer_reference = "hung-create".into();
    measured.push((
        "CreatePointer",
        untyped(timed(client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) })).await),
    ));
    let search = pb::SearchPointersRequest { query: all(), ..Default::default() };
    measured.push(("SearchPointers", untyped(timed(client.search_pointers(search)).await)));
    let mut sent = input(&patient, REGION, CUSTODIAN, CRISIS_PLAN);
    sent.producer_reference = "hung-supersede".into();
    let supersede = pb::SupersedePointerRequest { pointer: Some(sent), supersedes: vec![old.id.clone()] };
    measured.push(("SupersedePointer", untyped(timed(client.supersede_pointer(supersede)).await)));
    let redis = blocking(move || {
        redis.thaw();
        redis
    })
    .await;

    let summary: Vec<String> = measured
        .iter()
        .map(|(op, (result, took))| match result {
            Ok(_) => format!("{op}: OK after {took:?}"),
            Err(status) => format!("{op}: {:?} after {took:?}", status.code()),
        })
        .collect();
    eprintln!("hung redis, --redis-timeout-ms {}: {}", HUNG_STORE_TIMEOUT.as_millis(), summary.join("; "));
    for (op, (result, took)) in &measured {
        let status = result.as_ref().expect_err("a call against a hung redis cannot succeed");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{op} against a hung redis: {status:?}"
        );
        assert!(!status.message().contains(patient.as_str()), "{op}: the error holds the NHS number: {status:?}");
        assert!(
            *took <= HUNG_STORE_TIMEOUT + SLACK,
            "{op} against a hung redis took {took:?}: more than the store timeout {HUNG_STORE_TIMEOUT:?} + {SLACK:?} \
             (all: {})",
            summary.join("; ")
        );
    }
    node.assert_running();
    drop(node);
    drop(redis);
}
