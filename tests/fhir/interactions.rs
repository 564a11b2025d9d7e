//! Every interaction and the shape of its success: create (and its replays), read, update, delete,
//! search in each of its forms, the three base paths, `/metadata` and `/_status`.

use crate::client::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use testkit::fixtures::new_patient;
use testkit::TestServer;

pub async fn create_answers_201_with_location_etag_and_an_outcome(server: &TestServer) {
    let fhir = Fhir::new(server);
    let reply = fhir.create(&document(&new_patient())).await;
    reply.assert_success(201, "RESOURCE_CREATED");
    let id = reply.location_id();
    assert_eq!(reply.header("location"), Some(format!("{}/DocumentReference/{id}", fhir.base).as_str()));
    assert_eq!(reply.etag(), "W/\"1\"");
    assert!(reply.header("last-modified").is_some_and(|m| m.ends_with(" GMT")), "{:?}", reply.headers);
    assert_eq!(reply.body["issue"][0]["diagnostics"], format!("DocumentReference/{id}"));
    assert_eq!(fhir.read(&id).await.expect(200).body["id"], id.as_str(), "Location names the pointer");
}

pub async fn create_with_prefer_representation_returns_the_resource(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let sent = document(&patient);
    let reply = fhir.create_returning(&sent).await.expect(201);
    let id = reply.location_id();
    assert_eq!(reply.etag(), "W/\"1\"");
    let resource = &reply.body;
    assert_eq!(resource["resourceType"], "DocumentReference");
    assert_eq!(resource["id"], id.as_str());
    assert_eq!(resource["meta"]["versionId"], "1");
    assert_eq!(resource["status"], "current");
    assert_eq!(resource["subject"]["identifier"]["value"], patient.as_str());
    assert_eq!(extension_value(resource, REGION_EXTENSION), Some("QWO"));
    assert_eq!(url_of(resource), url_of(&sent));
    assert_eq!(fhir.read(&id).await.expect(200).body, *resource, "the representation is what a read returns");
}

pub async fn create_is_idempotent_on_master_identifier(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let mut sent = document(&patient);
    let reference = format!("urn:oid:1.2.826.0.1.{}", rand::random::<u32>());
    sent["masterIdentifier"] = json!({"system": "urn:ietf:rfc:3986", "value": reference});
    let first = fhir.create(&sent).await;
    first.assert_success(201, "RESOURCE_CREATED");
    let id = first.location_id();

    // The same pointer again (a producer retrying after a lost answer): 200, the same pointer.
    let replay = fhir.create(&sent).await;
    replay.assert_success(200, "RESOURCE_CREATED");
    assert_eq!(replay.location_id(), id);
    assert_eq!(replay.etag(), "W/\"1\"");
    let replay = fhir.create_returning(&sent).await.expect(200);
    assert_eq!(replay.body["id"], id.as_str());
    assert_eq!(replay.body["masterIdentifier"]["value"], reference.as_str());

    // The same masterIdentifier with different content is a different pointer under a taken name.
    let mut conflicting = sent.clone();
    conflicting["content"][0]["attachment"]["url"] = json!(new_url());
    fhir.create(&conflicting).await.assert_error(409, "DUPLICATE_REJECTED", None);

    // A masterIdentifier is unique per custodian: another custodian may use the same one.
    let mut other_custodian = sent.clone();
    other_custodian["custodian"]["identifier"]["value"] = json!("RX1");
    let other = fhir.created(&other_custodian).await;
    assert_ne!(other, id);

    let found = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(found.body["total"], 2, "{}", found.body);
    assert_eq!(found.entry_ids().into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([id, other]));
}

/// A pointer with every optional element the registry models.
pub fn full_document(patient: &str) -> Value {
    let mut sent = document(patient);
    sent["masterIdentifier"] = json!({"value": format!("RR8-{}", rand::random::<u32>())});
    sent["author"] = json!([{"identifier": {"system": ODS_SYSTEM, "value": "Y05868"}}]);
    sent["date"] = json!("2024-05-01T10:00:00.000Z");
    // ssp:// content names the Spine ASID of the system serving it, as NRLF's profile requires.
    sent["context"] = json!({
        "practiceSetting": {"coding": [{"system": SNOMED, "code": "788002001", "display": "Adult mental health service"}]},
        "related": [{"identifier": {"system": ASID_SYSTEM, "value": "200000000117"}}],
    });
    sent["content"] = json!([
        content(&new_url(), Some("Direct")),
        content(&format!("ssp://qwo.example.nhs.uk/records/{}", rand::random::<u32>()), Some("SSP")),
    ]);
    sent["content"][1]["attachment"]["contentType"] = json!("text/html");
    sent["content"][1]["format"]["code"] = json!("urn:nhs-ic:record-contact");
    sent["content"][1]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("dynamic");
    sent
}

