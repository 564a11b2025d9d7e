//! Every error row: the HTTP status, the Spine error code and the FHIRPath (or parameter, or
//! header) the OperationOutcome names. Each refusal also changes nothing.

use crate::client::*;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::fixtures::new_patient;
use testkit::TestServer;

/// The region extension's FHIRPath, as errors name it.
fn region_path() -> String {
    format!("DocumentReference.extension('{REGION_EXTENSION}')")
}

/// One way to spoil a valid document, and what the answer must say.
struct Row {
    what: &'static str,
    spoil: Box<dyn Fn(&mut Value)>,
    status: u16,
    spine: &'static str,
    expression: String,
}

fn row(what: &'static str, spoil: impl Fn(&mut Value) + 'static, spine: &'static str, expression: &str) -> Row {
    Row { what, spoil: Box::new(spoil), status: 400, spine, expression: expression.to_string() }
}

fn remove(value: &mut Value, field: &str) {
    value.as_object_mut().expect("an object").remove(field);
}

fn document_rows() -> Vec<Row> {
    let stability = "DocumentReference.content[0].extension('ContentStability')";
    vec![
        row(
            "an NHS number with a wrong check digit",
            |d| d["subject"]["identifier"]["value"] = json!("9434765918"),
            "INVALID_NHS_NUMBER",
            "DocumentReference.subject.identifier.value",
        ),
        row(
            "an NHS number of 5 digits",
            |d| d["subject"]["identifier"]["value"] = json!("12345"),
            "INVALID_NHS_NUMBER",
            "DocumentReference.subject.identifier.value",
        ),
        row(
            "a subject in another identifier system",
            |d| d["subject"]["identifier"]["system"] = json!("https://fhir.nhs.uk/Id/nhs-numbers"),
            "INVALID_IDENTIFIER_SYSTEM",
            "DocumentReference.subject.identifier.system",
        ),
        row(
            "a subject without a system",
            |d| remove(&mut d["subject"]["identifier"], "system"),
            "INVALID_IDENTIFIER_SYSTEM",
            "DocumentReference.subject.identifier.system",
        ),
        row("no subject", |d| remove(d, "subject"), "INVALID_RESOURCE", "DocumentReference.subject"),
        row(
            "a custodian in another identifier system",
            |d| d["custodian"]["identifier"]["system"] = json!("https://fhir.nhs.uk/Id/accredited-system-id"),
            "INVALID_IDENTIFIER_SYSTEM",
            "DocumentReference.custodian.identifier.system",
        ),
        row(
            "a custodian that is not an ODS code",
            |d| d["custodian"]["identifier"]["value"] = json!("R!8"),
            "INVALID_IDENTIFIER_VALUE",
            "DocumentReference.custodian.identifier.value",
        ),
        row(
            "an author that is not an ODS code",
            |d| d["author"] = json!([{"identifier": {"system": ODS_SYSTEM, "value": "R"}}]),
            "INVALID_IDENTIFIER_VALUE",
            "DocumentReference.author[0].identifier.value",
        ),
        row(
            "two authors",
            |d| {
                let author = json!({"identifier": {"system": ODS_SYSTEM, "value": "RR8"}});
                d["author"] = json!([author.clone(), author]);
            },
            "INVALID_RESOURCE",
            "DocumentReference.author",
        ),
        row(
            "a type in another code system (NRLF's own tests misspell SNOMED so)",
            |d| d["type"]["coding"][0]["system"] = json!("https://snomed.info/ict"),
            "INVALID_CODE_SYSTEM",
            "DocumentReference.type.coding[0].system",
        ),
        row(
            "an unknown type code",
            |d| d["type"]["coding"][0]["code"] = json!("123456789"),
            "INVALID_CODE_VALUE",
            "DocumentReference.type.coding[0].code",
        ),
        row(
            "two type codings",
            |d| {
                d["type"]["coding"] =
                    json!([{"system": SNOMED, "code": CRISIS_PLAN}, {"system": SNOMED, "code": RESPECT_FORM}])
            },
            "INVALID_RESOURCE",
            "DocumentReference.type.coding",
        ),
        row("no type", |d| remove(d, "type"), "INVALID_RESOURCE", "DocumentReference.type"),
        row(
            "a category in another code system",
            |d| d["category"][0]["coding"][0]["system"] = json!("urn:other"),
            "INVALID_CODE_SYSTEM",
            "DocumentReference.category[0].coding[0].system",
        ),
        row(
            "a category that is not the type's",
            |d| d["category"][0]["coding"][0]["code"] = json!(OBSERVATIONS),
            "INVALID_CODE_VALUE",
            "DocumentReference.category[0].coding[0].code",
        ),
        row("no category", |d| remove(d, "category"), "INVALID_RESOURCE", "DocumentReference.category"),
        row(
            "an element DocumentReference does not have",
            |d| d["flavour"] = json!("strawberry"),
            "INVALID_RESOURCE",
            "DocumentReference.flavour",
        ),
        row("an R5 element, not R4's", |d| d["version"] = json!("2"), "INVALID_RESOURCE", "DocumentReference.version"),
        row(
            "an unknown element deep inside",
            |d| d["content"][0]["attachment"]["colour"] = json!("red"),
            "INVALID_RESOURCE",
            "DocumentReference.content[0].attachment.colour",
        ),
        row("no status", |d| remove(d, "status"), "INVALID_RESOURCE", "DocumentReference.status"),
        row(
            "a status other than current",
            |d| d["status"] = json!("superseded"),
            "INVALID_CODE_VALUE",
            "DocumentReference.status",
        ),
        row("a status that is a number", |d| d["status"] = json!(7), "INVALID_RESOURCE", "DocumentReference.status"),
        row("no content", |d| remove(d, "content"), "INVALID_RESOURCE", "DocumentReference.content"),
        row("an empty content list", |d| d["content"] = json!([]), "INVALID_RESOURCE", "DocumentReference.content"),
        row(
            "content without the stability extension",
            |d| d["content"][0]["extension"] = json!([]),
            "INVALID_RESOURCE",
            stability,
        ),
        row(
            "an unknown stability",
            |d| d["content"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("sometimes"),
            "INVALID_CODE_VALUE",
            stability,
        ),
        row(
            "an unknown retrieval mechanism",
            |d| {
                let mechanism = extension_code(RETRIEVAL_EXTENSION, RETRIEVAL_SYSTEM, "Pigeon");
                d["content"][0]["extension"].as_array_mut().expect("extensions").push(mechanism);
            },
            "INVALID_CODE_VALUE",
            "DocumentReference.content[0].extension('NRLRetrievalMechanism')",
        ),
        row(
            "an http url",
            |d| d["content"][0]["attachment"]["url"] = json!("http://qwo.example.nhs.uk/r/1"),
            "INVALID_RESOURCE",
            "DocumentReference.content[0].attachment.url",
        ),
        row(
            "no url",
            |d| remove(&mut d["content"][0]["attachment"], "url"),
            "INVALID_RESOURCE",
            "DocumentReference.content[0].attachment.url",
        ),
        row(
            "inline data instead of a url",
            |d| d["content"][0]["attachment"]["data"] = json!("SGVsbG8="),
            "INVALID_RESOURCE",
            "DocumentReference.content[0].attachment.data",
        ),
        row(
            "an unserved content type",
            |d| d["content"][0]["attachment"]["contentType"] = json!("image/png"),
            "INVALID_CODE_VALUE",
            "DocumentReference.content[0].attachment.contentType",
        ),
        row(
            "a format in another code system",
            |d| d["content"][0]["format"]["system"] = json!("urn:other"),
            "INVALID_CODE_SYSTEM",
            "DocumentReference.content[0].format.system",
        ),
        row(
            "an unknown format code",
            |d| d["content"][0]["format"]["code"] = json!("urn:nhs-ic:scribbled"),
            "INVALID_CODE_VALUE",
            "DocumentReference.content[0].format.code",
        ),
        row(
            "an unknown region",
            |d| d["extension"][0]["valueCode"] = json!("QZZ"),
            "INVALID_CODE_VALUE",
            &format!("{}.valueCode", region_path()),
        ),
        row(
            "the region twice",
            |d| {
                d["extension"] = json!([{"url": REGION_EXTENSION, "valueCode": "QWO"}, {"url": REGION_EXTENSION, "valueCode": "QOP"}])
            },
            "INVALID_RESOURCE",
            &region_path(),
        ),
        row(
            "another resource type",
            |d| d["resourceType"] = json!("Binary"),
            "INVALID_RESOURCE",
            "DocumentReference.resourceType",
        ),
        row(
            "a modifier extension",
            |d| d["modifierExtension"] = json!([{"url": "https://example.org/x", "valueBoolean": true}]),
            "INVALID_RESOURCE",
            "DocumentReference.modifierExtension",
        ),
        row(
            "contained resources",
            |d| d["contained"] = json!([{"resourceType": "Organization", "id": "o1"}]),
            "INVALID_RESOURCE",
            "DocumentReference.contained",
        ),
        row(
            "a date that is not an instant",
            |d| d["date"] = json!("yesterday"),
            "INVALID_RESOURCE",
            "DocumentReference.date",
        ),
        row(
            "a masterIdentifier with spaces",
            |d| d["masterIdentifier"] = json!({"value": "my pointer"}),
            "INVALID_IDENTIFIER_VALUE",
            "DocumentReference.masterIdentifier.value",
        ),
        row(
            "a practice setting that is not SNOMED CT",
            |d| d["context"] = json!({"practiceSetting": {"coding": [{"system": SNOMED, "code": "adult"}]}}),
            "INVALID_CODE_VALUE",
            "DocumentReference.context.practiceSetting.coding[0].code",
        ),
        row(
            "an ASID that is not 12 digits",
            |d| d["context"] = json!({"related": [{"identifier": {"system": ASID_SYSTEM, "value": "12345"}}]}),
            "INVALID_IDENTIFIER_VALUE",
            "DocumentReference.context.related[0].identifier.value",
        ),
        row(
            "ssp:// content without the ASID of the system serving it",
            |d| d["content"][0]["attachment"]["url"] = json!("ssp://qwo.example.nhs.uk/r/1"),
            "INVALID_RESOURCE",
            "DocumentReference.context.related[0].identifier.value",
        ),
        row(
            "relatesTo other than replaces",
            |d| d["relatesTo"] = json!([{"code": "appends", "target": {"identifier": {"value": "x"}}}]),
            "INVALID_CODE_VALUE",
            "DocumentReference.relatesTo[0].code",
        ),
        row(
            "relatesTo naming no id",
            |d| d["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": "RR8-not-an-id"}}}]),
            "INVALID_IDENTIFIER_VALUE",
            "DocumentReference.relatesTo[0].target.identifier.value",
        ),
    ]
}

