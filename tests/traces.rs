//! OpenTelemetry traces, end to end: real `nrl serve` processes (`testkit::nodes`) exporting over
//! OTLP/gRPC to a real receiver in this process (`testkit::otlp`: the collector's TraceService
//! from the published protos, on a real socket).
//!
//! 1. A FederatedSearch over a national and two regional nodes is one trace: the caller's trace
//!    (its `traceparent` and `tracestate`) when it sends one, else one the national node starts; a
//!    server span on every node, each regional one the child of the national node's client span
//!    for that region (the streaming variant too); every node named by its resource attributes; no
//!    NHS number anywhere.
//! 2. An invalid `traceparent`, or one whose ids hold an NHS number, starts a new trace; the FHIR
//!    listener continues the caller's trace as the gRPC one does.
//! 3. A collector that is not there, or that takes each export and never answers, neither fails
//!    nor slows a call (a span queue fills and drops, the call never waits), and shutdown still
//!    ends within its bound.

use nrl_registry::otel::{holds_nhs_number, SHUTDOWN_FLUSH};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::federated_locator_client::FederatedLocatorClient;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use testkit::eventually;
use testkit::fixtures::{input, new_patient, query, CRISIS_PLAN, NEWS2};
use testkit::nodes::{Federation, FederationPlan, NrlNode, START_LIMIT};
use testkit::otlp::{hex, ExportedSpan, OtlpReceiver};
use testkit::ports::free_ports;
use testkit::process::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Request;

const A: &str = "QWO";
const B: &str = "QF7";
const CUSTODIAN: &str = "RR8";
/// Spans are exported within a second of ending (the batch delay); this leaves room for a busy machine.
const EXPORTED_WITHIN: Duration = Duration::from_secs(15);
const FEDERATED_SEARCH: &str = "nrl.v1.FederatedLocator/FederatedSearch";
const SEARCH_POINTERS: &str = "nrl.v1.PointerRegistry/SearchPointers";

/// Random lower-case hex of `bytes` bytes, holding no NHS number (the nodes would refuse it).
fn random_id(bytes: usize) -> String {
    loop {
        let id = hex(&(0..bytes).map(|_| rand::random::<u8>()).collect::<Vec<_>>());
        if !holds_nhs_number(&id) && id.chars().any(|c| c != '0') {
            return id;
        }
    }
}

/// `request` with the caller's own trace context and a request id to find its spans by.
fn traced<T>(message: T, traceparent: Option<&str>, request_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(traceparent) = traceparent {
        request.metadata_mut().insert("traceparent", traceparent.parse().expect("traceparent"));
        request.metadata_mut().insert("tracestate", "nrl-test=t61rcWkgMzE".parse().expect("tracestate"));
    }
    request.metadata_mut().insert("x-request-id", request_id.parse().expect("request id"));
    request
}

/// Ten digits in a row: an NHS number, in any text that left a node.
fn ten_digits(text: &str) -> bool {
    text.as_bytes().windows(10).any(|w| w.iter().all(u8::is_ascii_digit))
}

/// No span received carries a run of ten digits or the patient's number in any text.
fn assert_no_patient_data(spans: &[ExportedSpan], patients: &[&str]) {
    assert!(!spans.is_empty(), "no spans to check");
    for span in spans {
        for text in span.texts() {
            assert!(!ten_digits(&text), "ten digits in a row left a node in span {:?}: {text:?}", span.span.name);
            for patient in patients {
                assert!(!text.contains(patient), "the patient left a node in span {:?}: {text:?}", span.span.name);
            }
        }
    }
}

/// The one span a node exported for the call sent with `request_id`, named `name`.
fn span_of<'a>(
    spans: &'a [ExportedSpan],
    name: &str,
    request_id: &str,
    node: &str,
) -> Result<&'a ExportedSpan, String> {
    let mut found = spans.iter().filter(|s| {
        s.span.name == name && s.attribute("request_id").as_deref() == Some(request_id) && node_of(s) == node
    });
    match (found.next(), found.next()) {
        (Some(span), None) => Ok(span),
        (None, _) => Err(format!("no {name} span from {node} for {request_id} yet")),
        (Some(_), Some(_)) => Err(format!("two {name} spans from {node} for {request_id}")),
    }
}

