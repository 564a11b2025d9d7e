//! The authorisation matrix (every role × RPC × organisation × pointer type), portal and producer
//! scope, and writes or reads that must reveal nothing.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
    Admin,
    Auditor,
    Portal,
    Peer,
    Nobody,
}

impl Role {
    const ALL: [Role; 7] =
        [Role::Producer, Role::Consumer, Role::Admin, Role::Auditor, Role::Portal, Role::Peer, Role::Nobody];

    fn claim(self) -> &'static [&'static str] {
        match self {
            Role::Producer => &["producer"],
            Role::Consumer => &["consumer"],
            Role::Admin => &["admin"],
            Role::Auditor => &["auditor"],
            Role::Portal => &["portal"],
            Role::Peer => &["peer"],
            Role::Nobody => &[],
        }
    }
}

/// Every RPC of the four protected services. Search and Count appear twice: without a type filter
/// (results filtered to the caller's types) and asking explicitly for the target's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Get,
    Update,
    Delete,
    Supersede,
    Search,
    SearchForType,
    Count,
    CountForType,
    BatchCreate,
    Locate,
    ListRegions,
    ListPointerTypes,
    SetRestriction,
    GetRestriction,
    GetAccessLog,
    StreamAuditEvents,
}

impl Op {
    const ALL: [Op; 17] = [
        Op::Create,
        Op::Get,
        Op::Update,
        Op::Delete,
        Op::Supersede,
        Op::Search,
        Op::SearchForType,
        Op::Count,
        Op::CountForType,
        Op::BatchCreate,
        Op::Locate,
        Op::ListRegions,
        Op::ListPointerTypes,
        Op::SetRestriction,
        Op::GetRestriction,
        Op::GetAccessLog,
        Op::StreamAuditEvents,
    ];
}

/// The target pointer's custodian, relative to the caller's organisation (OWN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Org {
    Own,
    Other,
}

impl Org {
    fn code(self) -> &'static str {
        match self {
            Org::Own => OWN,
            Org::Other => OTHER,
        }
    }
}

/// The target pointer's type, relative to the caller's `pointer_types` claim ([PERMITTED]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Permitted,
    Unpermitted,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Permitted => PERMITTED,
            Kind::Unpermitted => UNPERMITTED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// OK; for search and count the number of pointers, for locate the number of regions.
    Ok(Option<u64>),
    /// The call failed with this code.
    Failed(Code),
    /// BatchCreatePointers answered OK and its single entry had this code (OK: registered).
    Entry(Code),
}

/// The documented policy (README "Security", src/auth/policy.rs) as one table: what each cell must
/// answer. The caller is organisation OWN with `pointer_types: [PERMITTED]`, purpose direct-care.
/// The patient holds the target pointer (custodian `org`, type `kind`, TARGET_REGION) and a
/// companion (custodian OWN, type PERMITTED, COMPANION_REGION).
fn expected(role: Role, op: Op, org: Org, kind: Kind) -> Outcome {
    use Outcome::*;
    let own = org == Org::Own;
    let permitted = kind == Kind::Permitted;
    // Consumers and peers read any organisation's pointers; a producer (without a consumer role)
    // reads only its own organisation's. Everyone else may not read pointers at all.
    let reader = matches!(role, Role::Consumer | Role::Peer);
    let may_read = reader || role == Role::Producer;
    // Reads show only permitted types (filtered, not refused).
    let sees_target = may_read && permitted && (reader || own);
    let shown = 1 + u64::from(sees_target);
    // Producers write only their own organisation's pointers of their permitted types.
    let may_write = role == Role::Producer && own && permitted;
    let denied = Failed(Code::PermissionDenied);
    match op {
        Op::Create | Op::Update | Op::Delete | Op::Supersede => {
            if may_write {
                Ok(None)
            } else {
                denied
            }
        }
        Op::BatchCreate => Entry(if may_write { Code::Ok } else { Code::PermissionDenied }),
        // A pointer the caller may not see is answered as if it did not exist.
        Op::Get if !may_read => denied,
        Op::Get if sees_target => Ok(None),
        Op::Get => Failed(Code::NotFound),
        Op::Search | Op::Count | Op::Locate if may_read => Ok(Some(shown)),
        // Asking explicitly for a type the caller may not see is refused.
        Op::SearchForType | Op::CountForType if may_read && permitted => Ok(Some(shown)),
        Op::Search | Op::Count | Op::Locate | Op::SearchForType | Op::CountForType => denied,
        // Authentication, but no role.
        Op::ListRegions | Op::ListPointerTypes => Ok(None),
        Op::SetRestriction | Op::GetRestriction if role == Role::Admin => Ok(None),
        // The matrix's portal token names no patient: a portal reads only its patient's log
        // (`a_portal_reads_only_the_access_log_of_the_patient_its_token_names`).
        Op::GetAccessLog if role == Role::Auditor => Ok(None),
        Op::StreamAuditEvents if role == Role::Auditor => Ok(None),
        Op::SetRestriction | Op::GetRestriction | Op::GetAccessLog | Op::StreamAuditEvents => denied,
    }
}

