//! Which stream holds what. A patient's own log (GetAccessLog, kept in full on Redis) holds the
//! accesses that read or changed that patient's data; refusals, invalid requests, not-found and
//! reads that found nothing go to the export only (StreamAuditEvents), with the caller. So a caller
//! holding any valid token cannot write into another patient's log.

use super::*;

/// Every read and write a caller can attempt on `patient` (whose pointer is `id`), each once;
/// returns the codes, in order.
async fn every_call(actor: &mut Actor, patient: &str, id: &str) -> Vec<Code> {
    let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
    vec![
        code(actor.search(patient).await.map(drop)),
        code(actor.count(patient).await.map(drop)),
        code(actor.locate(patient).await.map(drop)),
        code(actor.get(id).await.map(drop)),
        code(actor.access_log(patient, 0, "").await.map(drop)),
        code(
            actor
                .c
                .registry
                .create_pointer(pb::CreatePointerRequest { pointer: Some(input(patient, "QWO", "RR8", CRISIS_PLAN)) })
                .await
                .map(drop),
        ),
        code({
            let update = pb::UpdatePointerRequest {
                id: id.into(),
                version: 1,
                pointer: Some(input(patient, "QWO", "RR8", CRISIS_PLAN)),
            };
            actor.c.registry.update_pointer(update).await.map(drop)
        }),
        code(actor.c.registry.delete_pointer(pb::DeletePointerRequest { id: id.into(), version: 0 }).await.map(drop)),
        code(
            actor
                .c
                .admin
                .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.into(), restricted: true })
                .await
                .map(drop),
        ),
        code(actor.c.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: patient.into() }).await.map(drop)),
    ]
}

pub(super) async fn refused_calls_leave_no_event_in_any_patients_log(backend: Backend) {
    let env = Env::start(backend).await;
    let mut tail = Tail::new(&env).await;
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let (a, b, empty) = (new_patient(), new_patient(), new_patient());
    let pointer = producer.create(input(&b, "QWO", "RR8", CRISIS_PLAN)).await;
    tail.take().await;

    // Patient A's portal asks for patient B's log, 200 times.
    let mut portal = env.portal("nhs-app", "X26", &a);
    for _ in 0..200 {
        assert_code("portal, another patient", portal.access_log(&b, 0, "").await, Code::PermissionDenied);
    }
    let exported = tail.seen().await;
    assert_eq!(exported.len(), 200, "every refusal is in the export");
    assert!(
        exported.iter().all(|e| *e == portal.expect("GetAccessLog", "PERMISSION_DENIED", &b, &[])),
        "with the caller and the patient it named: {:?}",
        exported.first()
    );

    // A valid token with no roles tries every read and write on B, five times over.
    let mut roleless = env.actor("nobody-app", "RR8", &[], "direct-care", "someone");
    for _ in 0..5 {
        let codes = every_call(&mut roleless, &b, &pointer.id).await;
        assert!(codes.iter().all(|c| *c == Code::PermissionDenied), "a roleless token may do nothing: {codes:?}");
    }
    let exported = tail.seen().await;
    assert_eq!(exported.len(), 50, "every refusal is in the export");
    assert!(exported.iter().all(|e| e.application == "nobody-app" && e.outcome == "PERMISSION_DENIED"));

    // A patient with no pointers, read 20 times by callers that may not.
    for _ in 0..10 {
        assert_code("portal", portal.access_log(&empty, 0, "").await, Code::PermissionDenied);
        assert_code("roleless", roleless.search(&empty).await, Code::PermissionDenied);
    }
    assert_eq!(tail.seen().await.len(), 20);

    let mut auditor = env.auditor();
    assert_eq!(
        log_of(&mut auditor, &b).await,
        vec![producer.expect("CreatePointer", "OK", &b, &[&pointer.id])],
        "B's log has its pointer's creation and none of the 250 refusals"
    );
    assert_eq!(log_of(&mut auditor, &a).await, vec![], "nothing in the portal's own patient's log either");
    assert_eq!(log_of(&mut auditor, &empty).await, vec![], "a patient with no pointers has no log");

    // What a caller may do still lands in the patient's log: a read that returned data, a write,
    // and a break-glass read, flagged.
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    assert_eq!(consumer.search(&b).await.expect("search"), vec![pointer.id.clone()]);
    let second = producer.create(input(&b, "QE1", "RR8", NEWS2)).await;
    let mut admin = env.actor("x26-admin", "X26", &["admin"], "administration", "");
    admin.restrict(&b, true).await;
    let mut glass = env.actor("ra7-viewer", "RA7", &["consumer"], "emergency", "dr.jones");
    assert_eq!(glass.get(&second.id).await.expect("break-glass get").id, second.id);
    // The auditor's read of B's log above read B's data: it is there too.
    assert_eq!(
        log_of(&mut auditor, &b).await[1..],
        [
            auditor.expect("GetAccessLog", "OK", &b, &[]),
            consumer.expect("SearchPointers", "OK", &b, &[&pointer.id]),
            producer.expect("CreatePointer", "OK", &b, &[&second.id]),
            admin.expect("SetRestriction", "OK", &b, &[]),
            glass.glass("GetPointer", &b, &[&second.id]),
        ]
    );
    env.stop().await;
}
