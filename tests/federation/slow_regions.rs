//! 3. Slow and dead regions

use super::*;

/// Two regions, and a patient with two pointers in A and one in B, visible on the national node
/// and answered once by FederatedSearch (so every channel is connected).
struct Slow {
    federation: Federation,
    national: Api,
    patient: String,
    truth_a: Vec<pb::Pointer>,
}

async fn slow_setup() -> Slow {
    let federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let mut national = Api::open(&federation.national);
    let patient = new_patient();
    create(&mut a, &patient, A, CRISIS_PLAN).await;
    create(&mut a, &patient, A, NEWS2).await;
    create(&mut b, &patient, B, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1), (NEWS2, 1)]), (B, &[(EHCP, 1)])]);
    wait_located(&national, &patient, &both, "both regions").await;
    let truth_a = search_all(&mut a, query(&patient)).await.expect("search A");
    let request = federated_request(&patient, &[], 2000);
    let warm = ok("a first FederatedSearch", national.federated.federated_search(request)).await;
    assert_eq!(overall(&warm), pb::OverallOutcome::Success, "{}", describe(&warm));
    Slow { federation, national, patient, truth_a }
}

/// Asserts a FederatedSearch answer with A answered and B timed out, on time.
fn assert_b_timed_out(answer: &pb::FederatedSearchResponse, truth_a: &[pb::Pointer], took: Duration, budget: Duration) {
    assert!(
        took <= budget + DEADLINE_SLACK,
        "a budget of {budget:?} but the answer took {took:?}: {}",
        describe(answer)
    );
    assert_eq!(
        outcomes(&answer.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Timeout)]),
        "a frozen region is a TIMEOUT: {}",
        describe(answer)
    );
    assert_eq!(overall(answer), pb::OverallOutcome::Partial, "{}", describe(answer));
    assert_eq!(answer.pointers, truth_a, "the answer holds A's pointers");
    let b = answer.regions.iter().find(|r| r.region == B).expect("B's result");
    assert!(!b.message.is_empty(), "a TIMEOUT says why");
    assert!(
        u128::from(b.latency_ms) >= budget.as_millis() / 2,
        "B's TIMEOUT came after {} ms: it should have waited for most of the {budget:?} budget",
        b.latency_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_region_is_a_timeout_and_the_answer_comes_within_deadline_ms() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    // B frozen (SIGSTOP): its socket still accepts, nothing answers.
    const DEADLINE_MS: u32 = 600;
    let deadline = Duration::from_millis(u64::from(DEADLINE_MS));
    federation.node_mut(B).freeze();
    let started = Instant::now();
    let slow = call(national.federated.federated_search(federated_request(&patient, &[], DEADLINE_MS))).await;
    let took = started.elapsed();
    let slow = slow.unwrap_or_else(|s| panic!("a partial answer is a normal response, not {s:?}"));
    eprintln!("frozen B, deadline_ms {DEADLINE_MS}: answered in {took:?}; {}", describe(&slow));
    assert_b_timed_out(&slow, &truth_a, took, deadline);

    // The stream yields A's result as soon as A answers, and B's TIMEOUT at the deadline.
    let started = Instant::now();
    let request = federated_request(&patient, &[], DEADLINE_MS);
    let mut stream = ok("FederatedSearchStream", national.federated.federated_search_stream(request)).await;
    let mut arrivals = Vec::new();
    loop {
        match tokio::time::timeout(CALL_LIMIT, stream.message()).await {
            Ok(Ok(Some(result))) => arrivals.push((started.elapsed(), result)),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("FederatedSearchStream failed: {status:?}"),
            Err(_) => panic!("FederatedSearchStream did not end within {CALL_LIMIT:?}"),
        }
    }
    let ended = started.elapsed();
    let order: Vec<(String, pb::RegionOutcome, Duration)> =
        arrivals.iter().map(|(at, r)| (r.region.clone(), outcome(r), *at)).collect();
    eprintln!("stream with frozen B: {order:?}, ended {ended:?}");
    assert_eq!(order.len(), 2, "one result per region: {order:?}");
    assert_eq!((order[0].0.as_str(), order[0].1), (A, pb::RegionOutcome::Ok), "A first: {order:?}");
    assert_eq!((order[1].0.as_str(), order[1].1), (B, pb::RegionOutcome::Timeout), "then B's timeout: {order:?}");
    assert!(order[0].2 < deadline / 2, "A's result should not wait for B's: {order:?}");
    assert!(ended <= deadline + DEADLINE_SLACK, "the stream ended after {ended:?}: {order:?}");
    assert_eq!(arrivals[0].1.pointers, truth_a);

    // B thawed: everything answers again.
    federation.node_mut(B).thaw();
    eventually("B answering again after SIGCONT", VISIBLE_WITHIN, || {
        let (mut national, patient) = (national.clone(), patient.clone());
        async move {
            let answer = call(national.federated.federated_search(federated_request(&patient, &[], 1000)))
                .await
                .map_err(|s| format!("{s:?}"))?;
            (overall(&answer) == pb::OverallOutcome::Success).then_some(()).ok_or_else(|| describe(&answer))
        }
    })
    .await;
}

