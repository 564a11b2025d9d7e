//! Requests shaped as NRLF's producers and consumers send them (our own examples, written to NRLF's
//! published DocumentReference profile): accepted unchanged through `/producer/FHIR/R4/` and read
//! back through `/consumer/FHIR/R4/`. They carry no region, as NRLF has none: these run on a
//! regional node holding one region, which is the pointer's.

use crate::client::*;
use crate::interactions::assert_modelled_elements_kept;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::fixtures::new_patient;
use testkit::TestServer;

const PRODUCER: &str = "/producer/FHIR/R4";
const CONSUMER: &str = "/consumer/FHIR/R4";
/// The Spine ASID of the system serving SSP content (12 digits).
const ASID: &str = "230811201350";

/// A producer's DocumentReference as NRLF's profile has it: NRLF's `<ODS>-<local>` id (ignored on
/// create), docStatus, description, securityLabel, the attachment's descriptive elements,
/// sourcePatientInfo (all accepted and dropped), the content-stability and retrieval-mechanism
/// extensions, a masterIdentifier and a date.
fn nrlf_producer_payload(patient: &str, local: u32) -> Value {
    json!({
        "resourceType": "DocumentReference",
        "id": format!("Y05868-{local}"),
        "status": "current",
        "docStatus": "final",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:oid:1.2.826.0.1.3680043.{local}")},
        "type": {"coding": [{"system": SNOMED, "code": CRISIS_PLAN, "display": "Mental health crisis plan"}]},
        "category": [{"coding": [{"system": SNOMED, "code": CARE_PLAN, "display": "Care plan"}]}],
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}},
        "date": "2024-03-14T09:26:53.000Z",
        "author": [{"identifier": {"system": ODS_SYSTEM, "value": "Y05868"}}],
        "custodian": {"identifier": {"system": ODS_SYSTEM, "value": "Y05868"}},
        "description": "Mental health crisis plan, agreed with the patient",
        "securityLabel": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V", "display": "very restricted"}]}],
        "content": [{
            "attachment": {
                "contentType": "application/pdf",
                "language": "en-GB",
                "url": format!("https://y05868.example.nhs.uk/crisis-plans/{local}.pdf"),
                "size": 48213,
                "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
                "title": "Mental health crisis plan",
                "creation": "2024-03-14T09:20:00+00:00"
            },
            "format": {"system": FORMAT_SYSTEM, "code": "urn:nhs-ic:unstructured", "display": "Unstructured document"},
            "extension": [
                {"url": STABILITY_EXTENSION, "valueCodeableConcept": {"coding": [
                    {"system": STABILITY_SYSTEM, "code": "static", "display": "Static"}]}},
                {"url": RETRIEVAL_EXTENSION, "valueCodeableConcept": {"coding": [
                    {"system": RETRIEVAL_SYSTEM, "code": "Direct", "display": "Direct"}]}}
            ]
        }],
        "context": {
            "practiceSetting": {"coding": [{"system": SNOMED, "code": "788002001", "display": "Adult mental health service"}]},
            "sourcePatientInfo": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": patient}}
        }
    })
}

/// An SSP pointer: content fetched through the Spine Secure Proxy, the serving system's ASID in
/// `context.related`.
fn nrlf_ssp_payload(patient: &str, local: u32) -> Value {
    let mut payload = nrlf_producer_payload(patient, local);
    let url = format!("ssp://y05868.example.nhs.uk/crisis-plans/{local}.pdf");
    payload["content"][0]["attachment"]["url"] = json!(url);
    payload["content"][0]["extension"][1]["valueCodeableConcept"]["coding"][0] =
        json!({"system": RETRIEVAL_SYSTEM, "code": "SSP", "display": "Spine Secure Proxy"});
    payload["context"]["related"] = json!([{"identifier": {"system": ASID_SYSTEM, "value": ASID}}]);
    payload
}

/// POSTs `payload` as an NRLF producer does (`application/json`), returning the reply.
async fn produce(producer: &Fhir, payload: &Value) -> Reply {
    let body = Body { content_type: "application/json", bytes: payload.to_string().into_bytes() };
    producer.send(Method::POST, "/DocumentReference", &[("accept", "application/json")], Some(body)).await
}

pub async fn an_nrlf_producer_payload_is_accepted_unchanged(server: &TestServer) {
    let producer = Fhir::at(server, PRODUCER);
    let consumer = Fhir::at(server, CONSUMER);
    let patient = new_patient();
    let payload = nrlf_producer_payload(&patient, rand::random::<u32>());
    let created = produce(&producer, &payload).await;
    created.assert_success(201, "RESOURCE_CREATED");
    let id = created.location_id();
    assert_ne!(id, payload["id"].as_str().unwrap_or(""), "the registry assigns ids");
    assert!(created.header("location").is_some_and(|l| l.starts_with(&producer.base)));

    let read = consumer.read(&id).await.expect(200);
    assert_modelled_elements_kept(&payload, &read.body);
    for path in ["/type/coding/0/display", "/category/0/coding/0/display", "/masterIdentifier/value", "/date"] {
        assert_eq!(read.body.pointer(path), payload.pointer(path), "{path}");
    }
    assert_eq!(extension_value(&read.body, REGION_EXTENSION), Some("QWO"), "the node's one region");

    // A retry of the same payload (a producer that lost the answer) is the same pointer.
    let again = produce(&producer, &payload).await;
    again.assert_success(200, "RESOURCE_CREATED");
    assert_eq!(again.location_id(), id);

    // What it reads back may be sent back as an update, unchanged but for the new url.
    let mut update = read.body.clone();
    update["content"][0]["attachment"]["url"] = json!(new_url());
    producer.update(&id, &update, Some(read.etag())).await.assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(url_of(&consumer.read(&id).await.expect(200).body), url_of(&update));
}

