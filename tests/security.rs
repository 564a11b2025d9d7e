//! Authentication and authorisation over real sockets: the authorisation matrix (every role × every
//! RPC × own or other organisation × permitted or unpermitted pointer type), bad tokens, ES256 and
//! RS256 keys, mTLS client certificates, purpose of use, patient restriction, the loopback-only rule
//! when authentication is off, and NHS numbers kept out of the logs of the real binary.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nrl_registry::auth::jwt::{mint_hs256, Claims, JwtVerifier, VerifyingKey};
use nrl_registry::auth::mtls::ClientDirectory;
use nrl_registry::auth::Authenticator;
use nrl_registry::config::{AuthConfig, ServeArgs, ServerConfig, StoreConfig};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::batch_outcome::Result as BatchResult;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::auth::*;
use testkit::fixtures::*;
use testkit::nodes::nrl_command;
use testkit::process::{TempDir, Watched};
use testkit::TestServer;
use tonic::transport::ServerTlsConfig;
use tonic::{Code, Response, Status};

const OWN: &str = "RR8";
const OTHER: &str = "RA7";
const PERMITTED: &str = CRISIS_PLAN;
const UNPERMITTED: &str = NEWS2;
/// The matrix's target pointer lives here; a companion pointer every reader may see lives in
/// COMPANION_REGION, so "filtered" shows as fewer results rather than none.
const TARGET_REGION: &str = "QWO";
const COMPANION_REGION: &str = "QE1";

// ---------------------------------------------------------------------------------------------
// The authorisation matrix
// ---------------------------------------------------------------------------------------------

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

