//! 1. LocatePatient on the national node follows the regions

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_on_the_national_node_follows_creates_supersedes_and_deletes_in_each_region() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();

    let crisis = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let news = create(&mut b, &patient, B, NEWS2).await;
    let care = create(&mut b, &patient, B, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    let took = wait_located(&national, &patient, &both, "both regions on the national node").await;
    eprintln!("both regions visible on the national node {took:?} after the last write");

    // The national node's answer names each region's own node.
    let answer =
        ok("LocatePatient", national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() }))
            .await;
    for location in &answer.regions {
        let region = location.region.as_ref().expect("region");
        let node = federation.node(&region.code);
        assert!(
            region.endpoints.iter().any(|e| e.purpose == "record-locator" && e.url == node.url()),
            "region {} should name its node {}: {:?}",
            region.code,
            node.url(),
            region.endpoints
        );
        assert!(!region.name.is_empty(), "region {} has a name", region.code);
    }

    // A supersede keeps the region, now holding the new pointer (the latest update is the new one's).
    let (replacement, retired) = supersede(&mut a, &crisis).await;
    assert_eq!(ids(&retired), vec![crisis.id.clone()], "the supersede retired the old pointer");
    let (_, took) = eventually("the supersede on the national node", VISIBLE_WITHIN, || {
        let (mut national, patient, replacement) = (national.clone(), patient.clone(), replacement.clone());
        async move {
            let answer = call(national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient }))
                .await
                .map_err(|s| format!("{s:?}"))?;
            let location = answer
                .regions
                .iter()
                .find(|r| r.region.as_ref().is_some_and(|r| r.code == A))
                .ok_or("region A is gone")?;
            match (location.total, location.last_updated) {
                (1, Some(at)) if Some(at) == replacement.updated_at => Ok(()),
                (total, at) => Err(format!(
                    "A: total {total}, last updated {at:?}; the new pointer is {:?}",
                    replacement.updated_at
                )),
            }
        }
    })
    .await;
    eprintln!("supersede visible {took:?} after it was acknowledged");
    let after_supersede = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    assert_eq!(locate(&mut national, &patient).await.expect("locate"), after_supersede);

    // Deleting one of B's pointers lowers its count; deleting B's last removes B.
    delete(&mut b, &news).await;
    wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(EHCP, 1)])]), "B down to one").await;
    delete(&mut b, &care).await;
    let took = wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)])]), "B gone").await;
    eprintln!("the last pointer's delete removed B {took:?} later");

    // And back: a new pointer in B brings B back.
    create(&mut b, &patient, B, RESPECT_FORM).await;
    wait_located(&national, &patient, &located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(RESPECT_FORM, 1)])]), "B back").await;
    // A patient nobody registered is located nowhere.
    assert_eq!(locate(&mut national, &new_patient()).await.expect("locate"), Located::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_the_wrong_regional_node_is_refused_naming_the_right_node() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let mut a = Api::open(federation.node(A));
    let b_url = federation.node(B).url();
    let patient = new_patient();
    let names_b = |status: &Status, what: &str| {
        assert_field_error(status, Code::FailedPrecondition, "pointer.region");
        assert!(
            status.message().contains(&b_url),
            "{what}: the refusal should name B's node {b_url}: {:?}",
            status.message()
        );
    };

    let status = call(
        a.registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, B, CUSTODIAN, CRISIS_PLAN)) }),
    )
    .await
    .expect_err("a create for region B on A's node must be refused");
    names_b(&status, "create");

    let mine = create(&mut a, &patient, A, CRISIS_PLAN).await;
    let mut elsewhere = input_of(&mine);
    elsewhere.region = B.into();
    let status = call(a.registry.supersede_pointer(pb::SupersedePointerRequest {
        pointer: Some(elsewhere),
        supersedes: vec![mine.id.clone()],
    }))
    .await
    .expect_err("a supersede into region B on A's node must be refused");
    names_b(&status, "supersede");

    let batch = ok(
        "batch",
        a.registry.batch_create_pointers(pb::BatchCreatePointersRequest {
            pointers: vec![input(&patient, A, CUSTODIAN, NEWS2), input(&patient, B, CUSTODIAN, NEWS2)],
        }),
    )
    .await;
    assert!(
        matches!(batch.outcomes[0].result, Some(pb::batch_outcome::Result::Created(_))),
        "A's entry: {:?}",
        batch.outcomes[0]
    );
    match &batch.outcomes[1].result {
        Some(pb::batch_outcome::Result::Error(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32, "B's entry: {e:?}");
            assert!(e.message.contains(&b_url), "B's entry should name B's node {b_url}: {e:?}");
        }
        other => panic!("a batch entry for region B was not refused on A's node: {other:?}"),
    }
    // Nothing of B's reached A's node.
    let held = search_all(&mut a, query(&patient)).await.expect("search A");
    assert!(held.iter().all(|p| p.region == A), "A's node holds a pointer of another region: {held:?}");
    assert_eq!(held.len(), 2, "A's node holds its own two pointers: {held:?}");
}

/// The national node in federated mode answers LocatePatient from its index and FederatedSearch
/// from the regional nodes, so a pointer it stored itself for a region that has a node of its own
/// would be acknowledged and then never shown: it is the wrong node for that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_the_national_node_is_refused_naming_the_regional_node() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let mut national = Api::open(&federation.national);
    let a_url = federation.node(A).url();
    let patient = new_patient();
    let request = pb::CreatePointerRequest { pointer: Some(input(&patient, A, CUSTODIAN, CRISIS_PLAN)) };
    match call(national.registry.create_pointer(request)).await {
        Err(status) => {
            assert_field_error(&status, Code::FailedPrecondition, "pointer.region");
            assert!(
                status.message().contains(&a_url),
                "the refusal should name A's node {a_url}: {:?}",
                status.message()
            );
        }
        Ok(created) => {
            // Show what became of the acknowledged write.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let located = locate(&mut national, &patient).await;
            let federated = call(national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
            panic!(
                "the national node (federated mode) acknowledged a write for region {A}, which has its own node at \
                 {a_url}: pointer {:?}. One second later LocatePatient on the national node says {located:?} and \
                 FederatedSearch says {:?}: the acknowledged pointer is shown by neither",
                created.pointer.map(|p| p.id),
                federated.map(|r| describe(&r))
            );
        }
    }
}