/// A caller that sets only a gRPC deadline (deadline_ms 0) gets the partial answer before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_region_is_a_timeout_and_the_answer_comes_before_the_grpc_deadline() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    federation.node_mut(B).freeze();
    let grpc_deadline = Duration::from_millis(800);
    let mut request = tonic::Request::new(federated_request(&patient, &[], 0));
    request.set_timeout(grpc_deadline);
    let started = Instant::now();
    let answer = call(national.federated.federated_search(request)).await;
    let took = started.elapsed();
    let answer = answer.unwrap_or_else(|s| {
        panic!("with a gRPC deadline of {grpc_deadline:?} and B frozen, the answer should be a partial one before the deadline, not {s:?} after {took:?}")
    });
    eprintln!("frozen B, gRPC deadline {grpc_deadline:?}: answered in {took:?}; {}", describe(&answer));
    assert_b_timed_out(&answer, &truth_a, took, grpc_deadline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_region_is_unavailable_and_the_answer_still_comes_promptly() {
    let Slow { mut federation, mut national, patient, truth_a } = slow_setup().await;
    // B killed: UNAVAILABLE, promptly, with A's pointers still there.
    federation.node_mut(B).kill9();
    let started = Instant::now();
    let dead = call(national.federated.federated_search(federated_request(&patient, &[], 2000))).await;
    let took = started.elapsed();
    let dead = dead.unwrap_or_else(|s| panic!("a partial answer is a normal response, not {s:?}"));
    eprintln!("killed B: answered in {took:?}; {}", describe(&dead));
    assert_eq!(
        outcomes(&dead.regions),
        outcome_map(&[(A, pb::RegionOutcome::Ok), (B, pb::RegionOutcome::Unavailable)]),
        "{}",
        describe(&dead)
    );
    assert_eq!(overall(&dead), pb::OverallOutcome::Partial, "{}", describe(&dead));
    assert_eq!(dead.pointers, truth_a);
    assert!(took <= Duration::from_millis(1000), "a dead region should not use up the 2 s budget: {took:?}");
    let b = dead.regions.iter().find(|r| r.region == B).expect("B's result");
    assert!(!b.message.is_empty(), "UNAVAILABLE says why");

    // Both killed: still an answer, FAILURE, and LocatePatient (the index) still answers.
    federation.node_mut(A).kill9();
    let request = federated_request(&patient, &[], 2000);
    let none = ok("FederatedSearch with every region down", national.federated.federated_search(request)).await;
    assert_eq!(
        outcomes(&none.regions),
        outcome_map(&[(A, pb::RegionOutcome::Unavailable), (B, pb::RegionOutcome::Unavailable)]),
        "{}",
        describe(&none)
    );
    assert_eq!(overall(&none), pb::OverallOutcome::Failure);
    assert!(none.pointers.is_empty());
    assert_eq!(
        locate(&mut national, &patient).await.expect("locate"),
        located(&[(A, &[(CRISIS_PLAN, 1), (NEWS2, 1)]), (B, &[(EHCP, 1)])]),
        "LocatePatient answers from the national index whatever the regions' state"
    );
}
