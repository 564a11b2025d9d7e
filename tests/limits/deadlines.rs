//! A call past the server's request timeout (or the client's shorter `grpc-timeout`) is answered
//! DEADLINE_EXCEEDED, and `/metrics` counts it as such. The slow handler is a real one: a search
//! against a frozen Redis, whose store timeout is longer than the request timeout.

use super::*;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use testkit::fixtures::{input, new_patient, query, CRISIS_PLAN};
use tonic::Code;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);
const SEARCH: &str = "/nrl.v1.PointerRegistry/SearchPointers";

fn searches(code: &str) -> String {
    format!(r#"nrl_grpc_requests_total{{grpc_method="{SEARCH}",grpc_code="{code}"}}"#)
}

/// A search and how long its answer took. It carries no `grpc-timeout`: a tonic client keeps
/// that deadline itself too, and reports it as CANCELLED "Timeout expired" before any answer.
async fn timed_search(
    client: &mut PointerRegistryClient<Channel>,
    patient: &str,
) -> (Result<pb::SearchPointersResponse, tonic::Status>, Duration) {
    let request = pb::SearchPointersRequest { query: Some(query(patient)), ..Default::default() };
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), client.search_pointers(request))
        .await
        .expect("an answer from the server, not the test's own timeout");
    (answer.map(tonic::Response::into_inner), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_answered_and_counted_deadline_exceeded() {
    let _alone = alone().await;
    let redis = start_redis().await;
    let mut config = on_redis(&redis, Duration::from_secs(5));
    config.request_timeout = REQUEST_TIMEOUT;
    let (server, admin) = start(config).await;
    let mut client = server.registry();
    let patient = new_patient();
    client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
        .await
        .expect("a create while Redis answers");
    timed_search(&mut client, &patient).await.0.expect("a search while Redis answers");

    let redis = set_frozen(redis, true).await;
    let (answer, took) = timed_search(&mut client, &patient).await;
    let status = answer.expect_err("Redis is frozen");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("400 ms"), "the server's own answer: {status:?}");
    assert!(took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(1), "{took:?}");

    let series = scrape(admin).await;
    assert_eq!(value(&series, &searches("DEADLINE_EXCEEDED")), 1.0, "{series:#?}");
    assert_eq!(value(&series, &searches("CANCELLED")), 0.0, "{series:#?}");
    let _redis = set_frozen(redis, false).await;
    drop(server);
}
