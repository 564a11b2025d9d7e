//! A plain FHIR client over a real socket (reqwest, HTTP/1.1), and the checks every answer passes:
//! the media type, a body that is JSON and a conformant R4 resource, and on every error an
//! OperationOutcome carrying a Spine error code.
//!
//! The systems and urls are written out here as NRLF publishes them, not imported from the server:
//! a wrong constant in `src/` must fail these tests, not travel into them.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestServer;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub const ASID_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhsSpineASID";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const FORMAT_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLFormatCode";
pub const STABILITY_EXTENSION: &str =
    "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-ContentStability";
pub const STABILITY_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLContentStability";
pub const RETRIEVAL_EXTENSION: &str =
    "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-NRLRetrievalMechanism";
pub const RETRIEVAL_SYSTEM: &str = "https://fhir.nhs.uk/England/CodeSystem/England-NRLRetrievalMechanism";
pub const SPINE_ERROR_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/Spine-ErrorOrWarningCode";
pub const NRL_RESPONSE_SYSTEM: &str = "https://fhir.nhs.uk/ValueSet/NRL-ResponseCode";
/// The registry's own extensions, as its CapabilityStatement publishes them.
pub const REGION_EXTENSION: &str = "https://nrl-registry.nhs.example/fhir/StructureDefinition/Extension-Region";
pub const SUPERSEDED_BY_EXTENSION: &str =
    "https://nrl-registry.nhs.example/fhir/StructureDefinition/Extension-SupersededBy";

pub const CRISIS_PLAN: &str = "736253002";
pub const RESPECT_FORM: &str = "1382601000000107";
pub const CARE_PLAN: &str = "734163000";
pub const NEWS2: &str = "1363501000000100";
pub const OBSERVATIONS: &str = "1102421000000108";

/// One answer: status, headers and the parsed body (already checked, see [`Fhir::send`]).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    /// What was asked, for failure messages.
    pub request: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, showing the request and the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "{}: expected {status}, got {} {}", self.request, self.status, self.body);
        self
    }

    /// `issue[0].details.coding[0].code` of an OperationOutcome.
    pub fn outcome_code(&self) -> &str {
        self.body["issue"][0]["details"]["coding"][0]["code"].as_str().unwrap_or("")
    }

    /// `issue[0].expression[0]` of an OperationOutcome.
    pub fn expression(&self) -> Option<&str> {
        self.body["issue"][0]["expression"][0].as_str()
    }

    pub fn diagnostics(&self) -> &str {
        self.body["issue"][0]["diagnostics"].as_str().unwrap_or("")
    }

    /// Asserts an error answer: its status, Spine code and (when given) the FHIRPath it names.
    #[track_caller]
    pub fn assert_error(&self, status: u16, spine: &str, expression: Option<&str>) {
        assert_eq!(
            (self.status, self.outcome_code()),
            (status, spine),
            "{}: expected {status} {spine}, got {}",
            self.request,
            self.body
        );
        if let Some(expression) = expression {
            assert_eq!(self.expression(), Some(expression), "{}: expression of {}", self.request, self.body);
        }
    }

    /// Asserts a successful write's OperationOutcome, coded as NRLF codes them.
    #[track_caller]
    pub fn assert_success(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}: {}", self.request, self.body);
        assert_eq!(self.body["resourceType"], "OperationOutcome", "{}: {}", self.request, self.body);
        let issue = &self.body["issue"][0];
        assert_eq!(issue["severity"], "information", "{}", self.body);
        assert_eq!(issue["details"]["coding"][0]["system"], NRL_RESPONSE_SYSTEM, "{}", self.body);
        assert_eq!(issue["details"]["coding"][0]["code"], code, "{}", self.body);
    }

    /// The weak ETag, e.g. `W/"1"`.
    #[track_caller]
    pub fn etag(&self) -> &str {
        self.header("etag").unwrap_or_else(|| panic!("{}: no ETag on {}", self.request, self.status))
    }

    /// The id at the end of `Location`.
    #[track_caller]
    pub fn location_id(&self) -> String {
        let location =
            self.header("location").unwrap_or_else(|| panic!("{}: no Location: {}", self.request, self.body));
        let (_, id) = location.rsplit_once("/DocumentReference/").unwrap_or_else(|| panic!("Location {location}"));
        id.to_string()
    }

    /// The ids of a searchset Bundle's entries, in order.
    pub fn entry_ids(&self) -> Vec<String> {
        entries(&self.body).iter().map(|e| e["resource"]["id"].as_str().unwrap_or("").to_string()).collect()
    }

    /// The url of the Bundle link with `relation`.
    pub fn link(&self, relation: &str) -> Option<String> {
        self.body["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str().map(str::to_string)
    }
}

