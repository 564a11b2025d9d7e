//! 4. Restarts during writes: the national index converges

use super::*;

/// How long a writer may take to get the writes a test waits for acknowledged.
const WRITES_WITHIN: Duration = Duration::from_secs(20);

/// The writes of one region's writer: for a random patient, read its current pointers on the
/// region's node, then create, supersede or delete one (`testkit::writer::Writer` runs it).
struct RegionWrites {
    api: Api,
    region: &'static str,
    patients: Vec<String>,
    rng: StdRng,
}

impl RegionWrites {
    fn spawn(api: Api, region: &'static str, patients: Vec<String>, seed: u64) -> Writer {
        Writer::start(RegionWrites { api, region, patients, rng: StdRng::seed_from_u64(seed) })
    }
}

/// The pointer an OK answer carries, or a failure if it carries none.
fn answered(op: &'static str, pointer: Option<pb::Pointer>) -> Result<pb::Pointer, (&'static str, Status)> {
    pointer.ok_or((op, Status::internal("test: an OK answer without a pointer")))
}

impl Workload for RegionWrites {
    async fn write(&mut self, _n: usize, journal: &Mutex<Journal>) -> bool {
        let types = [CRISIS_PLAN, NEWS2, EHCP];
        let (api, rng, region) = (&mut self.api, &mut self.rng, self.region);
        let patient = &self.patients[rng.random_range(0..self.patients.len())];
        let started = Instant::now();
        let result = match search_all(api, query(patient)).await {
            Err(status) => Err(("search", status)),
            Ok(current) => {
                let roll: f64 = rng.random();
                if current.is_empty() || roll < 0.45 {
                    let ty = types[rng.random_range(0..types.len())];
                    let request = pb::CreatePointerRequest { pointer: Some(input(patient, region, CUSTODIAN, ty)) };
                    call(api.registry.create_pointer(request))
                        .await
                        .map_err(|s| ("create", s))
                        .and_then(|r| answered("create", r.pointer))
                        .map(Ack::Created)
                } else if roll < 0.75 {
                    let old = &current[rng.random_range(0..current.len())];
                    let mut replacement = input_of(old);
                    replacement.producer_reference = String::new();
                    let request =
                        pb::SupersedePointerRequest { pointer: Some(replacement), supersedes: vec![old.id.clone()] };
                    call(api.registry.supersede_pointer(request))
                        .await
                        .map_err(|s| ("supersede", s))
                        .and_then(|r| Ok(Ack::Superseded { new: answered("supersede", r.pointer)?, old: r.superseded }))
                } else {
                    let old = &current[rng.random_range(0..current.len())];
                    let request = pb::DeletePointerRequest { id: old.id.clone(), version: 0 };
                    call(api.registry.delete_pointer(request))
                        .await
                        .map_err(|s| ("delete", s))
                        .and_then(|r| answered("delete", r.pointer))
                        .map(Ack::Deleted)
                }
            }
        };
        let mut journal = journal.lock().expect("journal lock");
        match result {
            Ok(ack) => {
                journal.acked.push(ack);
                true
            }
            Err((op, status)) => {
                journal.fail(op, String::new(), &status, started, started.elapsed());
                false
            }
        }
    }
}

