//! The FHIR R4 checks of `testkit::fhir`, which the HTTP tests run on every response body: each
//! accepts a valid example of its resource (NRLF-style where NRLF says how) and rejects a malformed
//! one, whether an element has the wrong type, is unknown, is missing though required, or holds a
//! code outside its required binding. A check that accepted a malformed resource would let a broken
//! response pass, so each kind of fault is shown to fail, with the element's path in the message.

use serde_json::{json, Value};
use testkit::fhir;

type Check = fn(&Value) -> Result<(), String>;

const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_CODE: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const SNOMED: &str = "http://snomed.info/sct";

fn document_reference() -> Value {
    json!({
        "resourceType": "DocumentReference",
        "id": "Y05868-1114567890",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00.000Z"},
        "status": "current",
        "type": {"coding": [{"system": SNOMED, "code": "736253002", "display": "Mental health crisis plan"}]},
        "category": [{"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan"}]}],
        "subject": {"identifier": {"system": NHS_NUMBER, "value": "9000000009"}},
        "date": "2024-05-01T10:00:00.000Z",
        "author": [{"identifier": {"system": ODS_CODE, "value": "Y05868"}}],
        "custodian": {"identifier": {"system": ODS_CODE, "value": "Y05868"}},
        "content": [{
            "attachment": {"contentType": "application/pdf", "url": "https://provider.example/crisis-plan.pdf"},
            "format": {
                "system": "https://fhir.nhs.uk/England/CodeSystem/England-NRLFormatCode",
                "code": "urn:nhs-ic:unstructured",
                "display": "Unstructured Document"
            },
            "extension": [
                {
                    "url": "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-ContentStability",
                    "valueCodeableConcept": {"coding": [{
                        "system": "https://fhir.nhs.uk/England/CodeSystem/England-NRLContentStability",
                        "code": "static",
                        "display": "Static"
                    }]}
                },
                {
                    "url": "https://fhir.nhs.uk/England/StructureDefinition/Extension-England-NRLRetrievalMechanism",
                    "valueCodeableConcept": {"coding": [{
                        "system": "https://fhir.nhs.uk/England/CodeSystem/England-RetrievalMechanism",
                        "code": "SSP",
                        "display": "Spine Secure Proxy"
                    }]}
                }
            ]
        }],
        "context": {
            "practiceSetting": {"coding": [{"system": SNOMED, "code": "788002001", "display": "Adult mental health service"}]}
        }
    })
}

fn bundle() -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "link": [{"relation": "self", "url": format!("https://nrl.example/DocumentReference?subject:identifier={NHS_NUMBER}|9000000009")}],
        "entry": [{
            "fullUrl": "https://nrl.example/DocumentReference/Y05868-1114567890",
            "resource": document_reference(),
            "search": {"mode": "match"}
        }]
    })
}

fn operation_outcome() -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": "invalid",
            "details": {"coding": [{
                "system": "https://fhir.nhs.uk/CodeSystem/Spine-ErrorOrWarningCode",
                "code": "INVALID_PARAMETER",
                "display": "Invalid parameter"
            }]},
            "diagnostics": "subject:identifier must be https://fhir.nhs.uk/Id/nhs-number|<10 digits>",
            "expression": ["http.query.subject:identifier"]
        }]
    })
}

fn capability_statement() -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-05-01",
        "kind": "instance",
        "software": {"name": "nrl-registry", "version": "0.1.0"},
        "implementation": {"description": "National Record Locator-style pointer registry"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": [{
                "type": "DocumentReference",
                "profile": "https://fhir.nhs.uk/England/StructureDefinition/England-DocumentReference",
                "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "create"}, {"code": "update"}],
                "searchParam": [
                    {"name": "subject:identifier", "type": "token"},
                    {"name": "type", "type": "token"}
                ]
            }]
        }]
    })
}

