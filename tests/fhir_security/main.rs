//! The FHIR API's security, privacy and hostile input, black-box over real sockets: a real server
//! (JWT authentication, the FHIR listener on 127.0.0.1:0) or a real `nrl serve` process, plain
//! HTTP/1.1 clients, and the gRPC API of the same registry as the reference every FHIR answer is
//! held to.
//!
//! - `authentication`: no, bad or expired credentials are 401 with `WWW-Authenticate`; malformed
//!   or missing call headers are 400 naming the header; `/metadata` and `/_status` are open.
//! - `authorisation`: the authorisation matrix's FHIR cells, each asked of both APIs and compared;
//!   invisible pointers answer exactly like missing ones; writes to another organisation's
//!   pointer reveal nothing.
//! - `access_log`: the patient's access log as `AuditEvent`s, newest first, paged, itself
//!   recorded; every FHIR call audited exactly like its gRPC twin.
//! - `restriction`: a restricted patient is hidden from FHIR readers as from gRPC ones, and
//!   break-glass (`x-purpose-of-use: emergency`) is flagged on the `AuditEvent`.
//! - `privacy`: no NHS number, in any format, in any log line of `nrl serve` or any response
//!   header, across every interaction; request ids echoed only when log-safe.
//! - `fuzz`: 500 random and mutated bodies (seeded) as creates, updates and searches: never a 5xx,
//!   always an OperationOutcome, never a half-write.
//! - `hostile`: oversized, chunked, deeply nested and mislabelled bodies, absurd query strings,
//!   paths and methods: 4xx OperationOutcomes, and the server keeps serving.
//! - `limits`: past the in-flight cap, 429 with `Retry-After`; a stalled upload holds its place
//!   only until the request deadline.

mod access_log;
mod authentication;
mod authorisation;
mod fuzz;
mod hostile;
mod limits;
mod privacy;
mod restriction;

use nrl_registry::api::fhir::codes::{
    FORMAT_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, REGION_EXTENSION, SNOMED_SYSTEM, SPINE_ERROR_SYSTEM,
    STABILITY_EXTENSION, STABILITY_SYSTEM,
};
use nrl_registry::config::StoreConfig;
use nrl_registry::domain::PointerTypeCatalogue;
use nrl_registry::proto::nrl::v1 as pb;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::auth::*;
use testkit::fixtures::*;
use testkit::reqwest;
use testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const OWN: &str = "RR8";
const OTHER: &str = "RA7";
const PERMITTED: &str = CRISIS_PLAN;
const UNPERMITTED: &str = NEWS2;
/// A well-formed pointer id that no registry assigned.
const NEVER: &str = "01a1fc3a-6f28-71e3-88f2-aaaa922566b9";

/// A JWT-authenticated server on `store` with the FHIR listener on 127.0.0.1:0.
async fn start_on(store: StoreConfig) -> TestServer {
    let mut config = jwt_server_config(store);
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    TestServer::start_with(config).await
}

async fn start() -> TestServer {
    start_on(StoreConfig::Memory).await
}

/// Creates `pointer` over gRPC as `seeder`, for a test's starting data.
async fn seed(seeder: &Clients, pointer: pb::PointerInput) -> pb::Pointer {
    seeder
        .registry
        .clone()
        .create_pointer(pb::CreatePointerRequest { pointer: Some(pointer) })
        .await
        .expect("seed a pointer")
        .into_inner()
        .pointer
        .expect("created pointer")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("an HTTP client")
}

/// One FHIR caller: a base url and the headers it sends with every request.
#[derive(Clone)]
struct Fhir {
    base: String,
    http: reqwest::Client,
    headers: Vec<(String, Vec<u8>)>,
}