pub async fn invalid_documents_are_refused_naming_the_element(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    for row in document_rows() {
        let mut document = document(&patient);
        (row.spoil)(&mut document);
        let reply = fhir.create(&document).await;
        assert_eq!(
            (reply.status, reply.outcome_code(), reply.expression()),
            (row.status, row.spine, Some(row.expression.as_str())),
            "{}: {}",
            row.what,
            reply.body
        );
        // The diagnostics name the element too, for people reading logs.
        assert!(reply.diagnostics().contains(&row.expression), "{}: {}", row.what, reply.body);
    }
    // relatesTo naming a pointer that does not exist.
    let mut document = document(&patient);
    document["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": unknown_id()}}}]);
    fhir.create(&document).await.assert_error(404, "NO_RECORD_FOUND", None);
    // Nothing was registered by any of them.
    assert_eq!(fhir.search(&patient_query(&patient)).await.expect(200).body["total"], 0);
}

/// A well-formed pointer id that no pointer has.
pub fn unknown_id() -> String {
    "01890a5d-ac96-774b-bcce-b302099a8057".into()
}

pub async fn bodies_that_are_not_a_document_reference(server: &TestServer) {
    let fhir = Fhir::new(server);
    let id = fhir.created(&document(&new_patient())).await;
    let not_json: [&[u8]; 4] = [b"{\"resourceType\":", b"not json", b"{'resourceType': 'DocumentReference'}", b""];
    for body in not_json {
        let sent = || Some(Body { content_type: "application/fhir+json", bytes: body.to_vec() });
        let shown = String::from_utf8_lossy(body);
        let reply = fhir.send(Method::POST, "/DocumentReference", &[], sent()).await;
        assert_eq!((reply.status, reply.outcome_code()), (400, "MESSAGE_NOT_WELL_FORMED"), "{shown:?}: {}", reply.body);
        let reply = fhir.send(Method::PUT, &format!("/DocumentReference/{id}"), &[], sent()).await;
        assert_eq!((reply.status, reply.outcome_code()), (400, "MESSAGE_NOT_WELL_FORMED"), "{shown:?}: {}", reply.body);
    }
    // JSON, but not a resource at all.
    for body in ["[]", "{}", "null", "\"DocumentReference\"", "42"] {
        let sent = Some(Body { content_type: "application/fhir+json", bytes: body.as_bytes().to_vec() });
        let reply = fhir.send(Method::POST, "/DocumentReference", &[], sent).await;
        reply.assert_error(400, "INVALID_RESOURCE", Some("DocumentReference"));
    }
}