fn audit_event() -> Value {
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
        "action": "E",
        "recorded": "2024-05-01T10:00:00.123Z",
        "outcome": "0",
        "agent": [{"who": {"identifier": {"system": ODS_CODE, "value": "Y05868"}}, "requestor": true}],
        "source": {"observer": {"display": "nrl-registry"}},
        "entity": [{"what": {"reference": "DocumentReference/Y05868-1114567890"}}]
    })
}

/// `example` changed by `change`.
fn changed(mut example: Value, change: impl FnOnce(&mut Value)) -> Value {
    change(&mut example);
    example
}

/// `example` without member `key` of the object at JSON pointer `at`.
fn without(mut example: Value, at: &str, key: &str) -> Value {
    let object = example.pointer_mut(at).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("no object at {at}"));
    object.remove(key).unwrap_or_else(|| panic!("no {key} at {at}"));
    example
}

/// `check` rejects `v`, naming `expected` (a path and what is wrong) in its message.
fn rejects(check: Check, v: &Value, expected: &str) {
    match check(v) {
        Ok(()) => panic!("accepted a malformed resource (expected {expected:?}):\n{v:#}"),
        Err(e) => assert!(e.contains(expected), "the error does not mention {expected:?}:\n{e}"),
    }
    // The generic check finds the same fault.
    let generic = fhir::resource(v).expect_err("fhir::resource accepted it");
    assert!(generic.contains(expected), "fhir::resource's error does not mention {expected:?}:\n{generic}");
}

#[test]
fn the_valid_examples_pass_their_own_check_and_the_generic_one() {
    let cases: [(Check, Value); 5] = [
        (fhir::document_reference, document_reference()),
        (fhir::bundle, bundle()),
        (fhir::operation_outcome, operation_outcome()),
        (fhir::capability_statement, capability_statement()),
        (fhir::audit_event, audit_event()),
    ];
    for (check, v) in cases {
        check(&v).unwrap_or_else(|e| panic!("{e}\n{v:#}"));
        fhir::resource(&v).unwrap_or_else(|e| panic!("{e}\n{v:#}"));
    }
}

#[test]
fn a_check_rejects_another_resource_type() {
    let e = fhir::bundle(&document_reference()).expect_err("a DocumentReference is not a Bundle");
    assert!(e.contains("resourceType"), "{e}");
    let e = fhir::document_reference(&operation_outcome()).expect_err("an OperationOutcome is not a DocumentReference");
    assert!(e.contains("resourceType"), "{e}");
}

#[test]
fn document_reference_faults_are_rejected() {
    let check: Check = fhir::document_reference;
    let doc = document_reference;
    rejects(check, &without(doc(), "", "status"), "DocumentReference.status: required element missing");
    rejects(check, &without(doc(), "", "content"), "DocumentReference.content: required element missing");
    rejects(check, &changed(doc(), |v| v["content"] = json!([])), "DocumentReference.content");
    rejects(check, &changed(doc(), |v| v["status"] = json!(1)), "DocumentReference.status: expected a string");
    rejects(
        check,
        &changed(doc(), |v| v["status"] = json!("active")),
        "DocumentReference.status: \"active\" is not in the required value set",
    );
    rejects(
        check,
        &changed(doc(), |v| v["pointerType"] = json!("crisis-plan")),
        "DocumentReference.pointerType: unknown element",
    );
    rejects(
        check,
        &changed(doc(), |v| v["custodain"] = v["custodian"].take()),
        "DocumentReference.custodain: unknown element",
    );
    rejects(
        check,
        &changed(doc(), |v| v["subject"] = json!([v["subject"].take()])),
        "DocumentReference.subject: expected a single value",
    );
    rejects(
        check,
        &changed(doc(), |v| v["category"] = v["category"][0].take()),
        "DocumentReference.category: expected an array",
    );
    rejects(check, &changed(doc(), |v| v["date"] = json!("2024-05-01")), "DocumentReference.date");
    rejects(
        check,
        &changed(doc(), |v| v["content"][0]["attachment"]["url"] = json!(42)),
        "DocumentReference.content[0].attachment.url: expected a string",
    );
    rejects(
        check,
        &changed(doc(), |v| v["content"][0]["format"]["code"] = json!("")),
        "DocumentReference.content[0].format.code",
    );
    rejects(
        check,
        &without(doc(), "/content/0/extension/0", "url"),
        "DocumentReference.content[0].extension[0].url: required element missing",
    );
    rejects(
        check,
        &changed(doc(), |v| v["content"][0]["extension"][1]["valueCoding"] = json!({"code": "SSP"})),
        "only one type may be given",
    );
    rejects(
        check,
        &changed(doc(), |v| v["context"]["practiceSetting"]["coding"][0]["cod"] = json!("x")),
        "DocumentReference.context.practiceSetting.coding[0].cod: unknown element",
    );
    rejects(
        check,
        &changed(doc(), |v| v["subject"]["identifier"]["value"] = Value::Null),
        "DocumentReference.subject.identifier.value: null is not allowed",
    );
}

