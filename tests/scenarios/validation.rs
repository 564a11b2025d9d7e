//! Every rejection of a malformed pointer: INVALID_ARGUMENT naming the field, nothing written.

use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::Code;

type Mutation = fn(&mut pb::PointerInput);

/// (what is wrong, how to break a valid input, the field the error must name)
fn bad_inputs() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        ("empty NHS number", |p| p.nhs_number.clear(), "pointer.nhs_number"),
        ("NHS number with bad check digit", |p| p.nhs_number = "9434765918".into(), "pointer.nhs_number"),
        ("NHS number too short", |p| p.nhs_number = "943476591".into(), "pointer.nhs_number"),
        ("NHS number with letters", |p| p.nhs_number = "94347659AB".into(), "pointer.nhs_number"),
        ("empty region", |p| p.region.clear(), "pointer.region"),
        ("unknown region", |p| p.region = "QZZ".into(), "pointer.region"),
        ("empty custodian", |p| p.custodian.clear(), "pointer.custodian"),
        ("malformed custodian", |p| p.custodian = "R-8".into(), "pointer.custodian"),
        ("overlong custodian", |p| p.custodian = "ABCDEFGHIJKLM".into(), "pointer.custodian"),
        ("malformed author", |p| p.author = "x".into(), "pointer.author"),
        ("empty type", |p| p.r#type.clear(), "pointer.type"),
        ("unknown type", |p| p.r#type = "123456789".into(), "pointer.type"),
        ("category of another type", |p| p.category = OBSERVATIONS.into(), "pointer.category"),
        ("unknown category", |p| p.category = "111111111".into(), "pointer.category"),
        ("no content", |p| p.content.clear(), "pointer.content"),
        ("too much content", |p| p.content = vec![content("https://a.example/x"); 11], "pointer.content"),
        ("http url", |p| p.content[0].url = "http://example.nhs.uk/x".into(), "pointer.content[0].url"),
        ("empty url", |p| p.content[0].url.clear(), "pointer.content[0].url"),
        (
            "overlong url",
            |p| p.content[0].url = format!("https://example.nhs.uk/{}", "a".repeat(2100)),
            "pointer.content[0].url",
        ),
        ("url in second content", |p| p.content.push(content("ftp://x.example/y")), "pointer.content[1].url"),
        ("unknown content type", |p| p.content[0].content_type = "image/png".into(), "pointer.content[0].content_type"),
        ("unknown format", |p| p.content[0].format = "urn:nhs-ic:other".into(), "pointer.content[0].format"),
        ("no retrieval mechanism", |p| p.content[0].retrieval_mechanism = 0, "pointer.content[0].retrieval_mechanism"),
        (
            "undefined retrieval mechanism",
            |p| p.content[0].retrieval_mechanism = 99,
            "pointer.content[0].retrieval_mechanism",
        ),
        ("no stability", |p| p.content[0].stability = 0, "pointer.content[0].stability"),
        (
            "practice setting without code",
            |p| p.practice_setting = Some(pb::Coding { code: String::new(), display: "x".into() }),
            "pointer.practice_setting.code",
        ),
        (
            "practice setting with overlong display",
            |p| p.practice_setting = Some(pb::Coding { code: "390826005".into(), display: "x".repeat(257) }),
            "pointer.practice_setting.display",
        ),
        (
            "practice setting with control characters",
            |p| p.practice_setting = Some(pb::Coding { code: "390826005".into(), display: "a\u{0}b".into() }),
            "pointer.practice_setting.display",
        ),
        (
            "document date out of range",
            |p| p.document_date = Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
            "pointer.document_date",
        ),
        (
            "document date with negative nanos",
            |p| p.document_date = Some(prost_types::Timestamp { seconds: 0, nanos: -1 }),
            "pointer.document_date",
        ),
        ("producer reference with spaces", |p| p.producer_reference = "my doc".into(), "pointer.producer_reference"),
        ("overlong producer reference", |p| p.producer_reference = "x".repeat(129), "pointer.producer_reference"),
        ("short ASID", |p| p.related_asid = "20000000012".into(), "pointer.related_asid"),
        ("ASID with letters", |p| p.related_asid = "20000000012X".into(), "pointer.related_asid"),
        (
            "ssp:// content without an ASID",
            |p| p.content.push(content("ssp://spine.example.nhs.uk/qwo/1")),
            "pointer.related_asid",
        ),
    ]
}

pub async fn malformed_pointers_are_rejected_naming_the_field(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    for (what, mutate, field) in bad_inputs() {
        let mut sent = input(&patient, "QWO", "RR8", CRISIS_PLAN);
        mutate(&mut sent);
        let err =
            client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await.expect_err(what);
        assert_field_error(&err, Code::InvalidArgument, field);

        // The same input is rejected the same way by supersede and batch create.
        let err = client
            .supersede_pointer(pb::SupersedePointerRequest {
                pointer: Some(sent.clone()),
                supersedes: vec![uuid::Uuid::now_v7().to_string()],
            })
            .await
            .expect_err(what);
        assert_field_error(&err, Code::InvalidArgument, field);
        let outcomes = client
            .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: vec![sent] })
            .await
            .expect("batch answers per entry")
            .into_inner()
            .outcomes;
        match outcomes.first().and_then(|o| o.result.as_ref()) {
            Some(pb::batch_outcome::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{what}");
                assert_eq!(Some(e.field.as_str()), field.strip_prefix("pointer."), "{what}");
            }
            other => panic!("{what}: expected an entry error, got {other:?}"),
        }
    }
    let count = client
        .count_pointers(pb::CountPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 0, "no rejected request wrote anything");
}

pub async fn missing_messages_are_rejected(server: &TestServer) {
    let mut client = server.registry();
    let err = client.create_pointer(pb::CreatePointerRequest { pointer: None }).await.expect_err("no pointer");
    assert_field_error(&err, Code::InvalidArgument, "pointer");
    let err = client
        .search_pointers(pb::SearchPointersRequest { query: None, ..Default::default() })
        .await
        .expect_err("no query");
    assert_field_error(&err, Code::InvalidArgument, "query");
    let err = client.count_pointers(pb::CountPointersRequest { query: None }).await.expect_err("no query");
    assert_field_error(&err, Code::InvalidArgument, "query");
    let mut locator = server.locator();
    let err = locator
        .locate_patient(pb::LocatePatientRequest { nhs_number: "12345".into() })
        .await
        .expect_err("bad NHS number");
    assert_field_error(&err, Code::InvalidArgument, "nhs_number");
}
