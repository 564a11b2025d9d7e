//! The load-test kit, without timing anything: every ghz config in `loadtest/` is one real ghz
//! accepts and that resolves here (keys, call, data after template expansion, metadata,
//! durations), and the in-repo runner makes a small number of calls of each against a real
//! in-process server with no errors, while non-OK statuses are counted as errors. The raw gRPC
//! bodies `nrl-load frame` writes for h2load are checked byte for byte, and sent as plain HTTP/2
//! requests (as h2load sends them, no h2load needed) to get grpc-status 0. The FHIR search URIs
//! `loadtest/fhir.bash` gives `h2load --h1` are sent as plain HTTP/1.1 requests and answer the
//! seeded patients' Bundles.

use bytes::Bytes;
use nrl_registry::config::ServerConfig;
use nrl_registry::domain::NhsNumber;
use nrl_registry::load::config::{GHZ_KEYS, IGNORED_KEYS, UNSUPPORTED_KEYS};
use nrl_registry::load::frame;
use nrl_registry::load::prepare::{self, PrepareArgs, Target};
use nrl_registry::load::{run, GhzConfig, Overrides, Scenario};
use nrl_registry::proto::nrl::v1 as pb;
use pb::pointer_registry_client::PointerRegistryClient;
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tower_service::Service as _;

const PATIENTS: u64 = 60;