/// An outcome and the status message (empty when OK).
fn settle<T>(result: Result<Response<T>, Status>, shown: impl FnOnce(T) -> Option<u64>) -> (Outcome, String) {
    match result {
        Ok(response) => (Outcome::Ok(shown(response.into_inner())), String::new()),
        Err(status) => (Outcome::Failed(status.code()), status.message().to_string()),
    }
}

struct Seeders {
    own: Clients,
    other: Clients,
}

impl Seeders {
    fn new(channel: &tonic::transport::Channel) -> Self {
        Self {
            own: Clients::bearer(channel, &token("seed-own", OWN, &["producer"], None)),
            other: Clients::bearer(channel, &token("seed-other", OTHER, &["producer"], None)),
        }
    }

    fn of(&self, org: Org) -> &Clients {
        match org {
            Org::Own => &self.own,
            Org::Other => &self.other,
        }
    }
}

/// Runs one cell on a fresh patient holding the companion and the target pointer.
async fn run_cell(caller: &Clients, seeders: &Seeders, op: Op, org: Org, kind: Kind) -> (Outcome, String) {
    let mut caller = caller.clone();
    let patient = new_patient();
    seed(&seeders.own, input(&patient, COMPANION_REGION, OWN, PERMITTED)).await;
    let target_input = input(&patient, TARGET_REGION, org.code(), kind.code());
    let target = seed(seeders.of(org), target_input.clone()).await;
    let query = |types: Vec<String>| pb::PointerQuery { nhs_number: patient.clone(), types, ..Default::default() };
    let fresh = || input(&patient, TARGET_REGION, org.code(), kind.code());
    match op {
        Op::Create => {
            settle(caller.registry.create_pointer(pb::CreatePointerRequest { pointer: Some(fresh()) }).await, |_| None)
        }
        Op::Get => settle(caller.registry.get_pointer(pb::GetPointerRequest { id: target.id.clone() }).await, |_| None),
        Op::Update => {
            let mut changed = target_input.clone();
            changed.content = vec![content("https://qwo.example.nhs.uk/records/updated")];
            let request =
                pb::UpdatePointerRequest { id: target.id.clone(), version: target.version, pointer: Some(changed) };
            settle(caller.registry.update_pointer(request).await, |_| None)
        }
        Op::Delete => settle(
            caller.registry.delete_pointer(pb::DeletePointerRequest { id: target.id.clone(), version: 0 }).await,
            |_| None,
        ),
        Op::Supersede => {
            let request = pb::SupersedePointerRequest { pointer: Some(fresh()), supersedes: vec![target.id.clone()] };
            settle(caller.registry.supersede_pointer(request).await, |_| None)
        }
        Op::Search | Op::SearchForType => {
            let types = if op == Op::SearchForType { vec![kind.code().to_string()] } else { vec![] };
            let request =
                pb::SearchPointersRequest { query: Some(query(types)), page_size: 0, page_token: String::new() };
            settle(caller.registry.search_pointers(request).await, |r| Some(r.pointers.len() as u64))
        }
        Op::Count | Op::CountForType => {
            let types = if op == Op::CountForType { vec![kind.code().to_string()] } else { vec![] };
            let request = pb::CountPointersRequest { query: Some(query(types)) };
            settle(caller.registry.count_pointers(request).await, |r| Some(r.count))
        }
        Op::BatchCreate => {
            let request = pb::BatchCreatePointersRequest { pointers: vec![fresh()] };
            match caller.registry.batch_create_pointers(request).await {
                Ok(response) => {
                    let outcomes = response.into_inner().outcomes;
                    assert_eq!(outcomes.len(), 1, "one outcome per entry");
                    match outcomes.into_iter().next().and_then(|o| o.result) {
                        Some(BatchResult::Created(_) | BatchResult::Existing(_)) => {
                            (Outcome::Entry(Code::Ok), String::new())
                        }
                        Some(BatchResult::Error(e)) => (Outcome::Entry(Code::from(e.code)), e.message),
                        None => (Outcome::Entry(Code::Unknown), "entry without a result".into()),
                    }
                }
                Err(status) => (Outcome::Failed(status.code()), status.message().to_string()),
            }
        }
        Op::Locate => {
            settle(caller.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() }).await, |r| {
                Some(r.regions.len() as u64)
            })
        }
        Op::ListRegions => settle(caller.locator.list_regions(pb::ListRegionsRequest {}).await, |_| None),
        Op::ListPointerTypes => {
            settle(caller.locator.list_pointer_types(pb::ListPointerTypesRequest {}).await, |_| None)
        }
        Op::SetRestriction => settle(
            caller
                .admin
                .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true })
                .await,
            |_| None,
        ),
        Op::GetRestriction => settle(
            caller.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: patient.clone() }).await,
            |_| None,
        ),
        Op::GetAccessLog => settle(
            caller
                .audit
                .get_access_log(pb::GetAccessLogRequest {
                    nhs_number: patient.clone(),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await,
            |_| None,
        ),
        Op::StreamAuditEvents => match caller.export("").await {
            Ok(_) => (Outcome::Ok(None), String::new()),
            Err(status) => (Outcome::Failed(status.code()), status.message().to_string()),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_matrix() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let seeders = Seeders::new(&server.channel);
    let mut cells = 0usize;
    let mut wrong = Vec::new();
    for role in Role::ALL {
        let caller = Clients::bearer(
            &server.channel,
            &token(&format!("matrix-{role:?}"), OWN, role.claim(), Some(&[PERMITTED])),
        );
        for op in Op::ALL {
            for org in [Org::Own, Org::Other] {
                for kind in [Kind::Permitted, Kind::Unpermitted] {
                    let want = expected(role, op, org, kind);
                    let (got, message) = run_cell(&caller, &seeders, op, org, kind).await;
                    cells += 1;
                    let refused =
                        matches!(got, Outcome::Failed(_)) || matches!(got, Outcome::Entry(code) if code != Code::Ok);
                    if got != want {
                        wrong.push(format!("{role:?} × {op:?} × {org:?} org × {kind:?} type: expected {want:?}, got {got:?} ({message:?})"));
                    } else if refused && message.trim().is_empty() {
                        wrong.push(format!("{role:?} × {op:?} × {org:?} × {kind:?}: {got:?} without a reason"));
                    }
                }
            }
        }
    }
    let total = Role::ALL.len() * Op::ALL.len() * 2 * 2;
    println!(
        "authorisation matrix: {cells} cells checked ({} roles × {} operations × 2 organisations × 2 types), {} wrong",
        Role::ALL.len(),
        Op::ALL.len(),
        wrong.len()
    );
    assert_eq!(cells, total);
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells differ from the documented policy:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    server.stop().await.expect("stop");
}

/// The parts of the policy the matrix holds fixed: producer regions, sub-organisations, a caller
/// holding both producer and consumer roles.
/// The patient portal acts for one signed-in patient: its token names the patient (`nhs_number`,
/// as NHS login issues it), and it may read that patient's access log and no one else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_reads_only_the_access_log_of_the_patient_its_token_names() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let (patient, someone_else) = (new_patient(), new_patient());
    let log = |credentials: Credentials, nhs: String| {
        let mut clients = Clients::new(&server.channel, credentials.purpose("patient-request"));
        async move {
            clients
                .audit
                .get_access_log(pb::GetAccessLogRequest { nhs_number: nhs, page_size: 0, page_token: String::new() })
                .await
        }
    };
    let signed_in = Credentials::bearer(&portal_token("nhs-app", "X26", &patient));
    log(signed_in.clone(), patient.clone()).await.expect("the portal reads its own patient's log");

    let refused = log(signed_in, someone_else.clone()).await.expect_err("another patient's log");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("patient its token names"), "{refused:?}");

    let unbound = Credentials::bearer(&token("nhs-app", "X26", &["portal"], None));
    let refused = log(unbound, patient.clone()).await.expect_err("a portal token naming no patient");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("nhs_number"), "{refused:?}");

    let malformed = Claims { nhs_number: Some("1234567890".into()), ..claims("nhs-app", "X26", &["portal"]) };
    let refused = log(Credentials::bearer(&mint(&malformed)), patient.clone()).await.expect_err("a malformed claim");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // The claim grants nothing else: a portal still cannot search the patient's pointers.
    let mut portal = Clients::new(
        &server.channel,
        Credentials::bearer(&portal_token("nhs-app", "X26", &patient)).purpose("patient-request"),
    );
    let query = pb::PointerQuery { nhs_number: patient.clone(), ..Default::default() };
    let refused = portal
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query), page_size: 0, page_token: String::new() })
        .await
        .expect_err("search as a portal");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    server.stop().await.expect("server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_scope_covers_regions_sub_organisations_and_combined_roles() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let patient = new_patient();
    let mut qwo_only = Claims { regions: Some(vec!["QWO".into()]), ..claims("qwo-loader", OWN, &["producer"]) };
    let mut producer = Clients::bearer(&server.channel, &mint(&qwo_only));
    let create = |region: &str, custodian: &str| pb::CreatePointerRequest {
        pointer: Some(input(&patient, region, custodian, PERMITTED)),
    };

    producer.registry.create_pointer(create("QWO", OWN)).await.expect("own region");
    let err = producer.registry.create_pointer(create("QE1", OWN)).await.expect_err("other region");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("QE1"), "the reason names the region: {err:?}");
    producer.registry.create_pointer(create("QWO", "RR8.X01")).await.expect("a sub-organisation of RR8");
    for not_ours in ["RR81", "RR8X", "RA7.RR8"] {
        let err = producer.registry.create_pointer(create("QWO", not_ours)).await.expect_err(not_ours);
        assert_eq!(err.code(), Code::PermissionDenied, "{not_ours}: {err:?}");
    }

    // A producer's read covers its sub-organisations' pointers, not another organisation's.
    seed(
        &Clients::bearer(&server.channel, &token("ra7", OTHER, &["producer"], None)),
        input(&patient, "QWO", OTHER, PERMITTED),
    )
    .await;
    let count = |c: &mut Clients| {
        let mut registry = c.registry.clone();
        let patient = patient.clone();
        async move {
            registry
                .count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) })
                .await
                .map(|r| r.into_inner().count)
        }
    };
    assert_eq!(count(&mut producer).await.expect("own count"), 2, "RR8 and RR8.X01, not RA7");
    qwo_only.roles = vec!["producer".into(), "consumer".into()];
    let mut both = Clients::bearer(&server.channel, &mint(&qwo_only));
    assert_eq!(count(&mut both).await.expect("consumer count"), 3, "with the consumer role: everyone's");
    server.stop().await.expect("stop");
}

