//! The scenarios held on every backend (`on_every_backend!` in main.rs makes the tests): each starts
//! its own server and store with `Env::start`.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub(super) async fn each_operation_leaves_exactly_the_expected_event(backend: Backend) {
    let env = Env::start(backend).await;
    let mut tail = Tail::new(&env).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "loader-7");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut narrow = env.actor_with_types("ra7-news2", "RA7", &["consumer"], Some(&[NEWS2]), "direct-care", "nurse.k");
    let mut no_purpose = env.actor("ra7-silent", "RA7", &["consumer"], "", "");
    let mut admin = env.actor("x26-admin", "X26", &["admin"], "administration", "admin.a");
    let p = new_patient();
    let mut portal = env.portal("nhs-app", "X26", &p);

    let a = producer.create(input(&p, "QWO", "RR8", CRISIS_PLAN)).await;
    assert_eq!(tail.seen().await, vec![producer.expect("CreatePointer", "OK", &p, &[&a.id])], "create");
    let b = producer.create(input(&p, "QE1", "RR8", NEWS2)).await;
    assert_eq!(tail.seen().await, vec![producer.expect("CreatePointer", "OK", &p, &[&b.id])], "create");

    consumer.get(&a.id).await.expect("get");
    assert_eq!(tail.seen().await, vec![consumer.expect("GetPointer", "OK", &p, &[&a.id])], "get");
    assert_eq!(consumer.search(&p).await.expect("search").len(), 2);
    assert_eq!(tail.seen().await, vec![consumer.expect("SearchPointers", "OK", &p, &[&a.id, &b.id])], "search");
    assert_eq!(consumer.count(&p).await.expect("count"), 2);
    assert_eq!(tail.seen().await, vec![consumer.expect("CountPointers", "OK", &p, &[])], "count");
    assert_eq!(consumer.locate(&p).await.expect("locate"), 2);
    assert_eq!(tail.seen().await, vec![consumer.expect("LocatePatient", "OK", &p, &[&a.id, &b.id])], "locate");

    let mut changed = input(&p, "QWO", "RR8", CRISIS_PLAN);
    changed.content = a.content.clone();
    changed.content[0].url = "https://qwo.example.nhs.uk/records/v2".into();
    producer
        .c
        .registry
        .update_pointer(pb::UpdatePointerRequest { id: a.id.clone(), version: 1, pointer: Some(changed) })
        .await
        .expect("update");
    assert_eq!(tail.seen().await, vec![producer.expect("UpdatePointer", "OK", &p, &[&a.id])], "update");

    let c = producer
        .c
        .registry
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&p, "QE1", "RR8", NEWS2)),
            supersedes: vec![b.id.clone()],
        })
        .await
        .expect("supersede")
        .into_inner()
        .pointer
        .expect("pointer");
    assert_eq!(tail.seen().await, vec![producer.expect("SupersedePointer", "OK", &p, &[&c.id, &b.id])], "supersede");

    producer
        .c
        .registry
        .delete_pointer(pb::DeletePointerRequest { id: a.id.clone(), version: 0 })
        .await
        .expect("delete");
    assert_eq!(tail.seen().await, vec![producer.expect("DeletePointer", "OK", &p, &[&a.id])], "delete");

    // A batch is one call: one event per patient and outcome, listing the pointers registered for
    // that patient, and one naming no patient for the entries that name no valid one.
    let q = new_patient();
    let outcomes = producer
        .c
        .registry
        .batch_create_pointers(pb::BatchCreatePointersRequest {
            pointers: vec![
                input(&p, "QWO", "RR8", CRISIS_PLAN),
                input("123", "QWO", "RR8", CRISIS_PLAN),
                input(&q, "QWO", "RR8", CRISIS_PLAN),
                input(&p, "ZZZ", "RR8", CRISIS_PLAN),
                input(&p, "QWO", "RA7", CRISIS_PLAN),
                input(&p, "QWO", "RR8", RESPECT_FORM),
            ],
        })
        .await
        .expect("batch")
        .into_inner()
        .outcomes;
    let created = |i: usize| match outcomes.get(i).and_then(|o| o.result.clone()) {
        Some(BatchResult::Created(pointer)) => pointer,
        other => panic!("entry {i} should be created: {other:?}"),
    };
    let (d, e, f) = (created(0), created(2), created(5));
    let mut batch = tail.seen().await;
    batch.sort();
    let mut want = vec![
        producer.expect("BatchCreatePointers", "OK", &p, &[&d.id, &f.id]),
        producer.expect("BatchCreatePointers", "OK", &q, &[&e.id]),
        producer.expect("BatchCreatePointers", "PERMISSION_DENIED", &p, &[]),
        producer.expect("BatchCreatePointers", "INVALID_ARGUMENT", "", &[]),
    ];
    want.sort();
    assert_eq!(batch, want, "batch: one event per patient and outcome, one for the invalid entries");

    // Refusals are recorded (in the export only), with the refusal as the outcome and nothing returned.
    let err = consumer
        .c
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&p, "QWO", "RA7", CRISIS_PLAN)) })
        .await
        .expect_err("consumers cannot create");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        tail.seen().await,
        vec![consumer.expect("CreatePointer", "PERMISSION_DENIED", &p, &[])],
        "denied create"
    );
    assert_code("narrow get", narrow.get(&d.id).await, Code::NotFound);
    assert_eq!(tail.seen().await, vec![narrow.expect("GetPointer", "NOT_FOUND", &p, &[])], "invisible get");
    let explicit = pb::SearchPointersRequest {
        query: Some(pb::PointerQuery { types: vec![CRISIS_PLAN.into()], ..query(&p) }),
        ..Default::default()
    };
    assert_code("explicit type", narrow.c.registry.search_pointers(explicit).await, Code::PermissionDenied);
    assert_eq!(tail.seen().await, vec![narrow.expect("SearchPointers", "PERMISSION_DENIED", &p, &[])], "explicit type");
    assert_code("no purpose", no_purpose.search(&p).await, Code::InvalidArgument);
    assert_eq!(tail.seen().await, vec![no_purpose.expect("SearchPointers", "INVALID_ARGUMENT", &p, &[])], "no purpose");

    // Patient administration and the access log.
    admin.restrict(&p, true).await;
    assert_eq!(tail.seen().await, vec![admin.expect("SetRestriction", "OK", &p, &[])], "restrict");
    admin.c.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: p.clone() }).await.expect("get restriction");
    assert_eq!(tail.seen().await, vec![admin.expect("GetRestriction", "OK", &p, &[])], "get restriction");
    admin.restrict(&p, false).await;
    assert_eq!(tail.seen().await, vec![admin.expect("SetRestriction", "OK", &p, &[])], "unrestrict");
    tail.auditor.access_log(&p, 0, "").await.expect("auditor reads the log");
    assert_eq!(tail.seen().await, vec![tail.auditor.expect("GetAccessLog", "OK", &p, &[])], "access log");
    portal.access_log(&p, 0, "").await.expect("portal reads the log");
    assert_eq!(tail.seen().await, vec![portal.expect("GetAccessLog", "OK", &p, &[])], "portal");
    assert_code("consumer access log", consumer.access_log(&p, 0, "").await, Code::PermissionDenied);
    assert_eq!(tail.seen().await, vec![consumer.expect("GetAccessLog", "PERMISSION_DENIED", &p, &[])], "denied log");

    // Invalid requests are refusals too: each is in the export with its code and the caller, naming
    // no patient. Calls without credentials have no caller to record and leave nothing.
    let bad_check = format!("{}{}", &p[..9], (p.as_bytes()[9] - b'0' + 1) % 10);
    let pc = &mut producer.c;
    assert_code(
        "create",
        pc.registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input("123", "QWO", "RR8", CRISIS_PLAN)) })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        "create",
        pc.registry.create_pointer(pb::CreatePointerRequest { pointer: None }).await,
        Code::InvalidArgument,
    );
    assert_code(
        "supersede",
        pc.registry
            .supersede_pointer(pb::SupersedePointerRequest {
                pointer: Some(input(&bad_check, "QE1", "RR8", NEWS2)),
                supersedes: vec![c.id.clone()],
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        "update",
        pc.registry
            .update_pointer(pb::UpdatePointerRequest {
                id: "nope".into(),
                version: 1,
                pointer: Some(input(&p, "QWO", "RR8", CRISIS_PLAN)),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        "delete",
        pc.registry.delete_pointer(pb::DeletePointerRequest { id: "nope".into(), version: 0 }).await,
        Code::InvalidArgument,
    );
    assert_code(
        "batch",
        pc.registry
            .batch_create_pointers(pb::BatchCreatePointersRequest {
                pointers: vec![input("1234567890", "QWO", "RR8", CRISIS_PLAN)],
            })
            .await
            .map(|r| {
                let outcome = r.into_inner().outcomes.remove(0);
                assert!(matches!(outcome.result, Some(BatchResult::Error(_))), "{outcome:?}");
                Err::<(), _>(tonic::Status::invalid_argument("entry refused"))
            })
            .and_then(|r| r),
        Code::InvalidArgument,
    );
    assert_code("search", consumer.search("not-a-number").await, Code::InvalidArgument);
    assert_code("count", consumer.count("").await, Code::InvalidArgument);
    assert_code("locate", consumer.locate(&bad_check).await, Code::InvalidArgument);
    assert_code("get", consumer.get("garbage").await, Code::InvalidArgument);
    assert_code("log", tail.auditor.access_log("12345", 0, "").await, Code::InvalidArgument);
    assert_code(
        "restrict",
        admin.c.admin.set_restriction(pb::SetRestrictionRequest { nhs_number: "0".into(), restricted: true }).await,
        Code::InvalidArgument,
    );
    assert_code(
        "restriction",
        admin.c.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: "abc".into() }).await,
        Code::InvalidArgument,
    );
    let mut anonymous = Clients::new(&env.server.channel, Credentials::anonymous());
    assert_code(
        "unauthenticated",
        anonymous.registry.count_pointers(pb::CountPointersRequest { query: Some(query(&p)) }).await,
        Code::Unauthenticated,
    );
    let invalid = |actor: &Actor, operation: &str| actor.expect(operation, "INVALID_ARGUMENT", "", &[]);
    assert_eq!(
        tail.seen().await,
        vec![
            invalid(&producer, "CreatePointer"),
            invalid(&producer, "CreatePointer"),
            invalid(&producer, "SupersedePointer"),
            invalid(&producer, "UpdatePointer"),
            invalid(&producer, "DeletePointer"),
            invalid(&producer, "BatchCreatePointers"),
            invalid(&consumer, "SearchPointers"),
            invalid(&consumer, "CountPointers"),
            invalid(&consumer, "LocatePatient"),
            invalid(&consumer, "GetPointer"),
            invalid(&tail.auditor, "GetAccessLog"),
            invalid(&admin, "SetRestriction"),
            invalid(&admin, "GetRestriction"),
        ],
        "every invalid request is exported with its code, the unauthenticated one is not"
    );

    // The patient's own log holds what read or changed the patient's data, and nothing refused.
    let auditor_read = tail.auditor.expect("GetAccessLog", "OK", &p, &[]);
    assert_eq!(
        log_of(&mut tail.auditor, &p).await,
        vec![
            producer.expect("CreatePointer", "OK", &p, &[&a.id]),
            producer.expect("CreatePointer", "OK", &p, &[&b.id]),
            consumer.expect("GetPointer", "OK", &p, &[&a.id]),
            consumer.expect("SearchPointers", "OK", &p, &[&a.id, &b.id]),
            consumer.expect("CountPointers", "OK", &p, &[]),
            consumer.expect("LocatePatient", "OK", &p, &[&a.id, &b.id]),
            producer.expect("UpdatePointer", "OK", &p, &[&a.id]),
            producer.expect("SupersedePointer", "OK", &p, &[&c.id, &b.id]),
            producer.expect("DeletePointer", "OK", &p, &[&a.id]),
            producer.expect("BatchCreatePointers", "OK", &p, &[&d.id, &f.id]),
            admin.expect("SetRestriction", "OK", &p, &[]),
            admin.expect("GetRestriction", "OK", &p, &[]),
            admin.expect("SetRestriction", "OK", &p, &[]),
            auditor_read,
            portal.expect("GetAccessLog", "OK", &p, &[]),
        ],
        "the patient's log: reads that returned something, writes, administration; no refusal"
    );
    assert_eq!(log_of(&mut tail.auditor, &q).await, vec![producer.expect("BatchCreatePointers", "OK", &q, &[&e.id])]);
    env.stop().await;
}

/// An UpdatePointer naming an id that is not a pointer of this registry must not put an event in
/// some other patient's access log. (A pointer id decodes to *some* NHS number with the registry's
/// key; for an id that was never issued, that is an arbitrary, unrelated patient.)
pub(super) async fn unknown_ids_leave_no_event_against_an_unrelated_patient(backend: Backend) {
    let env = Env::start(backend).await;
    let mut tail = Tail::new(&env).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "");
    let p = new_patient();
    // About 1 in 20 random ids decodes to a valid NHS number; 100 rounds of two updates each miss
    // all of them with probability ~0.95^200 ≈ 4e-5.
    for round in 0..100 {
        let id = uuid::Uuid::from_u128(rand::random::<u128>()).to_string();
        let update = pb::UpdatePointerRequest {
            id: id.clone(),
            version: 1,
            pointer: Some(input(&p, "QWO", "RR8", CRISIS_PLAN)),
        };
        assert_code("producer update", producer.c.registry.update_pointer(update.clone()).await, Code::NotFound);
        let refused = consumer.c.registry.update_pointer(update).await.expect_err("consumers cannot update");
        assert!(matches!(refused.code(), Code::PermissionDenied | Code::NotFound), "consumer update: {refused:?}");
        if round % 10 == 0 {
            assert_code(
                "delete",
                producer.c.registry.delete_pointer(pb::DeletePointerRequest { id: id.clone(), version: 0 }).await,
                Code::NotFound,
            );
            assert_code("get", consumer.get(&id).await, Code::NotFound);
        }
    }
    let events = tail.seen().await;
    let strays: Vec<&Seen> = events.iter().filter(|e| !e.nhs_number.is_empty() && e.nhs_number != p).collect();
    assert!(
        strays.is_empty(),
        "{} of {} events name a patient the request never mentioned (first: {:?})",
        strays.len(),
        events.len(),
        strays.first()
    );
    // Each call is in the export: an unknown id against nobody, the consumer's refusal against the
    // patient it named. None of it is in that patient's log.
    let count =
        |outcome: &str, nhs: &str| events.iter().filter(|e| e.outcome == outcome && e.nhs_number == nhs).count();
    assert_eq!(count("NOT_FOUND", ""), 100 + 10 + 10, "unknown ids: updates, deletes and gets, against nobody");
    assert_eq!(count("PERMISSION_DENIED", &p), 100, "the consumer's updates, against the patient named");
    assert_eq!(events.len(), 220);
    let mut auditor = env.auditor();
    assert_eq!(log_of(&mut auditor, &p).await, vec![], "nothing in the patient's own log");
    env.stop().await;
}