struct Server {
    addr: SocketAddr,
    /// The FHIR listener, when it is on.
    fhir: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(ServerConfig::for_tests()).await
    }

    /// With the FHIR listener on a port of its own, as `run.sh --fhir` serves it.
    async fn start_with_fhir() -> Self {
        let mut config = ServerConfig::for_tests();
        config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        Self::start_with(config).await
    }

    async fn start_with(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let fhir_bound = config.fhir.listen.map(|_| config.fhir.bound.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(nrl_registry::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let fhir = match fhir_bound {
            Some(bound) => Some(
                tokio::time::timeout(Duration::from_secs(10), bound.wait()).await.expect("the FHIR listener is bound"),
            ),
            None => None,
        };
        Self { addr, fhir, stop: Some(stop) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nrl-loadtest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("loadtest/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no configs in {}", dir.display());
    files
}

/// Registers 3 pointers for each of `PATIENTS` test-range patients, as `nrl seed` would, writes
/// their NHS numbers, and runs `prepare` into `dir`.
async fn seed_and_prepare(server: &Server, dir: &Path) {
    let patients: Vec<NhsNumber> =
        (999_000_000u64..).filter_map(NhsNumber::from_prefix).take(PATIENTS as usize).collect();
    let mut client = PointerRegistryClient::connect(server.url()).await.expect("connect");
    let pointers = patients
        .iter()
        .flat_map(|n| {
            (0..3).map(move |i| pb::PointerInput {
                nhs_number: n.to_string(),
                region: "QWO".into(),
                custodian: "RR8".into(),
                r#type: "736253002".into(),
                content: vec![pb::Content {
                    url: format!("https://qwo.example.nhs.uk/{n}/{i}"),
                    content_type: "application/pdf".into(),
                    format: "urn:nhs-ic:unstructured".into(),
                    retrieval_mechanism: pb::RetrievalMechanism::Ssp as i32,
                    stability: pb::Stability::Static as i32,
                }],
                producer_reference: format!("seed-{n}-{i}"),
                ..Default::default()
            })
        })
        .collect();
    let outcomes = client
        .batch_create_pointers(pb::BatchCreatePointersRequest { pointers })
        .await
        .expect("seed batch")
        .into_inner()
        .outcomes;
    assert!(outcomes.iter().all(|o| matches!(o.result, Some(pb::batch_outcome::Result::Created(_)))));
    let patients_file = dir.join("patients.txt");
    std::fs::write(&patients_file, patients.iter().map(|n| format!("{n}\n")).collect::<String>()).expect("write");
    let args = PrepareArgs {
        target: Target { server: server.url(), token: None, purpose: "direct-care".into() },
        patients_file,
        out_dir: dir.to_path_buf(),
        count: 20,
        custodian: "RR8".into(),
        batch_size: 10,
        batches: 3,
    };
    let written = prepare::prepare(&args).await.expect("prepare");
    assert_eq!(written.len(), 6);
}

#[test]
fn ghz_key_lists_are_consistent() {
    for key in IGNORED_KEYS.iter().chain(UNSUPPORTED_KEYS) {
        assert!(GHZ_KEYS.contains(key), "{key} is not a ghz key");
    }
}

#[tokio::test]
async fn every_config_is_valid_for_ghz_and_resolves_here() {
    let server = Server::start().await;
    let scratch = Scratch::new();
    seed_and_prepare(&server, &scratch.0).await;
    let mut calls = BTreeSet::new();
    for path in configs() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        let object = value.as_object().expect("an object");
        for key in object.keys() {
            assert!(GHZ_KEYS.contains(&key.as_str()), "{}: {key:?} is not a ghz config key", path.display());
        }
        // ghz needs these; durations are Go duration strings.
        for required in ["call", "host"] {
            assert!(object.get(required).is_some_and(Value::is_string), "{}: {required}", path.display());
        }
        assert_eq!(object.get("insecure"), Some(&Value::Bool(true)), "{}: plaintext server", path.display());
        for key in ["duration", "timeout", "max-duration", "connect-timeout"] {
            if let Some(d) = object.get(key) {
                let text = d.as_str().unwrap_or_else(|| panic!("{}: {key} must be a string", path.display()));
                nrl_registry::load::config::parse_go_duration(text)
                    .unwrap_or_else(|e| panic!("{}: {key}: {e}", path.display()));
            }
        }
        let config = GhzConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let overrides = Overrides { data_dir: Some(scratch.0.clone()), ..Overrides::default() };
        let scenario = Scenario::from_config(config, &overrides).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!scenario.payloads.is_empty());
        calls.insert(scenario.method.path.clone());
    }
    for rpc in [
        "/grpc.health.v1.Health/Check",
        "/nrl.v1.PointerRegistry/SearchPointers",
        "/nrl.v1.PointerRegistry/GetPointer",
        "/nrl.v1.PointerRegistry/CreatePointer",
        "/nrl.v1.PointerRegistry/BatchCreatePointers",
        "/nrl.v1.RecordLocator/LocatePatient",
    ] {
        assert!(calls.contains(rpc), "no scenario calls {rpc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_makes_200_calls_of_every_scenario_without_errors() {
    let server = Server::start().await;
    let scratch = Scratch::new();
    seed_and_prepare(&server, &scratch.0).await;
    for path in configs() {
        let overrides = Overrides {
            host: Some(server.addr.to_string()),
            total: Some(200),
            concurrency: Some(8),
            data_dir: Some(scratch.0.clone()),
            ..Overrides::default()
        };
        let scenario = Scenario::load(&path, &overrides).unwrap_or_else(|e| panic!("{e}"));
        let report = run(&scenario).await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(report.count, 200, "{}", path.display());
        assert_eq!(report.errors, 0, "{}: {:?}", path.display(), report.error_distribution);
        assert_eq!(report.status_code_distribution.get("OK"), Some(&200));
        assert!(report.fastest > 0 && report.fastest <= report.slowest);
        assert!(report.percentile(50.0).is_some_and(|p50| p50 > 0));
    }
    // The creates used a fresh producer_reference per call: 200 new pointers over the 20 create
    // patients, none of them an existing one returned again.
    let mut client = PointerRegistryClient::connect(server.url()).await.expect("connect");
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.0.join("create.json")).expect("create.json"))
            .expect("json");
    let mut created = 0;
    for entry in data.as_array().expect("array") {
        let nhs = entry["pointer"]["nhs_number"].as_str().expect("nhs").to_string();
        let query = pb::PointerQuery { nhs_number: nhs, ..Default::default() };
        created += client
            .count_pointers(pb::CountPointersRequest { query: Some(query) })
            .await
            .expect("count")
            .into_inner()
            .count;
    }
    // The create patients were not seeded: every pointer they hold is one of the 200.
    assert_eq!(created, 200);
}

#[tokio::test]
async fn non_ok_statuses_are_errors_with_their_codes() {
    let server = Server::start().await;
    let config = GhzConfig::from_value(&json!({
        "name": "forced-errors",
        "call": "nrl.v1.PointerRegistry/GetPointer",
        "host": server.addr.to_string(),
        "insecure": true,
        "total": 60,
        "concurrency": 3,
        "data": [{"id": "{{newUUID}}"}, {"id": "not-a-uuid"}, {"id": "{{newUUID}}"}],
        "metadata": {"x-purpose-of-use": "direct-care"}
    }))
    .expect("valid config");
    let scenario = Scenario::from_config(config, &Overrides::default()).expect("resolves");
    let report = run(&scenario).await.expect("runs");
    assert_eq!(report.count, 60);
    assert_eq!(report.errors, 60);
    assert_eq!(report.status_code_distribution.get("NotFound"), Some(&40));
    assert_eq!(report.status_code_distribution.get("InvalidArgument"), Some(&20));
    assert_eq!(report.status_code_distribution.get("OK"), None);
    assert!(report.error_distribution.keys().any(|e| e.starts_with("rpc error: code = NotFound desc = ")));
    // Latency figures cover OK calls only, as in ghz.
    assert_eq!(report.average, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rps_and_duration_bound_the_run() {
    let server = Server::start().await;
    let config = GhzConfig::from_value(&json!({
        "call": "grpc.health.v1.Health.Check",
        "host": server.addr.to_string(),
        "insecure": true,
        "concurrency": 4,
        "rps": 100,
        "duration": "1s",
        "duration-stop": "wait",
        "data": {"service": ""}
    }))
    .expect("valid config");
    let scenario = Scenario::from_config(config, &Overrides::default()).expect("resolves");
    let report = run(&scenario).await.expect("runs");
    assert_eq!(report.errors, 0);
    assert!((90..=100).contains(&report.count), "{} calls in 1 s at 100 rps", report.count);
    let wall = Duration::from_nanos(report.total);
    assert!(wall >= Duration::from_millis(980) && wall < Duration::from_secs(5), "{wall:?}");
}

#[tokio::test]
async fn a_config_ghz_would_misread_is_refused() {
    let wrong = json!({"call": "nrl.v1.PointerRegistry.SearchPointers", "host": "127.0.0.1:1", "insecure": true,
                       "concurency": 10, "duration": 10});
    let error = GhzConfig::from_value(&wrong).expect_err("refused");
    assert!(error.contains("concurency") && error.contains("duration"), "{error}");
    let bad_data = GhzConfig::from_value(&json!({"call": "nrl.v1.PointerRegistry.SearchPointers",
        "host": "127.0.0.1:1", "insecure": true, "total": 1, "concurrency": 1,
        "data": {"query": {"nhs_numbr": "9434765919"}}}))
    .expect("keys are fine");
    let error = Scenario::from_config(bad_data, &Overrides::default()).expect_err("data does not fit the request");
    assert!(error.contains("nhs_numbr"), "{error}");
}

#[tokio::test]
async fn fill_registers_whole_batches_and_is_idempotent() {
    let server = Server::start().await;
    let scratch = Scratch::new();
    let excluded: Vec<NhsNumber> = (999_000_000u64..).filter_map(NhsNumber::from_prefix).take(5).collect();
    let exclude = scratch.0.join("exclude.txt");
    std::fs::write(&exclude, excluded.iter().map(|n| format!("{n}\n")).collect::<String>()).expect("write");
    let args = prepare::FillArgs {
        target: Target { server: server.url(), token: None, purpose: "direct-care".into() },
        pointers: 2500,
        // 12 per patient does not divide 1000: batches must still stay within the server's limit.
        per_patient: 12,
        exclude: vec![exclude],
        batch_size: 1000,
        concurrency: 2,
        custodian: "RR8".into(),
    };
    let first = prepare::fill(&args).await.expect("fill");
    assert_eq!((first.created, first.existing, first.failed), (2500, 0, 0), "{first:?}");
    assert_eq!(first.patients, 209);
    let again = prepare::fill(&args).await.expect("fill again");
    assert_eq!((again.created, again.existing, again.failed), (0, 2500, 0), "{again:?}");
    let mut client = PointerRegistryClient::connect(server.url()).await.expect("connect");
    for nhs in excluded {
        let query = pb::PointerQuery { nhs_number: nhs.to_string(), ..Default::default() };
        let count = client.count_pointers(pb::CountPointersRequest { query: Some(query) }).await.expect("count");
        assert_eq!(count.into_inner().count, 0, "an excluded patient was filled");
    }
}

/// `loadtest/NAME` (a config file of the suite).
fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest").join(name)
}

/// The 5-byte prefix of a body: the compressed flag and the big-endian length.
fn prefix(body: &[u8]) -> (u8, usize) {
    assert!(body.len() >= 5, "{body:?}");
    (body[0], u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize)
}

#[test]
fn framed_bodies_are_a_zero_flag_a_big_endian_length_and_the_request() {
    let scratch = Scratch::new();
    let patients = ["9434765919", "9434765870"];
    let data: Vec<Value> = patients.iter().map(|n| json!({"query": {"nhs_number": n}})).collect();
    std::fs::write(scratch.0.join("search-hit.json"), Value::Array(data).to_string()).expect("write data");
    let overrides = Overrides { data_dir: Some(scratch.0.clone()), ..Overrides::default() };
    let scenario = Scenario::load(&config("search-hit.json"), &overrides).unwrap_or_else(|e| panic!("{e}"));
    for (n, nhs) in [(0, patients[0]), (1, patients[1]), (2, patients[0])] {
        let framed = frame::framed(&scenario, n).expect("frames");
        let (flag, length) = prefix(&framed.body);
        assert_eq!(flag, 0, "uncompressed");
        assert_eq!(length, framed.body.len() - 5);
        assert!(length > 10, "an NHS number is in it");
        let request = pb::SearchPointersRequest::decode(&framed.body[5..]).expect("a SearchPointersRequest");
        let expected = pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { nhs_number: nhs.into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(request, expected, "call {n}: data message {n} mod 2");
        assert_eq!(framed.method.path, "/nrl.v1.PointerRegistry/SearchPointers");
        assert_eq!(framed.metadata, [("x-purpose-of-use".to_string(), "direct-care".to_string())]);
        let decoded = frame::decode_request(&scenario.method, &framed.body).expect("decodes back");
        assert_eq!(decoded, json!({"query": {"nhsNumber": nhs}}));
    }
    // The bare baseline's request is the empty message: five zero bytes.
    let health = Scenario::load(&config("health.json"), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    let framed = frame::framed(&health, 0).expect("frames");
    assert_eq!(framed.body, [0, 0, 0, 0, 0]);
    assert!(framed.metadata.is_empty());
    // A body that is not exactly one uncompressed message is refused rather than misread.
    let mut compressed = frame::frame(b"\x0a\x00").expect("frames");
    compressed[0] = 1;
    assert!(frame::decode_request(&scenario.method, &compressed).is_err());
    let mut long = frame::frame(b"").expect("frames");
    long.push(0);
    assert!(frame::decode_request(&scenario.method, &long).is_err());
}

#[test]
fn nrl_load_frame_writes_the_body_and_prints_path_and_headers() {
    let scratch = Scratch::new();
    let data = json!([{"id": "0190f1c5-4b2a-7c3d-8e4f-5a6b7c8d9e0f"}]);
    std::fs::write(scratch.0.join("get.json"), data.to_string()).expect("write data");
    let out = scratch.0.join("get.bin");
    let nrl_load = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nrl-load")).args(args).output().expect("runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "nrl-load {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
    };
    let config = config("get.json");
    let (config, dir, out_text) =
        (config.to_str().expect("utf-8"), scratch.0.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let summary =
        nrl_load(&["frame", config, "--data-dir", dir, "--out", out_text, "-m", "authorization=Bearer t0ken"]);
    assert_eq!(summary["path"], "/nrl.v1.PointerRegistry/GetPointer");
    assert_eq!(summary["call"], "nrl.v1.PointerRegistry.GetPointer");
    assert_eq!(summary["headers"], json!(["x-purpose-of-use: direct-care", "authorization: Bearer t0ken"]));
    let body = std::fs::read(&out).expect("the body was written");
    assert_eq!(summary["body_bytes"], body.len());
    assert_eq!(prefix(&body), (0, body.len() - 5));
    let request = pb::GetPointerRequest::decode(&body[5..]).expect("a GetPointerRequest");
    assert_eq!(request.id, "0190f1c5-4b2a-7c3d-8e4f-5a6b7c8d9e0f");
    // And back: `unframe --request` prints the request as proto3 JSON.
    let decoded = nrl_load(&["unframe", config, out_text, "--request", "--data-dir", dir]);
    assert_eq!(decoded, data[0]);
}

/// A body with a single data frame, as h2load sends `--data`.
struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}

struct RawAnswer {
    http_status: u16,
    /// From the trailers, or from the headers of a Trailers-Only answer.
    grpc_status: Option<String>,
    body: Vec<u8>,
}

/// One POST of a pre-framed body over HTTP/2 cleartext: no gRPC library on the request side,
/// which is what h2load does.
async fn raw_post(server: &Server, path: &str, body: Vec<u8>, headers: &[(String, String)]) -> RawAnswer {
    let mut channel =
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect");
    let mut request = http::Request::post(format!("{}{path}", server.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (key, value) in headers {
        request = request.header(key, value);
    }
    let request = request.body(tonic::body::Body::new(OneFrame(Some(Bytes::from(body))))).expect("request");
    futures::future::poll_fn(|cx| channel.poll_ready(cx)).await.expect("ready");
    let response = channel.call(request).await.expect("an HTTP/2 answer");
    let http_status = response.status().as_u16();
    let mut grpc_status = response.headers().get("grpc-status").map(|v| v.to_str().expect("ascii").to_string());
    let mut body = std::pin::pin!(response.into_body());
    let mut data = Vec::new();
    while let Some(frame) = futures::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await {
        match frame.expect("body frame").into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    grpc_status = trailers.get("grpc-status").map(|v| v.to_str().expect("ascii").to_string());
                }
            }
        }
    }
    RawAnswer { http_status, grpc_status, body: data }
}

#[tokio::test]
async fn framed_bodies_sent_as_plain_http2_get_grpc_status_0() {
    let server = Server::start().await;
    let scratch = Scratch::new();
    seed_and_prepare(&server, &scratch.0).await;
    let overrides = Overrides { data_dir: Some(scratch.0.clone()), ..Overrides::default() };
    for (name, check) in [
        ("health.json", "status"),
        ("search-hit.json", "pointers"),
        ("get.json", "pointer"),
        ("locate.json", "regions"),
    ] {
        let scenario = Scenario::load(&config(name), &overrides).unwrap_or_else(|e| panic!("{e}"));
        let framed = frame::framed(&scenario, 0).expect("frames");
        let answer = raw_post(&server, &framed.method.path, framed.body.clone(), &framed.metadata).await;
        assert_eq!((answer.http_status, answer.grpc_status.as_deref()), (200, Some("0")), "{name}");
        let response = frame::decode_response(&framed.method, &answer.body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(response.get(check).is_some(), "{name}: {response}");
        if name == "search-hit.json" {
            assert_eq!(response["pointers"].as_array().map(Vec::len), Some(3), "a seeded patient has 3 pointers");
        }
    }
    // With a purpose of use the server does not know, the same body is refused, and HTTP still
    // says 200: only grpc-status tells an error from an answer, which is why run.sh checks it (and
    // the server's own count of non-OK calls) before it trusts h2load's figures.
    let scenario = Scenario::load(&config("search-hit.json"), &overrides).unwrap_or_else(|e| panic!("{e}"));
    let framed = frame::framed(&scenario, 0).expect("frames");
    let bad_purpose = [("x-purpose-of-use".to_string(), "curiosity".to_string())];
    let answer = raw_post(&server, &framed.method.path, framed.body, &bad_purpose).await;
    assert_eq!(answer.http_status, 200);
    assert_eq!(answer.grpc_status.as_deref(), Some("3"), "INVALID_ARGUMENT");
    assert!(answer.body.is_empty(), "no message, only the status");
}

/// One HTTP/1.1 GET of `path_and_query` with `headers`, as `h2load --h1` sends it: (status, body).
async fn http1_get(addr: SocketAddr, path_and_query: &str, headers: &[&str]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8(answer).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers, then a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

#[tokio::test]
async fn fhir_search_uris_as_fhir_bash_writes_them_answer_each_patients_bundle() {
    // The URI and headers fhir.bash gives h2load --h1; this test sends exactly those.
    let script = std::fs::read_to_string(config("fhir.bash")).expect("loadtest/fhir.bash");
    let search = "/DocumentReference?subject:identifier=https://fhir.nhs.uk/Id/nhs-number%7C";
    let headers = ["accept: application/fhir+json", "x-purpose-of-use: direct-care"];
    assert!(script.contains(search), "fhir.bash no longer builds its URIs as {search}N");
    for header in headers {
        assert!(script.contains(&format!("'{header}'")), "fhir.bash no longer sends {header}");
    }
    let server = Server::start_with_fhir().await;
    let fhir = server.fhir.expect("FHIR on");
    let scratch = Scratch::new();
    seed_and_prepare(&server, &scratch.0).await;
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.0.join("search-hit.json")).expect("search-hit.json"))
            .expect("json");
    for entry in data.as_array().expect("array").iter().take(5) {
        let nhs = entry["query"]["nhs_number"].as_str().expect("nhs");
        let (status, bundle) = http1_get(fhir, &format!("/FHIR/R4{search}{nhs}"), &headers).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!((bundle["resourceType"].as_str(), bundle["type"].as_str()), (Some("Bundle"), Some("searchset")));
        assert_eq!(bundle["total"], 3, "a seeded patient has 3 pointers");
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 3);
        for e in entries {
            assert_eq!(e["resource"]["resourceType"], "DocumentReference");
            assert_eq!(e["resource"]["subject"]["identifier"]["value"], nhs);
        }
    }
    // The HTTP baseline.
    let (status, body) = http1_get(fhir, "/FHIR/R4/_status", &headers).await;
    assert_eq!((status, body), (200, json!({"message": "OK"})));
    // A FHIR error is an HTTP error (h2load counts it as 4xx, and run.sh stops), never a 200.
    let (status, outcome) = http1_get(fhir, &format!("/FHIR/R4{search}9434765919&colour=blue"), &headers).await;
    assert_eq!(status, 400);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["details"]["coding"][0]["code"], "INVALID_PARAMETER");
}