async fn seed(seeder: &Clients, pointer: pb::PointerInput) -> pb::Pointer {
    seeder
        .registry
        .clone()
        .create_pointer(pb::CreatePointerRequest { pointer: Some(pointer) })
        .await
        .expect("seed a pointer")
        .into_inner()
        .pointer
        .expect("created pointer")
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

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

const CANARY_SUB: &str = "leak-canary-subject-5c1e";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A call that needs authentication and nothing else, and a patient read.
async fn probe(channel: &tonic::transport::Channel, credentials: Credentials) -> Vec<Status> {
    let mut clients = Clients::new(channel, credentials);
    let mut statuses = Vec::new();
    if let Err(e) = clients.locator.list_regions(pb::ListRegionsRequest {}).await {
        statuses.push(e);
    }
    let request = pb::CountPointersRequest { query: Some(query(&new_patient())) };
    if let Err(e) = clients.registry.count_pointers(request).await {
        statuses.push(e);
    }
    statuses
}

/// Each status must be UNAUTHENTICATED, short, and free of the token and its claims.
fn assert_unauthenticated(case: &str, statuses: &[Status], secrets: &[&str]) {
    assert_eq!(statuses.len(), 2, "{case}: both calls must fail, got {statuses:?}");
    for status in statuses {
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        let message = status.message();
        assert!(!message.is_empty() && message.len() <= 100, "{case}: a short reason, got {message:?}");
        for secret in secrets.iter().filter(|s| s.len() >= 6) {
            assert!(!message.contains(secret), "{case}: the status leaks {secret:?}: {message:?}");
        }
        assert!(status.details().is_empty(), "{case}: no details on UNAUTHENTICATED: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_leak_nothing() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let good = || claims(CANARY_SUB, OWN, &["consumer"]);
    let good_token = mint(&good());
    assert!(probe(&server.channel, Credentials::bearer(&good_token)).await.is_empty(), "the control token is accepted");

    let segments: Vec<String> = good_token.split('.').map(String::from).collect();
    let elevated = Claims { roles: vec!["admin".into(), "auditor".into(), "producer".into()], ..good() };
    let tampered = format!("{}.{}.{}", segments[0], b64(&serde_json::to_vec(&elevated).expect("json")), segments[2]);
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), segments[1]);
    let alg_none_signed = format!("{}.{}.{}", b64(br#"{"alg":"none","typ":"JWT"}"#), segments[1], segments[2]);
    let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &good(), &EncodingKey::from_secret(SECRET))
        .expect("hs512");
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": CANARY_SUB, "iss": ISSUER, "aud": AUDIENCE, "org": OWN, "roles": ["consumer"]}),
        &EncodingKey::from_secret(SECRET),
    )
    .expect("no exp");
    let mint_with = |claims: Claims| mint(&claims);
    let cases: Vec<(&str, Credentials, String)> = vec![
        ("no authorization header", Credentials::anonymous(), String::new()),
        (
            "Basic scheme",
            Credentials::authorization("Basic dXNlcjpwYXNzd29yZA==").purpose("direct-care"),
            "dXNlcjpwYXNzd29yZA==".into(),
        ),
        (
            "Basic scheme carrying a valid token",
            Credentials::authorization(&format!("Basic {good_token}")).purpose("direct-care"),
            good_token.clone(),
        ),
        ("Bearer without a token", Credentials::authorization("Bearer ").purpose("direct-care"), String::new()),
        ("expired", Credentials::bearer(&mint_with(Claims { exp: now() - 3600, ..good() })), String::new()),
        ("not yet valid", Credentials::bearer(&mint_with(Claims { nbf: Some(now() + 3600), ..good() })), String::new()),
        (
            "wrong key",
            Credentials::bearer(&mint_hs256(b"a-different-secret-altogether-0123456789", &good()).expect("mint")),
            String::new(),
        ),
        (
            "wrong audience",
            Credentials::bearer(&mint_with(Claims { aud: "leak-canary-audience".into(), ..good() })),
            String::new(),
        ),
        (
            "wrong issuer",
            Credentials::bearer(&mint_with(Claims { iss: "https://leak-canary-issuer.example".into(), ..good() })),
            String::new(),
        ),
        ("alg none, unsigned", Credentials::bearer(&alg_none), alg_none.clone()),
        ("alg none, old signature", Credentials::bearer(&alg_none_signed), alg_none_signed.clone()),
        ("HS512 (not configured)", Credentials::bearer(&hs512), hs512.clone()),
        ("tampered payload (roles)", Credentials::bearer(&tampered), tampered.clone()),
        ("no exp claim", Credentials::bearer(&no_exp), no_exp.clone()),
        ("empty subject", Credentials::bearer(&mint_with(Claims { sub: " ".into(), ..good() })), String::new()),
        (
            "org not an ODS code",
            Credentials::bearer(&mint_with(Claims { org: "leak-canary-org!".into(), ..good() })),
            String::new(),
        ),
        (
            "unknown role",
            Credentials::bearer(&mint_with(Claims { roles: vec!["leak-canary-root".into()], ..good() })),
            String::new(),
        ),
        ("garbage", Credentials::bearer("garbage"), "garbage".into()),
        ("three empty parts", Credentials::bearer("..").purpose("direct-care"), String::new()),
        ("three junk parts", Credentials::bearer("leak-canary.junk-part.third-part"), "leak-canary".into()),
        (
            "non-ASCII header bytes",
            Credentials { authorization: Some(b"Bearer \xff\xfe leak-canary".to_vec()), ..Credentials::anonymous() },
            String::new(),
        ),
    ];
    for (case, credentials, extra) in cases {
        let sent =
            credentials.authorization.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let token = sent.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or_default();
        let mut secrets: Vec<&str> = vec![CANARY_SUB, "leak-canary", &extra, &token];
        secrets.extend(token.split('.'));
        let statuses = probe(&server.channel, credentials).await;
        assert_unauthenticated(case, &statuses, &secrets);
    }
    server.stop().await.expect("stop");
}

fn server_with_keys(keys: Vec<VerifyingKey>) -> ServerConfig {
    let verifier = JwtVerifier::new(keys, ISSUER, AUDIENCE).expect("verifier");
    let mut config = ServerConfig::for_tests();
    config.auth =
        AuthConfig { authenticator: Authenticator::Enabled { jwt: Some(Arc::new(verifier)), mtls: None }, tls: None };
    config
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_keys_verify_and_other_algorithms_are_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC P-256 key");
    let public_pem = key.public_key_pem();
    let server =
        TestServer::start_with(server_with_keys(vec![VerifyingKey::PublicPem(public_pem.clone().into_bytes())])).await;
    let good = claims(CANARY_SUB, OWN, &["consumer"]);
    let es256 =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key"), &good);
    assert!(
        probe(&server.channel, Credentials::bearer(&es256)).await.is_empty(),
        "an ES256 token from the IdP's key is accepted"
    );

    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC P-256 key");
    let wrong_key =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("EC key"), &good);
    let hs256 = mint(&good);
    // Algorithm confusion: an HMAC keyed with the (public) verification key.
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(public_pem.as_bytes()), &good);
    for (case, token) in [
        ("ES256, another key", &wrong_key),
        ("HS256 on an ES256 server", &hs256),
        ("HS256 keyed with the public PEM", &confused),
    ] {
        assert_unauthenticated(case, &probe(&server.channel, Credentials::bearer(token)).await, &[token, CANARY_SUB]);
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_keys_verify_and_other_algorithms_are_refused() {
    // A committed test-only key pair: rcgen cannot generate RSA keys with the ring backend.
    const PRIVATE: &str = include_str!("data/test-only-rs256-private-key.pem");
    const PUBLIC: &str = include_str!("data/test-only-rs256-public-key.pem");
    let server =
        TestServer::start_with(server_with_keys(vec![VerifyingKey::PublicPem(PUBLIC.as_bytes().to_vec())])).await;
    let good = claims(CANARY_SUB, OWN, &["consumer"]);
    let rs256 = sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).expect("RSA key"), &good);
    assert!(
        probe(&server.channel, Credentials::bearer(&rs256)).await.is_empty(),
        "an RS256 token from the IdP's key is accepted"
    );

    let expired = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(PRIVATE.as_bytes()).expect("RSA key"),
        &Claims { exp: now() - 3600, ..good.clone() },
    );
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let es256 =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC key"), &good);
    let hs256 = mint(&good);
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(PUBLIC.as_bytes()), &good);
    for (case, token) in [
        ("RS256 expired", &expired),
        ("ES256 on an RS256 server", &es256),
        ("HS256 on an RS256 server", &hs256),
        ("HS256 keyed with the public PEM", &confused),
    ] {
        assert_unauthenticated(case, &probe(&server.channel, Credentials::bearer(token)).await, &[token, CANARY_SUB]);
    }
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------------------------

