//! Hostile input at every RPC's validation and conversion.
//!
//! - Property tests build well-typed but hostile messages for every request type (`strategies`:
//!   random and huge unicode, control characters, near-valid values, unknown and negative enum
//!   values, extreme timestamps, many repeated fields, empty nested messages) and run them through
//!   the public conversions in `nrl_registry::api::conversions` exactly as the handlers do: nothing
//!   panics, and every error is INVALID_ARGUMENT naming a field path that its message starts with.
//! - Arbitrary bytes (and mutated encodings of valid messages) are decoded with prost as each
//!   request type; whatever decodes goes through the same conversions.
//! - Over the wire: raw gRPC frames of random bytes, and broken framing, to every method of a real
//!   server. Each gets a gRPC status, never INTERNAL (a broken request is INVALID_ARGUMENT naming
//!   its type, on every RPC); the server keeps serving.

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame};
use nrl_registry::api::grpc::conversions as conv;
use nrl_registry::config::StoreConfig;
use nrl_registry::domain::query::encode_page_token;
use nrl_registry::domain::PointerId;
use nrl_registry::domain::ReferenceData;
use nrl_registry::error::RegistryError;
use nrl_registry::proto::nrl::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use testkit::fixtures::{input, query};
use testkit::TestServer;
use tonic::Status;
use tower_service::Service;

mod strategies;

use strategies::{hostile_request, Hostile};

fn reference() -> &'static ReferenceData {
    static REFERENCE: OnceLock<ReferenceData> = OnceLock::new();
    REFERENCE.get_or_init(ReferenceData::default)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

// ---------------------------------------------------------------------------------------------
// The conversions, as each handler runs them
// ---------------------------------------------------------------------------------------------

/// A field path: `name`, `name[3]`, `a.b[0].c`.
fn is_field_path(field: &str) -> bool {
    !field.is_empty()
        && field.split('.').all(|segment| {
            let (name, index) = match segment.split_once('[') {
                Some((name, rest)) => (name, Some(rest)),
                None => (segment, None),
            };
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && index.is_none_or(|i| {
                    i.strip_suffix(']')
                        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                })
        })
}

thread_local! {
    // Per test thread: the runner runs its cases on the calling thread.
    static ERRORS: Cell<usize> = const { Cell::new(0) };
    static ACCEPTED: Cell<usize> = const { Cell::new(0) };
}

/// Every error: INVALID_ARGUMENT, a field path, the message starting with it, short, and the same
/// once it is a gRPC status.
fn check<T>(what: &str, result: Result<T, RegistryError>) -> Result<Option<T>, TestCaseError> {
    let error = match result {
        Ok(value) => {
            ACCEPTED.set(ACCEPTED.get() + 1);
            return Ok(Some(value));
        }
        Err(error) => error,
    };
    ERRORS.set(ERRORS.get() + 1);
    prop_assert!(matches!(error, RegistryError::InvalidArgument { .. }), "{what}: not INVALID_ARGUMENT: {error:?}");
    let field = error.field().unwrap_or_default().to_string();
    prop_assert!(is_field_path(&field), "{what}: the field {field:?} is not a field path ({error:?})");
    let message = error.to_string();
    prop_assert!(message.starts_with(&format!("{field}: ")), "{what}: {message:?} does not start with {field:?}");
    prop_assert!(
        message.chars().count() <= 200,
        "{what}: the message echoes the input ({} chars)",
        message.chars().count()
    );
    let status = Status::from(error);
    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
    prop_assert_eq!(status.message(), message.as_str());
    Ok(None)
}

/// What a valid query's page tokens look like, genuine and tampered.
fn page_tokens(q: &nrl_registry::domain::query::PointerQuery) -> Vec<String> {
    let id = PointerId::parse("01a1fc3a-6f28-71e3-88f2-aaaa922566b9").expect("uuid");
    let genuine = encode_page_token(q, id);
    let mut other = q.clone();
    other.include_superseded = !other.include_superseded;
    let foreign = encode_page_token(&other, id);
    let mut flipped = genuine.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    vec![
        genuine.clone(),
        foreign,
        String::from_utf8(flipped).expect("ascii"),
        format!("{genuine}="),
        genuine[..10].to_string(),
    ]
}

