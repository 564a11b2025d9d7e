//! Past the in-flight cap, the FHIR listener refuses at once with 429, `Retry-After` and an
//! OperationOutcome, instead of queueing; the held requests end at the request deadline (504, or
//! 503 when the store's budget, which ends with it, answers first), and then requests are taken again. The slow handler is a real one: a search against a frozen
//! Redis (as tests/limits does), whose store timeout is longer than the request timeout.

use super::*;
use nrl_registry::config::ServerConfig;
use testkit::redis::{RedisOptions, RedisServer};

const CAP: usize = 3;
// Long enough that, on two busy cores (the whole suite runs beside it), the held searches are
// admitted and seen holding the cap, and the refusals below are made, before it frees them.
/// How long the requests meant to hold the cap get to reach the server before the first probe.
const HEAD_START: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

async fn set_frozen(redis: RedisServer, frozen: bool) -> RedisServer {
    tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        if frozen {
            redis.freeze();
        } else {
            redis.thaw();
        }
        redis
    })
    .await
    .expect("signal redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_cap_requests_are_429_at_once_with_retry_after() {
    let redis =
        tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default())).await.expect("start redis-server");
    let mut store = nrl_registry::store::redis::RedisConfig::parse(&redis.url()).expect("harness url");
    store.timeout = Duration::from_secs(10);
    let mut config: ServerConfig = jwt_server_config(StoreConfig::Redis(store));
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.limits.max_in_flight = CAP;
    config.request_timeout = REQUEST_TIMEOUT;
    let server = TestServer::start_with(config).await;
    let client = Fhir::bearer(&server.fhir_base(), &token("rr8-busy", OWN, &["producer", "consumer"], None));
    let patient = new_patient();
    created_id(
        "a create while Redis answers",
        &client.post("DocumentReference", &document(&patient, "QWO", OWN, CRISIS_PLAN)).await,
    );

    let redis = set_frozen(redis, true).await;
    let held: Vec<_> = (0..CAP)
        .map(|_| {
            let client = client.clone();
            let path = search_path(&patient);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let answer = client.get(&path).await;
                (answer, started.elapsed())
            })
        })
        .collect();

    // Once the held searches have the cap, everything else is refused at once: even the requests
    // that need no store and no credentials. A probe takes a place too while it is answered, so
    // one made before the held searches are all in could take the place of one of them (which is
    // then refused): they get a head start first.
    tokio::time::sleep(HEAD_START).await;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT - Duration::from_secs(2);
    loop {
        let probe = Fhir::anonymous(&server.fhir_base()).get("metadata").await;
        if probe.status == 429 {
            break;
        }
        assert_eq!(probe.status, 200, "{}", probe.text);
        assert!(std::time::Instant::now() < deadline, "the held searches never took the cap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    for (what, caller, path) in [
        ("metadata", Fhir::anonymous(&server.fhir_base()), "metadata".to_string()),
        ("_status", Fhir::anonymous(&server.fhir_base()), "_status".to_string()),
        ("search", client.clone(), search_path(&patient)),
        ("read", client.clone(), format!("DocumentReference/{NEVER}")),
        ("unauthenticated search", Fhir::anonymous(&server.fhir_base()), search_path(&patient)),
        ("unknown path", client.clone(), "Patient/1".to_string()),
    ] {
        let started = std::time::Instant::now();
        let answer = caller.get(&path).await;
        let took = started.elapsed();
        assert_refused(what, &answer, 429, "TOO_MANY_REQUESTS");
        assert_eq!(answer.body["issue"][0]["code"], "throttled", "{what}");
        assert_eq!(answer.header("retry-after"), Some("1"), "{what}: {:?}", answer.headers);
        assert!(answer.header("x-request-id").is_some(), "{what}: a refusal carries its request id");
        assert!(took < Duration::from_secs(1), "{what}: refused at once, not queued: {took:?}");
        refused += 1;
    }
    let create = client.post("DocumentReference", &document(&patient, "QWO", OWN, CRISIS_PLAN)).await;
    assert_refused("create", &create, 429, "TOO_MANY_REQUESTS");
    assert_eq!(create.header("connection"), Some("close"), "refused before its body was read: {:?}", create.headers);

    // The held requests end at the request deadline (where the store budget ends too, so the
    // store's timeout may be the one that answers).
    for task in held {
        let (answer, took) = task.await.expect("a held search");
        assert!(matches!(answer.status, 503 | 504), "a held search: {} {}", answer.status, answer.text);
        assert_outcome("a held search", &answer);
        assert!(took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(2), "{took:?}");
    }
    let metadata = Fhir::anonymous(&server.fhir_base()).get("metadata").await;
    assert_eq!(metadata.status, 200, "the cap is free again: {}", metadata.text);
    let _redis = set_frozen(redis, false).await;
    let found = client.get(&search_path(&patient)).await;
    assert_eq!((found.status, found.entry_ids().len()), (200, 1), "the refused create wrote nothing: {}", found.text);
    assert_eq!(refused, 6);
    server.stop().await.expect("stop");
}

/// A client that sends its headers and then stops sending its body holds a place in flight only
/// until the request deadline, like any other request: then it is answered 408 and closed. (It
/// held one for good: a few stalled uploads kept every other FHIR request at 429.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_holds_no_place_past_the_request_deadline() {
    // Long enough that, on two busy cores (the whole suite runs beside it), every stalled upload
    // is admitted and seen holding its place before its deadline frees it.
    const TIMEOUT: Duration = Duration::from_secs(4);
    let mut config = jwt_server_config(StoreConfig::Memory);
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.limits.max_in_flight = CAP;
    config.request_timeout = TIMEOUT;
    let server = TestServer::start_with(config).await;
    let addr = server.fhir.expect("FHIR on");
    let bearer = token("rr8-slow", OWN, &["producer"], None);
    let stalled: Vec<_> = (0..CAP)
        .map(|_| {
            let head = format!(
                "POST /FHIR/R4/DocumentReference HTTP/1.1\r\nAuthorization: Bearer {bearer}\r\n\
                 Content-Type: application/fhir+json\r\nContent-Length: 100"
            );
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let answer = raw(addr, &head, b"{\"res".to_vec()).await;
                (answer, started.elapsed())
            })
        })
        .collect();

    let open = Fhir::anonymous(&server.fhir_base());
    // As above: a probe in flight takes a place, so the stalled uploads get a head start.
    tokio::time::sleep(HEAD_START).await;
    let deadline = std::time::Instant::now() + TIMEOUT - HEAD_START;
    loop {
        let probe = open.get("metadata").await;
        if probe.status == 429 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stalled uploads never took the cap: {}", probe.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in stalled {
        let (answer, took) = task.await.expect("a stalled upload");
        assert_raw("a stalled upload", &answer, 408, "TIMEOUT");
        assert!(answer.1.to_ascii_lowercase().contains("connection: close"), "{}", answer.1);
        assert!(took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(2), "answered at the deadline: {took:?}");
    }
    assert_eq!(open.get("metadata").await.status, 200, "the cap is free again");
    server.stop().await.expect("stop");
}