/// How a span's resource names its node: `national`, or `regional QWO`.
fn node_of(span: &ExportedSpan) -> String {
    let role = span.resource.get("nrl.node.role").cloned().unwrap_or_default();
    match span.resource.get("nrl.node.regions") {
        Some(regions) => format!("{role} {regions}"),
        None => role,
    }
}

/// The spans of one FederatedSearch, found by its request id once every node has exported its
/// part: the national server span, its client span per region, and each region's server span.
struct SearchTrace {
    national: ExportedSpan,
    clients: BTreeMap<String, ExportedSpan>,
    regional: BTreeMap<String, ExportedSpan>,
}

async fn search_trace(receiver: &OtlpReceiver, method: &str, request_id: &str) -> SearchTrace {
    let (trace, _) = eventually(&format!("the spans of {method} {request_id}"), EXPORTED_WITHIN, || async {
        let spans = receiver.spans();
        let national = span_of(&spans, method, request_id, "national")?.clone();
        let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id() == national.trace_id()).collect();
        let mut clients = BTreeMap::new();
        let mut regional = BTreeMap::new();
        for region in [A, B] {
            let client = in_trace
                .iter()
                .find(|s| s.span.name == SEARCH_POINTERS && s.attribute("nrl.region").as_deref() == Some(region))
                .ok_or(format!("no client span for {region} yet"))?;
            clients.insert(region.to_string(), (*client).clone());
            let server = span_of(&spans, SEARCH_POINTERS, request_id, &format!("regional {region}"))?;
            regional.insert(region.to_string(), server.clone());
        }
        Ok(SearchTrace { national, clients, regional })
    })
    .await;
    trace
}