/// The ground truth for `patient`: each region's own current pointers, by type.
async fn truth(federation: &Federation, patient: &str) -> Located {
    let mut truth = Located::new();
    for region in &federation.regions {
        let mut api = Api::open(federation.node(region));
        let held = search_all(&mut api, query(patient)).await.unwrap_or_else(|s| panic!("search {region}: {s:?}"));
        assert!(held.iter().all(|p| &p.region == region), "{region}'s node holds another region's pointer");
        if !held.is_empty() {
            truth.insert(region.clone(), tally(&held));
        }
    }
    truth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_national_index_converges_after_national_and_regional_restarts_during_writes() {
    let (redis_a, redis_b, redis_n) = tokio::join!(start_redis(), start_redis(), start_redis());
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.regional_stores = vec![redis_a.url(), redis_b.url()];
    plan.national_store = redis_n.url();
    plan.common_args = ["--redis-timeout-ms", "2000", "--redis-startup-wait-secs", "10"].map(String::from).to_vec();
    let mut federation = Federation::start(plan).await;
    let national = Api::open(&federation.national);
    let patients: Vec<String> = (0..12).map(|_| new_patient()).collect();
    // Patients 0-3 only in A, 4-7 only in B, 8-11 in both.
    let writer_a =
        RegionWrites::spawn(Api::open(federation.node(A)), A, [&patients[0..4], &patients[8..12]].concat(), 1);
    let writer_b = RegionWrites::spawn(Api::open(federation.node(B)), B, patients[4..12].to_vec(), 2);
    writer_a.wait_acked(30, WRITES_WITHIN, "A's writes before the restarts").await;
    writer_b.wait_acked(30, WRITES_WITHIN, "B's writes before the restarts").await;

    // The national node dies; the regions keep taking writes.
    let national_down = Instant::now();
    federation.national.kill9();
    let (acked_a, acked_b) = (writer_a.acked(), writer_b.acked());
    writer_a.wait_acked(acked_a + 30, WRITES_WITHIN, "A's writes while the national node is down").await;
    writer_b.wait_acked(acked_b + 30, WRITES_WITHIN, "B's writes while the national node is down").await;
    let (failed_a, failed_b) = (writer_a.failures_since(national_down), writer_b.failures_since(national_down));
    assert!(
        failed_a.is_empty() && failed_b.is_empty(),
        "regional writes failed while the national node was down: A {failed_a:?}, B {failed_b:?}"
    );
    federation.national.restart();
    let took = federation.national.wait_serving(START_LIMIT).await;
    eprintln!(
        "national node down {:?} (A +{}, B +{} writes meanwhile), serving again {took:?} after its restart",
        national_down.elapsed(),
        writer_a.acked() - acked_a,
        writer_b.acked() - acked_b
    );

    // Then A's node dies mid-writes and comes back.
    writer_a.wait_acked(writer_a.acked() + 20, WRITES_WITHIN, "A's writes after the national restart").await;
    let a_down = Instant::now();
    federation.node_mut(A).kill9();
    let acked_b = writer_b.acked();
    eventually("A's writer to see A gone", Duration::from_secs(10), || async {
        match writer_a.failures_since(a_down).len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since A was killed")),
        }
    })
    .await;
    writer_b.wait_acked(acked_b + 20, WRITES_WITHIN, "B's writes while A is down").await;
    federation.node_mut(A).restart();
    federation.node_mut(A).wait_serving(START_LIMIT).await;
    let acked_a = writer_a.acked();
    writer_a.wait_acked(acked_a + 30, WRITES_WITHIN, "A's writes after A's restart").await;
    let (log_a, log_b) = (writer_a.stop().await, writer_b.stop().await);
    eprintln!(
        "writes: A {} acknowledged {:?}, {} failed; B {} acknowledged {:?}, {} failed",
        log_a.acked.len(),
        log_a.ops(),
        log_a.failures.len(),
        log_b.acked.len(),
        log_b.ops(),
        log_b.failures.len()
    );
    assert!(
        log_b.failures.is_empty(),
        "B's writes failed although B never went down: {:?}",
        log_b.failures.iter().take(3).map(|f| (f.code, &f.message)).collect::<Vec<_>>()
    );

    // After the restarts: a region's last pointer goes (it must leave the index), for a patient
    // in both regions, so "no phantom" is tested whatever the random writes did.
    let mut a = Api::open(federation.node(A));
    for pointer in search_all(&mut a, query(&patients[8])).await.expect("search A") {
        delete(&mut a, &pointer).await;
    }
    let mut b = Api::open(federation.node(B));
    if search_all(&mut b, query(&patients[8])).await.expect("search B").is_empty() {
        create(&mut b, &patients[8], B, NEWS2).await;
    }

    let started = Instant::now();
    let mut mismatches = Vec::new();
    let mut regions_seen = BTreeMap::new();
    for patient in &patients {
        let expected = truth(&federation, patient).await;
        for region in expected.keys() {
            *regions_seen.entry(region.clone()).or_insert(0) += 1;
        }
        let within = CONVERGE_WITHIN.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let mut national = national.clone();
        let result = tokio::time::timeout(within, async {
            loop {
                match locate(&mut national, patient).await {
                    Ok(located) if located == expected => return Ok(()),
                    Ok(located) => {
                        if started.elapsed() >= within {
                            return Err(located);
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(located)) => mismatches.push(format!(
                "patient #{}: national {located:?}, regions {expected:?}",
                patients.iter().position(|p| p == patient).unwrap_or(0)
            )),
            Err(_) => {
                let located = locate(&mut national, patient).await;
                mismatches.push(format!(
                    "patient #{}: national {located:?}, regions {expected:?}",
                    patients.iter().position(|p| p == patient).unwrap_or(0)
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "the national index did not converge within {CONVERGE_WITHIN:?}:\n{}\n{}",
        mismatches.join("\n"),
        federation.log_tails()
    );
    assert_eq!(
        truth(&federation, &patients[8]).await.keys().collect::<Vec<_>>(),
        vec![B],
        "patient #8 is in B only now"
    );
    eprintln!(
        "the national index converged {:?} after the writes stopped; patients per region {regions_seen:?}",
        started.elapsed()
    );
    drop(federation);
    drop((redis_a, redis_b, redis_n));
}

/// A regional node on the memory store starts a new, empty feed when it restarts. The national
/// node's stored cursor then points past the end of that feed; the new feed's changes must still
/// reach the index (the cursor is not one this feed issued: resynchronise), not be skipped until
/// the new feed's sequence numbers pass the old cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_node_restarted_on_the_memory_store_is_followed_from_its_new_feed() {
    let mut federation = Federation::start(FederationPlan::memory(&[A, B])).await;
    let national = Api::open(&federation.national);
    let mut a = Api::open(federation.node(A));
    // Enough history that the national node's cursor for A is well ahead of a fresh feed.
    let before = new_patient();
    for _ in 0..5 {
        create(&mut a, &before, A, CRISIS_PLAN).await;
    }
    wait_located(&national, &before, &located(&[(A, &[(CRISIS_PLAN, 5)])]), "A's first writes").await;

    federation.node_mut(A).kill9();
    federation.node_mut(A).restart();
    federation.node_mut(A).wait_serving(START_LIMIT).await;
    let mut a = Api::open(federation.node(A));
    let after = new_patient();
    create(&mut a, &after, A, NEWS2).await;
    create(&mut a, &after, A, EHCP).await;
    let (_, took) = eventually("A's writes after its restart on the national node", Duration::from_secs(15), || {
        let mut national = national.clone();
        let after = after.clone();
        async move {
            let now = locate(&mut national, &after).await?;
            let expected = located(&[(A, &[(NEWS2, 1), (EHCP, 1)])]);
            (now == expected).then_some(()).ok_or(format!("LocatePatient says {now:?}, expected {expected:?}"))
        }
    })
    .await;
    eprintln!("A's writes after its restart reached the national index {took:?} later");
    // A's memory store lost what it held before the restart, so the region has left the patient
    // registered then: the national node resynchronised from A's snapshot and swept it.
    wait_located(&national, &before, &Located::new(), "the region A no longer holds, gone from the index").await;
}

/// The national node is down while a regional node writes far more than its feed keeps: its cursor
/// is then OUT_OF_RANGE. It resynchronises from the region's snapshot: a pointer deleted meanwhile
/// leaves no phantom region, a pointer created meanwhile is found, and following resumes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_national_node_behind_the_feed_retention_resynchronises_without_losing_or_inventing_regions() {
    let (redis_a, redis_b, redis_n) = tokio::join!(start_redis(), start_redis(), start_redis());
    let mut plan = FederationPlan::memory(&[A, B]);
    plan.regional_stores = vec![redis_a.url(), redis_b.url()];
    plan.national_store = redis_n.url();
    plan.regional_args = vec!["--feed-retention".into(), "10".into()];
    let mut federation = Federation::start(plan).await;
    let (mut a, mut b) = (Api::open(federation.node(A)), Api::open(federation.node(B)));
    let national = Api::open(&federation.national);

    // Both regions hold `moved`; A also holds `stays`.
    let (moved, stays) = (new_patient(), new_patient());
    let gone = create(&mut a, &moved, A, CRISIS_PLAN).await;
    create(&mut b, &moved, B, NEWS2).await;
    create(&mut a, &stays, A, EHCP).await;
    let both = located(&[(A, &[(CRISIS_PLAN, 1)]), (B, &[(NEWS2, 1)])]);
    wait_located(&national, &moved, &both, "both regions before the outage").await;
    wait_located(&national, &stays, &located(&[(A, &[(EHCP, 1)])]), "A before the outage").await;

    // While the national node is down, A deletes `moved`'s pointer, registers a new patient, and
    // writes 300 more changes: the delete and the create are long trimmed from A's feed.
    federation.national.kill9();
    delete(&mut a, &gone).await;
    let arrived = new_patient();
    create(&mut a, &arrived, A, RESPECT_FORM).await;
    let others: Vec<String> = (0..30).map(|_| new_patient()).collect();
    let batch = pb::BatchCreatePointersRequest {
        pointers: (0..300).map(|i| input(&others[i % others.len()], A, CUSTODIAN, NEWS2)).collect(),
    };
    let outcomes = ok("a batch of 300 in A", a.registry.batch_create_pointers(batch)).await.outcomes;
    assert!(outcomes.iter().all(|o| matches!(o.result, Some(pb::batch_outcome::Result::Created(_)))));

    federation.national.restart();
    federation.national.wait_serving(START_LIMIT).await;
    let national = Api::open(&federation.national);
    let (_, took) = eventually("the national index matches every region again", CONVERGE_WITHIN, || {
        let (mut national, federation) = (national.clone(), &federation);
        let patients: Vec<String> =
            [moved.clone(), stays.clone(), arrived.clone()].into_iter().chain(others.iter().take(5).cloned()).collect();
        async move {
            for patient in &patients {
                let (now, truth) = (locate(&mut national, patient).await?, truth(federation, patient).await);
                if now != truth {
                    return Err(format!("{patient}: the index says {now:?}, the regions hold {truth:?}"));
                }
            }
            Ok(())
        }
    })
    .await;
    eprintln!("resynchronised {took:?} after the national restart");
    assert_eq!(locate(&mut national.clone(), &moved).await.expect("locate"), located(&[(B, &[(NEWS2, 1)])]));
    assert_eq!(locate(&mut national.clone(), &arrived).await.expect("locate"), located(&[(A, &[(RESPECT_FORM, 1)])]));

    // Following resumed from the snapshot's cursor: a new write still arrives.
    let later = new_patient();
    create(&mut a, &later, A, CRISIS_PLAN).await;
    wait_located(&national, &later, &located(&[(A, &[(CRISIS_PLAN, 1)])]), "a write after the resync").await;
    drop((redis_a, redis_b, redis_n));
}