/// Asserts that `read` holds every element of `sent` the registry models, unchanged.
#[track_caller]
pub fn assert_modelled_elements_kept(sent: &Value, read: &Value) {
    for path in [
        "/subject/identifier/system",
        "/subject/identifier/value",
        "/custodian/identifier/system",
        "/custodian/identifier/value",
        "/type/coding/0/system",
        "/type/coding/0/code",
        "/category/0/coding/0/system",
        "/category/0/coding/0/code",
        "/status",
    ] {
        assert_eq!(read.pointer(path), sent.pointer(path), "{path} in {read}");
    }
    for path in ["/author/0/identifier", "/masterIdentifier/value", "/date", "/context/practiceSetting/coding/0"] {
        if let Some(value) = sent.pointer(path) {
            assert_eq!(read.pointer(path), Some(value), "{path} in {read}");
        }
    }
    let sent_content = sent["content"].as_array().expect("content");
    let read_content = read["content"].as_array().expect("content read back");
    assert_eq!(read_content.len(), sent_content.len(), "{read}");
    for (sent, read) in sent_content.iter().zip(read_content) {
        assert_eq!(read["attachment"]["url"], sent["attachment"]["url"]);
        assert_eq!(read["attachment"]["contentType"], sent["attachment"]["contentType"]);
        assert_eq!(read["format"]["system"], sent["format"]["system"]);
        assert_eq!(read["format"]["code"], sent["format"]["code"]);
        assert_eq!(content_extension(read, STABILITY_EXTENSION), content_extension(sent, STABILITY_EXTENSION));
        if let Some(mechanism) = content_extension(sent, RETRIEVAL_EXTENSION) {
            assert_eq!(content_extension(read, RETRIEVAL_EXTENSION), Some(mechanism), "{read}");
        }
    }
}