pub async fn ssp_content_with_context_related_is_accepted_unchanged(server: &TestServer) {
    let producer = Fhir::at(server, PRODUCER);
    let consumer = Fhir::at(server, CONSUMER);
    let patient = new_patient();
    let payload = nrlf_ssp_payload(&patient, rand::random::<u32>());
    let id = produce(&producer, &payload).await.expect(201).location_id();
    let read = consumer.read(&id).await.expect(200);
    assert_modelled_elements_kept(&payload, &read.body);
    assert_eq!(content_extension(&read.body["content"][0], RETRIEVAL_EXTENSION), Some("SSP"));
    assert!(url_of(&read.body).starts_with("ssp://"), "{}", read.body);
    // The serving system's ASID comes back as it was sent (the pointer's related_asid).
    assert_eq!(
        read.body["context"]["related"],
        json!([{"identifier": {"system": ASID_SYSTEM, "value": ASID}}]),
        "context.related read back: {}",
        read.body
    );
    // Without it, SSP content cannot be fetched: refused, naming where the ASID goes.
    let mut without = nrlf_ssp_payload(&patient, rand::random::<u32>());
    without["context"].as_object_mut().expect("context").remove("related");
    let reply = produce(&producer, &without).await;
    reply.assert_error(400, "INVALID_RESOURCE", Some("DocumentReference.context.related[0].identifier.value"));
}

pub async fn an_nrlf_supersede_by_target_identifier(server: &TestServer) {
    let producer = Fhir::at(server, PRODUCER);
    let consumer = Fhir::at(server, CONSUMER);
    let patient = new_patient();
    let old = produce(&producer, &nrlf_producer_payload(&patient, rand::random::<u32>())).await.expect(201);
    let old = old.location_id();
    // NRLF's supersede: relatesTo replaces, the old pointer by target.identifier.value.
    let mut replacement = nrlf_producer_payload(&patient, rand::random::<u32>());
    replacement["relatesTo"] =
        json!([{"code": "replaces", "target": {"type": "DocumentReference", "identifier": {"value": old}}}]);
    let created = produce(&producer, &replacement).await;
    created.assert_success(201, "RESOURCE_SUPERSEDED");
    let new = created.location_id();

    let read = consumer.read(&new).await.expect(200);
    assert_modelled_elements_kept(&replacement, &read.body);
    assert_eq!(read.body["relatesTo"][0]["code"], "replaces");
    assert_eq!(read.body["relatesTo"][0]["target"]["identifier"]["value"], old.as_str());
    let retired = consumer.read(&old).await.expect(200).body;
    assert_eq!(retired["status"], "superseded");
    let by = format!("DocumentReference/{new}");
    assert_eq!(extension_value(&retired, SUPERSEDED_BY_EXTENSION), Some(by.as_str()));
    // A consumer's search shows only the current pointer.
    let found = consumer.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(found.entry_ids(), [new.as_str()]);
    // Replaying the supersede (a lost answer) is the same pointer again, not a second one.
    let again = produce(&producer, &replacement).await;
    assert_eq!((again.status, again.location_id()), (200, new), "{}", again.body);
}

pub async fn nrlf_consumer_searches(server: &TestServer) {
    let producer = Fhir::at(server, PRODUCER);
    let consumer = Fhir::at(server, CONSUMER);
    let patient = new_patient();
    let crisis = produce(&producer, &nrlf_producer_payload(&patient, rand::random::<u32>())).await.expect(201);
    let crisis = crisis.location_id();
    let mut respect = nrlf_producer_payload(&patient, rand::random::<u32>());
    respect["type"] = json!({"coding": [{"system": SNOMED, "code": RESPECT_FORM, "display": "ReSPECT form"}]});
    produce(&producer, &respect).await.expect(201);

    // The query strings NRLF documents, unencoded as its examples write them.
    let by_type = format!("subject:identifier={NHS_NUMBER_SYSTEM}|{patient}&type={SNOMED}|{CRISIS_PLAN}");
    let found = consumer.search(&by_type).await.expect(200);
    assert_eq!(found.body["total"], 1);
    assert_eq!(found.entry_ids(), [crisis.as_str()]);
    assert!(entries(&found.body)[0]["fullUrl"].as_str().is_some_and(|u| u.starts_with(&consumer.base)));
    let custodian =
        format!("subject:identifier={NHS_NUMBER_SYSTEM}|{patient}&custodian:identifier={ODS_SYSTEM}|Y05868");
    assert_eq!(consumer.search(&custodian).await.expect(200).body["total"], 2);
    let category = format!("subject:identifier={NHS_NUMBER_SYSTEM}|{patient}&category={SNOMED}|{CARE_PLAN}");
    assert_eq!(consumer.search(&category).await.expect(200).body["total"], 2);

    // NRLF's POST _search takes the same parameters as a JSON body.
    let body = json!({"subject:identifier": subject(&patient), "type": format!("{SNOMED}|{CRISIS_PLAN}")});
    let posted = consumer.search_post(Body::json(&body)).await.expect(200);
    assert_eq!(posted.entry_ids(), [crisis.as_str()]);
    // And its _count and _summary=count.
    let count =
        consumer.get(&format!("/DocumentReference/_count?subject:identifier={NHS_NUMBER_SYSTEM}|{patient}")).await;
    assert_eq!(count.expect(200).body["total"], 2);
    let summary = consumer.search(&format!("{by_type}&_summary=count")).await.expect(200);
    assert_eq!(summary.body["total"], 1);
    assert!(summary.body.get("entry").is_none());
    // A producer searches its own pointers the same way.
    assert_eq!(producer.search(&by_type).await.expect(200).entry_ids(), [crisis]);
}
