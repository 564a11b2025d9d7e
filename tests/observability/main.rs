//! What an operator sees: Prometheus metrics after real calls, request ids on every answer, and
//! `/live` and `/ready` through a drain and a Redis outage. A real server on 127.0.0.1:0 with its
//! admin listener on port 0, scraped over a real socket. Also: every metric the shipped alerts and
//! Grafana dashboard (helm/nrl-registry/files) name is one the server exports.

mod prometheus;
mod shipped;

use nrl_registry::config::{ServerConfig, StoreConfig};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::store::redis::RedisConfig;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::fixtures::{input, new_patient, CRISIS_PLAN};
use testkit::nodes::{Federation, FederationPlan};
use testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataMap;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const CREATE: &str = "/nrl.v1.PointerRegistry/CreatePointer";

/// A server (memory store) with its admin listener on an ephemeral port, and that port.
async fn start(shutdown_grace: Duration) -> (TestServer, SocketAddr) {
    let mut config = ServerConfig::for_tests();
    config.shutdown_grace = shutdown_grace;
    start_with(config).await
}

async fn start_with(mut config: ServerConfig) -> (TestServer, SocketAddr) {
    config.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let bound = config.admin.bound.clone();
    let server = TestServer::start_with(config).await;
    let admin = tokio::time::timeout(Duration::from_secs(5), bound.wait()).await.expect("admin listener bound");
    (server, admin)
}

/// GET over HTTP/1.1: (status, body).
async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    try_get(admin, path).await.unwrap_or_else(|e| panic!("GET {path} from {admin}: {e}"))
}