/// `GET [base]/DocumentReference?{subject}&{extra}` must answer 400 with `spine` naming `expression`.
struct SearchRow {
    extra: String,
    spine: &'static str,
    expression: &'static str,
}

fn search_rows(patient: &str) -> Vec<SearchRow> {
    let valid = patient_query(patient);
    let rows = [
        ("foo=bar", "INVALID_PARAMETER", "foo"),
        ("subject=9434765919", "INVALID_PARAMETER", "subject"),
        ("subject:identifier=9434765919", "INVALID_PARAMETER", "subject:identifier"),
        ("type=736253002&type=1382601000000107", "INVALID_PARAMETER", "type"),
        ("type=736253002,,1382601000000107", "INVALID_PARAMETER", "type"),
        ("type=https://snomed.info/ict|736253002", "INVALID_CODE_SYSTEM", "type"),
        ("type=123456789", "INVALID_CODE_VALUE", "type"),
        ("category=123456789", "INVALID_CODE_VALUE", "category"),
        (
            "custodian:identifier=https://fhir.nhs.uk/Id/ods-organization-code|R!8",
            "INVALID_IDENTIFIER_VALUE",
            "custodian:identifier",
        ),
        ("custodian:identifier=urn:other|RR8", "INVALID_IDENTIFIER_SYSTEM", "custodian:identifier"),
        ("region=QZZ", "INVALID_PARAMETER", "region"),
        ("_count=0", "INVALID_PARAMETER", "_count"),
        ("_count=-1", "INVALID_PARAMETER", "_count"),
        ("_count=ten", "INVALID_PARAMETER", "_count"),
        ("_count=1.5", "INVALID_PARAMETER", "_count"),
        ("_count=", "INVALID_PARAMETER", "_count"),
        ("_summary=data", "INVALID_PARAMETER", "_summary"),
        ("_format=xml", "INVALID_PARAMETER", "_format"),
    ];
    let mut out: Vec<SearchRow> = rows
        .into_iter()
        .map(|(extra, spine, expression)| SearchRow { extra: format!("{valid}&{extra}"), spine, expression })
        .collect();
    for (extra, spine) in [
        ("", "INVALID_PARAMETER"),
        ("type=736253002", "INVALID_PARAMETER"),
        ("subject:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765918", "INVALID_NHS_NUMBER"),
        ("subject:identifier=https://fhir.nhs.uk/Id/nhs-number|94347", "INVALID_NHS_NUMBER"),
        ("subject:identifier=https://fhir.nhs.uk/Id/nhs-numbers|9434765919", "INVALID_IDENTIFIER_SYSTEM"),
    ] {
        out.push(SearchRow { extra: extra.to_string(), spine, expression: "subject:identifier" });
    }
    out
}