/// A Bundle's entries (none when the element is absent, as FHIR JSON leaves an empty list out).
pub fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// FHIR JSON's own rules, which any conformant resource keeps whatever the model: no `null`, no
/// empty string, array or object anywhere (an element without a value is left out), and a
/// `resourceType` on the resource and on every contained or entry resource.
pub fn check_fhir_json(value: &Value, path: &str) -> Result<(), String> {
    match value {
        Value::Null => Err(format!("{path} is null")),
        Value::String(s) if s.trim().is_empty() => Err(format!("{path} is an empty string")),
        Value::Array(items) if items.is_empty() => Err(format!("{path} is an empty array")),
        Value::Object(fields) if fields.is_empty() => Err(format!("{path} is an empty object")),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_fhir_json(item, &format!("{path}[{i}]")))
        }
        Value::Object(fields) => {
            if path.ends_with(".resource") && !fields.contains_key("resourceType") {
                return Err(format!("{path} has no resourceType"));
            }
            fields.iter().try_for_each(|(name, item)| check_fhir_json(item, &format!("{path}.{name}")))
        }
        _ => Ok(()),
    }
}

/// Every FHIR answer body: FHIR JSON's own rules, then the maintained R4 model (`testkit::fhir`:
/// types, forms, cardinalities, unknown elements and required bindings).
pub fn conformant(body: &Value) -> Result<(), String> {
    let kind = body["resourceType"].as_str().ok_or("no resourceType")?;
    check_fhir_json(body, kind)?;
    testkit::fhir::resource(body)
}

/// A FHIR base (`http://127.0.0.1:PORT/FHIR/R4`) and an HTTP client.
#[derive(Clone)]
pub struct Fhir {
    http: reqwest::Client,
    pub base: String,
}

/// A request body and its media type.
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

impl Body {
    pub fn json(value: &Value) -> Self {
        Self { content_type: "application/fhir+json", bytes: value.to_string().into_bytes() }
    }

    pub fn form(pairs: &[(&str, &str)]) -> Self {
        let form = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        Self { content_type: "application/x-www-form-urlencoded", bytes: form.into_bytes() }
    }
}

impl Fhir {
    /// The client of `server`'s FHIR listener under `path` (`/FHIR/R4`, `/producer/FHIR/R4`, ...).
    pub fn at(server: &TestServer, path: &str) -> Self {
        let http =
            reqwest::Client::builder().timeout(std::time::Duration::from_secs(20)).build().expect("an HTTP client");
        Self { http, base: server.fhir_base_at(path) }
    }

    pub fn new(server: &TestServer) -> Self {
        Self::at(server, "/FHIR/R4")
    }