pub async fn read_returns_the_resource_with_its_version(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let sent = full_document(&patient);
    let id = fhir.created(&sent).await;
    let read = fhir.read(&id).await.expect(200);
    assert_eq!(read.etag(), "W/\"1\"");
    assert!(read.header("last-modified").is_some());
    let resource = &read.body;
    assert_eq!(resource["resourceType"], "DocumentReference");
    assert_eq!(resource["id"], id.as_str());
    assert_eq!(resource["meta"]["versionId"], "1");
    assert!(resource["meta"]["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')), "{resource}");
    assert_eq!(extension_value(resource, REGION_EXTENSION), Some("QWO"));
    assert_modelled_elements_kept(&sent, resource);
    // Without the extension the mechanism follows the url: ssp:// through the proxy, else direct.
    let mut defaulted = document(&patient);
    defaulted["content"] = json!([content(&new_url(), None), content("ssp://qwo.example.nhs.uk/r/1", None)]);
    defaulted["context"] = json!({"related": [{"identifier": {"system": ASID_SYSTEM, "value": "200000000117"}}]});
    let read = fhir.read(&fhir.created(&defaulted).await).await.expect(200);
    assert_eq!(content_extension(&read.body["content"][0], RETRIEVAL_EXTENSION), Some("Direct"));
    assert_eq!(content_extension(&read.body["content"][1], RETRIEVAL_EXTENSION), Some("SSP"));
}

pub async fn update_with_and_without_if_match(server: &TestServer) {
    let fhir = Fhir::new(server);
    let id = fhir.created(&full_document(&new_patient())).await;
    // Read, change, write back what was read (with its id and meta) under the ETag read.
    let read = fhir.read(&id).await.expect(200);
    let mut changed = read.body.clone();
    changed["content"][0]["attachment"]["url"] = json!(new_url());
    changed["date"] = json!("2024-06-01T09:30:00.000Z");
    let reply = fhir.update(&id, &changed, Some(read.etag())).await;
    reply.assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(reply.etag(), "W/\"2\"");
    assert_eq!(reply.location_id(), id);
    let read = fhir.read(&id).await.expect(200);
    assert_eq!(read.body["meta"]["versionId"], "2");
    assert_eq!(url_of(&read.body), url_of(&changed));
    assert_eq!(read.body["date"], "2024-06-01T09:30:00.000Z");

    // Without If-Match the update applies to the current version.
    let mut again = read.body.clone();
    again["content"][0]["attachment"]["url"] = json!(new_url());
    let prefer = [("prefer", "return=representation")];
    let reply = fhir.send(Method::PUT, &format!("/DocumentReference/{id}"), &prefer, Some(Body::json(&again))).await;
    let reply = reply.expect(200);
    assert_eq!(reply.etag(), "W/\"3\"");
    assert_eq!(reply.body["meta"]["versionId"], "3");
    assert_eq!(url_of(&reply.body), url_of(&again));

    // A strong ETag names the same version.
    let reply = fhir.update(&id, &again, Some("\"3\"")).await;
    reply.assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(reply.etag(), "W/\"4\"");

    // `If-Match: *` (any current version) is the same as none.
    let reply = fhir.update(&id, &again, Some("*")).await;
    reply.assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(reply.etag(), "W/\"5\"");
}

pub async fn delete_then_read_is_not_found(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let id = fhir.created(&document(&patient)).await;
    let reply = fhir.delete(&id, None).await;
    reply.assert_success(200, "RESOURCE_DELETED");
    assert_eq!(reply.body["issue"][0]["diagnostics"], format!("DocumentReference/{id}"));
    fhir.read(&id).await.assert_error(404, "NO_RECORD_FOUND", None);
    fhir.delete(&id, None).await.assert_error(404, "NO_RECORD_FOUND", None);
    assert_eq!(fhir.search(&patient_query(&patient)).await.expect(200).body["total"], 0);

    // DELETE honours If-Match.
    let id = fhir.created(&document(&patient)).await;
    fhir.delete(&id, Some("W/\"2\"")).await.assert_error(412, "PRECONDITION_FAILED", None);
    fhir.read(&id).await.expect(200);
    fhir.delete(&id, Some("W/\"1\"")).await.assert_success(200, "RESOURCE_DELETED");
    fhir.read(&id).await.assert_error(404, "NO_RECORD_FOUND", None);
}

/// Asserts a searchset Bundle of `ids` (in order) under `base`, with its total and self link.
#[track_caller]
pub fn assert_searchset(reply: &Reply, base: &str, ids: &[String]) {
    let bundle = &reply.body;
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], ids.len(), "{bundle}");
    assert_eq!(&reply.entry_ids(), ids, "{bundle}");
    for entry in entries(bundle) {
        let id = entry["resource"]["id"].as_str().unwrap_or("");
        assert_eq!(entry["fullUrl"], format!("{base}/DocumentReference/{id}"), "{entry}");
        assert_eq!(entry["resource"]["resourceType"], "DocumentReference");
        assert_eq!(entry["search"]["mode"], "match");
    }
    let own = reply.link("self").unwrap_or_else(|| panic!("no self link: {bundle}"));
    assert!(own.starts_with(&format!("{base}/DocumentReference?")), "{own}");
}