/// An answer: status, headers, the body as text and (when it is JSON) parsed.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Fhir {
    /// A caller with no credentials at all.
    fn anonymous(base: &str) -> Self {
        Self { base: base.trim_end_matches('/').to_string(), http: http(), headers: Vec::new() }
    }

    /// `Authorization: Bearer <token>` and `x-purpose-of-use: direct-care`, as the gRPC tests'
    /// `Credentials::bearer`.
    fn bearer(base: &str, token: &str) -> Self {
        Self::anonymous(base).with("authorization", &format!("Bearer {token}")).with("x-purpose-of-use", "direct-care")
    }

    fn with(self, name: &str, value: &str) -> Self {
        self.with_bytes(name, value.as_bytes())
    }

    /// Sets a header to raw bytes (replacing any earlier value), so tests can send malformed ones.
    fn with_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Sends a request; `body` goes as `application/fhir+json` unless `extra` sets a Content-Type.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>, extra: &[(&str, &str)]) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        for (name, value) in &self.headers {
            let value = reqwest::header::HeaderValue::from_bytes(value)
                .unwrap_or_else(|e| panic!("test header {name} cannot be sent: {e}"));
            request = request.header(name.as_str(), value);
        }
        let typed = extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !typed {
            request = request.header("content-type", "application/fhir+json");
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let shown: String = path.chars().take(200).collect();
        let response = request.send().await.unwrap_or_else(|e| panic!("no answer to {shown}: {e:?}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_else(|e| panic!("read the answer to {shown}: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, text, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    async fn put(&self, path: &str, body: &Value, if_match: Option<&str>) -> Answer {
        let extra: Vec<(&str, &str)> = if_match.map(|m| ("if-match", m)).into_iter().collect();
        self.send(reqwest::Method::PUT, path, Some(body.to_string().into_bytes()), &extra).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None, &[]).await
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The Spine code of an OperationOutcome's first issue.
    fn spine(&self) -> &str {
        self.body["issue"][0]["details"]["coding"][0]["code"].as_str().unwrap_or_default()
    }

    fn diagnostics(&self) -> &str {
        self.body["issue"][0]["diagnostics"].as_str().unwrap_or_default()
    }

    fn expression(&self) -> Option<&str> {
        self.body["issue"][0]["expression"][0].as_str()
    }

    /// The ids of a searchset Bundle's entries.
    fn entry_ids(&self) -> Vec<String> {
        self.body["entry"]
            .as_array()
            .map(|entries| {
                entries.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }

    /// The `next` link of a Bundle.
    fn next_link(&self) -> Option<String> {
        self.body["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str().map(str::to_string)
    }

    /// The gRPC code a status stands for, as `api::fhir::outcome` maps them.
    fn code(&self) -> Code {
        match self.status {
            200 | 201 => Code::Ok,
            400 | 413 | 415 | 406 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::Aborted,
            412 | 422 => Code::FailedPrecondition,
            429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

/// Asserts an error answer: `status`, a FHIR JSON OperationOutcome with Spine code `spine`.
#[track_caller]
fn assert_refused(what: &str, answer: &Answer, status: u16, spine: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text);
    assert_outcome(what, answer);
    assert_eq!(answer.spine(), spine, "{what}: {}", answer.text);
}

/// Asserts the answer is an error OperationOutcome of the kind every FHIR error must be.
#[track_caller]
fn assert_outcome(what: &str, answer: &Answer) {
    assert_eq!(answer.header("content-type"), Some("application/fhir+json"), "{what}: {:?}", answer.headers);
    assert_eq!(answer.body["resourceType"], "OperationOutcome", "{what}: {}", answer.text);
    assert_valid(what, &answer.body);
    let issue = &answer.body["issue"][0];
    assert_eq!(issue["severity"], "error", "{what}: {}", answer.text);
    assert_eq!(issue["details"]["coding"][0]["system"], SPINE_ERROR_SYSTEM, "{what}: {}", answer.text);
    assert!(!answer.diagnostics().is_empty(), "{what}: a diagnostic: {}", answer.text);
}

/// Checks a response resource against the maintained R4 model (`testkit::fhir`).
#[track_caller]
fn assert_valid(what: &str, resource: &Value) {
    if let Err(problems) = testkit::fhir::resource(resource) {
        panic!("{what}: not a valid R4 resource:\n{problems}\n{resource}");
    }
}

/// `system|value`, percent-encoded for a query string.
fn token_parameter(system: &str, value: &str) -> String {
    form_urlencoded::byte_serialize(format!("{system}|{value}").as_bytes()).collect()
}

/// `DocumentReference?subject:identifier=<nhs-number system>|<patient>`.
fn search_path(patient: &str) -> String {
    format!("DocumentReference?subject:identifier={}", token_parameter(NHS_NUMBER_SYSTEM, patient))
}

/// `AuditEvent?patient.identifier=<nhs-number system>|<patient>`.
fn audit_path(patient: &str) -> String {
    format!("AuditEvent?patient.identifier={}", token_parameter(NHS_NUMBER_SYSTEM, patient))
}

/// A valid NRLF-profile DocumentReference for `patient`.
fn document(patient: &str, region: &str, custodian: &str, type_code: &str) -> Value {
    let catalogue = PointerTypeCatalogue::default_catalogue();
    let category = &catalogue.pointer_type(type_code).expect("a catalogued type").category.code;
    json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "extension": [{"url": REGION_EXTENSION, "valueCode": region}],
        "type": {"coding": [{"system": SNOMED_SYSTEM, "code": type_code}]},
        "category": [{"coding": [{"system": SNOMED_SYSTEM, "code": category}]}],
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
        "custodian": {"identifier": {"system": ODS_SYSTEM, "value": custodian}},
        "author": [{"identifier": {"system": ODS_SYSTEM, "value": custodian}}],
        "date": "2024-05-01T10:00:00Z",
        "content": [{
            "attachment": {
                "contentType": "application/pdf",
                "url": format!("https://{}.example.nhs.uk/records/{}", region.to_lowercase(), rand::random::<u32>()),
            },
            "format": {"system": FORMAT_SYSTEM, "code": "urn:nhs-ic:unstructured"},
            "extension": [{"url": STABILITY_EXTENSION, "valueCodeableConcept": {"coding": [
                {"system": STABILITY_SYSTEM, "code": "static"}]}}],
        }],
    })
}

/// The id a successful create answered with (from `Location`).
#[track_caller]
fn created_id(what: &str, answer: &Answer) -> String {
    assert!(matches!(answer.status, 200 | 201), "{what}: {} {}", answer.status, answer.text);
    let location = answer.header("location").unwrap_or_else(|| panic!("{what}: no Location: {:?}", answer.headers));
    location.rsplit('/').next().expect("an id").to_string()
}

/// The NHS number written the ways a caller might: plain, spaced, dashed.
fn formats(patient: &str) -> [String; 3] {
    let (a, b, c) = (&patient[..3], &patient[3..6], &patient[6..]);
    [patient.to_string(), format!("{a} {b} {c}"), format!("{a}-{b}-{c}")]
}

/// A raw HTTP/1.1 exchange: `head` (request line and headers, without the blank line), then
/// `body` written in 64 KiB writes (concurrently with reading, ignoring write errors: the
/// server may answer and close before taking it all). Returns (status, headers, body).
async fn raw(addr: SocketAddr, head: &str, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.expect("connect to the FHIR listener");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!("{head}\r\nHost: {addr}\r\n\r\n");
    // The write half is kept open until the answer is read: a client that shuts down its side
    // after sending is, to the server, a client gone away.
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_ok() {
            for chunk in body.chunks(64 * 1024) {
                if writer.write_all(chunk).await.is_err() {
                    break;
                }
            }
            let _ = writer.flush().await;
        }
        writer
    });
    let reading = async {
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|n| raw.len() >= end + 4 + n) {
                    break;
                }
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), reading).await.expect("an answer within 20 s");
    writing.abort();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no answer: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, head, raw[end + 4..].to_vec())
}

/// Asserts a raw answer is `status` with an OperationOutcome of Spine code `spine`.
#[track_caller]
fn assert_raw(what: &str, answer: &(u16, String, Vec<u8>), status: u16, spine: &str) {
    let body: Value = serde_json::from_slice(&answer.2).unwrap_or(Value::Null);
    assert_eq!(answer.0, status, "{what}: {}\n{}", answer.1, String::from_utf8_lossy(&answer.2));
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {}", String::from_utf8_lossy(&answer.2));
    assert_eq!(body["issue"][0]["details"]["coding"][0]["code"], spine, "{what}: {body}");
    assert!(answer.1.to_ascii_lowercase().contains("content-type: application/fhir+json"), "{what}: {}", answer.1);
}