    /// Sends one request to `target` (a url, or a path below the base) and checks the answer: JSON
    /// in the FHIR media type (`/_status` answers plain JSON), a conformant resource, and an
    /// OperationOutcome with a Spine code on every error.
    pub async fn send(&self, method: Method, target: &str, headers: &[(&str, &str)], body: Option<Body>) -> Reply {
        let url = if target.starts_with("http") { target.to_string() } else { format!("{}{target}", self.base) };
        let request = format!("{method} {url}");
        let mut builder = self.http.request(method, &url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.header("content-type", body.content_type).body(body.bytes);
        }
        let response = builder.send().await.unwrap_or_else(|e| panic!("{request}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_else(|e| panic!("{request}: reading the body: {e}"));
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{request}: {status} body is not JSON ({e}): {text}"));
        let media = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if url.ends_with("/_status") {
            assert_eq!(media, "application/json", "{request}");
        } else {
            assert_eq!(media, "application/fhir+json", "{request}: {status} {text}");
            if let Err(problem) = conformant(&body) {
                panic!("{request}: {status} answer is not a conformant FHIR resource: {problem}\n{text}");
            }
        }
        if status >= 400 {
            assert_eq!(body["resourceType"], "OperationOutcome", "{request}: {status} {text}");
            assert_eq!(body["issue"][0]["severity"], "error", "{request}: {text}");
            assert_eq!(body["issue"][0]["details"]["coding"][0]["system"], SPINE_ERROR_SYSTEM, "{request}: {text}");
            assert!(body["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()), "{request}: {text}");
        }
        Reply { status, headers, body, request }
    }

    pub async fn get(&self, target: &str) -> Reply {
        self.send(Method::GET, target, &[], None).await
    }

    pub async fn create(&self, document: &Value) -> Reply {
        self.send(Method::POST, "/DocumentReference", &[], Some(Body::json(document))).await
    }

    /// Creates `document` and returns its id (asserting 201).
    pub async fn created(&self, document: &Value) -> String {
        self.create(document).await.expect(201).location_id()
    }

    pub async fn create_returning(&self, document: &Value) -> Reply {
        let prefer = [("prefer", "return=representation")];
        self.send(Method::POST, "/DocumentReference", &prefer, Some(Body::json(document))).await
    }

    pub async fn read(&self, id: &str) -> Reply {
        self.get(&format!("/DocumentReference/{id}")).await
    }

    pub async fn update(&self, id: &str, document: &Value, if_match: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = if_match.map(|tag| ("if-match", tag)).into_iter().collect();
        self.send(Method::PUT, &format!("/DocumentReference/{id}"), &headers, Some(Body::json(document))).await
    }

    pub async fn delete(&self, id: &str, if_match: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = if_match.map(|tag| ("if-match", tag)).into_iter().collect();
        self.send(Method::DELETE, &format!("/DocumentReference/{id}"), &headers, None).await
    }

    /// `GET [base]/DocumentReference?{query}`.
    pub async fn search(&self, query: &str) -> Reply {
        self.get(&format!("/DocumentReference?{query}")).await
    }

    pub async fn search_post(&self, body: Body) -> Reply {
        self.send(Method::POST, "/DocumentReference/_search", &[], Some(body)).await
    }
}

/// `subject:identifier=<system>|<n>` as NRLF's clients write it.
pub fn subject(patient: &str) -> String {
    format!("{NHS_NUMBER_SYSTEM}|{patient}")
}

/// A query string of `pairs`, encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// The search of one patient's pointers.
pub fn patient_query(patient: &str) -> String {
    query(&[("subject:identifier", &subject(patient))])
}

pub fn extension_code(url: &str, system: &str, code: &str) -> Value {
    json!({"url": url, "valueCodeableConcept": {"coding": [{"system": system, "code": code}]}})
}

/// One content entry: `url`, static, with the retrieval mechanism extension when given.
pub fn content(url: &str, retrieval: Option<&str>) -> Value {
    let mut extension = vec![extension_code(STABILITY_EXTENSION, STABILITY_SYSTEM, "static")];
    if let Some(mechanism) = retrieval {
        extension.push(extension_code(RETRIEVAL_EXTENSION, RETRIEVAL_SYSTEM, mechanism));
    }
    json!({
        "extension": extension,
        "attachment": {"contentType": "application/pdf", "url": url},
        "format": {"system": FORMAT_SYSTEM, "code": "urn:nhs-ic:unstructured"},
    })
}

/// A fresh https url, so no two test pointers look alike.
pub fn new_url() -> String {
    format!("https://qwo.example.nhs.uk/records/{}", rand::random::<u64>())
}

/// A complete pointer for `patient`: region QWO, custodian RR8, a mental health crisis plan.
pub fn document(patient: &str) -> Value {
    document_of(patient, "QWO", "RR8", CRISIS_PLAN, CARE_PLAN)
}

pub fn document_of(patient: &str, region: &str, custodian: &str, kind: &str, category: &str) -> Value {
    json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "extension": [{"url": REGION_EXTENSION, "valueCode": region}],
        "type": {"coding": [{"system": SNOMED, "code": kind}]},
        "category": [{"coding": [{"system": SNOMED, "code": category}]}],
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
        "custodian": {"identifier": {"system": ODS_SYSTEM, "value": custodian}},
        "content": [content(&new_url(), None)],
    })
}

/// The first content url of a DocumentReference.
pub fn url_of(resource: &Value) -> &str {
    resource["content"][0]["attachment"]["url"].as_str().unwrap_or("")
}

/// The `valueCodeableConcept` code of a content entry's extension `url`.
pub fn content_extension<'a>(content: &'a Value, url: &str) -> Option<&'a str> {
    content["extension"].as_array()?.iter().find(|e| e["url"] == url)?["valueCodeableConcept"]["coding"][0]["code"]
        .as_str()
}

/// The value of a resource's extension `url` (its `valueCode`, or its `valueReference.reference`).
pub fn extension_value<'a>(resource: &'a Value, url: &str) -> Option<&'a str> {
    let extension = resource["extension"].as_array()?.iter().find(|e| e["url"] == url)?;
    extension["valueCode"].as_str().or_else(|| extension["valueReference"]["reference"].as_str())
}

/// The value of query parameter `name` in `url`.
pub fn parameter_of(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
}