pub async fn invalid_searches_are_refused_naming_the_parameter(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    fhir.created(&document(&patient)).await;
    for row in search_rows(&patient) {
        let reply = fhir.search(&row.extra).await;
        assert_eq!(
            (reply.status, reply.outcome_code(), reply.expression()),
            (400, row.spine, Some(row.expression)),
            "?{}: {}",
            row.extra,
            reply.body
        );
        // The same parameters in a _search form body are refused alike.
        let pairs: Vec<(String, String)> = form_urlencoded::parse(row.extra.as_bytes()).into_owned().collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let reply = fhir.search_post(Body::form(&pairs)).await;
        assert_eq!(
            (reply.status, reply.expression()),
            (400, Some(row.expression)),
            "form {}: {}",
            row.extra,
            reply.body
        );
    }
    // A huge _count is clamped, not refused.
    fhir.search(&format!("{}&_count=100000", patient_query(&patient))).await.expect(200);
    // _count is not a parameter of the _count endpoint.
    let reply = fhir.get(&format!("/DocumentReference/_count?{}&_count=5", patient_query(&patient))).await;
    reply.assert_error(400, "INVALID_PARAMETER", Some("_count"));
    // A parameter in the query string and again in the body is given twice.
    let posted = Body::form(&[("subject:identifier", &subject(&patient))]);
    let target = format!("/DocumentReference/_search?{}", patient_query(&patient));
    let reply = fhir.send(Method::POST, &target, &[], Some(posted)).await;
    reply.assert_error(400, "INVALID_PARAMETER", Some("subject:identifier"));
    // A JSON _search body must be an object of string (or number) values.
    for body in [json!(["subject:identifier"]), json!("x")] {
        let reply = fhir.search_post(Body::json(&body)).await;
        reply.assert_error(400, "MESSAGE_NOT_WELL_FORMED", None);
    }
    let body = json!({"subject:identifier": subject(&patient), "type": {"system": SNOMED}});
    fhir.search_post(Body::json(&body)).await.assert_error(400, "INVALID_PARAMETER", Some("type"));
    let body = json!({"subject:identifier": subject(&patient), "date": "2024"});
    fhir.search_post(Body::json(&body)).await.assert_error(400, "INVALID_PARAMETER", Some("date"));
}

