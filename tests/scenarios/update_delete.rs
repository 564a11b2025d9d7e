use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::transport::Channel;
use tonic::Code;

async fn create(client: &mut PointerRegistryClient<Channel>, sent: pb::PointerInput) -> pb::Pointer {
    client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(sent) })
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer")
}

pub async fn update_changes_mutable_fields_with_version_check(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let mut sent = input(&patient, "QUY", "RA7", CRISIS_PLAN);
    sent.producer_reference = "UPD-1".into();
    let original = create(&mut client, sent.clone()).await;

    let mut changed = sent.clone();
    changed.content = vec![content("https://quy.example.nhs.uk/records/v2")];
    changed.author = "Y05868".into();
    let updated = client
        .update_pointer(pb::UpdatePointerRequest {
            id: original.id.clone(),
            version: 1,
            pointer: Some(changed.clone()),
        })
        .await
        .expect("update")
        .into_inner()
        .pointer
        .expect("pointer");
    assert_eq!(updated.version, 2);
    assert_eq!(updated.content, changed.content);
    assert_eq!(updated.author, "Y05868");
    assert_eq!(updated.created_at, original.created_at);
    assert_eq!(updated.id, original.id);

    // A writer that read version 1 has a stale view now.
    let err = client
        .update_pointer(pb::UpdatePointerRequest { id: original.id.clone(), version: 1, pointer: Some(sent.clone()) })
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let err = client
        .update_pointer(pb::UpdatePointerRequest { id: original.id.clone(), version: 0, pointer: Some(sent.clone()) })
        .await
        .expect_err("no version");
    assert_field_error(&err, Code::InvalidArgument, "version");
    let err = client
        .update_pointer(pb::UpdatePointerRequest {
            id: uuid::Uuid::now_v7().to_string(),
            version: 1,
            pointer: Some(sent.clone()),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    type Mutation = fn(&mut pb::PointerInput);
    let immutable: [(Mutation, &str); 5] = [
        (|p| p.nhs_number = new_patient(), "pointer.nhs_number"),
        (|p| p.region = "QWO".into(), "pointer.region"),
        (|p| p.custodian = "RR8".into(), "pointer.custodian"),
        (|p| p.r#type = RESPECT_FORM.into(), "pointer.type"),
        (|p| p.producer_reference = "UPD-2".into(), "pointer.producer_reference"),
    ];
    for (mutate, field) in immutable {
        let mut attempt = changed.clone();
        mutate(&mut attempt);
        let err = client
            .update_pointer(pb::UpdatePointerRequest { id: original.id.clone(), version: 2, pointer: Some(attempt) })
            .await
            .expect_err(field);
        assert_field_error(&err, Code::InvalidArgument, field);
    }
    let stored = client.get_pointer(pb::GetPointerRequest { id: original.id.clone() }).await.expect("get");
    assert_eq!(stored.into_inner().pointer, Some(updated), "rejected updates changed nothing");
}

pub async fn concurrent_updates_at_one_version_let_one_win(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let sent = input(&patient, "QOP", "R0A", CRISIS_PLAN);
    let original = create(&mut client, sent.clone()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut client = server.registry();
            let mut attempt = sent.clone();
            attempt.content = vec![content(&format!("https://qop.example.nhs.uk/records/{i}"))];
            let id = original.id.clone();
            tokio::spawn(async move {
                client.update_pointer(pb::UpdatePointerRequest { id, version: 1, pointer: Some(attempt) }).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => won += 1,
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(won, 1, "optimistic concurrency admits exactly one writer per version");
    let stored = client.get_pointer(pb::GetPointerRequest { id: original.id }).await.expect("get").into_inner();
    assert_eq!(stored.pointer.map(|p| p.version), Some(2));
}

pub async fn delete_removes_and_frees_the_reference(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let mut sent = input(&patient, "QKK", "RJ1", CRISIS_PLAN);
    sent.producer_reference = "DEL-1".into();
    let pointer = create(&mut client, sent.clone()).await;

    let err = client
        .delete_pointer(pb::DeletePointerRequest { id: pointer.id.clone(), version: 7 })
        .await
        .expect_err("stale version");
    assert_eq!(err.code(), Code::Aborted);
    let deleted = client
        .delete_pointer(pb::DeletePointerRequest { id: pointer.id.clone(), version: 1 })
        .await
        .expect("delete")
        .into_inner()
        .pointer;
    assert_eq!(deleted.as_ref(), Some(&pointer), "the response shows what was deleted");
    let err = client.get_pointer(pb::GetPointerRequest { id: pointer.id.clone() }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .delete_pointer(pb::DeletePointerRequest { id: pointer.id.clone(), version: 0 })
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::NotFound);
    let err = client.delete_pointer(pb::DeletePointerRequest { id: "x".into(), version: 0 }).await.expect_err("bad id");
    assert_field_error(&err, Code::InvalidArgument, "id");

    let again = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) }).await.expect("re-create");
    assert!(again.get_ref().created, "a deleted pointer's reference can be used again");
    assert_ne!(again.into_inner().pointer.map(|p| p.id), Some(pointer.id));
}