/// Never OK: either the TLS connection fails or the call does.
async fn assert_refused(
    case: &str,
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&CertAndKey>,
) -> Option<Code> {
    match tls_channel(addr, ca_pem, client).await {
        Err(_) => None,
        Ok(channel) => {
            let mut clients = Clients::new(&channel, Credentials::anonymous());
            let list = clients.locator.list_regions(pb::ListRegionsRequest {}).await;
            let create = clients
                .registry
                .create_pointer(pb::CreatePointerRequest {
                    pointer: Some(input(&new_patient(), "QWO", OWN, PERMITTED)),
                })
                .await;
            assert!(list.is_err() && create.is_err(), "{case}: calls must fail, got {list:?} / {create:?}");
            list.err().map(|e| e.code())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificates_identify_registered_callers_only() {
    let pki = Pki::new("nrl test CA");
    let rogue = Pki::new("rogue CA");
    let directory = ClientDirectory::from_json(
        r#"{"clients": [
            {"common_name": "qwo-shared-care", "org": "RR8", "roles": ["producer", "consumer"]},
            {"common_name": "x26-audit", "org": "X26", "roles": ["auditor"]}
        ]}"#,
    )
    .expect("clients file");
    let mut config = ServerConfig::for_tests();
    config.auth = AuthConfig {
        authenticator: Authenticator::Enabled { jwt: None, mtls: Some(Arc::new(directory)) },
        tls: Some(ServerTlsConfig::new().identity(pki.server.identity()).client_ca_root(pki.ca())),
    };
    let server = RawServer::start(config).await;

    let registered =
        tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("qwo-shared-care"))).await.expect("mTLS connect");
    let mut qwo = Clients::new(&registered, Credentials::anonymous());
    let patient = new_patient();
    let created = qwo
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", PERMITTED)) })
        .await
        .expect("the registered client creates for its own organisation")
        .into_inner()
        .pointer
        .expect("pointer");
    let err = qwo
        .registry
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", OTHER, PERMITTED)) })
        .await
        .expect_err("another organisation's pointer");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let found = qwo
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("consumer role from the clients file")
        .into_inner();
    assert_eq!(found.pointers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![created.id.as_str()]);

    // The audit names the certificate's caller.
    let auditor_channel = tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("x26-audit"))).await.expect("connect");
    let events = Clients::new(&auditor_channel, Credentials::anonymous()).export("").await.expect("auditor exports");
    let create = events.iter().find(|e| e.operation == "CreatePointer" && e.outcome == "OK").expect("create event");
    assert_eq!((create.application.as_str(), create.organisation.as_str()), ("qwo-shared-care", "RR8"));
    assert_eq!(create.pointer_ids, vec![created.id.clone()]);

    // A certificate from our CA whose name is not in the clients file.
    let stranger = tls_channel(server.addr, &pki.ca_pem, Some(&pki.client("stranger"))).await.expect("TLS is fine");
    for status in probe(&stranger, Credentials::anonymous()).await.into_iter().chain(
        Clients::new(&stranger, Credentials::anonymous())
            .registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", PERMITTED)) })
            .await
            .err(),
    ) {
        assert_eq!(status.code(), Code::Unauthenticated, "stranger: {status:?}");
        assert!(!status.message().contains("stranger"), "{status:?}");
    }
    assert_eq!(probe(&stranger, Credentials::anonymous()).await.len(), 2, "every call of the stranger fails");

    let no_cert = assert_refused("no client certificate", server.addr, &pki.ca_pem, None).await;
    let rogue_cert = assert_refused(
        "a registered name from another CA",
        server.addr,
        &pki.ca_pem,
        Some(&rogue.client("qwo-shared-care")),
    )
    .await;
    println!("mTLS refusals: no certificate → {no_cert:?}, rogue CA → {rogue_cert:?} (None: the handshake failed)");
    drop((registered, auditor_channel, stranger));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Purpose of use and end user
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reads_need_a_known_purpose_and_a_sane_end_user() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let consumer = token("purpose-test", OTHER, &["consumer"], None);
    let patient = new_patient();
    let count = |credentials: Credentials| {
        let mut clients = Clients::new(&server.channel, credentials);
        let patient = patient.clone();
        async move { clients.registry.count_pointers(pb::CountPointersRequest { query: Some(query(&patient)) }).await }
    };

    let err = count(Credentials::bearer(&consumer).without_purpose()).await.expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    let mut search = Clients::new(&server.channel, Credentials::bearer(&consumer).without_purpose());
    let err = search
        .registry
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    let err = search
        .locator
        .locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() })
        .await
        .expect_err("no purpose");
    assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");

    for bad in ["curiosity", "", "direct care", "emergency,direct-care"] {
        let err = count(Credentials::bearer(&consumer).purpose(bad)).await.expect_err(bad);
        assert_field_error(&err, Code::InvalidArgument, "x-purpose-of-use");
    }
    for good in ["direct-care", "emergency", "patient-request", "administration", "audit", "EMERGENCY"] {
        count(Credentials::bearer(&consumer).purpose(good)).await.unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }

    let longest = "u".repeat(128);
    count(Credentials::bearer(&consumer).end_user(&longest)).await.expect("128 characters is the limit");
    for bad in ["u".repeat(129), "x".repeat(4000), "dr\tjones".into(), String::new()] {
        let err = count(Credentials::bearer(&consumer).end_user(&bad)).await.expect_err("bad end user");
        assert_field_error(&err, Code::InvalidArgument, "x-end-user");
        assert!(!err.message().contains(&bad) || bad.is_empty(), "the value is not echoed: {err:?}");
    }
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------------
// Patient restriction
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_patients_are_hidden_except_under_emergency() {
    let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
    let ch = &server.channel;
    let producer = Clients::bearer(ch, &token("rr8-producer", OWN, &["producer"], None));
    let consumer_token = token("ra7-consumer", OTHER, &["consumer"], None);
    let mut direct = Clients::bearer(ch, &consumer_token);
    let mut emergency = Clients::new(ch, Credentials::bearer(&consumer_token).purpose("emergency"));
    let mut admin = Clients::bearer(ch, &token("x26-admin", "X26", &["admin"], None));
    let patient = new_patient();
    let other_patient = new_patient();
    let first = seed(&producer, input(&patient, "QWO", OWN, CRISIS_PLAN)).await;
    seed(&producer, input(&patient, "QE1", OWN, NEWS2)).await;
    seed(&producer, input(&other_patient, "QWO", OWN, NEWS2)).await;

    async fn view(c: &mut Clients, patient: &str, id: &str) -> (usize, u64, usize, Result<(), Code>) {
        let search = c
            .registry
            .search_pointers(pb::SearchPointersRequest { query: Some(query(patient)), ..Default::default() })
            .await
            .expect("search")
            .into_inner();
        let count =
            c.registry.count_pointers(pb::CountPointersRequest { query: Some(query(patient)) }).await.expect("count");
        let locate =
            c.locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.into() }).await.expect("locate");
        let get =
            c.registry.get_pointer(pb::GetPointerRequest { id: id.into() }).await.map(|_| ()).map_err(|e| e.code());
        (search.pointers.len(), count.into_inner().count, locate.into_inner().regions.len(), get)
    }

    assert_eq!(view(&mut direct, &patient, &first.id).await, (2, 2, 2, Ok(())), "unrestricted");
    let set = admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true })
        .await
        .expect("admin restricts")
        .into_inner();
    assert!(set.restricted);
    let got =
        admin.admin.get_restriction(pb::GetRestrictionRequest { nhs_number: patient.clone() }).await.expect("get");
    assert!(got.into_inner().restricted);

    assert_eq!(
        view(&mut direct, &patient, &first.id).await,
        (0, 0, 0, Err(Code::NotFound)),
        "restricted: direct care sees nothing"
    );
    for purpose in ["patient-request", "administration", "audit"] {
        let mut c = Clients::new(ch, Credentials::bearer(&consumer_token).purpose(purpose));
        assert_eq!(
            view(&mut c, &patient, &first.id).await,
            (0, 0, 0, Err(Code::NotFound)),
            "{purpose} is not break-glass"
        );
    }
    let mut own_producer = Clients::new(ch, Credentials::bearer(&token("rr8-producer", OWN, &["producer"], None)));
    assert_eq!(
        view(&mut own_producer, &patient, &first.id).await,
        (0, 0, 0, Err(Code::NotFound)),
        "hidden from every reader"
    );
    assert_eq!(view(&mut emergency, &patient, &first.id).await, (2, 2, 2, Ok(())), "break-glass sees them");
    assert_eq!(
        view(&mut direct, &other_patient, "00000000-0000-7000-8000-000000000000").await.0,
        1,
        "other patients unaffected"
    );

    for (who, role) in [
        ("consumer", "consumer"),
        ("producer", "producer"),
        ("auditor", "auditor"),
        ("portal", "portal"),
        ("peer", "peer"),
    ] {
        let mut c = Clients::bearer(ch, &token(who, OWN, &[role], None));
        for restricted in [false, true] {
            let err = c
                .admin
                .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted })
                .await
                .expect_err("only admins restrict");
            assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
        }
    }
    assert_eq!(view(&mut direct, &patient, &first.id).await, (0, 0, 0, Err(Code::NotFound)), "still restricted");

    admin
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: false })
        .await
        .expect("admin unrestricts");
    assert_eq!(view(&mut direct, &patient, &first.id).await, (2, 2, 2, Ok(())), "unrestricting restores");
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------------
// Authentication off: loopback only
// ---------------------------------------------------------------------------------------------