#[test]
fn bundle_faults_are_rejected_including_those_of_its_entries() {
    let check: Check = fhir::bundle;
    rejects(check, &without(bundle(), "", "type"), "Bundle.type: required element missing");
    rejects(
        check,
        &changed(bundle(), |v| v["type"] = json!("search")),
        "Bundle.type: \"search\" is not in the required value set",
    );
    rejects(check, &changed(bundle(), |v| v["total"] = json!("1")), "Bundle.total: expected a whole number");
    rejects(check, &changed(bundle(), |v| v["total"] = json!(-1)), "Bundle.total");
    rejects(check, &without(bundle(), "/link/0", "url"), "Bundle.link[0].url: required element missing");
    rejects(
        check,
        &changed(bundle(), |v| v["entry"][0]["search"]["mode"] = json!("hit")),
        "Bundle.entry[0].search.mode",
    );
    rejects(check, &changed(bundle(), |v| v["entries"] = v["entry"].take()), "Bundle.entries: unknown element");
    // A fault inside an entry's resource fails the Bundle.
    rejects(
        check,
        &without(bundle(), "/entry/0/resource", "status"),
        "Bundle.entry[0].resource.status: required element missing",
    );
    rejects(
        check,
        &changed(bundle(), |v| v["entry"][0]["resource"]["status"] = json!("deleted")),
        "\"deleted\" is not in the required value set",
    );
    rejects(
        check,
        &changed(bundle(), |v| v["entry"][0]["resource"]["masterIdentifer"] = json!({})),
        "masterIdentifer: unknown element",
    );
    // An entry of a valid R4 type that the API never returns.
    let binary = json!({"resourceType": "Binary", "contentType": "text/plain"});
    rejects(check, &changed(bundle(), |v| v["entry"][0]["resource"] = binary), "Binary is not a type the API returns");
}

#[test]
fn operation_outcome_faults_are_rejected() {
    let check: Check = fhir::operation_outcome;
    let oo = operation_outcome;
    rejects(check, &without(oo(), "", "issue"), "OperationOutcome.issue: required element missing");
    rejects(check, &without(oo(), "/issue/0", "code"), "OperationOutcome.issue[0].code: required element missing");
    rejects(
        check,
        &changed(oo(), |v| v["issue"][0]["severity"] = json!("bad")),
        "OperationOutcome.issue[0].severity: \"bad\" is not in the required value set",
    );
    rejects(
        check,
        &changed(oo(), |v| v["issue"][0]["code"] = json!("INVALID_PARAMETER")),
        "OperationOutcome.issue[0].code",
    );
    rejects(
        check,
        &changed(oo(), |v| v["issue"][0]["details"]["coding"] = v["issue"][0]["details"]["coding"][0].take()),
        "OperationOutcome.issue[0].details.coding: expected an array",
    );
    rejects(
        check,
        &changed(oo(), |v| v["issue"][0]["expression"] = json!("http.query.subject")),
        "OperationOutcome.issue[0].expression",
    );
    rejects(
        check,
        &changed(oo(), |v| v["issue"][0]["message"] = json!("no")),
        "OperationOutcome.issue[0].message: unknown element",
    );
}

