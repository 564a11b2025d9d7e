use nrl_registry::proto::nrl::v1 as pb;
use pb::batch_outcome::Result as Outcome;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::Code;

pub async fn batch_reports_one_outcome_per_entry_in_order(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let mut registered = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    registered.producer_reference = "B-EXISTING".into();
    client.create_pointer(pb::CreatePointerRequest { pointer: Some(registered.clone()) }).await.expect("seed");

    let mut conflicting = registered.clone();
    conflicting.content[0].url = "https://qwo.example.nhs.uk/records/changed".into();
    let mut invalid = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    invalid.content[0].url = "http://insecure.example/x".into();
    let mut twin = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    twin.producer_reference = "B-TWIN".into();
    let entries = vec![
        input(&patient, "QWO", "RR8", CRISIS_PLAN),
        registered.clone(),
        invalid,
        conflicting,
        twin.clone(),
        twin,
        input(&patient, "QF7", "RP5", NEWS2),
    ];
    let outcomes = client
        .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: entries })
        .await
        .expect("batch")
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 7);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.index as usize, i, "outcomes are in request order");
    }
    assert!(matches!(outcomes[0].result, Some(Outcome::Created(_))));
    assert!(matches!(outcomes[1].result, Some(Outcome::Existing(_))), "{:?}", outcomes[1]);
    match &outcomes[2].result {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert_eq!(e.field, "content[0].url");
        }
        other => panic!("expected an invalid entry, got {other:?}"),
    }
    match &outcomes[3].result {
        Some(Outcome::Error(e)) => assert_eq!(e.code, Code::AlreadyExists as i32, "{e:?}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let twin_ids: Vec<String> = outcomes[4..6]
        .iter()
        .map(|o| match &o.result {
            Some(Outcome::Created(p)) | Some(Outcome::Existing(p)) => p.id.clone(),
            other => panic!("twin entries both succeed: {other:?}"),
        })
        .collect();
    assert_eq!(twin_ids[0], twin_ids[1], "two entries with one reference register one pointer");
    assert!(matches!(outcomes[6].result, Some(Outcome::Created(_))));

    let stored = client
        .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(stored, 4, "seeded + first + twin + last; failures wrote nothing");
}

pub async fn batch_size_is_bounded(server: &TestServer) {
    let mut client = server.registry();
    let err =
        client.batch_create_pointers(pb::BatchCreatePointersRequest { pointers: vec![] }).await.expect_err("empty");
    assert_field_error(&err, Code::InvalidArgument, "pointers");
    let patient = new_patient();
    let err = client
        .batch_create_pointers(pb::BatchCreatePointersRequest {
            pointers: vec![input(&patient, "QWO", "RR8", CRISIS_PLAN); 1001],
        })
        .await
        .expect_err("too many");
    assert_field_error(&err, Code::InvalidArgument, "pointers");
    let count = client
        .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(count, 0, "an oversized batch writes nothing");
}