fn convert(request: &Hostile) -> Result<(), TestCaseError> {
    let r = reference();
    match request {
        Hostile::Create(req) => {
            check("create", conv::draft(req.pointer.as_ref(), "pointer", r))?;
        }
        Hostile::Get(req) => {
            check("get", conv::pointer_id(&req.id, "id"))?;
        }
        Hostile::Update(req) => {
            check("update id", conv::pointer_id(&req.id, "id"))?;
            check("update pointer", conv::draft(req.pointer.as_ref(), "pointer", r))?;
        }
        Hostile::Delete(req) => {
            check("delete", conv::pointer_id(&req.id, "id"))?;
        }
        Hostile::Supersede(req) => {
            check("supersede pointer", conv::draft(req.pointer.as_ref(), "pointer", r))?;
            check("supersedes", conv::supersedes(&req.supersedes))?;
        }
        Hostile::Search(req) => {
            if let Some(q) = check("search query", conv::query(req.query.as_ref(), r))? {
                check("page", conv::page_request(req.page_size, &req.page_token, &q))?;
                for token in page_tokens(&q) {
                    check("page token", conv::page_request(req.page_size, &token, &q))?;
                }
            }
        }
        Hostile::Count(req) => {
            check("count query", conv::query(req.query.as_ref(), r))?;
        }
        Hostile::Batch(req) => {
            // Entry errors name the field relative to the entry.
            for pointer in &req.pointers {
                check("batch entry", conv::draft(Some(pointer), "", r))?;
            }
        }
        Hostile::Locate(req) => {
            check("locate", conv::nhs_number(&req.nhs_number, "nhs_number"))?;
        }
        Hostile::SetRestriction(req) => {
            check("set restriction", conv::nhs_number(&req.nhs_number, "nhs_number"))?;
        }
        Hostile::GetRestriction(req) => {
            check("get restriction", conv::nhs_number(&req.nhs_number, "nhs_number"))?;
        }
        Hostile::AccessLog(req) => {
            check("access log", conv::nhs_number(&req.nhs_number, "nhs_number"))?;
        }
        Hostile::Export(_) => {}
    }
    Ok(())
}

fn encode(request: &Hostile) -> Vec<u8> {
    match request {
        Hostile::Create(m) => m.encode_to_vec(),
        Hostile::Get(m) => m.encode_to_vec(),
        Hostile::Update(m) => m.encode_to_vec(),
        Hostile::Delete(m) => m.encode_to_vec(),
        Hostile::Supersede(m) => m.encode_to_vec(),
        Hostile::Search(m) => m.encode_to_vec(),
        Hostile::Count(m) => m.encode_to_vec(),
        Hostile::Batch(m) => m.encode_to_vec(),
        Hostile::Locate(m) => m.encode_to_vec(),
        Hostile::SetRestriction(m) => m.encode_to_vec(),
        Hostile::GetRestriction(m) => m.encode_to_vec(),
        Hostile::AccessLog(m) => m.encode_to_vec(),
        Hostile::Export(m) => m.encode_to_vec(),
    }
}

