//! gRPC and FHIR are two edges of one registry: what one writes, the other reads identically,
//! field by field through the README's mapping table; versions, supersessions, searches and counts
//! agree across them.

use crate::client::*;
use crate::interactions::full_document;
use chrono::{DateTime, SecondsFormat, Utc};
use nrl_registry::proto::nrl::v1 as pb;
use serde_json::{json, Value};
use testkit::fixtures::new_patient;
use testkit::TestServer;

fn instant(at: Option<&prost_types::Timestamp>) -> Option<String> {
    let at = at?;
    let time = DateTime::<Utc>::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)?;
    Some(time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn mechanism(value: i32) -> &'static str {
    match pb::RetrievalMechanism::try_from(value) {
        Ok(pb::RetrievalMechanism::Ssp) => "SSP",
        Ok(pb::RetrievalMechanism::Direct) => "Direct",
        Ok(pb::RetrievalMechanism::Ldr) => "LDR",
        Ok(pb::RetrievalMechanism::InContext) => "InContext",
        other => panic!("a stored pointer with retrieval mechanism {other:?}"),
    }
}

fn stability(value: i32) -> &'static str {
    match pb::Stability::try_from(value) {
        Ok(pb::Stability::Static) => "static",
        Ok(pb::Stability::Dynamic) => "dynamic",
        other => panic!("a stored pointer with stability {other:?}"),
    }
}

fn status(value: i32) -> &'static str {
    match pb::PointerStatus::try_from(value) {
        Ok(pb::PointerStatus::Current) => "current",
        Ok(pb::PointerStatus::Superseded) => "superseded",
        other => panic!("a stored pointer with status {other:?}"),
    }
}