pub async fn page_tokens_are_checked(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    for _ in 0..3 {
        fhir.created(&document(&patient)).await;
    }
    let first = fhir.search(&format!("{}&_count=1", patient_query(&patient))).await.expect(200);
    let next = first.link("next").expect("a next link");
    let token = parameter_of(&next, "next-page-token").expect("a token");
    fhir.get(&next).await.expect(200);
    let with_token = |q: String, token: &str| format!("{q}&_count=1&{}", query(&[("next-page-token", token)]));

    for garbage in ["not-a-token", "AAAA", &"A".repeat(5000), &token[..token.len() - 2]] {
        let reply = fhir.search(&with_token(patient_query(&patient), garbage)).await;
        reply.assert_error(400, "INVALID_PARAMETER", Some("next-page-token"));
    }
    // A token is for the query it came from: not another patient's, not a narrower search.
    let other = fhir.search(&with_token(patient_query(&new_patient()), &token)).await;
    other.assert_error(400, "INVALID_PARAMETER", Some("next-page-token"));
    assert!(other.diagnostics().contains("different query"), "{}", other.body);
    let narrower = format!("{}&type={CRISIS_PLAN}", patient_query(&patient));
    fhir.search(&with_token(narrower, &token)).await.assert_error(400, "INVALID_PARAMETER", Some("next-page-token"));
    // The token of the access log is not a search's.
    let log = format!("/AuditEvent?{}&_count=1", query(&[("patient.identifier", &subject(&patient))]));
    let log_next = fhir.get(&log).await.expect(200).link("next").expect("a next page of the log");
    let log_token = parameter_of(&log_next, "next-page-token").expect("a log token");
    let reply = fhir.search(&with_token(patient_query(&patient), &log_token)).await;
    reply.assert_error(400, "INVALID_PARAMETER", Some("next-page-token"));
}