async fn try_get(admin: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| format!("connect: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
    Ok((status, body.to_string()))
}

/// The scrape as `series{labels}` → value.
async fn scrape(admin: SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
        .collect();
    (text, series)
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    *series.get(key).unwrap_or_else(|| panic!("no series {key} in {series:#?}"))
}

fn calls(method: &str, code: &str) -> String {
    format!(r#"nrl_grpc_requests_total{{grpc_method="{method}",grpc_code="{code}"}}"#)
}

/// Polls `path` until it answers `status`, for up to `within`.
async fn wait_for(admin: SocketAddr, path: &str, status: u16, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (got, body) = get(admin, path).await;
        if got == status {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} still {got} ({body:?}), expected {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_status(admin: SocketAddr, path: &str, status: u16) -> String {
    wait_for(admin, path, status, Duration::from_secs(5)).await
}

fn request_id(metadata: &MetadataMap) -> String {
    metadata.get("x-request-id").expect("x-request-id in the response").to_str().expect("ascii").to_string()
}

#[tokio::test]
async fn metrics_count_every_call_by_method_and_code_without_patient_data() {
    let (server, admin) = start(Duration::from_secs(5)).await;
    let mut registry = server.registry();
    let patients: Vec<String> = (0..3).map(|_| new_patient()).collect();
    for patient in &patients {
        registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(patient, "QWO", "RR8", CRISIS_PLAN)) })
            .await
            .expect("create");
    }
    let bad_check_digit = "9434765918";
    for nhs_number in [bad_check_digit, "not a number"] {
        let err = registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(nhs_number, "QWO", "RR8", CRISIS_PLAN)) })
            .await
            .expect_err("invalid NHS number");
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let found = registry
        .search_pointers(pb::SearchPointersRequest {
            query: Some(testkit::fixtures::query(&patients[0])),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.pointers.len(), 1);
    // A path the server does not serve, carrying an NHS number: UNIMPLEMENTED, labelled `other`.
    let mut raw = tonic::client::Grpc::new(server.channel.clone());
    raw.ready().await.expect("channel ready");
    let unknown = http::uri::PathAndQuery::from_static("/nrl.v1.PointerRegistry/9434765919");
    let err = raw
        .unary::<(), (), _>(tonic::Request::new(()), unknown, tonic_prost::ProstCodec::default())
        .await
        .expect_err("no such method");
    assert_eq!(err.code(), Code::Unimplemented);

    // The health watcher pings the store once a second; wait for its first answer.
    wait_for_status(admin, "/ready", 200).await;
    let (text, series) = scrape(admin).await;
    assert_eq!(value(&series, &calls(CREATE, "OK")), 3.0);
    assert_eq!(value(&series, &calls(CREATE, "INVALID_ARGUMENT")), 2.0);
    assert_eq!(value(&series, &calls("/nrl.v1.PointerRegistry/SearchPointers", "OK")), 1.0);
    assert_eq!(value(&series, &calls("other", "UNIMPLEMENTED")), 1.0);
    assert_eq!(value(&series, &format!(r#"nrl_grpc_request_duration_seconds_count{{grpc_method="{CREATE}"}}"#)), 5.0);
    assert_eq!(value(&series, &format!(r#"nrl_grpc_requests_in_flight{{grpc_method="{CREATE}"}}"#)), 0.0);
    assert_eq!(value(&series, r#"nrl_store_up{backend="memory"}"#), 1.0);
    assert!(value(&series, r#"nrl_store_operations_total{operation="apply",outcome="ok"}"#) >= 3.0);
    assert!(value(&series, r#"nrl_store_operations_total{operation="ping",outcome="ok"}"#) >= 1.0);
    assert!(series.keys().any(|k| k.starts_with("nrl_store_operation_duration_seconds_bucket{")), "{text}");
    assert!(series.keys().any(|k| k.starts_with("nrl_build_info{version=")), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics exposition ends with # EOF");
    for patient in patients.iter().map(String::as_str).chain([bad_check_digit, "9434765919"]) {
        assert!(!text.contains(patient), "NHS number {patient} in the scrape");
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_given_or_generated() {
    let (server, _admin) = start(Duration::from_secs(5)).await;
    let mut registry = server.registry();
    let create = |nhs_number: &str, header: Option<(&'static str, &str)>| {
        let mut request = tonic::Request::new(pb::CreatePointerRequest {
            pointer: Some(input(nhs_number, "QWO", "RR8", CRISIS_PLAN)),
        });
        if let Some((name, value)) = header {
            request.metadata_mut().insert(name, value.parse().expect("metadata value"));
        }
        request
    };

    let ok = registry.create_pointer(create(&new_patient(), Some(("x-request-id", "req-123")))).await.expect("create");
    assert_eq!(request_id(ok.metadata()), "req-123");
    let ok =
        registry.create_pointer(create(&new_patient(), Some(("x-correlation-id", "corr-7")))).await.expect("create");
    assert_eq!(request_id(ok.metadata()), "corr-7", "x-correlation-id is taken when x-request-id is absent");
    let ok = registry.create_pointer(create(&new_patient(), None)).await.expect("create");
    let generated = request_id(ok.metadata());
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "generated ids are UUIDs: {generated}");
    let again = registry.create_pointer(create(&new_patient(), None)).await.expect("create");
    assert_ne!(request_id(again.metadata()), generated, "one id per call");

    let err = registry.create_pointer(create("123", Some(("x-request-id", "req-err")))).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(request_id(err.metadata()), "req-err", "errors carry the id too");

    let ok =
        registry.create_pointer(create(&new_patient(), Some(("x-request-id", "9434765919")))).await.expect("create");
    let replaced = request_id(ok.metadata());
    assert_ne!(replaced, "9434765919", "an NHS number is never taken as a request id");
    assert!(uuid::Uuid::parse_str(&replaced).is_ok());
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn ready_turns_503_once_the_drain_begins_while_live_stays_200() {
    let (mut server, admin) = start(Duration::from_secs(60)).await;
    assert_eq!(get(admin, "/live").await.0, 200);
    wait_for_status(admin, "/ready", 200).await;
    let (status, body) = get(admin, "/nope").await;
    assert_eq!(status, 404, "{body}");

    // An open Health/Watch stream is an in-flight call: it holds the drain open.
    let mut health = HealthClient::new(server.channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("first update");
    assert_eq!(first.expect("stream").expect("message").status, ServingStatus::Serving as i32);

    server.begin_shutdown();
    let body = wait_for_status(admin, "/ready", 503).await;
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(admin, "/live").await.0, 200, "draining is not dead");
    let (_, series) = scrape(admin).await;
    assert_eq!(value(&series, r#"nrl_grpc_requests_in_flight{grpc_method="/grpc.health.v1.Health/Watch"}"#), 1.0);

    drop(watch);
    let stopped =
        tokio::time::timeout(Duration::from_secs(10), server.join()).await.expect("drain ends with the stream");
    assert!(stopped.is_ok(), "{stopped:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(admin).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the admin listener stops with the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redis_outage_shows_as_store_down_and_not_ready_until_redis_returns() {
    let mut redis = testkit::redis::RedisServer::start(testkit::redis::RedisOptions::default());
    let mut store = RedisConfig::parse(&redis.url()).expect("harness url");
    store.timeout = Duration::from_millis(300);
    let mut config = ServerConfig::for_tests();
    config.store = StoreConfig::Redis(store);
    let (server, admin) = start_with(config).await;
    wait_for_status(admin, "/ready", 200).await;
    assert_eq!(value(&scrape(admin).await.1, r#"nrl_store_up{backend="redis"}"#), 1.0);

    redis.kill9();
    let body = wait_for_status(admin, "/ready", 503).await;
    assert!(body.contains("store not answering"), "{body}");
    assert_eq!(get(admin, "/live").await.0, 200, "a store outage is no reason to restart the registry");
    let (_, series) = scrape(admin).await;
    assert_eq!(value(&series, r#"nrl_store_up{backend="redis"}"#), 0.0);
    assert!(value(&series, r#"nrl_store_operations_total{operation="ping",outcome="unavailable"}"#) >= 1.0);

    // Restarting blocks until redis answers; the server keeps pinging meanwhile.
    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .expect("restart redis");
    // The connection re-establishes by itself (~2 s here); the next ping then succeeds.
    wait_for(admin, "/ready", 200, Duration::from_secs(15)).await;
    assert_eq!(value(&scrape(admin).await.1, r#"nrl_store_up{backend="redis"}"#), 1.0);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn the_memory_store_keeps_its_audit_retention_and_counts_what_it_drops() {
    let mut config = ServerConfig::for_tests();
    config.memory_audit_retention = 10;
    let (server, admin) = start_with(config).await;
    let mut registry = server.registry();
    let patient = new_patient();
    registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
        .await
        .expect("create");
    for _ in 0..25 {
        let request =
            pb::SearchPointersRequest { query: Some(testkit::fixtures::query(&patient)), ..Default::default() };
        registry.search_pointers(request).await.expect("search");
    }
    // Every search's event was recorded before it was answered, then the oldest went past the
    // retention.
    let mut audit = nrl_registry::proto::nrl::v1::audit_log_client::AuditLogClient::new(server.channel.clone());
    let log = audit
        .get_access_log(pb::GetAccessLogRequest { nhs_number: patient.clone(), page_size: 100, ..Default::default() })
        .await
        .expect("access log")
        .into_inner();
    assert_eq!(log.events.len(), 10, "the newest 10 are kept: {:?}", log.events);
    let (text, series) = scrape(admin).await;
    // 1 create + 25 searches + the access-log read itself = 27 events, 10 kept.
    assert_eq!(value(&series, "nrl_audit_events_dropped_total"), 17.0, "{text}");
    server.stop().await.expect("stop");
}

/// Refusals and failures are counted by operation and code, once recorded in the audit export:
/// labels from fixed lists, nothing from the request.
#[tokio::test]
async fn refusals_are_counted_by_operation_and_code() {
    use testkit::auth::{jwt_auth, portal_token, token, Clients, Credentials};
    let mut config = ServerConfig::for_tests();
    config.auth = jwt_auth();
    let (server, admin) = start_with(config).await;
    let (a, b) = (new_patient(), new_patient());
    let mut producer = Clients::bearer(&server.channel, &token("qwo-shared-care", "RR8", &["producer"], None));
    producer
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&b, "QWO", "RR8", CRISIS_PLAN)) })
        .await
        .expect("create");
    let portal = Credentials::bearer(&portal_token("nhs-app", "X26", &a)).purpose("patient-request");
    let mut portal = Clients::new(&server.channel, portal);
    for _ in 0..3 {
        let request = pb::GetAccessLogRequest { nhs_number: b.clone(), page_size: 0, page_token: String::new() };
        let err = portal.audit.get_access_log(request).await.expect_err("another patient's log");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let roleless = Credentials::bearer(&token("nobody", "RR8", &[], None)).purpose("direct-care");
    let mut roleless = Clients::new(&server.channel, roleless);
    let count = pb::CountPointersRequest { query: Some(testkit::fixtures::query(&b)) };
    assert_eq!(roleless.registry.count_pointers(count).await.expect_err("no role").code(), Code::PermissionDenied);
    for nhs_number in ["9434765918", "943 476 591"] {
        let search =
            pb::SearchPointersRequest { query: Some(testkit::fixtures::query(nhs_number)), ..Default::default() };
        let err = roleless.registry.search_pointers(search).await.expect_err("invalid NHS number");
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    let (text, series) = scrape(admin).await;
    let refusals =
        |operation: &str, code: &str| format!(r#"nrl_refusals_total{{operation="{operation}",code="{code}"}}"#);
    assert_eq!(value(&series, &refusals("GetAccessLog", "PERMISSION_DENIED")), 3.0, "{text}");
    assert_eq!(value(&series, &refusals("CountPointers", "PERMISSION_DENIED")), 1.0, "{text}");
    assert_eq!(value(&series, &refusals("SearchPointers", "INVALID_ARGUMENT")), 2.0, "{text}");
    let counted: f64 = series.iter().filter(|(k, _)| k.starts_with("nrl_refusals_total")).map(|(_, v)| v).sum();
    assert_eq!(counted, 6.0, "the create is no refusal: {text}");
    for patient in [&a, &b] {
        assert!(!text.contains(patient.as_str()), "NHS number {patient} in the scrape");
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn fhir_requests_are_counted_by_interaction_and_status_without_patient_data() {
    let mut config = ServerConfig::for_tests();
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (server, admin) = start_with(config).await;
    let base = server.fhir_base();
    let patient = new_patient();
    let http = testkit::reqwest::Client::new();
    let search = format!("{base}/DocumentReference?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|{patient}");
    for _ in 0..3 {
        let answer = http.get(&search).send().await.expect("search");
        assert_eq!(answer.status().as_u16(), 200);
    }
    let bad = http.get(format!("{base}/DocumentReference?subject:identifier=123")).send().await.expect("bad search");
    assert_eq!(bad.status().as_u16(), 400);
    let missing = http.get(format!("{base}/Patient/{patient}")).send().await.expect("unknown path");
    assert_eq!(missing.status().as_u16(), 404);

    let (text, series) = scrape(admin).await;
    assert_eq!(value(&series, "nrl_fhir_requests_total{interaction=\"search\",status=\"200\"}"), 3.0);
    assert_eq!(value(&series, "nrl_fhir_requests_total{interaction=\"search\",status=\"400\"}"), 1.0);
    assert_eq!(value(&series, "nrl_fhir_requests_total{interaction=\"other\",status=\"404\"}"), 1.0);
    assert_eq!(value(&series, "nrl_fhir_request_duration_seconds_count{interaction=\"search\"}"), 4.0);
    assert!(!text.contains(&patient), "the NHS number is in /metrics");
}

/// A server that has been through what the shipped alerts watch for, and a national node
/// following two regional nodes (real processes), one of which is then killed: together they
/// give every family the alerts and the dashboard name a sample (a family shows in a scrape only
/// once it has one). The server served gRPC and FHIR calls, refused one of each, and turned a
/// connection away while a Health/Watch kept its only connection busy.
struct Exercised {
    server: TestServer,
    /// The server's admin listener.
    admin: SocketAddr,
    /// The national node's admin listener.
    national_admin: SocketAddr,
    federation: Federation,
    /// Holds the server's one connection open.
    watch: tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
}

impl Exercised {
    async fn start() -> Self {
        let mut config = ServerConfig::for_tests();
        config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        // One connection: the harness's own, which a Health/Watch below keeps busy.
        config.limits.connections.max_connections = 1;
        let (server, admin) = start_with(config).await;
        let mut registry = server.registry();
        let patient = new_patient();
        let created = registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
            .await
            .expect("create")
            .into_inner();
        let id = created.pointer.expect("the created pointer").id;
        registry.get_pointer(pb::GetPointerRequest { id }).await.expect("get");
        let invalid =
            pb::SearchPointersRequest { query: Some(testkit::fixtures::query("9434765918")), ..Default::default() };
        assert_eq!(registry.search_pointers(invalid).await.expect_err("refused").code(), Code::InvalidArgument);
        // A connection per request: with a cap of one connection across both listeners, an idle
        // kept-alive FHIR connection is the one the next connection evicts, and a second request
        // sent on it meets a closed socket (IncompleteMessage).
        let http = testkit::reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client");
        let base = server.fhir_base();
        let search = format!("{base}/DocumentReference?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|{patient}");
        assert_eq!(http.get(&search).send().await.expect("FHIR search").status().as_u16(), 200);
        let bad = http.get(format!("{base}/DocumentReference?subject:identifier=123")).send().await;
        assert_eq!(bad.expect("bad FHIR search").status().as_u16(), 400);
        let mut health = HealthClient::new(server.channel.clone());
        let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
        watch.message().await.expect("first status").expect("a status");
        let newcomer = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).expect("url");
        // Refused at the handshake or at the first call, whichever the GOAWAY reaches first.
        let refused = match newcomer.connect().await {
            Ok(channel) => HealthClient::new(channel).check(HealthCheckRequest::default()).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "a connection past the cap, with every connection busy, is refused");

        let mut plan = FederationPlan::memory(&["QWO", "QF7"]);
        let national_admin = SocketAddr::from(([127, 0, 0, 1], testkit::ports::free_port()));
        plan.national_args = vec!["--admin-listen".into(), national_admin.to_string()];
        let mut federation = Federation::start(plan).await;
        // The national node must be following QWO's feed before the pointer is written there:
        // written earlier, it arrives through the first snapshot instead, and the applied-change
        // metrics (nrl_federation_lag_seconds, ...) never get a series.
        testkit::eventually("the national node following QWO's feed", Duration::from_secs(30), || async {
            let (_, scrape) = try_get(national_admin, "/metrics").await?;
            let following = scrape.lines().any(|l| {
                l.starts_with("nrl_federation_connected{")
                    && l.contains("\"QWO\"")
                    && (l.ends_with(" 1") || l.ends_with(" 1.0"))
            });
            following.then_some(()).ok_or_else(|| format!("not yet following:\n{scrape}"))
        })
        .await;
        let mut qwo = PointerRegistryClient::new(federation.node("QWO").channel());
        qwo.create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
            .await
            .expect("create at the regional node");
        federation.node_mut("QF7").kill9();
        Self { server, admin, national_admin, federation, watch }
    }

    async fn stop(self) {
        drop(self.federation);
        drop(self.watch);
        self.server.stop().await.expect("stop");
    }
}

/// The alerts (`alerts.yaml`) and the dashboard (`dashboard.json`) the chart ships name only
/// metrics the server exports, so a renamed metric fails here rather than leaving an alert that
/// never fires. promtool (helm/check.sh) checks their syntax and the alerts' logic; this checks
/// their names against real scrapes of servers that have been through what the alerts watch for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_shipped_alerts_and_dashboard_name_is_exported() {
    let shipped = shipped::metric_names();
    let nodes = Exercised::start().await;
    let (admin, national_admin) = (nodes.admin, nodes.national_admin);
    let what = "every metric the chart's alerts and dashboard name, in a scrape";
    testkit::eventually(what, Duration::from_secs(30), || async {
        let scrapes = [try_get(admin, "/metrics").await?.1, try_get(national_admin, "/metrics").await?.1];
        let exported = Exported::from_scrapes(&scrapes);
        let unknown: Vec<String> = shipped
            .iter()
            .filter(|named| !exported.knows(named))
            .map(|named| format!("{} ({})", named.name, named.source))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("not exported: {unknown:?}\nthe scrapes:\n{}", scrapes.join("\n")))
        }
    })
    .await;
    nodes.stop().await;
}

/// What scrapes offer a query: each family from its `# TYPE` line, with the series names its
/// type gives it, and each sample's own name.
struct Exported {
    series: BTreeSet<String>,
    families: BTreeSet<String>,
}

impl Exported {
    fn from_scrapes(scrapes: &[String]) -> Self {
        let mut series = BTreeSet::new();
        let mut families = BTreeSet::new();
        for line in scrapes.iter().flat_map(|scrape| scrape.lines()) {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let mut words = declared.split_whitespace();
                let (Some(family), Some(kind)) = (words.next(), words.next()) else { continue };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                series.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
                families.insert(family.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                series.insert(line[..end].to_string());
            }
        }
        Self { series, families }
    }

    fn knows(&self, named: &shipped::Named) -> bool {
        self.series.contains(&named.name) || (!named.in_query && self.families.contains(&named.name))
    }
}