pub(super) async fn break_glass_is_flagged_only_when_a_restricted_patients_pointers_are_shown(backend: Backend) {
    let env = Env::start(backend).await;
    let mut tail = Tail::new(&env).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut admin = env.actor("x26-admin", "X26", &["admin"], "administration", "");
    let mut direct = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut glass = env.actor("ra7-viewer", "RA7", &["consumer"], "emergency", "dr.jones");
    let mut glass_narrow =
        env.actor_with_types("ra7-ehcp", "RA7", &["consumer"], Some(&["887701000000100"]), "emergency", "dr.who");
    let restricted = new_patient();
    let open = new_patient();
    let empty = new_patient();
    let r1 = producer.create(input(&restricted, "QWO", "RR8", CRISIS_PLAN)).await;
    let r2 = producer.create(input(&restricted, "QE1", "RR8", NEWS2)).await;
    let o1 = producer.create(input(&open, "QWO", "RR8", CRISIS_PLAN)).await;
    admin.restrict(&restricted, true).await;
    admin.restrict(&empty, true).await;
    tail.take().await;

    assert!(direct.search(&restricted).await.expect("search").is_empty());
    assert_eq!(direct.count(&restricted).await.expect("count"), 0);
    assert_eq!(direct.locate(&restricted).await.expect("locate"), 0);
    assert_code("direct get", direct.get(&r1.id).await, Code::NotFound);
    assert_eq!(
        tail.seen().await,
        vec![
            direct.expect("SearchPointers", "OK", &restricted, &[]),
            direct.expect("CountPointers", "OK", &restricted, &[]),
            direct.expect("LocatePatient", "OK", &restricted, &[]),
            direct.expect("GetPointer", "NOT_FOUND", &restricted, &[]),
        ],
        "restricted, direct care: nothing shown, nothing flagged"
    );

    assert_eq!(glass.search(&restricted).await.expect("search").len(), 2);
    assert_eq!(glass.count(&restricted).await.expect("count"), 2);
    assert_eq!(glass.locate(&restricted).await.expect("locate"), 2);
    assert_eq!(glass.get(&r2.id).await.expect("get").id, r2.id);
    assert_eq!(
        tail.seen().await,
        vec![
            glass.glass("SearchPointers", &restricted, &[&r1.id, &r2.id]),
            glass.glass("CountPointers", &restricted, &[]),
            glass.glass("LocatePatient", &restricted, &[&r1.id, &r2.id]),
            glass.glass("GetPointer", &restricted, &[&r2.id]),
        ],
        "restricted, emergency: break-glass flagged on every read that showed pointers"
    );

    assert_eq!(glass.search(&open).await.expect("search"), vec![o1.id.clone()]);
    assert_eq!(glass.count(&open).await.expect("count"), 1);
    assert!(glass.search(&empty).await.expect("search").is_empty());
    assert_eq!(glass.locate(&empty).await.expect("locate"), 0);
    assert!(glass_narrow.search(&restricted).await.expect("search").is_empty());
    assert_eq!(glass_narrow.count(&restricted).await.expect("count"), 0);
    let explicit =
        pb::CountPointersRequest { query: Some(pb::PointerQuery { types: vec![NEWS2.into()], ..query(&restricted) }) };
    assert_code("explicit", glass_narrow.c.registry.count_pointers(explicit).await, Code::PermissionDenied);
    assert_eq!(
        tail.seen().await,
        vec![
            glass.expect("SearchPointers", "OK", &open, &[&o1.id]),
            glass.expect("CountPointers", "OK", &open, &[]),
            glass.expect("SearchPointers", "OK", &empty, &[]),
            glass.expect("LocatePatient", "OK", &empty, &[]),
            glass_narrow.expect("SearchPointers", "OK", &restricted, &[]),
            glass_narrow.expect("CountPointers", "OK", &restricted, &[]),
            glass_narrow.expect("CountPointers", "PERMISSION_DENIED", &restricted, &[]),
        ],
        "emergency without a restricted patient's pointers shown: not break-glass"
    );

    // The patients' own logs hold the reads that showed pointers, break-glass flagged; a read that
    // showed nothing (restricted, empty, or outside the caller's types) is in the export only.
    let restrict = |nhs: &str| admin.expect("SetRestriction", "OK", nhs, &[]);
    let mut auditor = env.auditor();
    assert_eq!(
        log_of(&mut auditor, &restricted).await,
        vec![
            producer.expect("CreatePointer", "OK", &restricted, &[&r1.id]),
            producer.expect("CreatePointer", "OK", &restricted, &[&r2.id]),
            restrict(&restricted),
            glass.glass("SearchPointers", &restricted, &[&r1.id, &r2.id]),
            glass.glass("CountPointers", &restricted, &[]),
            glass.glass("LocatePatient", &restricted, &[&r1.id, &r2.id]),
            glass.glass("GetPointer", &restricted, &[&r2.id]),
        ],
        "the restricted patient's log: every break-glass read, flagged"
    );
    assert_eq!(
        log_of(&mut auditor, &open).await,
        vec![
            producer.expect("CreatePointer", "OK", &open, &[&o1.id]),
            glass.expect("SearchPointers", "OK", &open, &[&o1.id]),
            glass.expect("CountPointers", "OK", &open, &[]),
        ]
    );
    assert_eq!(log_of(&mut auditor, &empty).await, vec![restrict(&empty)], "reads that found nothing");
    env.stop().await;
}

