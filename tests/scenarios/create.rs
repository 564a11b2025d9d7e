use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::Code;

pub async fn create_and_get_round_trip(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let spaced = format!("{} {} {}", &patient[..3], &patient[3..6], &patient[6..]);
    let mut sent = input(&spaced, "qwo", "rr8", CRISIS_PLAN);
    sent.author = "y05868".into();
    sent.practice_setting = Some(pb::Coding { code: "390826005".into(), display: "Mental health".into() });
    sent.document_date = Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 });
    sent.content.push(pb::Content {
        url: "ssp://spine.example.nhs.uk/qwo/123".into(),
        content_type: "application/fhir+json".into(),
        format: "urn:nhs-ic:structured".into(),
        retrieval_mechanism: pb::RetrievalMechanism::Direct as i32,
        stability: pb::Stability::Dynamic as i32,
    });
    sent.related_asid = "200000000123".into();
    let created = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) })
        .await
        .expect("create")
        .into_inner();
    assert!(created.created);
    let pointer = created.pointer.expect("pointer");
    let id = uuid::Uuid::parse_str(&pointer.id).expect("id is a UUID");
    assert_eq!(id.get_version_num(), 7, "ids are time-ordered UUIDv7");
    assert_eq!(pointer.nhs_number, patient, "stored in canonical 10-digit form");
    assert_eq!(pointer.region, "QWO");
    assert_eq!(pointer.custodian, "RR8");
    assert_eq!(pointer.author, "Y05868");
    assert_eq!(pointer.r#type.as_ref().map(|c| c.code.as_str()), Some(CRISIS_PLAN));
    assert_eq!(pointer.r#type.as_ref().map(|c| c.display.as_str()), Some("Mental health crisis plan"));
    assert_eq!(pointer.category.as_ref().map(|c| c.code.as_str()), Some(CARE_PLAN), "category from the catalogue");
    assert_eq!(pointer.status, pb::PointerStatus::Current as i32);
    assert_eq!(pointer.version, 1);
    assert_eq!(pointer.content, sent.content);
    assert_eq!(pointer.practice_setting, sent.practice_setting);
    assert_eq!(pointer.document_date, sent.document_date);
    assert_eq!(pointer.related_asid, sent.related_asid);
    assert_eq!(pointer.created_at, pointer.updated_at);

    let fetched =
        client.get_pointer(pb::GetPointerRequest { id: pointer.id.clone() }).await.expect("get").into_inner().pointer;
    assert_eq!(fetched.as_ref(), Some(&pointer));
}

pub async fn create_with_reference_is_idempotent(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let mut sent = input(&patient, "QF7", "RP5", RESPECT_FORM);
    sent.producer_reference = "DOC-0001".into();
    let first = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await.expect("first");
    let first = first.into_inner();
    assert!(first.created);
    let again = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await.expect("repeat");
    let again = again.into_inner();
    assert!(!again.created, "a repeat with the same content is not a new registration");
    assert_eq!(again.pointer, first.pointer);

    let mut changed = sent.clone();
    changed.content[0].url = "https://qf7.example.nhs.uk/records/other".into();
    let err = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(changed) })
        .await
        .expect_err("same reference, different content");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("DOC-0001"), "{err:?}");

    // The same local id from another custodian is another pointer.
    let mut other = sent.clone();
    other.custodian = "RA7".into();
    let other = client.create_pointer(pb::CreatePointerRequest { pointer: Some(other) }).await.expect("other");
    assert!(other.get_ref().created);

    // References are scoped to the patient: the same local id for another patient is another pointer.
    let mut elsewhere = sent.clone();
    elsewhere.nhs_number = new_patient();
    let elsewhere = client.create_pointer(pb::CreatePointerRequest { pointer: Some(elsewhere) }).await;
    assert!(elsewhere.expect("another patient").get_ref().created);

    let count = client
        .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 2, "the conflicting create wrote nothing");
    let stored = client
        .get_pointer(pb::GetPointerRequest { id: first.pointer.as_ref().map(|p| p.id.clone()).unwrap_or_default() })
        .await
        .expect("get")
        .into_inner()
        .pointer;
    assert_eq!(stored, first.pointer, "the original is untouched");
}

pub async fn concurrent_creates_with_one_reference_register_once(server: &TestServer) {
    let patient = new_patient();
    let mut sent = input(&patient, "QOP", "R0A", CRISIS_PLAN);
    sent.producer_reference = "RACE-1".into();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut client = server.registry();
            let sent = sent.clone();
            tokio::spawn(async move { client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) }).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let response = task.await.expect("join").expect("every racer succeeds").into_inner();
        created += usize::from(response.created);
        ids.insert(response.pointer.map(|p| p.id).unwrap_or_default());
    }
    assert_eq!(created, 1, "exactly one racer registers");
    assert_eq!(ids.len(), 1, "every racer sees the same pointer");
}

pub async fn get_unknown_or_malformed_id(server: &TestServer) {
    let mut client = server.registry();
    let err =
        client.get_pointer(pb::GetPointerRequest { id: uuid::Uuid::now_v7().to_string() }).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get_pointer(pb::GetPointerRequest { id: "nope".into() }).await.expect_err("malformed");
    assert_field_error(&err, Code::InvalidArgument, "id");
    let err = client.get_pointer(pb::GetPointerRequest { id: String::new() }).await.expect_err("empty");
    assert_field_error(&err, Code::InvalidArgument, "id");
}

pub async fn directories_are_listed(server: &TestServer) {
    let mut locator = server.locator();
    let regions = locator.list_regions(pb::ListRegionsRequest {}).await.expect("regions").into_inner().regions;
    assert_eq!(regions.len(), 45, "42 ICBs and 3 nations");
    let qwo = regions.iter().find(|r| r.code == "QWO").expect("West Yorkshire");
    assert_eq!(qwo.name, "NHS West Yorkshire Integrated Care Board");
    assert_eq!(qwo.kind, pb::RegionKind::Icb as i32);
    assert!(!qwo.endpoints.is_empty());
    assert_eq!(regions.iter().filter(|r| r.kind == pb::RegionKind::Nation as i32).count(), 3);
    let types = locator.list_pointer_types(pb::ListPointerTypesRequest {}).await.expect("types").into_inner().types;
    assert_eq!(types.len(), 14);
    let news2 = types.iter().find(|t| t.r#type.as_ref().is_some_and(|c| c.code == NEWS2)).expect("NEWS2");
    assert_eq!(news2.category.as_ref().map(|c| c.code.as_str()), Some(OBSERVATIONS));
}