pub async fn search_by_get_post_form_post_json_and_count_agree(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    fhir.created(&document(&new_patient())).await; // someone else's
    let mut ids = Vec::new();
    for kind in [CRISIS_PLAN, RESPECT_FORM, CRISIS_PLAN] {
        ids.push(fhir.created(&document_of(&patient, "QWO", "RR8", kind, CARE_PLAN)).await);
    }
    ids.reverse(); // newest first
    let get = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_searchset(&get, &fhir.base, &ids);
    assert!(get.link("next").is_none(), "one page: {}", get.body);
    // The self link repeats the search.
    let again = fhir.get(&get.link("self").expect("self")).await.expect(200);
    assert_eq!(again.entry_ids(), ids);

    let form = fhir.search_post(Body::form(&[("subject:identifier", &subject(&patient))])).await.expect(200);
    assert_searchset(&form, &fhir.base, &ids);
    let body = Body::json(&json!({"subject:identifier": subject(&patient)}));
    let posted = fhir.search_post(body).await.expect(200);
    assert_searchset(&posted, &fhir.base, &ids);
    // Parameters may come in the query string of a _search too.
    let typed = query(&[("type", &format!("{SNOMED}|{RESPECT_FORM}"))]);
    let body = Body::json(&json!({"subject:identifier": subject(&patient)}));
    let reply = fhir.send(Method::POST, &format!("/DocumentReference/_search?{typed}"), &[], Some(body)).await;
    assert_searchset(&reply.expect(200), &fhir.base, &ids[1..2]);

    for count in [
        fhir.get(&format!("/DocumentReference/_count?{}", patient_query(&patient))).await,
        fhir.search(&format!("{}&_summary=count", patient_query(&patient))).await,
    ] {
        let count = count.expect(200);
        assert_eq!(count.body["resourceType"], "Bundle");
        assert_eq!(count.body["type"], "searchset");
        assert_eq!(count.body["total"], 3, "{}", count.body);
        assert!(count.body.get("entry").is_none(), "a count has no entries: {}", count.body);
    }
    let counted = fhir.get(&format!("/DocumentReference/_count?{}&type={CRISIS_PLAN}", patient_query(&patient))).await;
    assert_eq!(counted.expect(200).body["total"], 2);

    // A count's self link repeats the count, from either endpoint.
    let count = fhir.get(&format!("/DocumentReference/_count?{}", patient_query(&patient))).await.expect(200);
    let again = fhir.get(&count.link("self").expect("self")).await.expect(200);
    assert_eq!((&again.body["total"], again.body.get("entry")), (&json!(3), None), "{}", again.body);

    // Pages of a POST _search go on by GET, carrying the parameters from the body.
    let form = Body::form(&[("subject:identifier", &subject(&patient)), ("_count", "2")]);
    let first = fhir.search_post(form).await.expect(200);
    assert_eq!(first.entry_ids(), ids[..2]);
    let rest = fhir.get(&first.link("next").expect("a next link")).await.expect(200);
    assert_eq!(rest.entry_ids(), ids[2..]);
    assert!(rest.link("next").is_none());
    // Media types are case-insensitive, a form's too.
    let form = Body {
        content_type: "Application/X-WWW-Form-URLEncoded",
        ..Body::form(&[("subject:identifier", &subject(&patient))])
    };
    assert_eq!(fhir.search_post(form).await.expect(200).entry_ids(), ids);

    // Nobody's pointers: an empty searchset, total 0.
    let none = fhir.search(&patient_query(&new_patient())).await.expect(200);
    assert_searchset(&none, &fhir.base, &[]);
}

pub async fn search_filters_select_and_comma_means_or(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let crisis = fhir.created(&document_of(&patient, "QWO", "RR8", CRISIS_PLAN, CARE_PLAN)).await;
    let respect = fhir.created(&document_of(&patient, "QWO", "RR8", RESPECT_FORM, CARE_PLAN)).await;
    let elsewhere = fhir.created(&document_of(&patient, "QOP", "RX1", CRISIS_PLAN, CARE_PLAN)).await;
    let news = fhir.created(&document_of(&patient, "QWO", "RR8", NEWS2, OBSERVATIONS)).await;
    let cases: Vec<(String, Vec<&String>)> = vec![
        (format!("type={SNOMED}|{CRISIS_PLAN}"), vec![&elsewhere, &crisis]),
        (format!("type={CRISIS_PLAN}"), vec![&elsewhere, &crisis]),
        (format!("type={SNOMED}|{CRISIS_PLAN},{SNOMED}|{RESPECT_FORM}"), vec![&elsewhere, &respect, &crisis]),
        (format!("category={SNOMED}|{OBSERVATIONS}"), vec![&news]),
        (format!("category={SNOMED}|{CARE_PLAN}"), vec![&elsewhere, &respect, &crisis]),
        (format!("custodian:identifier={ODS_SYSTEM}|RX1"), vec![&elsewhere]),
        (format!("custodian:identifier={ODS_SYSTEM}|RR8,{ODS_SYSTEM}|RX1"), vec![&news, &elsewhere, &respect, &crisis]),
        ("region=QOP".into(), vec![&elsewhere]),
        (format!("region=QWO,QOP&type={SNOMED}|{CRISIS_PLAN}"), vec![&elsewhere, &crisis]),
        (format!("region=QWO&custodian:identifier={ODS_SYSTEM}|RR8&type={SNOMED}|{NEWS2}"), vec![&news]),
    ];
    for (filter, expected) in cases {
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        let found = fhir.search(&format!("{}&{filter}", patient_query(&patient))).await.expect(200);
        assert_searchset(&found, &fhir.base, &expected);
        let count = fhir.get(&format!("/DocumentReference/_count?{}&{filter}", patient_query(&patient))).await;
        assert_eq!(count.expect(200).body["total"], expected.len(), "_count with {filter}");
    }
}

