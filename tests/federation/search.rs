//! 2. FederatedSearch: merge, tags, narrowing, streaming

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_search_merges_every_region_newest_first_tagged_and_narrows_to_target_regions() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    // Interleaved in time, so the merge has to interleave the regions. Ids order by their
    // millisecond; two nodes' ids minted in the same millisecond have no defined order, so the
    // creates are spaced a few milliseconds apart for "newest first" to be a fact the test can check.
    let a1 = create(&mut a, &patient, A, CRISIS_PLAN).await;
    next_millisecond().await;
    let b1 = create(&mut b, &patient, B, NEWS2).await;
    next_millisecond().await;
    let a2 = create(&mut a, &patient, A, RESPECT_FORM).await;
    next_millisecond().await;
    let b2 = create(&mut b, &patient, B, EHCP).await;
    next_millisecond().await;
    let (b3, _) = supersede(&mut b, &b1).await;
    let expected = located(&[(A, &[(CRISIS_PLAN, 1), (RESPECT_FORM, 1)]), (B, &[(NEWS2, 1), (EHCP, 1)])]);
    wait_located(&national, &patient, &expected, "both regions on the national node").await;
    // The supersede must have reached the index too (B's latest update is b3's).
    eventually("the supersede in the index", VISIBLE_WITHIN, || {
        let (mut national, patient, b3) = (national.clone(), patient.clone(), b3.clone());
        async move {
            let answer = call(national.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient }))
                .await
                .map_err(|s| format!("{s:?}"))?;
            let b = answer.regions.iter().find(|r| r.region.as_ref().is_some_and(|r| r.code == B)).ok_or("no B")?;
            (b.last_updated == b3.updated_at).then_some(()).ok_or(format!("B last updated {:?}", b.last_updated))
        }
    })
    .await;

    let truth_a = search_all(&mut a, query(&patient)).await.expect("search A");
    let truth_b = search_all(&mut b, query(&patient)).await.expect("search B");
    assert_eq!(ids(&truth_a), vec![a2.id.clone(), a1.id.clone()]);
    assert_eq!(ids(&truth_b), vec![b3.id.clone(), b2.id.clone()]);

    let started = Instant::now();
    let all = ok("FederatedSearch", national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    let took = started.elapsed();
    assert_eq!(overall(&all), pb::OverallOutcome::Success, "{}", describe(&all));
    assert_eq!(
        outcomes(&all.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok)]),
        "{}",
        describe(&all)
    );
    for result in &all.regions {
        let truth = if result.region == A { &truth_a } else { &truth_b };
        assert_eq!(&result.pointers, truth, "{}'s result is what its node's SearchPointers says", result.region);
        assert!(result.message.is_empty(), "an OK region carries no message: {:?}", result.message);
        assert!(
            u128::from(result.latency_ms) <= took.as_millis(),
            "{} latency {} ms > the call's {took:?}",
            result.region,
            result.latency_ms
        );
    }
    assert_merged(&all);
    assert_eq!(
        ids(&all.pointers),
        vec![b3.id.clone(), b2.id.clone(), a2.id.clone(), a1.id.clone()],
        "newest first across regions"
    );
    eprintln!("FederatedSearch over two regions: {took:?}; {}", describe(&all));

    // include_superseded is passed on; filters apply in every region.
    let mut with_superseded = federated_request(&patient, &[], 2000);
    with_superseded.query.as_mut().expect("query").include_superseded = true;
    let history = ok("FederatedSearch with superseded", national.federated.federated_search(with_superseded)).await;
    assert_eq!(
        ids(&history.pointers),
        vec![b3.id.clone(), b2.id.clone(), a2.id.clone(), b1.id.clone(), a1.id.clone()],
        "{}",
        describe(&history)
    );
    assert_merged(&history);
    let mut crisis_only = federated_request(&patient, &[], 2000);
    crisis_only.query.as_mut().expect("query").types = vec![CRISIS_PLAN.into()];
    let crisis = ok("FederatedSearch for crisis plans", national.federated.federated_search(crisis_only)).await;
    assert_eq!(
        outcomes(&crisis.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::NoMatch)]),
        "{}",
        describe(&crisis)
    );
    assert_eq!(overall(&crisis), pb::OverallOutcome::Success, "NO_MATCH is an answer: {}", describe(&crisis));
    assert_eq!(ids(&crisis.pointers), vec![a1.id.clone()]);

    // target_regions narrows; a region asked for that holds nothing is NO_MATCH.
    let only_a =
        ok("FederatedSearch for A", national.federated.federated_search(federated_request(&patient, &[A], 2000))).await;
    assert_eq!(outcomes(&only_a.regions), outcome_map(&[(A, pb::RegionOutcome::Ok)]), "{}", describe(&only_a));
    assert_eq!(ids(&only_a.pointers), ids(&truth_a));
    assert_eq!(overall(&only_a), pb::OverallOutcome::Success);
    let with_empty = ok(
        "FederatedSearch for B and an empty region",
        national.federated.federated_search(federated_request(&patient, &[B, NOBODY], 2000)),
    )
    .await;
    assert_eq!(
        outcomes(&with_empty.regions),
        outcome_map(&[(B, pb::RegionOutcome::Ok), (NOBODY, pb::RegionOutcome::NoMatch)]),
        "{}",
        describe(&with_empty)
    );
    assert_eq!(overall(&with_empty), pb::OverallOutcome::Success, "{}", describe(&with_empty));
    assert_eq!(ids(&with_empty.pointers), ids(&truth_b));
    let status = call(national.federated.federated_search(federated_request(&patient, &["XXX"], 2000)))
        .await
        .expect_err("an unknown target region is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let stranger = new_patient();
    let nobody = ok(
        "FederatedSearch for an unknown patient",
        national.federated.federated_search(federated_request(&stranger, &[], 2000)),
    )
    .await;
    assert!(nobody.regions.is_empty() && nobody.pointers.is_empty(), "{}", describe(&nobody));
    assert_eq!(overall(&nobody), pb::OverallOutcome::Success);

    // The streaming variant: one RegionResult per region, the same as the unary answer's.
    let mut stream = ok(
        "FederatedSearchStream",
        national.federated.federated_search_stream(federated_request(&patient, &[A, B, NOBODY], 2000)),
    )
    .await;
    let mut streamed = Vec::new();
    loop {
        match tokio::time::timeout(CALL_LIMIT, stream.message()).await {
            Ok(Ok(Some(result))) => streamed.push(result),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("FederatedSearchStream failed: {status:?}"),
            Err(_) => panic!("FederatedSearchStream did not end within {CALL_LIMIT:?}; so far {streamed:?}"),
        }
    }
    assert_eq!(
        outcomes(&streamed),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Ok), (NOBODY, pb::RegionOutcome::NoMatch)]),
        "one result per region"
    );
    for result in &streamed {
        let truth = match result.region.as_str() {
            A => &truth_a,
            B => &truth_b,
            _ => &Vec::new(),
        };
        assert_eq!(&result.pointers, truth, "{}'s streamed result", result.region);
    }
}

/// `query` carries the filters "as for SearchPointers", `regions` among them: a FederatedSearch
/// for region A's pointers must not return region B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_search_honours_the_region_filter_of_its_query() {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    let in_a = create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut b, &patient, B, CRISIS_PLAN).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(CRISIS_PLAN, 1)])]);
    wait_located(&national, &patient, &both, "both regions").await;

    // SearchPointers semantics, on A's own node, for reference.
    let filtered = pb::PointerQuery { regions: vec![A.into()], ..query(&patient) };
    assert_eq!(ids(&search_all(&mut a, filtered.clone()).await.expect("search A")), vec![in_a.id.clone()]);

    let request = pb::FederatedSearchRequest { query: Some(filtered), target_regions: vec![], deadline_ms: 2000 };
    let answer = ok("FederatedSearch for region A", national.federated.federated_search(request)).await;
    assert_eq!(
        ids(&answer.pointers),
        vec![in_a.id.clone()],
        "query.regions = [{A}] should return A's pointers only: {}",
        describe(&answer)
    );
    assert!(
        answer.regions.iter().all(|r| r.region == A || outcome(r) == pb::RegionOutcome::NoMatch),
        "no region other than A should answer with pointers: {}",
        describe(&answer)
    );
}