/// A producer naming another organisation's pointer in a write learns nothing about that pointer:
/// whatever patient and type it guesses, the answer is the same refusal. (Pointer ids are meant to
/// be safe in logs and URLs; they must not become an oracle for "is this the patient's mental
/// health crisis plan?")
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_naming_another_organisations_pointer_reveal_nothing_about_it() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let theirs = Clients::bearer(&server.channel, &token("ra7-loader", OTHER, &["producer"], None));
    let mut prober = Clients::bearer(&server.channel, &token("rr8-prober", OWN, &["producer"], None));
    let patient = new_patient();
    let target = seed(&theirs, input(&patient, "QWO", OTHER, CRISIS_PLAN)).await;
    let guesses = [
        ("wrong patient", new_patient(), NEWS2),
        ("right patient, wrong type", patient.clone(), NEWS2),
        ("right patient, right type", patient.clone(), CRISIS_PLAN),
    ];

    let normalise = |status: &Status| (status.code(), status.message().replace(&target.id, "<id>"));
    let mut supersede_answers = Vec::new();
    let mut update_answers = Vec::new();
    for (guess, nhs, ty) in &guesses {
        let err = prober
            .registry
            .supersede_pointer(pb::SupersedePointerRequest {
                pointer: Some(input(nhs, "QWO", OWN, ty)),
                supersedes: vec![target.id.clone()],
            })
            .await
            .expect_err("cannot supersede another organisation's pointer");
        supersede_answers.push((*guess, normalise(&err)));
        let err = prober
            .registry
            .update_pointer(pb::UpdatePointerRequest {
                id: target.id.clone(),
                version: 1,
                pointer: Some(input(nhs, "QWO", OWN, ty)),
            })
            .await
            .expect_err("cannot update another organisation's pointer");
        update_answers.push((*guess, normalise(&err)));
    }
    for (operation, answers) in [("UpdatePointer", &update_answers), ("SupersedePointer", &supersede_answers)] {
        let first = &answers[0].1;
        assert!(
            answers.iter().all(|(_, answer)| answer == first)
                && matches!(first.0, Code::PermissionDenied | Code::NotFound),
            "{operation} of another organisation's pointer must answer every guess alike with PERMISSION_DENIED or \
             NOT_FOUND, but the answers tell the guesses apart:\n{answers:#?}"
        );
    }
    let untouched = Clients::bearer(&server.channel, &token("ra7-viewer", OTHER, &["consumer"], None))
        .registry
        .get_pointer(pb::GetPointerRequest { id: target.id.clone() })
        .await
        .expect("still there")
        .into_inner()
        .pointer
        .expect("pointer");
    assert_eq!((untouched.version, untouched.status), (1, pb::PointerStatus::Current as i32), "nothing changed");
    server.stop().await.expect("stop");
}