pub async fn supersede_retires_every_target_atomically(server: &TestServer) {
    let fhir = Fhir::new(server);
    let patient = new_patient();
    let [first, second, third] = [(); 3].map(|()| document(&patient));
    let (first, second) = (fhir.created(&first).await, fhir.created(&second).await);
    let third = fhir.created(&third).await;
    // One target by reference, one by identifier, as FHIR and NRLF each write it.
    let mut replacement = document(&patient);
    replacement["relatesTo"] = json!([
        {"code": "replaces", "target": {"reference": format!("DocumentReference/{first}")}},
        {"code": "replaces", "target": {"identifier": {"value": second}}},
    ]);
    let created = fhir.create_returning(&replacement).await.expect(201);
    let new = created.location_id();
    let targets: Vec<&Value> = created.body["relatesTo"].as_array().expect("relatesTo").iter().collect();
    let named: BTreeSet<&str> = targets.iter().filter_map(|t| t["target"]["identifier"]["value"].as_str()).collect();
    assert_eq!(named, BTreeSet::from([first.as_str(), second.as_str()]), "{}", created.body);
    for old in [&first, &second] {
        let retired = fhir.read(old).await.expect(200).body;
        assert_eq!(retired["status"], "superseded");
        assert_eq!(
            extension_value(&retired, SUPERSEDED_BY_EXTENSION),
            Some(format!("DocumentReference/{new}").as_str())
        );
    }
    // A supersede naming one pointer already superseded changes nothing, not even the other.
    let mut again = document(&patient);
    again["relatesTo"] = json!([
        {"code": "replaces", "target": {"identifier": {"value": third}}},
        {"code": "replaces", "target": {"identifier": {"value": first}}},
    ]);
    let reply = fhir.create(&again).await;
    reply.assert_error(422, "UNPROCESSABLE_ENTITY", Some("DocumentReference.relatesTo[1].target"));
    let untouched = fhir.read(&third).await.expect(200);
    assert_eq!((untouched.etag(), &untouched.body["status"]), ("W/\"1\"", &json!("current")));
    let found = fhir.search(&patient_query(&patient)).await.expect(200);
    assert_eq!(found.entry_ids(), [new, third]);
}

pub async fn every_base_path_serves_the_same_registry(server: &TestServer) {
    let [plain, producer, consumer] =
        ["/FHIR/R4", "/producer/FHIR/R4", "/consumer/FHIR/R4"].map(|path| Fhir::at(server, path));
    let patient = new_patient();
    let created = producer.create(&document(&patient)).await;
    created.assert_success(201, "RESOURCE_CREATED");
    let id = created.location_id();
    assert!(created.header("location").is_some_and(|l| l.starts_with(&producer.base)), "{:?}", created.headers);
    let read = consumer.read(&id).await.expect(200);
    assert_eq!(plain.read(&id).await.expect(200).body, read.body);
    assert_eq!(producer.read(&id).await.expect(200).body, read.body);
    for fhir in [&plain, &producer, &consumer] {
        // Links and fullUrls are under the base the request came in on.
        let found = fhir.search(&patient_query(&patient)).await.expect(200);
        assert_searchset(&found, &fhir.base, std::slice::from_ref(&id));
        let metadata = fhir.get("/metadata").await.expect(200);
        assert_eq!(metadata.body["url"], format!("{}/metadata", fhir.base));
        assert_eq!(metadata.body["implementation"]["url"], fhir.base.as_str());
        assert_eq!(fhir.get("/_status").await.expect(200).body, json!({"message": "OK"}));
    }
    let mut changed = read.body.clone();
    changed["content"][0]["attachment"]["url"] = json!(new_url());
    plain.update(&id, &changed, Some("W/\"1\"")).await.assert_success(200, "RESOURCE_UPDATED");
    assert_eq!(url_of(&consumer.read(&id).await.expect(200).body), url_of(&changed));
    producer.delete(&id, Some("W/\"2\"")).await.assert_success(200, "RESOURCE_DELETED");
    consumer.read(&id).await.assert_error(404, "NO_RECORD_FOUND", None);
}

/// A value each listed search parameter is tried with: every listed parameter must have one, so a
/// parameter added to the CapabilityStatement fails here until it is tested.
fn trial_value(name: &str, patient: &str, page_token: &str) -> String {
    match name {
        "subject:identifier" | "patient.identifier" | "entity.identifier" => subject(patient),
        "type" => format!("{SNOMED}|{CRISIS_PLAN}"),
        "category" => format!("{SNOMED}|{CARE_PLAN}"),
        "custodian:identifier" => format!("{ODS_SYSTEM}|RR8"),
        "region" => "QWO".into(),
        "_count" => "1".into(),
        "_summary" => "count".into(),
        "next-page-token" => page_token.into(),
        other => panic!("the CapabilityStatement lists {other}, which this test does not know how to try"),
    }
}

