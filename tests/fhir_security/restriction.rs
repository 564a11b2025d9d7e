//! A restricted patient (set over gRPC `PatientAdmin`, as tests/security does) is hidden from
//! FHIR readers exactly as from gRPC ones; `x-purpose-of-use: emergency` sees through it, and the
//! access shows as break-glass on the patient's `AuditEvent`s.

use super::*;
use nrl_registry::api::fhir::codes::BREAK_GLASS_EXTENSION;

/// What a reader sees of `patient` over FHIR: (search entries, search total, `_count` total, GET
/// of `id` status).
async fn fhir_view(caller: &Fhir, patient: &str, id: &str) -> (usize, u64, u64, u16) {
    let search = caller.get(&search_path(patient)).await;
    assert_eq!(search.status, 200, "{}", search.text);
    assert_valid("search", &search.body);
    let count = caller.get(&search_path(patient).replacen('?', "/_count?", 1)).await;
    assert_eq!(count.status, 200, "{}", count.text);
    let get = caller.get(&format!("DocumentReference/{id}")).await;
    if get.status != 200 {
        assert_refused("get", &get, 404, "NO_RECORD_FOUND");
    }
    (
        search.entry_ids().len(),
        search.body["total"].as_u64().unwrap_or(u64::MAX),
        count.body["total"].as_u64().unwrap_or(u64::MAX),
        get.status,
    )
}

/// The same over gRPC, in the same terms.
async fn grpc_view(c: &mut Clients, patient: &str, id: &str) -> (usize, u64, u64, u16) {
    let search = c
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(patient)), ..Default::default() })
        .await
        .expect("search")
        .into_inner();
    let count =
        c.registry.count_pointers(pb::CountPointersRequest { query: Some(query(patient)) }).await.expect("count");
    let count = count.into_inner().count;
    let get = match c.registry.get_pointer(pb::GetPointerRequest { id: id.into() }).await {
        Ok(_) => 200,
        Err(e) if e.code() == Code::NotFound => 404,
        Err(e) => panic!("get over gRPC: {e:?}"),
    };
    (search.pointers.len(), search.pointers.len() as u64, count, get)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_patient_is_hidden_from_fhir_readers_as_from_grpc_and_break_glass_is_flagged() {
    let server = start().await;
    let ch = &server.channel;
    let base = server.fhir_base();
    let producer = Clients::bearer(ch, &token("rr8-producer", OWN, &["producer"], None));
    let consumer = token("ra7-consumer", OTHER, &["consumer"], None);
    let mut admin = Clients::bearer(ch, &token("x26-admin", "X26", &["admin"], None));
    let auditor =
        Fhir::bearer(&base, &token("x26-auditor", "X26", &["auditor"], None)).with("x-purpose-of-use", "audit");
    let patient = new_patient();
    let first = seed(&producer, input(&patient, "QWO", OWN, CRISIS_PLAN)).await;
    seed(&producer, input(&patient, "QE1", OWN, NEWS2)).await;
    let neighbour = new_patient();
    let theirs = seed(&producer, input(&neighbour, "QWO", OWN, NEWS2)).await;

    let direct = Fhir::bearer(&base, &consumer);
    let mut grpc_direct = Clients::bearer(ch, &consumer);
    assert_eq!(fhir_view(&direct, &patient, &first.id).await, (2, 2, 2, 200), "unrestricted");

    admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true })
        .await
        .expect("admin restricts");
    let hidden = (0, 0, 0, 404);
    assert_eq!(fhir_view(&direct, &patient, &first.id).await, hidden, "restricted: direct care sees nothing");
    assert_eq!(grpc_view(&mut grpc_direct, &patient, &first.id).await, hidden, "as over gRPC");
    for purpose in ["patient-request", "administration", "audit"] {
        let caller = direct.clone().with("x-purpose-of-use", purpose);
        assert_eq!(fhir_view(&caller, &patient, &first.id).await, hidden, "{purpose} is not break-glass");
        let mut twin = Clients::new(ch, Credentials::bearer(&consumer).purpose(purpose));
        assert_eq!(grpc_view(&mut twin, &patient, &first.id).await, hidden, "{purpose} over gRPC");
    }
    let own_producer = Fhir::bearer(&base, &token("rr8-producer", OWN, &["producer"], None));
    assert_eq!(fhir_view(&own_producer, &patient, &first.id).await, hidden, "hidden from every reader");
    let missing = direct.get(&format!("DocumentReference/{NEVER}")).await;
    let invisible = direct.get(&format!("DocumentReference/{}", first.id)).await;
    assert_eq!(invisible.text.replace(&first.id, "<id>"), missing.text.replace(NEVER, "<id>"), "as if missing");
    assert_eq!(fhir_view(&direct, &neighbour, &theirs.id).await, (1, 1, 1, 200), "other patients unaffected");
    let nothing = auditor.get(&audit_path(&patient)).await;
    assert_eq!(nothing.status, 200, "{}", nothing.text);
    let consumer_reads = |bundle: &Answer| -> Vec<Value> {
        bundle.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .filter(|e| e["agent"][0]["altId"] == "ra7-consumer")
            .collect()
    };
    assert_eq!(
        consumer_reads(&nothing).len(),
        3,
        "only the three reads before the restriction: reads that showed nothing are not in the log: {}",
        nothing.text
    );

    // Break-glass, over FHIR and (its twin) over gRPC.
    let emergency = direct.clone().with("x-purpose-of-use", "emergency").with("x-end-user", "dr.er");
    assert_eq!(fhir_view(&emergency, &patient, &first.id).await, (2, 2, 2, 200), "break-glass sees them");
    let mut twin = Clients::new(ch, Credentials::bearer(&consumer).purpose("emergency").end_user("dr.er"));
    assert_eq!(grpc_view(&mut twin, &patient, &first.id).await, (2, 2, 2, 200), "over gRPC too");
    let log = auditor.get(&format!("{}&_count=100", audit_path(&patient))).await;
    assert_valid("the log", &log.body);
    let reads = consumer_reads(&log);
    let operations: Vec<&str> = reads.iter().map(|e| e["subtype"][0]["code"].as_str().unwrap_or_default()).collect();
    let read = ["GetPointer", "CountPointers", "SearchPointers"];
    assert_eq!(
        operations,
        [read, read, read].concat(),
        "the six break-glass reads (gRPC's, then FHIR's), newest first, then the three before the restriction: {}",
        log.text
    );
    for event in &reads[..6] {
        assert_eq!(
            event["extension"],
            json!([{"url": BREAK_GLASS_EXTENSION, "valueBoolean": true}]),
            "break-glass flagged: {event}"
        );
        assert_eq!(event["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "emergency", "{event}");
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "emergency", "{event}");
        assert_eq!(event["agent"][0]["name"], "dr.er", "{event}");
        assert_eq!(event["outcome"], "0", "{event}");
    }
    let unflagged = log.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|e| e["agent"][0]["altId"] != "ra7-consumer")
        .chain(&reads[6..])
        .all(|e| e["extension"].is_null());
    assert!(unflagged, "only the break-glass reads are flagged: {}", log.text);

    admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: false })
        .await
        .expect("admin lifts the restriction");
    assert_eq!(fhir_view(&direct, &patient, &first.id).await, (2, 2, 2, 200), "lifting restores");
    let after = auditor.get(&audit_path(&patient)).await;
    let newest = &consumer_reads(&after)[0];
    assert!(newest["extension"].is_null(), "a read of an unrestricted patient is no break-glass: {newest}");
    assert_eq!(newest["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "direct-care");
    server.stop().await.expect("stop");
}
