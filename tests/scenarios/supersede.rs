use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::Code;

pub async fn supersede_replaces_atomically(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let old = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let mut replacement = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    replacement.producer_reference = "SUP-2".into();
    let outcome = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(replacement.clone()),
            supersedes: vec![old.id.clone()],
        })
        .await
        .expect("supersede")
        .into_inner();
    assert!(outcome.created);
    let new = outcome.pointer.expect("new pointer");
    assert_eq!(new.supersedes, vec![old.id.clone()]);
    assert_eq!(new.status, pb::PointerStatus::Current as i32);
    let retired = outcome.superseded.first().cloned().expect("retired pointer");
    assert_eq!(retired.id, old.id);
    assert_eq!(retired.status, pb::PointerStatus::Superseded as i32);
    assert_eq!(retired.superseded_by, new.id);
    assert_eq!(retired.version, 2);

    let current = client
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("search")
        .into_inner()
        .pointers;
    assert_eq!(current.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![new.id.as_str()]);
    let all = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .pointers;
    assert_eq!(all.len(), 2, "superseded pointers show when asked for");

    // Repeating the same supersession is idempotent.
    let repeat = client
        .supersede_pointer(pb::SupersedePointerRequest { pointer: Some(replacement), supersedes: vec![old.id.clone()] })
        .await
        .expect("repeat")
        .into_inner();
    assert!(!repeat.created);
    assert_eq!(repeat.pointer.map(|p| p.id), Some(new.id.clone()));

    // A superseded pointer cannot be updated, nor superseded again.
    let err = client
        .update_pointer(pb::UpdatePointerRequest {
            id: old.id.clone(),
            version: 2,
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
        })
        .await
        .expect_err("superseded");
    assert_field_error(&err, Code::FailedPrecondition, "id");
    let err = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
            supersedes: vec![old.id.clone()],
        })
        .await
        .expect_err("already superseded");
    assert_field_error(&err, Code::FailedPrecondition, "supersedes[0]");
}

pub async fn supersede_rejections_change_nothing(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let old = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) })
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let cases: [(pb::PointerInput, &str); 3] = [
        (input(&new_patient(), "QWO", "RR8", CRISIS_PLAN), "different NHS number"),
        (input(&patient, "QWO", "RR8", RESPECT_FORM), "different type"),
        (input(&patient, "QWO", "RA7", CRISIS_PLAN), "different custodian"),
    ];
    for (replacement, what) in cases {
        let err = client
            .supersede_pointer(pb::SupersedePointerRequest {
                pointer: Some(replacement),
                supersedes: vec![old.id.clone()],
            })
            .await
            .expect_err(what);
        assert_field_error(&err, Code::FailedPrecondition, "supersedes[0]");
    }
    let err = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
            supersedes: vec![old.id.clone(), uuid::Uuid::now_v7().to_string()],
        })
        .await
        .expect_err("one unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("supersedes[1]"), "{err:?}");
    let err = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
            supersedes: vec![],
        })
        .await
        .expect_err("none named");
    assert_field_error(&err, Code::InvalidArgument, "supersedes");
    let err = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
            supersedes: vec![old.id.clone(), old.id.clone()],
        })
        .await
        .expect_err("twice");
    assert_field_error(&err, Code::InvalidArgument, "supersedes[1]");

    let everything = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .pointers;
    assert_eq!(everything, vec![old], "no replacement was created and the old pointer is untouched");
}

pub async fn concurrent_supersedes_of_one_pointer_let_one_win(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let old = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QF7", "RP5", CRISIS_PLAN)) })
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut client = server.registry();
            let request = pb::SupersedePointerRequest {
                pointer: Some(input(&patient, "QF7", "RP5", CRISIS_PLAN)),
                supersedes: vec![old.id.clone()],
            };
            tokio::spawn(async move { client.supersede_pointer(request).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => won += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                "losers see the pointer already superseded: {status:?}"
            ),
        }
    }
    assert_eq!(won, 1, "a pointer is superseded exactly once");
    let current = client
        .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(current, 1, "exactly one replacement is current; no half-done supersede left a second");
    let all = client
        .count_pointers(pb::CountPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(all, 2);
}