pub(super) async fn access_log_is_newest_first_pages_exactly_once_and_is_itself_recorded(backend: Backend) {
    let env = Env::start(backend).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut auditor = env.auditor();
    let p = new_patient();
    let other = new_patient();
    let mut portal = env.portal("nhs-app", "X26", &p);
    producer.create(input(&p, "QWO", "RR8", CRISIS_PLAN)).await;
    producer.create(input(&other, "QWO", "RR8", CRISIS_PLAN)).await;
    for _ in 0..6 {
        consumer.count(&p).await.expect("count");
        consumer.count(&other).await.expect("count");
    }
    let of_patient = |events: Vec<pb::AuditEvent>| events.into_iter().filter(|e| e.nhs_number == p).collect::<Vec<_>>();
    let before = of_patient(auditor.c.export("").await.expect("export"));
    assert_eq!(before.len(), 7, "one create and six counts of this patient");

    // Page through: newest first, every event exactly once, nothing of another patient.
    let mut collected: Vec<pb::AuditEvent> = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = auditor.access_log(&p, 3, &token).await.expect("access log page");
        sizes.push(page.events.len());
        collected.extend(page.events);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(sizes.len() < 10, "paging never ends: {sizes:?}");
    }
    assert_eq!(sizes, vec![3, 3, 1], "pages of 3 over 7 events");
    let newest_first: Vec<pb::AuditEvent> = before.iter().rev().map(without_cursor).collect();
    assert_eq!(collected.iter().map(without_cursor).collect::<Vec<_>>(), newest_first, "newest first, each once");
    assert!(collected.iter().all(|e| e.cursor.is_empty()), "a log's events carry no export cursor");
    let times: Vec<(i64, i32)> =
        collected.iter().map(|e| e.time.map(|t| (t.seconds, t.nanos)).unwrap_or_default()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "times never increase: {times:?}");

    // Reading the log is itself recorded: one event per page read, by the auditor.
    let after = of_patient(auditor.c.export("").await.expect("export"));
    let reads: Vec<Seen> = after[before.len()..].iter().map(seen).collect();
    let read = auditor.expect("GetAccessLog", "OK", &p, &[]);
    assert_eq!(reads, vec![read.clone(), read.clone(), read.clone()], "three page reads recorded");

    // The portal may read it too (and sees the auditor's reads first); a consumer may not.
    let portal_view = portal.access_log(&p, 0, "").await.expect("portal reads the log");
    assert_eq!(portal_view.events.len(), 10, "7 events and 3 reads");
    assert_eq!(seen(&portal_view.events[0]), read, "newest first");
    assert!(portal_view.next_page_token.is_empty());
    assert_code("the portal, for another patient", portal.access_log(&other, 0, "").await, Code::PermissionDenied);
    assert_code("consumer", consumer.access_log(&p, 0, "").await, Code::PermissionDenied);
    // "portal" here is a portal token that names no patient.
    for role in ["producer", "admin", "peer", "portal"] {
        let mut c = env.actor("someone", "RR8", &[role], "audit", "");
        assert_code(role, c.access_log(&p, 0, "").await, Code::PermissionDenied);
    }
    let last = of_patient(auditor.c.export("").await.expect("export"));
    let refused: Vec<String> = last[after.len()..].iter().map(|e| format!("{}:{}", e.operation, e.outcome)).collect();
    assert_eq!(refused[0], "GetAccessLog:OK", "the portal's read");
    assert_eq!(refused[1..], vec!["GetAccessLog:PERMISSION_DENIED".to_string(); 5], "refused reads are recorded too");
    // In the export only: the patient's log has the 7 events, 3 page reads and the portal's read.
    let log = log_of(&mut auditor, &p).await;
    assert_eq!(log.len(), 11, "{log:?}");
    assert!(log.iter().all(|e| e.outcome == "OK"), "no refusal in the patient's log: {log:?}");

    for bad in ["not-a-page-token", "99999999999999999999", "-1", "+3", "1.5"] {
        let err = auditor.access_log(&p, 3, bad).await.expect_err(bad);
        assert_field_error(&err, Code::InvalidArgument, "page_token");
    }
    let err = auditor.access_log(&p, -1, "").await.expect_err("negative page size");
    assert_field_error(&err, Code::InvalidArgument, "page_size");
    env.stop().await;
}