#[derive(clap::Parser)]
struct ServeCommand {
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve_config(args: &[&str]) -> Result<ServerConfig, String> {
    use clap::Parser;
    let parsed =
        ServeCommand::try_parse_from(std::iter::once("nrl").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    ServerConfig::try_from(parsed.serve).map_err(|e| e.to_string())
}

/// The log of a `nrl` child (its stdout and stderr), for the assertions on what it printed.
fn read_log(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[test]
fn without_authentication_the_server_listens_on_loopback_only() {
    for remote in ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051", "10.1.2.3:0"] {
        let err = serve_config(&["--listen", remote, "--admin-listen", "off"]).map(|_| ()).expect_err(remote);
        assert!(err.contains("loopback"), "{remote}: {err}");
    }
    for local in ["127.0.0.1:50051", "[::1]:50051", "127.0.0.2:0"] {
        serve_config(&["--listen", local, "--admin-listen", "off"]).unwrap_or_else(|e| panic!("{local}: {e}"));
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let secret = secret.display().to_string();
    let config =
        serve_config(&["--listen", "0.0.0.0:50051", "--admin-listen", "off", "--jwt-hs256-secret-file", &secret])
            .expect("with authentication any address is allowed");
    assert!(matches!(config.auth.authenticator, Authenticator::Enabled { .. }));
    let _ = std::fs::remove_dir_all(dir);

    // The real binary refuses to start, says why, and exits 64. Under the watchdog, so that a
    // binary that wrongly serves on 0.0.0.0 does not outlive the test.
    let dir = TempDir::new("nrl-security-loopback");
    let log = dir.join("nrl.log");
    let mut child =
        Watched::spawn(nrl_command().args(["serve", "--listen", "0.0.0.0:0", "--admin-listen", "off"]), &log);
    let status =
        child.wait_timeout(Duration::from_secs(20)).expect("nrl serve on 0.0.0.0 without auth must exit, not serve");
    let stderr = read_log(&log);
    assert_eq!(status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("loopback"), "says why: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// NHS numbers never reach the logs
// ---------------------------------------------------------------------------------------------

use testkit::ports::free_port;

/// A request carrying the patient in the request-id headers too (the server must not adopt them).
fn tagged<T>(message: T, patient: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", patient.parse().expect("ascii"));
    request.metadata_mut().insert(
        "x-correlation-id",
        format!("{} {} {}", &patient[..3], &patient[3..6], &patient[6..]).parse().expect("ascii"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhs_numbers_never_reach_the_logs() {
    let port = free_port();
    // Its stdout and stderr both go to one log file, which is what is searched below.
    let dir = TempDir::new("nrl-security-logs");
    let log = dir.join("nrl.log");
    let mut child = Watched::spawn(
        nrl_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "off"])
            .env("RUST_LOG", "debug"),
        &log,
    );

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) => {
                assert!(Instant::now() < deadline, "nrl serve never listened: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let patient = new_patient();
    let spaced = format!("{} {} {}", &patient[..3], &patient[3..6], &patient[6..]);
    let dashed = format!("{}-{}-{}", &patient[..3], &patient[3..6], &patient[6..]);
    let last = patient.as_bytes()[9] - b'0';
    let bad_check = format!("{}{}", &patient[..9], (last + 1) % 10);
    let mut c = Clients::new(&channel, Credentials::default().end_user(&patient));
    let created = c
        .registry
        .create_pointer(tagged(
            pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) },
            &patient,
        ))
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let failing: Vec<Result<(), Status>> = vec![
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&bad_check, "QWO", "RR8", CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&patient, &patient, "RR8", CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .create_pointer(tagged(
                pb::CreatePointerRequest { pointer: Some(input(&spaced, "QWO", &format!("{patient}!"), CRISIS_PLAN)) },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .search_pointers(tagged(
                pb::SearchPointersRequest { query: Some(query(&dashed)), page_size: -1, page_token: patient.clone() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .search_pointers(tagged(
                pb::SearchPointersRequest { query: Some(query(&dashed)), page_size: 5, page_token: patient.clone() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry.get_pointer(tagged(pb::GetPointerRequest { id: patient.clone() }, &patient)).await.map(|_| ()),
        c.locator
            .locate_patient(tagged(pb::LocatePatientRequest { nhs_number: bad_check.clone() }, &patient))
            .await
            .map(|_| ()),
        c.registry
            .supersede_pointer(tagged(
                pb::SupersedePointerRequest {
                    pointer: Some(input(&new_patient(), "QWO", "RR8", CRISIS_PLAN)),
                    supersedes: vec![created.id.clone()],
                },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.registry
            .update_pointer(tagged(
                pb::UpdatePointerRequest {
                    id: created.id.clone(),
                    version: 7,
                    pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
                },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.audit
            .get_access_log(tagged(
                pb::GetAccessLogRequest { nhs_number: spaced.clone(), page_size: -3, page_token: String::new() },
                &patient,
            ))
            .await
            .map(|_| ()),
        c.admin
            .set_restriction(tagged(
                pb::SetRestrictionRequest { nhs_number: bad_check.clone(), restricted: true },
                &patient,
            ))
            .await
            .map(|_| ()),
    ];
    for (i, result) in failing.iter().enumerate() {
        assert!(result.is_err(), "call {i} was meant to fail: {result:?}");
    }
    c.registry.get_pointer(tagged(pb::GetPointerRequest { id: created.id.clone() }, &patient)).await.expect("get");
    c.registry
        .search_pointers(tagged(
            pb::SearchPointersRequest { query: Some(query(&spaced)), ..Default::default() },
            &patient,
        ))
        .await
        .expect("search");
    c.registry
        .count_pointers(tagged(pb::CountPointersRequest { query: Some(query(&dashed)) }, &patient))
        .await
        .expect("count");
    c.locator
        .locate_patient(tagged(pb::LocatePatientRequest { nhs_number: patient.clone() }, &patient))
        .await
        .expect("locate");
    c.admin
        .set_restriction(tagged(pb::SetRestrictionRequest { nhs_number: patient.clone(), restricted: true }, &patient))
        .await
        .expect("restrict");
    c.admin
        .get_restriction(tagged(pb::GetRestrictionRequest { nhs_number: patient.clone() }, &patient))
        .await
        .expect("restriction");
    c.audit
        .get_access_log(tagged(
            pb::GetAccessLogRequest { nhs_number: patient.clone(), page_size: 2, page_token: String::new() },
            &patient,
        ))
        .await
        .expect("access log");
    c.export("").await.expect("export");
    c.registry
        .delete_pointer(tagged(pb::DeletePointerRequest { id: created.id.clone(), version: 0 }, &patient))
        .await
        .expect("delete");
    drop((c, channel));

    child.signal("-TERM").expect("send SIGTERM");
    let status = child.wait_timeout(Duration::from_secs(30)).expect("nrl stops on SIGTERM");
    let logs = read_log(&log);
    assert!(status.success(), "nrl serve exit: {status:?}\n{logs}");
    // The logs were really on, and covered failing calls.
    assert!(
        logs.contains("DEBUG") && logs.contains("call finished") && logs.contains("INVALID_ARGUMENT"),
        "debug logs of every call, failing ones included, expected:\n{logs}"
    );
    for (form, number) in
        [("plain", &patient), ("spaced", &spaced), ("dashed", &dashed), ("bad check digit", &bad_check)]
    {
        assert!(!logs.contains(number.as_str()), "the {form} NHS number {number} appears in the logs:\n{logs}");
    }
}