/// Asserts that the FHIR `resource` is the gRPC `pointer`, element by element of the mapping.
#[track_caller]
fn assert_same(pointer: &pb::Pointer, resource: &Value) {
    let at = |path: &str| resource.pointer(path).cloned().unwrap_or(Value::Null);
    let coding = |c: &Option<pb::Coding>| {
        let c = c.clone().unwrap_or_default();
        (json!(SNOMED), json!(c.code), if c.display.is_empty() { Value::Null } else { json!(c.display) })
    };
    let pairs: Vec<(&str, Value, Value)> = vec![
        ("id", json!(pointer.id), at("/id")),
        ("version", json!(pointer.version.to_string()), at("/meta/versionId")),
        ("updated_at", json!(instant(pointer.updated_at.as_ref())), at("/meta/lastUpdated")),
        ("status", json!(status(pointer.status)), at("/status")),
        ("nhs_number system", json!(NHS_NUMBER_SYSTEM), at("/subject/identifier/system")),
        ("nhs_number", json!(pointer.nhs_number), at("/subject/identifier/value")),
        ("region", json!(pointer.region), json!(extension_value(resource, REGION_EXTENSION))),
        ("custodian system", json!(ODS_SYSTEM), at("/custodian/identifier/system")),
        ("custodian", json!(pointer.custodian), at("/custodian/identifier/value")),
        (
            "author",
            if pointer.author.is_empty() {
                Value::Null
            } else {
                json!([{"identifier": {"system": ODS_SYSTEM, "value": pointer.author}}])
            },
            at("/author"),
        ),
        (
            "type",
            json!(coding(&pointer.r#type)),
            json!((at("/type/coding/0/system"), at("/type/coding/0/code"), at("/type/coding/0/display"))),
        ),
        (
            "category",
            json!(coding(&pointer.category)),
            json!((
                at("/category/0/coding/0/system"),
                at("/category/0/coding/0/code"),
                at("/category/0/coding/0/display")
            )),
        ),
        (
            "one type coding, one category",
            json!([1, 1]),
            json!([at("/type/coding").as_array().map(Vec::len), at("/category").as_array().map(Vec::len)]),
        ),
        (
            "practice_setting",
            match &pointer.practice_setting {
                Some(_) => json!(coding(&pointer.practice_setting)),
                None => Value::Null,
            },
            match at("/context/practiceSetting") {
                Value::Null => Value::Null,
                _ => json!((
                    at("/context/practiceSetting/coding/0/system"),
                    at("/context/practiceSetting/coding/0/code"),
                    at("/context/practiceSetting/coding/0/display")
                )),
            },
        ),
        ("document_date", json!(instant(pointer.document_date.as_ref())), at("/date")),
        (
            "producer_reference",
            if pointer.producer_reference.is_empty() { Value::Null } else { json!(pointer.producer_reference) },
            at("/masterIdentifier/value"),
        ),
        (
            "supersedes",
            json!(pointer
                .supersedes
                .iter()
                .map(|old| (old.clone(), format!("DocumentReference/{old}")))
                .collect::<Vec<_>>()),
            json!(resource["relatesTo"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    assert_eq!(r["code"], "replaces");
                    (r["target"]["identifier"]["value"].clone(), r["target"]["reference"].clone())
                })
                .collect::<Vec<_>>()),
        ),
        (
            "related_asid",
            if pointer.related_asid.is_empty() {
                Value::Null
            } else {
                json!([{"identifier": {"system": ASID_SYSTEM, "value": pointer.related_asid}}])
            },
            at("/context/related"),
        ),
        (
            "superseded_by",
            if pointer.superseded_by.is_empty() {
                Value::Null
            } else {
                json!(format!("DocumentReference/{}", pointer.superseded_by))
            },
            json!(extension_value(resource, SUPERSEDED_BY_EXTENSION)),
        ),
    ];
    for (field, grpc, fhir) in pairs {
        assert_eq!(grpc, fhir, "{field}: gRPC {grpc} but FHIR {fhir} in {resource}");
    }
    let contents = resource["content"].as_array().expect("content");
    assert_eq!(contents.len(), pointer.content.len(), "{resource}");
    for (grpc, fhir) in pointer.content.iter().zip(contents) {
        assert_eq!(fhir["attachment"]["url"], grpc.url.as_str());
        assert_eq!(fhir["attachment"]["contentType"], grpc.content_type.as_str());
        assert_eq!(fhir["format"]["system"], FORMAT_SYSTEM);
        assert_eq!(fhir["format"]["code"], grpc.format.as_str());
        assert_eq!(content_extension(fhir, RETRIEVAL_EXTENSION), Some(mechanism(grpc.retrieval_mechanism)), "{fhir}");
        assert_eq!(content_extension(fhir, STABILITY_EXTENSION), Some(stability(grpc.stability)), "{fhir}");
    }
}

fn timestamp(rfc3339: &str) -> prost_types::Timestamp {
    let at = DateTime::parse_from_rfc3339(rfc3339).expect("an instant");
    prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }
}

/// A pointer input with every optional field set, ssp:// content with its ASID among them. Built
/// from the harness's fixture, so fields the input gains later keep their defaults.
fn full_input(patient: &str) -> pb::PointerInput {
    let content = |mechanism: pb::RetrievalMechanism, stability: pb::Stability, kind: &str| pb::Content {
        url: match mechanism {
            pb::RetrievalMechanism::Ssp => format!("ssp://rx1.example.nhs.uk/records/{}", rand::random::<u32>()),
            _ => new_url(),
        },
        content_type: kind.into(),
        format: "urn:nhs-ic:structured".into(),
        retrieval_mechanism: mechanism as i32,
        stability: stability as i32,
    };
    let mut input = testkit::fixtures::input(patient, "QOP", "RX1", RESPECT_FORM);
    input.author = "Y05868".into();
    input.category = CARE_PLAN.into();
    input.content = vec![
        content(pb::RetrievalMechanism::Ssp, pb::Stability::Static, "application/pdf"),
        content(pb::RetrievalMechanism::InContext, pb::Stability::Dynamic, "application/fhir+json"),
        content(pb::RetrievalMechanism::Ldr, pb::Stability::Static, "text/html"),
    ];
    input.practice_setting = Some(pb::Coding { code: "892811000000109".into(), display: "Community service".into() });
    input.document_date = Some(timestamp("2023-11-02T08:15:00Z"));
    input.producer_reference = format!("RX1-{}", rand::random::<u32>());
    input.related_asid = "200000000999".into();
    input
}