async fn register(channel: Channel, patient: &str, region: &str, type_code: &str) {
    let request = pb::CreatePointerRequest { pointer: Some(input(patient, region, CUSTODIAN, type_code)) };
    PointerRegistryClient::new(channel).create_pointer(request).await.expect("create a pointer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_search_is_one_trace_with_a_span_on_every_node() {
    let receiver = OtlpReceiver::start().await;
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.common_args = vec!["--otlp-endpoint".into(), receiver.endpoint()];
    let federation = Federation::start(plan).await;
    let patient = new_patient();
    register(federation.node(A).channel(), &patient, A, CRISIS_PLAN).await;
    register(federation.node(B).channel(), &patient, B, NEWS2).await;
    let national = federation.national.channel();
    eventually("both regions in the national index", Duration::from_secs(10), || {
        let (channel, patient) = (national.clone(), patient.clone());
        async move {
            let request = pb::LocatePatientRequest { nhs_number: patient };
            let located = RecordLocatorClient::new(channel).locate_patient(request).await.map_err(|s| s.to_string())?;
            (located.into_inner().regions.len() == 2).then_some(()).ok_or("not yet both".to_string())
        }
    })
    .await;

    // The caller's trace: sampled, with a tracestate the nodes must carry along.
    let (trace_id, caller_span) = (random_id(16), random_id(8));
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let search = pb::FederatedSearchRequest { query: Some(query(&patient)), target_regions: vec![], deadline_ms: 5000 };
    let mut client = FederatedLocatorClient::new(national.clone());
    let answer = client
        .federated_search(traced(search.clone(), Some(&traceparent), "otel-caller-trace"))
        .await
        .expect("FederatedSearch")
        .into_inner();
    assert_eq!(answer.overall, pb::OverallOutcome::Success as i32);
    assert_eq!(answer.pointers.len(), 2);
    let trace = search_trace(&receiver, FEDERATED_SEARCH, "otel-caller-trace").await;

    assert_eq!(trace.national.trace_id(), trace_id, "the national node continues the caller's trace");
    assert_eq!(trace.national.parent_id(), caller_span, "its server span is the child of the caller's span");
    let nodes: BTreeSet<String> =
        std::iter::once(&trace.national).chain(trace.regional.values()).map(node_of).collect();
    assert_eq!(nodes, BTreeSet::from(["national".into(), format!("regional {A}"), format!("regional {B}")]));
    for region in [A, B] {
        let (client_span, server) = (&trace.clients[region], &trace.regional[region]);
        for span in [client_span, server] {
            assert_eq!(span.trace_id(), trace_id, "{region}: one trace across the nodes");
            assert_eq!(span.span.trace_state, "nrl-test=t61rcWkgMzE", "{region}: the caller's tracestate travels");
        }
        assert_eq!(node_of(client_span), "national");
        assert_eq!(client_span.parent_id(), trace.national.span_id(), "{region}: the ask is within the search");
        assert_eq!(client_span.span.kind, 3, "{region}: a client span (SPAN_KIND_CLIENT)");
        assert_eq!(
            server.parent_id(),
            client_span.span_id(),
            "{region}: the region's span is the national ask's child"
        );
        assert_eq!(server.span.kind, 2, "{region}: a server span (SPAN_KIND_SERVER)");
        assert_eq!(server.attribute("rpc.grpc.status_code").as_deref(), Some("0"));
        assert_eq!(server.resource.get("service.name").map(String::as_str), Some("nrl-registry"));
    }
    assert_eq!(trace.national.attribute("rpc.service").as_deref(), Some("nrl.v1.FederatedLocator"));
    assert_eq!(trace.national.attribute("rpc.method").as_deref(), Some("FederatedSearch"));

    // No traceparent: the national node starts the trace, and it still spans the three nodes.
    client.federated_search(traced(search.clone(), None, "otel-root-trace")).await.expect("FederatedSearch");
    let trace = search_trace(&receiver, FEDERATED_SEARCH, "otel-root-trace").await;
    assert!(trace.national.parent_id().is_empty(), "a root on the national node");
    assert_ne!(trace.national.trace_id(), trace_id);
    for region in [A, B] {
        assert_eq!(trace.regional[region].trace_id(), trace.national.trace_id(), "{region} is in the same trace");
        assert_eq!(trace.regional[region].parent_id(), trace.clients[region].span_id());
    }

    // The streaming variant asks each region from a task of its own, still within the call's trace.
    let (stream_trace, stream_parent) = (random_id(16), random_id(8));
    let traceparent = format!("00-{stream_trace}-{stream_parent}-01");
    let mut stream = client
        .federated_search_stream(traced(search, Some(&traceparent), "otel-stream"))
        .await
        .expect("FederatedSearchStream")
        .into_inner();
    while stream.message().await.expect("a region's result").is_some() {}
    let trace = search_trace(&receiver, "nrl.v1.FederatedLocator/FederatedSearchStream", "otel-stream").await;
    assert_eq!((trace.national.trace_id(), trace.national.parent_id()), (stream_trace.clone(), stream_parent));
    for region in [A, B] {
        assert_eq!(trace.clients[region].parent_id(), trace.national.span_id(), "{region}: the ask is within the call");
        assert_eq!(trace.regional[region].trace_id(), stream_trace, "{region} is in the caller's trace");
        assert_eq!(trace.regional[region].parent_id(), trace.clients[region].span_id());
    }

    // Nothing that left any node, feed reads and all, names the patient.
    assert_no_patient_data(&receiver.spans(), &[&patient]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_trace_context_starts_a_new_trace_and_fhir_continues_the_callers() {
    let receiver = OtlpReceiver::start().await;
    let dir = TempDir::new("nrl-traces");
    let ports = free_ports(2);
    let fhir = format!("127.0.0.1:{}", ports[1]);
    let args = vec!["--otlp-endpoint".into(), receiver.endpoint(), "--fhir-listen".into(), fhir.clone()];
    let mut node = NrlNode::spawn("central", ports[0], args, dir.path());
    node.wait_serving(START_LIMIT).await;
    let mut registry = PointerRegistryClient::new(node.channel());
    let patient = new_patient();
    let search =
        || pb::SearchPointersRequest { query: Some(query(&patient)), page_size: 10, page_token: String::new() };

    // A well-formed one is continued; a malformed one, or one whose trace id holds the patient's
    // NHS number, is ignored: the call is answered as usual, in a trace of its own.
    let (trace_id, parent) = (random_id(16), random_id(8));
    let smuggled = format!("00-{patient}{}-{parent}-01", &random_id(11)[..22]);
    assert!(holds_nhs_number(&smuggled));
    let cases = [
        ("otel-good", format!("00-{trace_id}-{parent}-01"), true),
        ("otel-malformed", format!("00-{trace_id}-{parent}"), false),
        ("otel-zero", format!("00-{}-{parent}-01", "0".repeat(32)), false),
        ("otel-smuggled", smuggled, false),
    ];
    for (request_id, traceparent, _) in &cases {
        registry.search_pointers(traced(search(), Some(traceparent), request_id)).await.expect("SearchPointers");
    }
    let client = testkit::reqwest::Client::new();
    let (fhir_trace, fhir_parent) = (random_id(16), random_id(8));
    let answer = client
        .get(format!("http://{fhir}/FHIR/R4/metadata"))
        .header("traceparent", format!("00-{fhir_trace}-{fhir_parent}-01"))
        .header("x-request-id", "otel-fhir")
        .send()
        .await
        .expect("GET /metadata");
    assert_eq!(answer.status(), 200);
    // An extension method is the caller's own text: it must not leave in a span.
    let method = testkit::reqwest::Method::from_bytes(b"NHS9434765919").expect("an extension method");
    let odd = client.request(method, format!("http://{fhir}/FHIR/R4/metadata")).header("x-request-id", "otel-fhir-odd");
    let answer = odd.send().await.expect("an odd method");
    assert!(answer.status().is_client_error(), "{}", answer.status());

    let (spans, _) = eventually("every call's span exported", EXPORTED_WITHIN, || async {
        let spans = receiver.spans();
        for (request_id, _, _) in &cases {
            span_of(&spans, SEARCH_POINTERS, request_id, "central")?;
        }
        span_of(&spans, "FHIR capabilities", "otel-fhir", "central")?;
        spans
            .iter()
            .find(|s| s.attribute("request_id").as_deref() == Some("otel-fhir-odd"))
            .ok_or("no odd span yet")?;
        Ok(spans)
    })
    .await;
    for (request_id, _, continued) in &cases {
        let span = span_of(&spans, SEARCH_POINTERS, request_id, "central").expect("span");
        if *continued {
            assert_eq!((span.trace_id(), span.parent_id()), (trace_id.clone(), parent.clone()), "{request_id}");
        } else {
            assert!(span.parent_id().is_empty(), "{request_id}: a new root, got parent {}", span.parent_id());
            assert_ne!(span.trace_id(), trace_id, "{request_id}");
            assert!(!span.trace_id().contains(&patient), "{request_id}: the patient is not the trace id");
        }
    }
    let fhir_span = span_of(&spans, "FHIR capabilities", "otel-fhir", "central").expect("span");
    assert_eq!((fhir_span.trace_id(), fhir_span.parent_id()), (fhir_trace, fhir_parent), "FHIR continues the trace");
    assert_eq!(fhir_span.span.kind, 2, "a server span");
    assert_eq!(fhir_span.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(fhir_span.attribute("http.request.method").as_deref(), Some("GET"));
    let odd = spans.iter().find(|s| s.attribute("request_id").as_deref() == Some("otel-fhir-odd")).expect("span");
    assert_eq!(odd.attribute("http.request.method").as_deref(), Some("_OTHER"));
    assert_eq!(odd.attribute("method").as_deref(), Some("_OTHER"));
    assert_no_patient_data(&spans, &[&patient, "9434765919"]);
}

/// `calls` SearchPointers over `concurrency` tasks; every one must succeed. Returns the slowest.
async fn searches(channel: Channel, calls: usize, concurrency: usize) -> Duration {
    let patient = new_patient();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, patient) = (PointerRegistryClient::new(channel.clone()), patient.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..calls / concurrency {
                    let request = pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() };
                    let started = Instant::now();
                    client.search_pointers(request).await.expect("SearchPointers succeeds whatever the collector does");
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.expect("search task"));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_hangs_never_fails_or_slows_a_call_and_shutdown_stays_bounded() {
    let stalled = OtlpReceiver::stalling().await;
    let dir = TempDir::new("nrl-traces-down");
    let ports = free_ports(3);
    let nobody = format!("http://127.0.0.1:{}", ports[2]);
    let grace = ["--shutdown-grace-secs".to_string(), "1".into()];
    let mut down = NrlNode::spawn(
        "collector-down",
        ports[0],
        [&["--otlp-endpoint".into(), nobody][..], &grace].concat(),
        dir.path(),
    );
    let hung_args = [&["--otlp-endpoint".into(), stalled.endpoint()][..], &grace].concat();
    let mut hung = NrlNode::spawn("collector-hangs", ports[1], hung_args, dir.path());
    down.wait_serving(START_LIMIT).await;
    hung.wait_serving(START_LIMIT).await;

    // An export attempt takes at most 2 s and a connection attempt 1 s: a call that waited on
    // either would take that long. More spans than the queue holds go to the hung collector.
    let slowest = searches(down.channel(), 400, 4).await;
    assert!(slowest < Duration::from_millis(900), "slowest call with the collector down: {slowest:?}");
    let slowest = searches(hung.channel(), 3200, 8).await;
    assert!(slowest < Duration::from_millis(900), "slowest call with the collector hung: {slowest:?}");
    eventually("the hung collector was sent an export", EXPORTED_WITHIN, || async {
        (stalled.calls() > 0).then_some(()).ok_or(format!("{} export calls", stalled.calls()))
    })
    .await;
    eventually("the failed export is logged", EXPORTED_WITHIN, || async {
        let log = std::fs::read_to_string(down.log_path()).map_err(|e| e.to_string())?;
        log.contains("BatchSpanProcessor.ExportError").then_some(()).ok_or("no export error logged yet".to_string())
    })
    .await;

    // Draining takes up to the 1 s grace, then the flush up to its bound; and some slack.
    let bound = Duration::from_secs(1) + SHUTDOWN_FLUSH + Duration::from_secs(3);
    for node in [&mut down, &mut hung] {
        let (took, status) = node.terminate(bound).await;
        assert!(status.success(), "{} exited {status}\n{}", node.name, node.log_tail());
        // Whether the queue overflowed depends on the machine's speed; the calls were fast either way.
        let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        let dropped = log.lines().find(|l| l.contains("BatchSpanProcessor.SpansDropped")).unwrap_or("no spans dropped");
        eprintln!("{} stopped {took:?} after SIGTERM; {dropped}", node.name);
    }
}

#[test]
fn a_bad_endpoint_stops_the_server_with_status_64_naming_the_flag_or_the_variable() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = testkit::nodes::nrl_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--fhir-listen", "off"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run nrl serve");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(&["--otlp-endpoint", "collector:4317"], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(r#"--otlp-endpoint="collector:4317": the scheme must be http or https"#), "{stderr}");
    let (code, stderr) = run(&[], &[("NRL_OTLP_ENDPOINT", "http://user:hunter2@collector:4317")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("NRL_OTLP_ENDPOINT: must not hold credentials") && !stderr.contains("hunter2"), "{stderr}");
    let (code, stderr) = run(&["--otlp-endpoint", "http://127.0.0.1:4317"], &[("NRL_OTLP_SERVICE_NAME", "")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(r#"NRL_OTLP_SERVICE_NAME="": must be 1-64 characters"#), "{stderr}");
}
