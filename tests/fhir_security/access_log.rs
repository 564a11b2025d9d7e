//! The patient's access log as FHIR `AuditEvent`s, and the audit every FHIR call leaves, compared
//! with what its gRPC twin leaves in the export (`AuditLog/StreamAuditEvents`) and in the
//! patient's own log (`AuditLog/GetAccessLog`).

use super::*;
use std::collections::BTreeMap;

/// What an AuditEvent says, in the terms of the gRPC event: (operation, outcome code, ODS,
/// application, purpose, end user, pointer ids, break-glass).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Said {
    operation: String,
    outcome: String,
    organisation: String,
    application: String,
    purpose: String,
    end_user: String,
    pointers: Vec<String>,
    break_glass: bool,
}

fn said(event: &Value) -> Said {
    let agent = &event["agent"][0];
    let mut pointers: Vec<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["what"]["reference"].as_str()?.strip_prefix("DocumentReference/").map(str::to_string))
        .collect();
    pointers.sort();
    let glass =
        event["extension"].as_array().into_iter().flatten().any(|e| {
            e["url"] == nrl_registry::api::fhir::codes::BREAK_GLASS_EXTENSION && e["valueBoolean"] == json!(true)
        });
    Said {
        operation: event["subtype"][0]["code"].as_str().unwrap_or_default().into(),
        outcome: event["outcomeDesc"].as_str().unwrap_or_default().into(),
        organisation: agent["who"]["identifier"]["value"].as_str().unwrap_or_default().into(),
        application: agent["altId"].as_str().unwrap_or_default().into(),
        purpose: agent["purposeOfUse"][0]["coding"][0]["code"].as_str().unwrap_or_default().into(),
        end_user: agent["name"].as_str().unwrap_or_default().into(),
        pointers,
        break_glass: glass,
    }
}

fn said_grpc(e: &pb::AuditEvent) -> Said {
    let mut pointers = e.pointer_ids.clone();
    pointers.sort();
    Said {
        operation: e.operation.clone(),
        outcome: e.outcome.clone(),
        organisation: e.organisation.clone(),
        application: e.application.clone(),
        purpose: e.purpose.clone(),
        end_user: e.end_user.clone(),
        pointers,
        break_glass: e.break_glass,
    }
}