pub async fn what_grpc_writes_fhir_reads_field_by_field(server: &TestServer) {
    let mut grpc = server.registry();
    let fhir = Fhir::at(server, "/consumer/FHIR/R4");
    let patient = new_patient();
    let created = grpc
        .create_pointer(pb::CreatePointerRequest { pointer: Some(full_input(&patient)) })
        .await
        .expect("create over gRPC")
        .into_inner()
        .pointer
        .expect("the pointer");
    let read = fhir.read(&created.id).await.expect(200);
    assert_same(&created, &read.body);
    assert_eq!(read.etag(), format!("W/\"{}\"", created.version));
    // The same resource in a search.
    let found = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(entries(&found.body)[0]["resource"], read.body);

    // A minimal pointer (no author, setting, date or reference) leaves those elements out.
    let mut minimal = testkit::fixtures::input(&patient, "QWO", "RR8", CRISIS_PLAN);
    minimal.content[0].url = new_url();
    let minimal = grpc
        .create_pointer(pb::CreatePointerRequest { pointer: Some(minimal) })
        .await
        .expect("create over gRPC")
        .into_inner()
        .pointer
        .expect("the pointer");
    let read = fhir.read(&minimal.id).await.expect(200);
    assert_same(&minimal, &read.body);
    for absent in ["author", "context", "date", "masterIdentifier", "relatesTo"] {
        assert!(read.body.get(absent).is_none(), "{absent} in {}", read.body);
    }

    // An update over gRPC is the next version over FHIR.
    let mut changed = full_input(&patient);
    changed.producer_reference = created.producer_reference.clone();
    let updated = grpc
        .update_pointer(pb::UpdatePointerRequest { id: created.id.clone(), version: 1, pointer: Some(changed) })
        .await
        .expect("update over gRPC")
        .into_inner()
        .pointer
        .expect("the pointer");
    let read = fhir.read(&created.id).await.expect(200);
    assert_eq!(read.etag(), "W/\"2\"");
    assert_same(&updated, &read.body);
}