#[test]
fn capability_statement_faults_are_rejected() {
    let check: Check = fhir::capability_statement;
    let cs = capability_statement;
    for required in ["status", "date", "kind", "fhirVersion", "format"] {
        let v = without(cs(), "", required);
        rejects(check, &v, &format!("CapabilityStatement.{required}: required element missing"));
    }
    rejects(
        check,
        &changed(cs(), |v| v["fhirVersion"] = json!("4.0")),
        "CapabilityStatement.fhirVersion: \"4.0\" is not in the required value set",
    );
    rejects(check, &changed(cs(), |v| v["kind"] = json!("server")), "CapabilityStatement.kind");
    rejects(
        check,
        &changed(cs(), |v| v["rest"][0]["resource"][0]["type"] = json!("Pointer")),
        "CapabilityStatement.rest[0].resource[0].type",
    );
    rejects(
        check,
        &changed(cs(), |v| v["rest"][0]["resource"][0]["interaction"][1]["code"] = json!("search")),
        "interaction[1].code",
    );
    rejects(check, &without(cs(), "/rest/0", "mode"), "CapabilityStatement.rest[0].mode: required element missing");
    rejects(
        check,
        &changed(cs(), |v| v["rest"][0]["resource"][0]["searchParam"][0]["type"] = json!(true)),
        "searchParam[0].type: expected a string",
    );
    rejects(
        check,
        &changed(cs(), |v| v["software"]["build"] = json!("abc")),
        "CapabilityStatement.software.build: unknown element",
    );
}

#[test]
fn audit_event_faults_are_rejected() {
    let check: Check = fhir::audit_event;
    let ae = audit_event;
    for required in ["type", "recorded", "agent", "source"] {
        let v = without(ae(), "", required);
        rejects(check, &v, &format!("AuditEvent.{required}: required element missing"));
    }
    rejects(check, &without(ae(), "/agent/0", "requestor"), "AuditEvent.agent[0].requestor: required element missing");
    rejects(check, &without(ae(), "/source", "observer"), "AuditEvent.source.observer: required element missing");
    rejects(
        check,
        &changed(ae(), |v| v["agent"][0]["requestor"] = json!("true")),
        "AuditEvent.agent[0].requestor: expected true or false",
    );
    rejects(check, &changed(ae(), |v| v["recorded"] = json!("2024-05-01T10:00:00")), "AuditEvent.recorded");
    rejects(
        check,
        &changed(ae(), |v| v["action"] = json!("X")),
        "AuditEvent.action: \"X\" is not in the required value set",
    );
    rejects(check, &changed(ae(), |v| v["outcome"] = json!(0)), "AuditEvent.outcome: expected a string");
    rejects(
        check,
        &changed(ae(), |v| v["type"] = json!([v["type"].take()])),
        "AuditEvent.type: expected a single value",
    );
    rejects(
        check,
        &changed(ae(), |v| v["entity"][0]["what"]["ref"] = json!("x")),
        "AuditEvent.entity[0].what.ref: unknown element",
    );
}

#[test]
fn the_generic_check_needs_a_resource_type_the_api_returns() {
    let e = fhir::resource(&json!({"status": "current"})).expect_err("no resourceType");
    assert!(e.contains("no string resourceType"), "{e}");
    let e = fhir::resource(&json!({"resourceType": "Patient"})).expect_err("not an API type");
    assert!(e.contains("\"Patient\" is not one the API returns"), "{e}");
    let e = fhir::resource(&json!([operation_outcome()])).expect_err("an array is not a resource");
    assert!(e.contains("not a FHIR resource"), "{e}");
}

#[test]
fn an_element_the_model_reads_but_drops_fails_the_round_trip() {
    // fhirkit passes over DSTU2's `fhir_comments` without a word and without keeping it; R4 JSON
    // has no such element, and the round trip (read, write back, compare) is what catches it.
    let v = changed(operation_outcome(), |v| v["issue"][0]["fhir_comments"] = json!(["a comment"]));
    rejects(fhir::operation_outcome, &v, "round trip: issue[0].fhir_comments[0] was lost by the model");
}