pub(super) async fn export_streams_every_event_in_order_resumes_and_follows(backend: Backend) {
    let env = Env::start(backend).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut auditor = env.auditor();
    let p = new_patient();
    for region in ["QWO", "QE1", "QF7"] {
        producer.create(input(&p, region, "RR8", CRISIS_PLAN)).await;
    }
    consumer.search(&p).await.expect("search");
    consumer.count(&p).await.expect("count");

    let all = auditor.c.export("").await.expect("export");
    let operations: Vec<&str> = all.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(
        operations,
        ["CreatePointer", "CreatePointer", "CreatePointer", "SearchPointers", "CountPointers"],
        "oldest first"
    );
    let keys: Vec<(u64, u64)> = all.iter().map(|e| cursor_key(&e.cursor)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "cursors strictly increase: {keys:?}");
    assert_eq!(
        auditor.c.export(&all[1].cursor).await.expect("resume"),
        all[2..].to_vec(),
        "resume gives exactly the rest"
    );
    assert_eq!(auditor.c.export(&all[4].cursor).await.expect("resume at the end"), vec![], "nothing after the last");

    // Following: an event written after the stream opened arrives.
    let mut follow = auditor
        .c
        .audit
        .stream_audit_events(pb::StreamAuditEventsRequest { after: all[4].cursor.clone(), follow: true })
        .await
        .expect("follow")
        .into_inner();
    let quiet = tokio::time::timeout(Duration::from_millis(600), follow.next()).await;
    assert!(quiet.is_err(), "nothing new yet: {quiet:?}");
    consumer.locate(&p).await.expect("locate");
    let next = tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("the new event arrives within 10 s")
        .expect("the stream stays open")
        .expect("an event");
    assert_eq!(
        seen(&next),
        consumer.expect("LocatePatient", "OK", &p, &[]).pointer_ids_from(&all),
        "the followed event"
    );
    assert!(cursor_key(&next.cursor) > cursor_key(&all[4].cursor));
    drop(follow);

    // More than one export batch (500): every event exactly once, in order. (A batch records one
    // event per patient, so 600 patients make 600 events.)
    let mut patients = std::collections::BTreeSet::new();
    while patients.len() < 600 {
        patients.insert(new_patient());
    }
    let batch: Vec<pb::PointerInput> = patients.iter().map(|q| input(q, "QWO", "RR8", CRISIS_PLAN)).collect();
    let outcomes = producer
        .c
        .registry
        .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: batch })
        .await
        .expect("batch of 600")
        .into_inner()
        .outcomes;
    assert!(outcomes.iter().all(|o| matches!(o.result, Some(BatchResult::Created(_)))));
    let everything = auditor.c.export("").await.expect("export");
    assert_eq!(everything.len(), 606);
    let keys: Vec<(u64, u64)> = everything.iter().map(|e| cursor_key(&e.cursor)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "cursors strictly increase over batches");
    assert_eq!(auditor.c.export(&everything[99].cursor).await.expect("resume").len(), 506);

    // Only auditors export; a malformed cursor is refused naming `after`.
    for role in ["consumer", "portal", "admin", "producer", "peer"] {
        let mut c = env.actor("someone", "RR8", &[role], "audit", "");
        let err = c.c.export("").await.expect_err(role);
        assert_eq!(err.code(), Code::PermissionDenied, "{role}: {err:?}");
    }
    for bad in ["not-a-cursor", "1-", "-1", "abc-def", "1.5", "🦀"] {
        let err = auditor.c.export(bad).await.expect_err(bad);
        assert_field_error(&err, Code::InvalidArgument, "after");
    }
    // Both kinds of refusal are themselves in the export.
    let refusals = auditor.c.export(&everything[605].cursor).await.expect("the refusals");
    let refusals: Vec<(&str, &str, &str)> =
        refusals.iter().map(|e| (e.operation.as_str(), e.outcome.as_str(), e.nhs_number.as_str())).collect();
    let mut want = vec![("StreamAuditEvents", "PERMISSION_DENIED", ""); 5];
    want.extend(vec![("StreamAuditEvents", "INVALID_ARGUMENT", ""); 6]);
    assert_eq!(refusals, want);
    env.stop().await;
}

