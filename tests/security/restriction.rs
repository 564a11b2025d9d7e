//! Patient restriction

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_patients_are_hidden_except_under_emergency() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let ch = &server.channel;
    let producer = Clients::bearer(ch, &token("rr8-producer", OWN, &["producer"], None));
    let consumer_token = token("ra7-consumer", OTHER, &["consumer"], None);
    let mut direct = Clients::bearer(ch, &consumer_token);
    let mut emergency = Clients::new(ch, Credentials::bearer(&consumer_token).purpose("emergency"));
    let mut admin = Clients::bearer(ch, &token("x26-admin", "X26", &["admin"], None));
    let patient = new_patient();
    let other_patient = new_patient();
    let first = seed(&producer, input(&patient, "QWO", OWN, CRISIS_PLAN)).await;
    seed(&producer, input(&patient, "QE1", OWN, NEWS2)).await;
    seed(&producer, input(&other_patient, "QWO", OWN, NEWS2)).await;

    async fn view(c: &mut Clients, patient: &str, id: &str) -> (usize, u64, usize, Result<(), Code>) {
        let search = c
            .registry
            .search_pointers(pb::SearchPointersRequest { query: Some(query(patient)), ..Default::default() })
            .await
            .expect("search")
            .into_inner();
        let count =
            c.registry.count_pointers(pb::CountPointersRequest { query: Some(query(patient)) }).await.expect("count");
        let locate =
            c.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.into() }).await.expect("locate");
        let get =
            c.registry.get_pointer(pb::GetPointerRequest { id: id.into() }).await.map(|_| ()).map_err(|e| e.code());
        (search.pointers.len(), count.into_inner().count, locate.into_inner().regions.len(), get)
    }

    assert_eq!(view(&mut direct, &patient, &first.id).await, (2, 2, 2, Ok(())), "unrestricted");
    let set = admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true })
        .await
        .expect("admin restricts")
        .into_inner();
    assert!(set.restricted);
    let got =
        admin.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: patient.clone() }).await.expect("get");
    assert!(got.into_inner().restricted);

    assert_eq!(
        view(&mut direct, &patient, &first.id).await,
        (0, 0, 0, Err(Code::NotFound)),
        "restricted: direct care sees nothing"
    );
    for purpose in ["patient-request", "administration", "audit"] {
        let mut c = Clients::new(ch, Credentials::bearer(&consumer_token).purpose(purpose));
        assert_eq!(
            view(&mut c, &patient, &first.id).await,
            (0, 0, 0, Err(Code::NotFound)),
            "{purpose} is not break-glass"
        );
    }
    let mut own_producer = Clients::new(ch, Credentials::bearer(&token("rr8-producer", OWN, &["producer"], None)));
    assert_eq!(
        view(&mut own_producer, &patient, &first.id).await,
        (0, 0, 0, Err(Code::NotFound)),
        "hidden from every reader"
    );
    assert_eq!(view(&mut emergency, &patient, &first.id).await, (2, 2, 2, Ok(())), "break-glass sees them");
    assert_eq!(
        view(&mut direct, &other_patient, "00000000-0000-7000-8000-000000000000").await.0,
        1,
        "other patients unaffected"
    );

    for (who, role) in [
        ("consumer", "consumer"),
        ("producer", "producer"),
        ("auditor", "auditor"),
        ("portal", "portal"),
        ("peer", "peer"),
    ] {
        let mut c = Clients::bearer(ch, &token(who, OWN, &[role], None));
        for restricted in [false, true] {
            let err = c
                .admin
                .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted })
                .await
                .expect_err("only admins restrict");
            assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
        }
    }
    assert_eq!(view(&mut direct, &patient, &first.id).await, (0, 0, 0, Err(Code::NotFound)), "still restricted");

    admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: false })
        .await
        .expect("admin unrestricts");
    assert_eq!(view(&mut direct, &patient, &first.id).await, (2, 2, 2, Ok(())), "unrestricting restores");
    server.stop().await.expect("stop");
}