fn listed<'a>(resource: &'a Value, list: &str, field: &str) -> Vec<&'a str> {
    resource[list].as_array().into_iter().flatten().filter_map(|item| item[field].as_str()).collect()
}

pub async fn metadata_lists_exactly_what_is_served(server: &TestServer) {
    let fhir = Fhir::new(server);
    let statement = fhir.get("/metadata").await.expect(200).body;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    let formats = statement["format"].as_array().expect("formats");
    assert!(formats.iter().any(|f| f == "application/fhir+json"), "{statement}");
    let rest = &statement["rest"][0];
    assert_eq!(rest["mode"], "server");
    let resources = rest["resource"].as_array().expect("resources");
    let types: Vec<&str> = resources.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(types, ["DocumentReference", "AuditEvent"]);
    let documents = &resources[0];
    let interactions: BTreeSet<&str> = listed(documents, "interaction", "code").into_iter().collect();
    assert_eq!(interactions, BTreeSet::from(["create", "read", "update", "delete", "search-type"]));

    // Each interaction listed is served.
    let patient = new_patient();
    let id = fhir.created(&document(&patient)).await; // create
    for _ in 0..2 {
        fhir.created(&document(&patient)).await;
    }
    let read = fhir.read(&id).await.expect(200); // read
    fhir.update(&id, &read.body, Some(read.etag())).await.expect(200); // update
    let page = fhir.search(&format!("{}&_count=1", patient_query(&patient))).await.expect(200); // search-type
    let next = page.link("next").expect("a next link");
    let token = parameter_of(&next, "next-page-token").expect("the page token");

    // Each search parameter listed is taken; names it does not list are refused.
    for name in listed(documents, "searchParam", "name") {
        let mut pairs = vec![("subject:identifier".to_string(), subject(&patient))];
        if name != "subject:identifier" {
            pairs.push((name.to_string(), trial_value(name, &patient, &token)));
        }
        if name == "next-page-token" {
            pairs.push(("_count".into(), "1".into()));
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        fhir.search(&query(&pairs)).await.expect(200);
    }
    for unlisted in ["date", "status", "_id", "patient", "subject", "_sort", "_include", "identifier", "_lastUpdated"] {
        let reply = fhir.search(&format!("{}&{unlisted}=x", patient_query(&patient))).await;
        reply.assert_error(400, "INVALID_PARAMETER", Some(unlisted));
    }
    // Interactions it does not list are refused: no history, no patch, no instance-level search.
    fhir.get(&format!("/DocumentReference/{id}/_history")).await.assert_error(404, "NO_RECORD_FOUND", None);
    fhir.send(Method::PATCH, &format!("/DocumentReference/{id}"), &[], None).await.assert_error(
        405,
        "METHOD_NOT_ALLOWED",
        None,
    );
    fhir.send(Method::DELETE, "/DocumentReference", &[], None).await.assert_error(405, "METHOD_NOT_ALLOWED", None);

    // The access log: each listed parameter is taken, others refused.
    let audit = &resources[1];
    assert_eq!(listed(audit, "interaction", "code"), ["search-type"]);
    let log = format!("/AuditEvent?{}", query(&[("patient.identifier", &subject(&patient)), ("_count", "1")]));
    let log = fhir.get(&log).await.expect(200);
    let next = log.link("next").expect("a next page of the access log");
    let token = parameter_of(&next, "next-page-token").expect("the log's page token");
    for name in listed(audit, "searchParam", "name") {
        let mut pairs = vec![(name.to_string(), trial_value(name, &patient, &token))];
        if !name.ends_with(".identifier") {
            pairs.push(("patient.identifier".into(), subject(&patient)));
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let reply = fhir.get(&format!("/AuditEvent?{}", query(&pairs))).await.expect(200);
        assert_eq!(reply.body["resourceType"], "Bundle");
    }
    let unlisted = query(&[("patient.identifier", &subject(&patient)), ("date", "2024")]);
    fhir.get(&format!("/AuditEvent?{unlisted}")).await.assert_error(400, "INVALID_PARAMETER", Some("date"));
}

pub async fn status_says_ok(server: &TestServer) {
    for path in ["/FHIR/R4", "/producer/FHIR/R4", "/consumer/FHIR/R4"] {
        let reply = Fhir::at(server, path).get("/_status").await.expect(200);
        assert_eq!(reply.body, json!({"message": "OK"}));
    }
}
