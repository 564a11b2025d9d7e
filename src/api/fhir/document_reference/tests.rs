use super::*;
use crate::domain::PointerStatus;
use serde_json::json;

fn context(reference: &ReferenceData) -> ReadContext<'_> {
    ReadContext { reference, default_region: None }
}

fn example() -> Value {
    json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "extension": [{"url": REGION_EXTENSION, "valueCode": "QWO"}],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4"},
        "type": {"coding": [{"system": SNOMED_SYSTEM, "code": "736253002", "display": "Mental health crisis plan"}]},
        "category": [{"coding": [{"system": SNOMED_SYSTEM, "code": "734163000", "display": "Care plan"}]}],
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}},
        "custodian": {"identifier": {"system": ODS_SYSTEM, "value": "RR8"}},
        "author": [{"identifier": {"system": ODS_SYSTEM, "value": "RR8"}}],
        "date": "2024-05-01T10:00:00Z",
        "description": "dropped, as the README's mapping table says",
        "content": [{
            "attachment": {"contentType": "application/pdf", "url": "https://qwo.example.nhs.uk/doc/1", "title": "dropped"},
            "format": {"system": FORMAT_SYSTEM, "code": "urn:nhs-ic:unstructured"},
            "extension": [{"url": STABILITY_EXTENSION, "valueCodeableConcept": {"coding": [{"system": STABILITY_SYSTEM, "code": "static"}]}}],
        }],
        "context": {"practiceSetting": {"coding": [{"system": SNOMED_SYSTEM, "code": "788002001", "display": "Adult mental health service"}]}},
    })
}

fn read_value(value: &Value) -> Result<Submission> {
    let reference = ReferenceData::default();
    read(value.to_string().as_bytes(), &context(&reference))
}

#[test]
fn an_nrlf_pointer_reads_into_a_draft() {
    let submission = read_value(&example()).expect("valid");
    let draft = submission.draft;
    assert_eq!(draft.nhs_number.to_string(), "9434765919");
    assert_eq!(draft.region.as_str(), "QWO");
    assert_eq!(draft.custodian.as_str(), "RR8");
    assert_eq!(draft.pointer_type.coding.code, "736253002");
    assert_eq!(draft.content[0].retrieval_mechanism, RetrievalMechanism::Direct, "https without the extension");
    assert_eq!(draft.producer_reference.as_ref().map(ProducerReference::as_str), Some("urn:oid:1.2.3.4"));
}

fn expression_of_error(mutate: impl FnOnce(&mut Value)) -> (SpineCode, Option<String>) {
    let mut value = example();
    mutate(&mut value);
    let error = read_value(&value).expect_err("invalid");
    (error.spine, error.expression)
}

#[test]
fn every_error_names_the_element() {
    type Case = (Box<dyn FnOnce(&mut Value)>, SpineCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|v| v["subject"]["identifier"]["value"] = json!("9434765918")),
            SpineCode::InvalidNhsNumber,
            "DocumentReference.subject.identifier.value",
        ),
        (
            Box::new(|v| v["subject"]["identifier"]["system"] = json!("urn:other")),
            SpineCode::InvalidIdentifierSystem,
            "DocumentReference.subject.identifier.system",
        ),
        (
            Box::new(|v| v["type"]["coding"][0]["system"] = json!("urn:other")),
            SpineCode::InvalidCodeSystem,
            "DocumentReference.type.coding[0].system",
        ),
        (
            Box::new(|v| v["content"][0]["attachment"]["colour"] = json!("red")),
            SpineCode::InvalidResource,
            "DocumentReference.content[0].attachment.colour",
        ),
        (Box::new(|v| v["flavour"] = json!("x")), SpineCode::InvalidResource, "DocumentReference.flavour"),
        (
            Box::new(|v| v["content"][0]["attachment"]["url"] = json!("http://insecure")),
            SpineCode::InvalidResource,
            "DocumentReference.content[0].attachment.url",
        ),
        (Box::new(|v| v["status"] = json!(7)), SpineCode::InvalidResource, "DocumentReference.status"),
    ];
    for (mutate, spine, expression) in cases {
        assert_eq!(expression_of_error(mutate), (spine, Some(expression.to_string())));
    }
}

#[test]
fn a_body_that_is_not_json_is_not_well_formed() {
    let reference = ReferenceData::default();
    let error = read(b"{\"resourceType\":", &context(&reference)).expect_err("broken");
    assert_eq!(error.spine, SpineCode::MessageNotWellFormed);
}

#[test]
fn a_pointer_written_out_reads_back_the_same() {
    let submission = read_value(&example()).expect("valid");
    let now = chrono::Utc::now();
    let pointer = Pointer {
        id: PointerId::from_bytes([7; 16]),
        draft: submission.draft.clone(),
        status: PointerStatus::Current,
        supersedes: vec![],
        superseded_by: None,
        version: 3,
        created_at: now,
        updated_at: now,
    };
    let written = resource(&pointer);
    assert_eq!(written["meta"]["versionId"], "3");
    let again = read_value(&written).expect("its own output reads back");
    assert_eq!(again.draft, submission.draft);
}

#[test]
fn ssp_content_carries_its_asid_in_context_related_both_ways() {
    let mut value = example();
    value["content"][0]["attachment"]["url"] = json!("ssp://qwo.example.nhs.uk/doc/1");
    value["context"]["related"] = json!([
        {"identifier": {"system": "https://example.org/other", "value": "x"}},
        {"identifier": {"system": ASID_SYSTEM, "value": "200000000123"}},
    ]);
    let draft = read_value(&value).expect("valid").draft;
    assert_eq!(draft.related_asid.as_ref().map(Asid::as_str), Some("200000000123"));
    assert_eq!(draft.content[0].retrieval_mechanism, RetrievalMechanism::Ssp, "ssp:// without the extension");
    let now = chrono::Utc::now();
    let pointer = Pointer {
        id: PointerId::from_bytes([9; 16]),
        draft: draft.clone(),
        status: PointerStatus::Current,
        supersedes: vec![],
        superseded_by: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let written = resource(&pointer);
    assert_eq!(written["context"]["related"][0]["identifier"]["value"], "200000000123");
    assert_eq!(read_value(&written).expect("reads back").draft, draft);

    value["context"]["related"][1]["identifier"]["value"] = json!("12345");
    let error = read_value(&value).expect_err("not 12 digits");
    assert_eq!(error.expression.as_deref(), Some("DocumentReference.context.related[1].identifier.value"));
}