/// Decodes `bytes` as every request type; each that decodes is converted. Returns how many decoded.
fn decode_everything(bytes: &[u8]) -> Result<usize, TestCaseError> {
    let decoded: Vec<Hostile> = [
        pb::CreatePointerRequest::decode(bytes).ok().map(Hostile::Create),
        pb::GetPointerRequest::decode(bytes).ok().map(Hostile::Get),
        pb::UpdatePointerRequest::decode(bytes).ok().map(Hostile::Update),
        pb::DeletePointerRequest::decode(bytes).ok().map(Hostile::Delete),
        pb::SupersedePointerRequest::decode(bytes).ok().map(Hostile::Supersede),
        pb::SearchPointersRequest::decode(bytes).ok().map(Hostile::Search),
        pb::CountPointersRequest::decode(bytes).ok().map(Hostile::Count),
        pb::BatchCreatePointersRequest::decode(bytes).ok().map(Hostile::Batch),
        pb::LocatePatientRequest::decode(bytes).ok().map(Hostile::Locate),
        pb::SetRestrictionRequest::decode(bytes).ok().map(Hostile::SetRestriction),
        pb::GetRestrictionRequest::decode(bytes).ok().map(Hostile::GetRestriction),
        pb::GetAccessLogRequest::decode(bytes).ok().map(Hostile::AccessLog),
        pb::StreamAuditEventsRequest::decode(bytes).ok().map(Hostile::Export),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = pb::ListRegionsRequest::decode(bytes);
    let _ = pb::ListPointerTypesRequest::decode(bytes);
    for request in &decoded {
        convert(request)?;
    }
    Ok(decoded.len())
}

/// Spoils an encoding: flips bytes, truncates, duplicates a slice.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (at, value) in edits {
        let i = at % bytes.len();
        bytes[i] ^= value;
    }
    if let Some(cut) = cut {
        let cut = cut % (bytes.len() + 1);
        let tail = bytes[cut..].to_vec();
        bytes.truncate(cut);
        bytes.extend_from_slice(&tail[..tail.len() / 2]);
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_messages_never_panic_and_every_error_names_its_field() {
    let started = Instant::now();
    let mut runner = runner(1500);
    runner.run(&hostile_request(), |request| convert(&request)).unwrap_or_else(|e| panic!("{e}"));
    let (errors, accepted) = (ERRORS.get(), ACCEPTED.get());
    println!("hostile messages: {errors} rejections and {accepted} acceptances checked in {:?}", started.elapsed());
    assert!(errors > 1000, "the strategies must reach the validation ({errors} errors)");
    assert!(accepted > 100, "and some inputs must pass it, or the later checks go untested ({accepted})");
}

#[test]
fn arbitrary_bytes_decode_and_convert_without_panicking() {
    let started = Instant::now();
    let mut decoded = 0usize;
    runner(3000)
        .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
            decode_everything(&bytes)?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mutated =
        (hostile_request(), prop::collection::vec((any::<usize>(), 1..=255u8), 0..4), prop::option::of(any::<usize>()));
    let count = AtomicUsize::new(0);
    runner(1500)
        .run(&mutated, |(request, edits, cut)| {
            let n = decode_everything(&mutate(encode(&request), &edits, cut))?;
            count.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    decoded += count.load(Ordering::Relaxed);
    println!("arbitrary bytes: {decoded} decodable mutated messages converted in {:?}", started.elapsed());
    assert!(decoded > 1000, "mutated encodings should often still decode ({decoded})");
}

// ---------------------------------------------------------------------------------------------
// Over the wire
// ---------------------------------------------------------------------------------------------

const METHODS: &[&str] = &[
    "/nrl.v1.PointerRegistry/CreatePointer",
    "/nrl.v1.PointerRegistry/GetPointer",
    "/nrl.v1.PointerRegistry/UpdatePointer",
    "/nrl.v1.PointerRegistry/DeletePointer",
    "/nrl.v1.PointerRegistry/SupersedePointer",
    "/nrl.v1.PointerRegistry/SearchPointers",
    "/nrl.v1.PointerRegistry/CountPointers",
    "/nrl.v1.PointerRegistry/BatchCreatePointers",
    "/nrl.v1.RecordLocator/LocatePatient",
    "/nrl.v1.RecordLocator/ListRegions",
    "/nrl.v1.RecordLocator/ListPointerTypes",
    "/nrl.v1.PatientAdmin/SetRestriction",
    "/nrl.v1.PatientAdmin/GetRestriction",
    "/nrl.v1.AuditLog/GetAccessLog",
    "/nrl.v1.AuditLog/StreamAuditEvents",
];

/// Does `bytes` decode as the request type of `method`? (StreamAuditEvents: and does it follow?)
fn decodes_as(method: &str, bytes: &[u8]) -> (bool, bool) {
    let ok = match method.rsplit('/').next().unwrap_or_default() {
        "CreatePointer" => pb::CreatePointerRequest::decode(bytes).is_ok(),
        "GetPointer" => pb::GetPointerRequest::decode(bytes).is_ok(),
        "UpdatePointer" => pb::UpdatePointerRequest::decode(bytes).is_ok(),
        "DeletePointer" => pb::DeletePointerRequest::decode(bytes).is_ok(),
        "SupersedePointer" => pb::SupersedePointerRequest::decode(bytes).is_ok(),
        "SearchPointers" => pb::SearchPointersRequest::decode(bytes).is_ok(),
        "CountPointers" => pb::CountPointersRequest::decode(bytes).is_ok(),
        "BatchCreatePointers" => pb::BatchCreatePointersRequest::decode(bytes).is_ok(),
        "LocatePatient" => pb::LocatePatientRequest::decode(bytes).is_ok(),
        "ListRegions" => pb::ListRegionsRequest::decode(bytes).is_ok(),
        "ListPointerTypes" => pb::ListPointerTypesRequest::decode(bytes).is_ok(),
        "SetRestriction" => pb::SetRestrictionRequest::decode(bytes).is_ok(),
        "GetRestriction" => pb::GetRestrictionRequest::decode(bytes).is_ok(),
        "GetAccessLog" => pb::GetAccessLogRequest::decode(bytes).is_ok(),
        "StreamAuditEvents" => pb::StreamAuditEventsRequest::decode(bytes).is_ok(),
        other => panic!("unknown method {other}"),
    };
    let follows =
        method.ends_with("StreamAuditEvents") && pb::StreamAuditEventsRequest::decode(bytes).is_ok_and(|r| r.follow);
    (ok, follows)
}

/// A request body of exactly these bytes.
struct OneShot(Option<Bytes>);

impl http_body::Body for OneShot {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

fn frame(flag: u8, declared: u32, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(flag);
    buf.put_u32(declared);
    buf.put_slice(payload);
    buf.freeze()
}

/// How the server answered a raw call: the grpc-status and grpc-message (None: the response stream
/// was still open when we stopped reading).
async fn raw_call(
    channel: &mut tonic::transport::Channel,
    method: &str,
    body: Bytes,
) -> Result<Option<(i32, String)>, String> {
    let request = http::Request::builder()
        .method("POST")
        .uri(method)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(OneShot(Some(body))))
        .map_err(|e| e.to_string())?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| format!("channel not ready: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), channel.call(request))
        .await
        .map_err(|_| "no response headers within 10 s".to_string())?
        .map_err(|e| format!("transport error: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let status = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        Some((code, headers.get("grpc-message").map(|m| percent_decoded(m.as_bytes())).unwrap_or_default()))
    };
    if let Some(answer) = status(response.headers()) {
        return Ok(Some(answer));
    }
    let mut body = response.into_body();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let next =
            tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))).await;
        match next {
            Err(_) => return Ok(None),
            Ok(None) => return Err("the response ended without a grpc-status".into()),
            Ok(Some(Err(e))) => return Err(format!("response body error: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return status(&trailers).map(Some).ok_or("trailers without a (numeric) grpc-status".into());
                }
            }
        }
    }
}

/// A grpc-message header's text (percent-encoded on the wire).
fn percent_decoded(mut bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    while let Some((&byte, rest)) = bytes.split_first() {
        let hex = rest.get(..2).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => (out.push(decoded), bytes = &rest[2..]),
            _ => (out.push(byte), bytes = rest),
        };
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_of_random_bytes_get_a_grpc_status_and_the_server_keeps_serving() {
    let server = TestServer::start(StoreConfig::Memory).await;
    let mut channel = server.channel.clone();
    let started = Instant::now();
    let mut answered = std::collections::BTreeMap::<i32, usize>::new();
    let mut failures = Vec::new();
    for method in METHODS {
        for round in 0..40u32 {
            let len = if round % 8 == 0 { 0 } else { rand::random_range(1..600usize) };
            let payload: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            // Rounds 0-29: well-framed random payloads. 30-39: broken framing.
            let (body, must_fail, follows) = match round {
                0..30 => {
                    let (decodes, follows) = decodes_as(method, &payload);
                    (frame(0, payload.len() as u32, &payload), !decodes, follows)
                }
                30 => (frame(1, payload.len() as u32, &payload), true, false), // compressed, no grpc-encoding
                31 => (frame(0, payload.len() as u32 + 10, &payload), true, false), // shorter than declared
                32 => (frame(0, u32::MAX, &payload), true, false),
                33 => (frame(0x80, payload.len() as u32, &payload), true, false),
                34 => (Bytes::from_static(&[0, 0]), true, false), // a torn header
                35 => (Bytes::new(), true, false),                // no message at all
                36 => {
                    let mut two = BytesMut::from(&frame(0, 0, &[])[..]);
                    two.extend_from_slice(&frame(0, payload.len() as u32, &payload));
                    (two.freeze(), false, false) // two messages for a unary call: any status will do
                }
                37 => (frame(0, 5 * 1024 * 1024, &payload), true, false), // declares more than 4 MiB
                _ => (Bytes::from(payload.clone()), true, false),         // no framing at all
            };
            match raw_call(&mut channel, method, body).await {
                Ok(Some((code, message))) => {
                    *answered.entry(code).or_default() += 1;
                    if !(0..=16).contains(&code) {
                        failures.push(format!("{method} round {round}: grpc-status {code} is not a gRPC code"));
                    }
                    // UNKNOWN or INTERNAL would blame the server (and fire its alert) for the caller's bytes.
                    if code == 2 || code == 13 {
                        failures.push(format!("{method} round {round}: grpc-status {code} for junk: {message}"));
                    }
                    if must_fail && code == 0 {
                        failures.push(format!("{method} round {round}: an undecodable request answered OK"));
                    }
                }
                Ok(None) if follows => {}
                Ok(None) => failures.push(format!("{method} round {round}: no status within 3 s")),
                Err(e) => failures.push(format!("{method} round {round}: {e}")),
            }
        }
    }
    println!("raw frames: {} calls in {:?}, answered with codes {answered:?}", METHODS.len() * 40, started.elapsed());
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));

    // A normal call still works, on the same connection and a new one.
    let patient = testkit::fixtures::new_patient();
    let mut registry = server.registry();
    registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", "736253002")) })
        .await
        .expect("a normal create after the junk");
    let found = registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("a normal search")
        .into_inner();
    assert_eq!(found.pointers.len(), 1);
    let fresh = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient::new(fresh)
        .list_regions(pb::ListRegionsRequest {})
        .await
        .expect("a new connection is served");
    server.stop().await.expect("the server shuts down cleanly: it never crashed");
}