pub async fn what_fhir_writes_grpc_reads_field_by_field(server: &TestServer) {
    let mut grpc = server.registry();
    let fhir = Fhir::at(server, "/producer/FHIR/R4");
    let patient = new_patient();
    let sent = full_document(&patient);
    let id = fhir.created(&sent).await;
    let pointer = grpc
        .get_pointer(pb::GetPointerRequest { id: id.clone() })
        .await
        .expect("get over gRPC")
        .into_inner()
        .pointer
        .expect("the pointer");
    let read = fhir.read(&id).await.expect(200);
    assert_same(&pointer, &read.body);
    // And what was sent is what gRPC holds.
    assert_eq!(pointer.nhs_number, patient);
    assert_eq!(
        (pointer.region.as_str(), pointer.custodian.as_str(), pointer.author.as_str()),
        ("QWO", "RR8", "Y05868")
    );
    assert_eq!(pointer.r#type.as_ref().map(|c| c.code.as_str()), Some(CRISIS_PLAN));
    assert_eq!(pointer.category.as_ref().map(|c| c.code.as_str()), Some(CARE_PLAN));
    assert_eq!(pointer.producer_reference, sent["masterIdentifier"]["value"].as_str().unwrap_or(""));
    assert_eq!(instant(pointer.document_date.as_ref()).as_deref(), sent["date"].as_str());
    let setting = pointer.practice_setting.clone().unwrap_or_default();
    assert_eq!((setting.code.as_str(), setting.display.as_str()), ("788002001", "Adult mental health service"));
    assert_eq!(pointer.content.len(), 2);
    assert_eq!(pointer.content[0].url, url_of(&sent));
    assert_eq!(pointer.content[1].url, sent["content"][1]["attachment"]["url"].as_str().unwrap_or(""));
    assert_eq!(mechanism(pointer.content[1].retrieval_mechanism), "SSP");
    assert_eq!(stability(pointer.content[1].stability), "dynamic");
    assert_eq!(pointer.content[1].format, "urn:nhs-ic:record-contact");
    assert_eq!(pointer.content[1].content_type, "text/html");
    assert_eq!(pointer.related_asid, "200000000117", "context.related's ASID");

    // A FHIR update is the next version over gRPC, and a gRPC delete needs that version.
    let mut changed = read.body.clone();
    changed["content"][0]["attachment"]["url"] = json!(new_url());
    fhir.update(&id, &changed, Some("W/\"1\"")).await.expect(200);
    let pointer = grpc.get_pointer(pb::GetPointerRequest { id: id.clone() }).await.expect("get").into_inner().pointer;
    let pointer = pointer.expect("the pointer");
    assert_eq!((pointer.version, pointer.content[0].url.as_str()), (2, url_of(&changed)));
    let stale = grpc.delete_pointer(pb::DeletePointerRequest { id: id.clone(), version: 1 }).await;
    assert_eq!(stale.expect_err("stale").code(), tonic::Code::Aborted);
    grpc.delete_pointer(pb::DeletePointerRequest { id: id.clone(), version: 2 }).await.expect("delete over gRPC");
    fhir.read(&id).await.assert_error(404, "NO_RECORD_FOUND", None);
}

pub async fn supersede_and_search_agree_across_apis(server: &TestServer) {
    let mut grpc = server.registry();
    let fhir = Fhir::new(server);
    let patient = new_patient();
    // Superseded over gRPC, seen over FHIR.
    let first = fhir.created(&document(&patient)).await;
    let mut replacement = testkit::fixtures::input(&patient, "QWO", "RR8", CRISIS_PLAN);
    replacement.content[0].url = new_url();
    let outcome = grpc
        .supersede_pointer(pb::SupersedePointerRequest { pointer: Some(replacement), supersedes: vec![first.clone()] })
        .await
        .expect("supersede over gRPC")
        .into_inner();
    let second = outcome.pointer.expect("the new pointer");
    let retired = outcome.superseded.first().cloned().expect("the retired pointer");
    assert_same(&retired, &fhir.read(&first).await.expect(200).body);
    assert_same(&second, &fhir.read(&second.id).await.expect(200).body);

    // Superseded over FHIR, seen over gRPC.
    let mut third = document(&patient);
    third["relatesTo"] =
        json!([{"code": "replaces", "target": {"reference": format!("DocumentReference/{}", second.id)}}]);
    let third = fhir.create(&third).await;
    third.assert_success(201, "RESOURCE_SUPERSEDED");
    let third = third.location_id();
    for id in [&second.id, &third] {
        let pointer = grpc.get_pointer(pb::GetPointerRequest { id: id.clone() }).await.expect("get").into_inner();
        assert_same(&pointer.pointer.expect("the pointer"), &fhir.read(id).await.expect(200).body);
    }

    // Searches and counts agree, in order.
    for _ in 0..4 {
        fhir.created(&document_of(&patient, "QWO", "RR8", RESPECT_FORM, CARE_PLAN)).await;
    }
    let query = pb::PointerQuery { nhs_number: patient.clone(), ..Default::default() };
    let listed = grpc
        .search_pointers(pb::SearchPointersRequest {
            query: Some(query.clone()),
            page_size: 50,
            page_token: String::new(),
        })
        .await
        .expect("search over gRPC")
        .into_inner()
        .pointers;
    let found = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(found.entry_ids(), listed.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    for (pointer, entry) in listed.iter().zip(entries(&found.body)) {
        assert_same(pointer, &entry["resource"]);
    }
    let counted =
        grpc.count_pointers(pb::CountPointersRequest { query: Some(query) }).await.expect("count").into_inner();
    let total = fhir.get(&format!("/DocumentReference/_count?{}", patient_query(&patient))).await.expect(200);
    assert_eq!(total.body["total"], counted.count);
    assert_eq!(counted.count, 5, "the third pointer and four ReSPECT forms");
}