pub async fn update_and_delete_errors(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let sent = document(&patient);
    let id = fhir.created(&sent).await;
    fhir.update(&id, &sent, Some("W/\"1\"")).await.expect(200);

    // A stale If-Match: 412, and the pointer stays as it was.
    let mut stale = sent.clone();
    stale["content"][0]["attachment"]["url"] = json!(new_url());
    let reply = fhir.update(&id, &stale, Some("W/\"1\"")).await;
    reply.assert_error(412, "PRECONDITION_FAILED", None);
    let read = fhir.read(&id).await.expect(200);
    assert_eq!((read.etag(), url_of(&read.body)), ("W/\"2\"", url_of(&sent)));
    fhir.delete(&id, Some("W/\"1\"")).await.assert_error(412, "PRECONDITION_FAILED", None);

    // An If-Match that is not an ETag of a version.
    for malformed in ["2", "W/2", "W/\"0\"", "W/\"-1\"", "W/\"two\"", "W/\"2", "\"\"", "W/\"99999999999999999999999\""]
    {
        let reply = fhir.update(&id, &sent, Some(malformed)).await;
        reply.assert_error(400, "MISSING_OR_INVALID_HEADER", Some("If-Match"));
        let reply = fhir.delete(&id, Some(malformed)).await;
        reply.assert_error(400, "MISSING_OR_INVALID_HEADER", Some("If-Match"));
    }

    // The id in the body must be the id in the url.
    let mut elsewhere = fhir.read(&id).await.expect(200).body;
    elsewhere["id"] = json!(unknown_id());
    let reply = fhir.update(&id, &elsewhere, None).await;
    reply.assert_error(400, "INVALID_RESOURCE", Some("DocumentReference.id"));

    // relatesTo is fixed at creation.
    let mut relating = sent.clone();
    relating["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": unknown_id()}}}]);
    let reply = fhir.update(&id, &relating, None).await;
    reply.assert_error(400, "INVALID_RESOURCE", Some("DocumentReference.relatesTo"));

    // An invalid document is refused on update as on create.
    let mut invalid = sent.clone();
    invalid["subject"]["identifier"]["value"] = json!("9434765918");
    let reply = fhir.update(&id, &invalid, None).await;
    reply.assert_error(400, "INVALID_NHS_NUMBER", Some("DocumentReference.subject.identifier.value"));

    // A superseded pointer cannot be updated: 422 naming the id.
    let mut replacement = document(&patient);
    replacement["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": id}}}]);
    fhir.create(&replacement).await.assert_success(201, "RESOURCE_SUPERSEDED");
    let reply = fhir.update(&id, &sent, None).await;
    reply.assert_error(422, "UNPROCESSABLE_ENTITY", Some("DocumentReference.id"));
    assert_eq!(fhir.read(&id).await.expect(200).etag(), "W/\"3\"", "superseding made version 3; nothing since");
}