/// The events of an AuditEvent Bundle, each checked to be a valid AuditEvent about `patient`.
fn events(what: &str, answer: &Answer, patient: &str) -> Vec<Value> {
    assert_eq!(answer.status, 200, "{what}: {}", answer.text);
    assert_valid(what, &answer.body);
    let events: Vec<Value> =
        answer.body["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect();
    for event in &events {
        assert_eq!(event["resourceType"], "AuditEvent", "{what}");
        let person = event["entity"].as_array().into_iter().flatten().find(|e| e["type"]["code"] == "1");
        let person = person.unwrap_or_else(|| panic!("{what}: an event without its patient: {event}"));
        assert_eq!(person["what"]["identifier"]["system"], NHS_NUMBER_SYSTEM, "{what}");
        assert_eq!(person["what"]["identifier"]["value"], patient, "{what}: an event of another patient: {event}");
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_reads_show_in_the_patients_audit_events_newest_first_paged_and_the_reading_is_recorded() {
    let server = start().await;
    let base = server.fhir_base();
    let producer =
        Fhir::bearer(&base, &token("rr8-loader", OWN, &["producer"], None)).with("x-purpose-of-use", "administration");
    let consumer = Fhir::bearer(&base, &token("ra7-viewer", OTHER, &["consumer"], None)).with("x-end-user", "dr.jones");
    let auditor =
        Fhir::bearer(&base, &token("x26-auditor", "X26", &["auditor"], None)).with("x-purpose-of-use", "audit");
    let patient = new_patient();
    let first =
        created_id("create 1", &producer.post("DocumentReference", &document(&patient, "QWO", OWN, CRISIS_PLAN)).await);
    let second =
        created_id("create 2", &producer.post("DocumentReference", &document(&patient, "QE1", OWN, NEWS2)).await);
    let found = consumer.get(&search_path(&patient)).await;
    let mut shown = found.entry_ids();
    shown.sort();
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(shown, both, "{}", found.text);
    for id in [&first, &second] {
        assert_eq!(consumer.get(&format!("DocumentReference/{id}")).await.status, 200);
    }

    let whole = auditor.get(&format!("{}&_count=100", audit_path(&patient))).await;
    let log = events("the whole log", &whole, &patient);
    assert!(whole.next_link().is_none(), "one page holds it all: {}", whole.text);
    let consumer_said = |operation: &str, pointers: &[&String]| {
        let mut pointers: Vec<String> = pointers.iter().map(|p| p.to_string()).collect();
        pointers.sort();
        Said {
            operation: operation.into(),
            outcome: "OK".into(),
            organisation: OTHER.into(),
            application: "ra7-viewer".into(),
            purpose: "direct-care".into(),
            end_user: "dr.jones".into(),
            pointers,
            break_glass: false,
        }
    };
    let producer_said = |id: &String| Said {
        operation: "CreatePointer".into(),
        organisation: OWN.into(),
        application: "rr8-loader".into(),
        purpose: "administration".into(),
        end_user: String::new(),
        ..consumer_said("", &[id])
    };
    assert_eq!(
        log.iter().map(said).collect::<Vec<_>>(),
        vec![
            consumer_said("GetPointer", &[&second]),
            consumer_said("GetPointer", &[&first]),
            consumer_said("SearchPointers", &[&first, &second]),
            producer_said(&second),
            producer_said(&first),
        ],
        "newest first: {}",
        whole.text
    );
    for event in &log {
        assert_eq!(event["outcome"], "0", "success: {event}");
        assert_eq!(event["agent"][0]["who"]["identifier"]["system"], ODS_SYSTEM);
        assert_eq!(event["agent"][0]["requestor"], true);
        assert!(event["extension"].is_null(), "no break-glass: {event}");
    }
    assert_eq!(log[0]["action"], "R");
    assert_eq!(log[4]["action"], "C");
    let times: Vec<&str> = log.iter().map(|e| e["recorded"].as_str().unwrap_or_default()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "recorded newest first: {times:?}");

    // Paging by the next links, two at a time: the read above is now the newest event, and the
    // pages hold every event exactly once, in order.
    let mut paged = Vec::new();
    let mut page = auditor.get(&format!("{}&_count=2", audit_path(&patient))).await;
    let mut pages = 1;
    loop {
        let got = events(&format!("page {pages}"), &page, &patient);
        assert!(got.len() <= 2, "at most _count per page");
        paged.extend(got);
        let Some(next) = page.next_link() else { break };
        assert!(next.contains("next-page-token="), "{next}");
        page = auditor.get(&next).await;
        pages += 1;
        assert!(pages <= 10, "paging never ends");
    }
    assert_eq!(pages, 3, "six events, two a page");
    let reading = Said {
        operation: "GetAccessLog".into(),
        organisation: "X26".into(),
        application: "x26-auditor".into(),
        purpose: "audit".into(),
        end_user: String::new(),
        ..consumer_said("", &[])
    };
    assert_eq!(said(&paged[0]), reading, "reading the log is itself recorded");
    assert_eq!(paged[1..].iter().map(said).collect::<Vec<_>>(), log.iter().map(said).collect::<Vec<_>>());
    let ids: Vec<&str> = paged.iter().filter_map(|e| e["id"].as_str()).collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");

    // A patient nobody has touched has an empty log: a Bundle without entries (FHIR JSON has no
    // empty arrays).
    let nobody = new_patient();
    let empty = auditor.get(&audit_path(&nobody)).await;
    assert!(events("an empty log", &empty, &nobody).is_empty(), "{}", empty.text);

    // entity.identifier is the same search; the other callers' rights are the policy's.
    let by_entity = auditor.get(&audit_path(&patient).replace("patient.identifier", "entity.identifier")).await;
    assert_eq!(events("by entity", &by_entity, &patient).len(), 6 + pages, "every read recorded");
    let own_portal =
        Fhir::bearer(&base, &portal_token("nhs-app", "X26", &patient)).with("x-purpose-of-use", "patient-request");
    let mine = own_portal.get(&audit_path(&patient)).await;
    assert!(events("the portal's own patient", &mine, &patient).len() > 6);
    let someone = new_patient();
    let other_portal = Fhir::bearer(&base, &portal_token("nhs-app", "X26", &someone));
    for (who, caller) in [
        ("the portal of another patient", &other_portal),
        ("a consumer", &consumer),
        ("a producer", &producer),
        ("an admin", &Fhir::bearer(&base, &token("x26-admin", "X26", &["admin"], None))),
        ("a peer", &Fhir::bearer(&base, &token("peer", "X26", &["peer"], None))),
    ] {
        assert_refused(who, &caller.get(&audit_path(&patient)).await, 403, "ACCESS DENIED");
    }
    let last = auditor.get(&audit_path(&patient)).await;
    let last = events("after the refusals", &last, &patient);
    assert_eq!(said(&last[0]).operation, "GetAccessLog", "refusals are not in the patient's log");
    assert_eq!(said(&last[0]).application, "nhs-app", "the portal's read is");
    server.stop().await.expect("stop");
}

/// One step of the audit comparison: the same call, over gRPC on patient A and over FHIR on
/// patient B, with the same caller.
struct Twins {
    grpc_patient: String,
    fhir_patient: String,
    /// Pointer ids of either API → the name both share (`p1`, ...).
    names: BTreeMap<String, String>,
    auditor: Clients,
    cursor: String,
}

impl Twins {
    fn name(&mut self, grpc_id: &str, fhir_id: &str, name: &str) {
        self.names.insert(grpc_id.to_string(), name.to_string());
        self.names.insert(fhir_id.to_string(), name.to_string());
    }

    /// An exported event with its patient and pointers named alike on both sides.
    fn normal(&self, e: &pb::AuditEvent) -> (String, Said) {
        let patient = if e.nhs_number == self.grpc_patient || e.nhs_number == self.fhir_patient {
            "<patient>".to_string()
        } else {
            e.nhs_number.clone()
        };
        let mut said = said_grpc(e);
        said.pointers = said.pointers.iter().map(|p| self.names.get(p).cloned().unwrap_or_else(|| p.clone())).collect();
        said.pointers.sort();
        (patient, said)
    }

    /// The export since the last call.
    async fn take(&mut self) -> Vec<pb::AuditEvent> {
        let events = self.auditor.export(&self.cursor).await.expect("export");
        if let Some(last) = events.last() {
            self.cursor = last.cursor.clone();
        }
        events
    }

    fn normals(&self, events: &[pb::AuditEvent]) -> Vec<(String, Said)> {
        events.iter().map(|e| self.normal(e)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fhir_call_is_audited_exactly_like_its_grpc_twin() {
    let server = start().await;
    let base = server.fhir_base();
    let ch = &server.channel;
    let auditor_token = token("x26-auditor", "X26", &["auditor"], None);
    let mut auditor = Clients::new(ch, Credentials::bearer(&auditor_token).purpose("audit"));
    let cursor = auditor.export("").await.expect("export").last().map(|e| e.cursor.clone()).unwrap_or_default();
    let (a, b) = (new_patient(), new_patient());
    let mut twins = Twins { grpc_patient: a.clone(), fhir_patient: b.clone(), names: BTreeMap::new(), auditor, cursor };

    let producer_token = token("rr8-loader", OWN, &["producer"], None);
    let consumer_token = token("ra7-viewer", OTHER, &["consumer"], Some(&[CRISIS_PLAN]));
    let thief_token = token("ra7-loader", OTHER, &["producer"], None);
    let (mut gp, fp) = (Clients::bearer(ch, &producer_token), Fhir::bearer(&base, &producer_token));
    let consumer_credentials = Credentials::bearer(&consumer_token).end_user("dr.jones");
    let (mut gc, fc) =
        (Clients::new(ch, consumer_credentials), Fhir::bearer(&base, &consumer_token).with("x-end-user", "dr.jones"));
    let (mut gt, ft) = (Clients::bearer(ch, &thief_token), Fhir::bearer(&base, &thief_token));
    let (mut ga, fa) = (
        Clients::new(ch, Credentials::bearer(&auditor_token).purpose("audit")),
        Fhir::bearer(&base, &auditor_token).with("x-purpose-of-use", "audit"),
    );
    let portal_of_someone = portal_token("nhs-app", "X26", &new_patient());
    let (mut gportal, fportal) = (Clients::bearer(ch, &portal_of_someone), Fhir::bearer(&base, &portal_of_someone));
    let roleless = token("nobody", OWN, &[], None);
    let (mut gn, fn_) = (Clients::bearer(ch, &roleless), Fhir::bearer(&base, &roleless));

    let mut compared = Vec::new();
    // Runs the gRPC call and its FHIR twin, names the pointers they made alike (`$name`), and
    // compares what each left in the export.
    macro_rules! step {
        ($what:expr, $grpc:expr, $fhir:expr) => {
            step!($what, $grpc, $fhir, |_: &mut Twins, _: &_, _: &_| {})
        };
        ($what:expr, $grpc:expr, $fhir:expr, $name:expr) => {{
            let grpc_answer = $grpc;
            let grpc_events = twins.take().await;
            let fhir_answer = $fhir;
            let fhir_events = twins.take().await;
            ($name)(&mut twins, &grpc_answer, &fhir_answer);
            let (by_grpc, by_fhir) = (twins.normals(&grpc_events), twins.normals(&fhir_events));
            assert_eq!(by_fhir, by_grpc, "{}: the FHIR call's audit differs from its gRPC twin's", $what);
            compared.push(($what, by_grpc.len()));
            (grpc_answer, fhir_answer)
        }};
    }

    // Writes, and a write whose FHIR body repeats what a read showed (relatesTo included).
    let mut with_reference = input(&a, "QWO", OWN, CRISIS_PLAN);
    with_reference.producer_reference = "DOC-1".into();
    let mut doc = document(&b, "QWO", OWN, CRISIS_PLAN);
    doc["masterIdentifier"] = json!({"value": "DOC-1"});
    let (g1, f1) = step!(
        "create",
        seed(&gp, with_reference.clone()).await,
        created_id("FHIR create", &fp.post("DocumentReference", &doc).await),
        |t: &mut Twins, g: &pb::Pointer, f: &String| t.name(&g.id, f, "p1")
    );
    step!(
        "create again (idempotent)",
        gp.registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(with_reference.clone()) })
            .await
            .expect("again"),
        assert_eq!(fp.post("DocumentReference", &doc).await.status, 200)
    );
    let (g2, f2) = step!(
        "supersede",
        gp.registry
            .supersede_pointer(pb::SupersedePointerRequest {
                pointer: Some(input(&a, "QWO", OWN, CRISIS_PLAN)),
                supersedes: vec![g1.id.clone()]
            })
            .await
            .expect("supersede")
            .into_inner()
            .pointer
            .expect("pointer"),
        {
            let mut newer = document(&b, "QWO", OWN, CRISIS_PLAN);
            newer["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": f1}}}]);
            created_id("FHIR supersede", &fp.post("DocumentReference", &newer).await)
        },
        |t: &mut Twins, g: &pb::Pointer, f: &String| t.name(&g.id, f, "p2")
    );
    let read_back = fp.get(&format!("DocumentReference/{f2}")).await;
    assert_eq!(read_back.status, 200, "{}", read_back.text);
    twins.take().await;
    // The producer's own read above has a gRPC twin too, so both sides have read once.
    gp.registry.get_pointer(pb::GetPointerRequest { id: g2.id.clone() }).await.expect("producer reads its own");
    twins.take().await;
    step!(
        "update (the FHIR body as read, relatesTo included, and no purpose of use)",
        Clients::new(ch, Credentials::bearer(&producer_token).without_purpose())
            .registry
            .update_pointer(pb::UpdatePointerRequest {
                id: g2.id.clone(),
                version: 1,
                pointer: Some(input(&a, "QWO", OWN, CRISIS_PLAN))
            })
            .await
            .expect("update"),
        {
            let mut as_read = read_back.body.clone();
            as_read["content"][0]["attachment"]["url"] = json!("https://qwo.example.nhs.uk/records/v2");
            let answer = fp
                .clone()
                .without("x-purpose-of-use")
                .put(&format!("DocumentReference/{f2}"), &as_read, Some("W/\"1\""))
                .await;
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    );

    step!(
        "update again (the body as read, relatesTo included, with a purpose of use)",
        {
            // A read first, as the FHIR client below does, each side's read left out of the step.
            gp.registry.get_pointer(pb::GetPointerRequest { id: g2.id.clone() }).await.expect("read");
            twins.take().await;
            gp.registry
                .update_pointer(pb::UpdatePointerRequest {
                    id: g2.id.clone(),
                    version: 2,
                    pointer: Some(input(&a, "QWO", OWN, CRISIS_PLAN)),
                })
                .await
                .expect("update")
        },
        {
            let mut as_read = fp.get(&format!("DocumentReference/{f2}")).await.body;
            as_read["content"][0]["attachment"]["url"] = json!("https://qwo.example.nhs.uk/records/v3");
            twins.take().await;
            let answer = fp.put(&format!("DocumentReference/{f2}"), &as_read, Some("W/\"2\"")).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
        }
    );

    // Reads, allowed and refused.
    let search = |types: Vec<String>, patient: &str| pb::SearchPointersRequest {
        query: Some(pb::PointerQuery { nhs_number: patient.into(), types, ..Default::default() }),
        ..Default::default()
    };
    step!(
        "search",
        gc.registry.search_pointers(search(vec![], &a)).await.expect("search"),
        fc.get(&search_path(&b)).await
    );
    step!(
        "count",
        gc.registry.count_pointers(pb::CountPointersRequest { query: Some(query(&a)) }).await.expect("count"),
        fc.get(&search_path(&b).replacen('?', "/_count?", 1)).await
    );
    step!(
        "get",
        gc.registry.get_pointer(pb::GetPointerRequest { id: g2.id.clone() }).await.expect("get"),
        fc.get(&format!("DocumentReference/{f2}")).await
    );
    step!(
        "get of an id never assigned",
        gc.registry.get_pointer(pb::GetPointerRequest { id: NEVER.into() }).await.expect_err("missing"),
        assert_eq!(fc.get(&format!("DocumentReference/{NEVER}")).await.status, 404)
    );
    step!(
        "search for a type the consumer may not read",
        gc.registry.search_pointers(search(vec![NEWS2.into()], &a)).await.expect_err("unpermitted"),
        assert_eq!(
            fc.get(&format!("{}&type={}", search_path(&b), token_parameter(SNOMED_SYSTEM, NEWS2))).await.status,
            403
        )
    );
    step!(
        "search with an invalid NHS number",
        gc.registry.search_pointers(search(vec![], "123")).await.expect_err("invalid"),
        assert_eq!(fc.get(&search_path("123")).await.status, 400)
    );
    step!(
        "a roleless search",
        gn.registry.search_pointers(search(vec![], &a)).await.expect_err("roleless"),
        assert_eq!(fn_.get(&search_path(&b)).await.status, 403)
    );

    // Writes refused.
    step!(
        "another organisation's delete",
        gt.registry
            .delete_pointer(pb::DeletePointerRequest { id: g2.id.clone(), version: 0 })
            .await
            .expect_err("theirs"),
        assert_eq!(ft.delete(&format!("DocumentReference/{f2}")).await.status, 403)
    );
    step!(
        "another organisation's update",
        gt.registry
            .update_pointer(pb::UpdatePointerRequest {
                id: g2.id.clone(),
                version: 2,
                pointer: Some(input(&a, "QWO", OTHER, CRISIS_PLAN))
            })
            .await
            .expect_err("theirs"),
        assert_eq!(
            ft.put(&format!("DocumentReference/{f2}"), &document(&b, "QWO", OTHER, CRISIS_PLAN), Some("W/\"2\""))
                .await
                .status,
            403
        )
    );
    step!(
        "a stale update",
        gp.registry
            .update_pointer(pb::UpdatePointerRequest {
                id: g2.id.clone(),
                version: 1,
                pointer: Some(input(&a, "QWO", OWN, CRISIS_PLAN))
            })
            .await
            .expect_err("stale"),
        assert_eq!(
            fp.put(&format!("DocumentReference/{f2}"), &document(&b, "QWO", OWN, CRISIS_PLAN), Some("W/\"1\""))
                .await
                .status,
            412
        )
    );

    // The access log, allowed and refused.
    let log_request =
        |patient: &str| pb::GetAccessLogRequest { nhs_number: patient.into(), page_size: 0, page_token: String::new() };
    step!(
        "the access log",
        ga.audit.get_access_log(log_request(&a)).await.expect("log"),
        fa.get(&audit_path(&b)).await
    );
    step!(
        "another patient's portal reads the log",
        gportal.audit.get_access_log(log_request(&a)).await.expect_err("not its patient"),
        assert_eq!(fportal.get(&audit_path(&b)).await.status, 403)
    );
    step!(
        "delete",
        gp.registry.delete_pointer(pb::DeletePointerRequest { id: g2.id.clone(), version: 0 }).await.expect("delete"),
        assert_eq!(fp.delete(&format!("DocumentReference/{f2}")).await.status, 200)
    );
    assert!(compared.iter().all(|(_, n)| *n >= 1), "every step left an event: {compared:?}");

    // The patients' own logs hold the same events; the FHIR view of B's says what gRPC's does.
    let log_of = |e: &[pb::AuditEvent]| e.iter().map(|e| twins.normal(e)).collect::<Vec<_>>();
    let grpc_a = ga.audit.get_access_log(log_request(&a)).await.expect("log").into_inner().events;
    let grpc_b = ga.audit.get_access_log(log_request(&b)).await.expect("log").into_inner().events;
    assert_eq!(log_of(&grpc_b), log_of(&grpc_a), "the patients' logs");
    let fhir_b = fa.get(&format!("{}&_count=500", audit_path(&b))).await;
    let fhir_b = events("B's log over FHIR", &fhir_b, &b);
    let mut grpc_view: Vec<Said> = grpc_b.iter().map(said_grpc).collect();
    // Newest of all: the gRPC read of B's log just above.
    let grpc_read = Said {
        operation: "GetAccessLog".into(),
        outcome: "OK".into(),
        organisation: "X26".into(),
        application: "x26-auditor".into(),
        purpose: "audit".into(),
        end_user: String::new(),
        pointers: vec![],
        break_glass: false,
    };
    grpc_view.insert(0, grpc_read);
    assert_eq!(fhir_b.iter().map(said).collect::<Vec<_>>(), grpc_view, "the FHIR view of the log");
    server.stop().await.expect("stop");
}