/// A pointer the caller may not see is answered exactly like an id that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_pointers_are_indistinguishable_from_missing_ones() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let ch = &server.channel;
    let theirs = Clients::bearer(ch, &token("ra7-loader", OTHER, &["producer"], None));
    let patient = new_patient();
    let restricted = new_patient();
    let news2 = seed(&theirs, input(&patient, "QWO", OTHER, NEWS2)).await;
    let hidden = seed(&theirs, input(&restricted, "QWO", OTHER, CRISIS_PLAN)).await;
    Clients::bearer(ch, &token("x26-admin", "X26", &["admin"], None))
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: restricted.clone(), restricted: true })
        .await
        .expect("restrict");
    let never = "01a1fc3a-6f28-71e3-88f2-aaaa922566b9".to_string();
    let cases = [
        ("consumer, unpermitted type", token("narrow", OWN, &["consumer"], Some(&[PERMITTED])), &news2.id),
        ("producer, another organisation", token("rr8", OWN, &["producer"], None), &news2.id),
        ("consumer, restricted patient", token("reader", OWN, &["consumer"], None), &hidden.id),
    ];
    for (case, bearer, id) in cases {
        let mut c = Clients::bearer(ch, &bearer);
        let invisible = c.registry.get_pointer(pb::GetPointerRequest { id: id.clone() }).await.expect_err(case);
        let missing = c.registry.get_pointer(pb::GetPointerRequest { id: never.clone() }).await.expect_err("missing");
        assert_eq!(
            (invisible.code(), invisible.message().replace(id.as_str(), "<id>")),
            (missing.code(), missing.message().replace(&never, "<id>")),
            "{case}"
        );
        assert_eq!(invisible.code(), Code::NotFound, "{case}");
    }
    server.stop().await.expect("stop");
}