/// The federation's RPCs: with `METHODS`, every RPC of every `nrl.v1` service.
const FEDERATION_METHODS: &[&str] = &[
    "/nrl.v1.ChangeFeed/WatchPointers",
    "/nrl.v1.ChangeFeed/SnapshotPointers",
    "/nrl.v1.FederatedLocator/FederatedSearch",
    "/nrl.v1.FederatedLocator/FederatedSearchStream",
];

/// A body that is not the request type, or not framed as gRPC says, is the caller's error:
/// INVALID_ARGUMENT naming the type and what is wrong, on every RPC, before any handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_a_broken_request_with_invalid_argument_naming_its_type() {
    let server = TestServer::start(StoreConfig::Memory).await;
    let mut channel = server.channel.clone();
    let mut failures = Vec::new();
    for method in METHODS.iter().chain(FEDERATION_METHODS) {
        // `/nrl.v1.PointerRegistry/CreatePointer` takes `nrl.v1.CreatePointerRequest`; both searches
        // take `nrl.v1.FederatedSearchRequest`.
        let rpc = method.rsplit('/').next().unwrap_or_default().trim_end_matches("Stream");
        let message = format!("nrl.v1.{rpc}Request");
        let cases = [
            // Field 1 with wire type 7, which no protobuf message has.
            ("undecodable", frame(0, 1, &[0x0f]), "not a valid protobuf message (invalid wire type value: 7)"),
            // A string field cut short: valid framing, an invalid message.
            ("cut", frame(0, 2, &[0x0a, 0x05]), "not a valid protobuf message"),
            ("compressed", frame(1, 2, &[0x08, 0x01]), "the message is marked compressed (flag 1) but the call"),
            ("bad flag", frame(0x80, 0, &[]), "the message's compressed-flag is 128; it must be 0 or 1"),
            ("torn", frame(0, 10, &[0x08]), "the body ends before the message its gRPC header announced"),
            ("no message", Bytes::new(), "the call carries no request message"),
        ];
        for (what, body, says) in cases {
            match raw_call(&mut channel, method, body).await {
                Ok(Some((3, text))) if text.starts_with(&format!("{message}: {says}")) => {}
                other => failures.push(format!("{method}, {what}: {other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
    server.stop().await.expect("the server shuts down cleanly");
}