pub async fn immutable_elements_are_refused_on_update_naming_them(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let mut sent = document(&patient);
    sent["masterIdentifier"] = json!({"value": format!("RR8-{}", rand::random::<u32>())});
    let id = fhir.created(&sent).await;
    type Change = (&'static str, Box<dyn Fn(&mut Value)>, String);
    let changes: Vec<Change> = vec![
        (
            "custodian",
            Box::new(|d| d["custodian"]["identifier"]["value"] = json!("RX1")),
            "DocumentReference.custodian.identifier.value".into(),
        ),
        (
            "NHS number",
            Box::new(|d| d["subject"]["identifier"]["value"] = json!(new_patient())),
            "DocumentReference.subject.identifier.value".into(),
        ),
        (
            "type",
            Box::new(|d| d["type"]["coding"][0]["code"] = json!(RESPECT_FORM)),
            "DocumentReference.type.coding[0].code".into(),
        ),
        ("region", Box::new(|d| d["extension"][0]["valueCode"] = json!("QOP")), region_path()),
        (
            "masterIdentifier",
            Box::new(|d| d["masterIdentifier"]["value"] = json!("RR8-other")),
            "DocumentReference.masterIdentifier.value".into(),
        ),
        (
            "masterIdentifier removed",
            Box::new(|d| remove(d, "masterIdentifier")),
            "DocumentReference.masterIdentifier.value".into(),
        ),
    ];
    for (what, change, expression) in changes {
        let mut changed = sent.clone();
        change(&mut changed);
        for if_match in [None, Some("W/\"1\"")] {
            let reply = fhir.update(&id, &changed, if_match).await;
            // INVALID_RESOURCE whatever the element: the value may be valid, the change is not
            // (an unchanged-but-new NHS number is no INVALID_NHS_NUMBER).
            let expected = (400, "INVALID_RESOURCE", Some(expression.as_str()));
            assert_eq!((reply.status, reply.outcome_code(), reply.expression()), expected, "{what}: {}", reply.body);
            assert!(reply.diagnostics().contains("cannot change"), "{what}: {}", reply.body);
        }
    }
    let read = fhir.read(&id).await.expect(200);
    assert_eq!(read.etag(), "W/\"1\"", "no refused update changed the pointer");
}

pub async fn unknown_ids_and_methods(server: &TestServer) {
    let fhir = Fhir::new(server);
    let sent = document(&new_patient());
    let id = fhir.created(&sent).await;
    for unknown in [unknown_id(), "RR8-12345-local".into(), "x".repeat(300)] {
        fhir.read(&unknown).await.assert_error(404, "NO_RECORD_FOUND", None);
        fhir.update(&unknown, &sent, None).await.assert_error(404, "NO_RECORD_FOUND", None);
        fhir.update(&unknown, &sent, Some("W/\"1\"")).await.assert_error(404, "NO_RECORD_FOUND", None);
        fhir.delete(&unknown, None).await.assert_error(404, "NO_RECORD_FOUND", None);
    }
    // NRLF's create with a client-chosen id is not served, and the answer says what to do instead.
    let reply = fhir.send(Method::PUT, "/DocumentReference", &[], Some(Body::json(&sent))).await;
    reply.assert_error(405, "METHOD_NOT_ALLOWED", None);
    assert!(reply.diagnostics().contains("POST /DocumentReference"), "{}", reply.body);
    assert!(reply.diagnostics().contains("masterIdentifier"), "{}", reply.body);
    for (method, path) in [
        (Method::POST, format!("/DocumentReference/{id}")),
        (Method::PATCH, format!("/DocumentReference/{id}")),
        (Method::GET, "/DocumentReference/_search".into()),
        (Method::POST, "/DocumentReference/_count".into()),
        (Method::POST, "/metadata".into()),
        (Method::DELETE, "/AuditEvent".into()),
    ] {
        let reply = fhir.send(method, &path, &[], None).await;
        reply.assert_error(405, "METHOD_NOT_ALLOWED", None);
    }
    for path in ["/Patient", "/DocumentReference/a/b", "/documentreference", "/AuditEvent/1"] {
        fhir.get(path).await.assert_error(404, "NO_RECORD_FOUND", None);
    }
    assert_eq!(fhir.read(&id).await.expect(200).etag(), "W/\"1\"");
}

pub async fn a_region_is_required_where_it_is_ambiguous(server: &TestServer) {
    // This node holds every region and the caller (authentication off) may register for any.
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let mut regionless = document(&patient);
    remove(&mut regionless, "extension");
    let reply = fhir.create(&regionless).await;
    reply.assert_error(422, "UNPROCESSABLE_ENTITY", Some(&region_path()));
    assert!(reply.diagnostics().contains("region"), "{}", reply.body);
    // Other extensions do not stand in for it.
    regionless["extension"] = json!([{"url": "https://example.org/other", "valueCode": "QWO"}]);
    fhir.create(&regionless).await.assert_error(422, "UNPROCESSABLE_ENTITY", Some(&region_path()));
    // On update too.
    let id = fhir.created(&document(&patient)).await;
    fhir.update(&id, &regionless, None).await.assert_error(422, "UNPROCESSABLE_ENTITY", Some(&region_path()));
    assert_eq!(fhir.search(&patient_query(&patient)).await.expect(200).body["total"], 1);
}

/// On a node holding only QWO: a pointer without the extension is QWO's; another region is refused.
pub async fn the_region_defaults_to_the_nodes_only_region(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let mut regionless = document(&patient);
    remove(&mut regionless, "extension");
    let created = fhir.create_returning(&regionless).await.expect(201);
    assert_eq!(extension_value(&created.body, REGION_EXTENSION), Some("QWO"), "{}", created.body);
    let elsewhere = document_of(&patient, "QOP", "RR8", CRISIS_PLAN, CARE_PLAN);
    fhir.create(&elsewhere).await.assert_error(422, "UNPROCESSABLE_ENTITY", Some(&region_path()));
}

pub async fn media_types_are_negotiated(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let sent = document(&patient);
    let bytes = sent.to_string().into_bytes();
    let body = |content_type: &'static str| Some(Body { content_type, bytes: bytes.clone() });
    for refused in ["text/plain", "application/xml", "application/fhir+xml", "application/x-www-form-urlencoded"] {
        let reply = fhir.send(Method::POST, "/DocumentReference", &[], body(refused)).await;
        reply.assert_error(415, "UNSUPPORTED_MEDIA_TYPE", Some("Content-Type"));
    }
    for taken in ["application/json", "application/fhir+json; charset=utf-8", "Application/FHIR+JSON"] {
        let mut sent = document(&patient);
        sent["content"][0]["attachment"]["url"] = json!(new_url());
        let body = Some(Body { content_type: taken, bytes: sent.to_string().into_bytes() });
        fhir.send(Method::POST, "/DocumentReference", &[], body).await.expect(201);
    }
    let search = format!("/DocumentReference?{}", patient_query(&patient));
    for accept in ["application/xml", "application/fhir+xml", "text/html"] {
        let reply = fhir.send(Method::GET, &search, &[("accept", accept)], None).await;
        reply.assert_error(406, "NOT_ACCEPTABLE", Some("Accept"));
    }
    for accept in ["application/fhir+json", "application/json", "*/*", "text/html, application/fhir+json;q=0.9"] {
        let reply = fhir.send(Method::GET, &search, &[("accept", accept)], None).await;
        assert_eq!(reply.expect(200).body["total"], 3, "{accept}");
    }
    // Over the body limit (1 MiB).
    let mut huge = document(&patient);
    huge["description"] = json!("x".repeat(1024 * 1024 + 1));
    fhir.create(&huge).await.assert_error(413, "PAYLOAD_TOO_LARGE", None);
    assert_eq!(fhir.search(&patient_query(&patient)).await.expect(200).body["total"], 3);
}