/// `AuditEvent.cursor` means one thing on every backend: a position in the export, which
/// StreamAuditEvents resumes after. GetAccessLog's events carry none, and its page tokens (which
/// still accept the bare positions of earlier versions) are refused as cursors.
pub(super) async fn an_event_cursor_is_an_export_position_on_every_backend(backend: Backend) {
    let env = Env::start(backend).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut auditor = env.auditor();
    let p = new_patient();
    producer.create(input(&p, "QWO", "RR8", CRISIS_PLAN)).await;
    for _ in 0..4 {
        consumer.count(&p).await.expect("count");
    }

    let page = auditor.access_log(&p, 2, "").await.expect("access log");
    assert_eq!(page.events.len(), 2);
    assert!(page.events.iter().all(|e| e.cursor.is_empty()), "no cursor on a log's events: {:?}", page.events);
    let err = auditor.c.export(&page.next_page_token).await.expect_err("a page token is not an export cursor");
    assert_field_error(&err, Code::InvalidArgument, "after");
    assert!(err.message().contains("StreamAuditEvents"), "says where cursors come from: {}", err.message());

    // Each exported event's cursor resumes the export just after that event.
    let all = auditor.c.export("").await.expect("export");
    assert!(all.len() >= 5, "a create and four counts at least: {all:?}");
    for (i, e) in all.iter().enumerate() {
        assert!(!e.cursor.is_empty(), "every exported event has a cursor: {e:?}");
        assert_eq!(auditor.c.export(&e.cursor).await.expect("resume"), all[i + 1..].to_vec(), "after event {i}");
    }

    // A bare log position, the page token of earlier versions, pages as the opaque token does.
    let decoded = URL_SAFE_NO_PAD.decode(&page.next_page_token).expect("the token is base64url");
    let position = String::from_utf8(decoded).expect("utf-8").strip_prefix("log:").expect("prefix").to_string();
    let by_token = auditor.access_log(&p, 10, &page.next_page_token).await.expect("by token");
    let by_position = auditor.access_log(&p, 10, &position).await.expect("by bare position");
    assert_eq!(by_token.events.len(), 3, "the three oldest events");
    assert_eq!(by_token, by_position);
    env.stop().await;
}

impl Seen {
    /// The LocatePatient event names the current pointers: the three created before.
    fn pointer_ids_from(mut self, created: &[pb::AuditEvent]) -> Seen {
        let mut ids: Vec<String> =
            created.iter().filter(|e| e.operation == "CreatePointer").flat_map(|e| e.pointer_ids.clone()).collect();
        ids.sort();
        self.pointer_ids = ids;
        self
    }
}
