//! 6. Authentication: peer token for the feed, the caller's own token for searches

use super::*;

/// National + A + B on the memory store with JWT authentication; the national node follows with a
/// `peer` token. The directory holds the secret and the token: keep it while the nodes run.
async fn authenticated_federation() -> (Federation, TempDir) {
    let secrets = TempDir::new("nrl-federation-secrets");
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let peer_token = secrets.path().join("peer.token");
    std::fs::write(&peer_token, token("national-locator", "X26", &["peer"], None)).expect("write the peer token");
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.common_args = auth_args(&secret);
    plan.national_args = vec!["--peer-token-file".into(), peer_token.to_string_lossy().to_string()];
    (Federation::start(plan).await, secrets)
}

/// A restriction set on a regional node reaches the national node through the feed (and through a
/// snapshot after the national node restarts): LocatePatient there then shows ordinary consumers
/// nothing, break-glass still shows every region, and lifting it shows the patient again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_restricted_at_their_regional_node_is_not_located_by_the_national_node() {
    let (mut federation, _secrets) = authenticated_federation().await;

    let producer = Credentials::bearer(&token("shared-care-feed", CUSTODIAN, &["producer"], None));
    let (mut a, mut b) = (Api::new(federation.node(A), producer.clone()), Api::new(federation.node(B), producer));
    let consumer = Credentials::bearer(&token("leeds-gp-portal", "B86001", &["consumer"], None));
    let emergency = consumer.clone().purpose("emergency");
    let admin = Credentials::bearer(&token("a-records-office", "X26", &["admin"], None)).purpose("administration");
    let mut admin_a = PatientAdminClient::with_interceptor(federation.node(A).channel(), admin);
    let patient = new_patient();
    create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut b, &patient, B, NEWS2).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1)])]);
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &both, "both regions").await;

    let restrict = |restricted: bool| pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted };
    ok("restrict at A", admin_a.set_restriction(restrict(true))).await;
    let hidden = Located::new();
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &hidden, "hidden once A restricts").await;
    let mut glass = Api::new(&federation.national, emergency.clone());
    assert_eq!(locate(&mut glass, &patient).await.expect("break-glass locate"), both, "break-glass sees every region");

    ok("lift at A", admin_a.set_restriction(restrict(false))).await;
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &both, "shown once A lifts it").await;

    // Restricted again, then the national node restarts on its memory store: it rebuilds the index
    // from each region's snapshot, restriction included.
    ok("restrict at A again", admin_a.set_restriction(restrict(true))).await;
    wait_located(&Api::new(&federation.national, consumer.clone()), &patient, &hidden, "hidden again").await;
    federation.national.kill9();
    federation.national.restart();
    federation.national.wait_serving(START_LIMIT).await;
    let glass = Api::new(&federation.national, emergency);
    eventually("the restarted national index, from the snapshots", CONVERGE_WITHIN, || {
        let (mut glass, patient, both) = (glass.clone(), patient.clone(), both.clone());
        async move {
            let now = locate(&mut glass, &patient).await?;
            (now == both).then_some(()).ok_or(format!("break-glass locate says {now:?}"))
        }
    })
    .await;
    let mut ordinary = Api::new(&federation.national, consumer);
    assert_eq!(locate(&mut ordinary, &patient).await.expect("locate"), hidden, "still restricted after the resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_national_node_follows_as_a_peer_and_regions_audit_the_real_caller() {
    let (federation, _secrets) = authenticated_federation().await;

    let producer = Credentials::bearer(&token("shared-care-feed", CUSTODIAN, &["producer"], None));
    let (mut a, mut b) = (Api::new(federation.node(A), producer.clone()), Api::new(federation.node(B), producer));
    let consumer = Credentials::bearer(&token("leeds-gp-portal", "B86001", &["consumer"], None)).end_user("dr.jones");
    let mut national = Api::new(&federation.national, consumer);
    let patient = new_patient();
    let a1 = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let a2 = create(&mut a, &patient, A, RESPECT_FORM).await;
    next_millisecond().await; // ids of two nodes order only by their millisecond
    let b1 = create(&mut b, &patient, B, CRISIS_PLAN).await;
    let b2 = create(&mut b, &patient, B, NEWS2).await;

    // The national node follows both feeds with its peer token.
    let both = located(&[(A, &[(CRISIS_PLAN, 1), (RESPECT_FORM, 1)]), (B, &[(CRISIS_PLAN, 1), (NEWS2, 1)])]);
    wait_located(&national, &patient, &both, "both regions, followed with the peer token").await;

    // The consumer's own token goes to each region.
    let answer =
        ok("FederatedSearch", national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    assert_eq!(overall(&answer), pb::OverallOutcome::Success, "{}", describe(&answer));
    assert_eq!(outcomes(&answer.regions), outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok)]));
    assert_eq!(ids(&answer.pointers), vec![b2.id.clone(), b1.id.clone(), a2.id.clone(), a1.id.clone()]);
    assert_merged(&answer);

    let auditor = Credentials::bearer(&token("audit-desk", "X26", &["auditor"], None)).purpose("audit");
    for (region, pointers) in [(A, vec![a2.id.clone(), a1.id.clone()]), (B, vec![b2.id.clone(), b1.id.clone()])] {
        let mut audit = Api::new(federation.node(region), auditor.clone());
        let log = ok(
            "GetAccessLog",
            audit.audit.get_access_log(pb::GetAccessLogRequest {
                nhs_number: patient.clone(),
                page_size: 50,
                page_token: String::new(),
            }),
        )
        .await;
        let searches: Vec<&pb::AuditEvent> = log.events.iter().filter(|e| e.operation == "SearchPointers").collect();
        assert_eq!(searches.len(), 1, "{region}: one search, the federated one: {:?}", log.events);
        let event = searches[0];
        assert_eq!(
            (
                event.application.as_str(),
                event.organisation.as_str(),
                event.end_user.as_str(),
                event.purpose.as_str(),
                event.outcome.as_str()
            ),
            ("leeds-gp-portal", "B86001", "dr.jones", "direct-care", "OK"),
            "{region} audits the real caller, not the national node: {event:?}"
        );
        assert_eq!(event.pointer_ids, pointers, "{region} audits the pointers it returned");
        assert!(
            log.events.iter().all(|e| e.application != "national-locator"),
            "{region}: the national node's peer identity read patient data: {:?}",
            log.events
        );
    }

    // A consumer limited to crisis plans sees crisis plans only, in the index and in every region.
    let limited = Credentials::bearer(&token("crisis-line", "B86002", &["consumer"], Some(&[CRISIS_PLAN])));
    let mut limited = Api::new(&federation.national, limited);
    assert_eq!(
        locate(&mut limited, &patient).await.expect("locate"),
        located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(CRISIS_PLAN, 1)])])
    );
    let answer =
        ok("limited FederatedSearch", limited.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    assert_eq!(ids(&answer.pointers), vec![b1.id.clone(), a1.id.clone()], "{}", describe(&answer));
    // Asking explicitly for a type it may not see is refused by the regions that hold the patient.
    let mut news = federated_request(&patient, &[], 2000);
    news.query.as_mut().expect("query").types = vec![NEWS2.into()];
    match call(limited.federated.federated_search(news)).await {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(answer) => {
            assert!(!answer.regions.is_empty(), "{}", describe(&answer));
            assert!(
                answer.regions.iter().all(|r| outcome(r) == pb::RegionOutcome::PermissionDenied),
                "{}",
                describe(&answer)
            );
            assert_eq!(overall(&answer), pb::OverallOutcome::Failure, "{}", describe(&answer));
            assert!(answer.pointers.is_empty());
        }
    }

    // No credentials: refused at the national node.
    let mut anonymous = Api::new(&federation.national, Credentials::anonymous());
    let status = call(anonymous.federated.federated_search(federated_request(&patient, &[], 2000)))
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
