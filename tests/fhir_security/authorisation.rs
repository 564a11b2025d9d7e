//! The authorisation matrix's FHIR cells. Every cell is asked of both APIs, each on a fresh patient
//! holding the same pointers, and the two decisions must be the same: one policy
//! (`auth::policy`), two edges. The gRPC answers are also held to the documented table (as in
//! tests/security), so two edges wrong in the same way still fail.

use super::*;

const TARGET_REGION: &str = "QWO";
const COMPANION_REGION: &str = "QE1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
    Admin,
    Auditor,
    /// A portal whose token names no patient.
    Portal,
    /// A portal whose token names the cell's patient.
    PortalOfPatient,
    Peer,
    Nobody,
}

impl Role {
    const ALL: [Role; 8] = [
        Role::Producer,
        Role::Consumer,
        Role::Admin,
        Role::Auditor,
        Role::Portal,
        Role::PortalOfPatient,
        Role::Peer,
        Role::Nobody,
    ];

    /// The caller's token for a cell on `patient`: organisation OWN, `pointer_types: [PERMITTED]`.
    fn token(self, patient: &str) -> String {
        let roles: &[&str] = match self {
            Role::Producer => &["producer"],
            Role::Consumer => &["consumer"],
            Role::Admin => &["admin"],
            Role::Auditor => &["auditor"],
            Role::Portal | Role::PortalOfPatient => &["portal"],
            Role::Peer => &["peer"],
            Role::Nobody => &[],
        };
        let mut c = claims(&format!("matrix-{self:?}"), OWN, roles);
        c.pointer_types = Some(vec![PERMITTED.to_string()]);
        if self == Role::PortalOfPatient {
            c.nhs_number = Some(patient.to_string());
        }
        mint(&c)
    }
}

/// The operations both APIs serve. Search and Count appear twice, as in the gRPC matrix: without a
/// type (results filtered) and asking for the target's type. `UpdateSuperseding` updates a pointer
/// that superseded another, its FHIR body repeating `relatesTo` as a read showed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Get,
    Update,
    UpdateSuperseding,
    Delete,
    Supersede,
    Search,
    SearchForType,
    Count,
    CountForType,
    AccessLog,
}

impl Op {
    const ALL: [Op; 11] = [
        Op::Create,
        Op::Get,
        Op::Update,
        Op::UpdateSuperseding,
        Op::Delete,
        Op::Supersede,
        Op::Search,
        Op::SearchForType,
        Op::Count,
        Op::CountForType,
        Op::AccessLog,
    ];
}

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

/// A decision: the code, and for search and count how many pointers were shown.
type Decision = (Code, Option<u64>);

/// The documented policy for these operations (tests/security/authorisation.rs's table, with the
/// portal of the cell's own patient added).
fn expected(role: Role, op: Op, org: Org, kind: Kind) -> Decision {
    let own = org == Org::Own;
    let permitted = kind == Kind::Permitted;
    let reader = matches!(role, Role::Consumer | Role::Peer);
    let may_read = reader || role == Role::Producer;
    let sees_target = may_read && permitted && (reader || own);
    let shown = Some(1 + u64::from(sees_target));
    let may_write = role == Role::Producer && own && permitted;
    let denied = (Code::PermissionDenied, None);
    match op {
        Op::Create | Op::Update | Op::UpdateSuperseding | Op::Delete | Op::Supersede => {
            if may_write {
                (Code::Ok, None)
            } else {
                denied
            }
        }
        Op::Get if !may_read => denied,
        Op::Get if sees_target => (Code::Ok, None),
        Op::Get => (Code::NotFound, None),
        Op::Search | Op::Count if may_read => (Code::Ok, shown),
        Op::SearchForType | Op::CountForType if may_read && permitted => (Code::Ok, shown),
        Op::Search | Op::Count | Op::SearchForType | Op::CountForType => denied,
        Op::AccessLog if matches!(role, Role::Auditor | Role::PortalOfPatient) => (Code::Ok, None),
        Op::AccessLog => denied,
    }
}

struct Seeders {
    own: Clients,
    other: Clients,
}

impl Seeders {
    fn of(&self, org: Org) -> &Clients {
        match org {
            Org::Own => &self.own,
            Org::Other => &self.other,
        }
    }
}

/// A fresh patient holding the companion (OWN, PERMITTED, COMPANION_REGION) and the target
/// (`org`, `kind`, TARGET_REGION); for `UpdateSuperseding` the target superseded a first pointer.
struct Cell {
    patient: String,
    target: pb::Pointer,
    /// The pointer the target superseded, if it did.
    replaced: Option<String>,
}

async fn prepare(seeders: &Seeders, op: Op, org: Org, kind: Kind) -> Cell {
    let patient = new_patient();
    seed(&seeders.own, input(&patient, COMPANION_REGION, OWN, PERMITTED)).await;
    let seeder = seeders.of(org);
    let target_input = input(&patient, TARGET_REGION, org.code(), kind.code());
    if op != Op::UpdateSuperseding {
        let target = seed(seeder, target_input).await;
        return Cell { patient, target, replaced: None };
    }
    let first = seed(seeder, input(&patient, TARGET_REGION, org.code(), kind.code())).await;
    let request = pb::SupersedePointerRequest { pointer: Some(target_input), supersedes: vec![first.id.clone()] };
    let target = seeder
        .registry
        .clone()
        .supersede_pointer(request)
        .await
        .expect("seed a superseding pointer")
        .into_inner()
        .pointer
        .expect("pointer");
    Cell { patient, target, replaced: Some(first.id) }
}

fn settle<T>(result: Result<tonic::Response<T>, tonic::Status>, shown: impl FnOnce(T) -> Option<u64>) -> Decision {
    match result {
        Ok(response) => (Code::Ok, shown(response.into_inner())),
        Err(status) => (status.code(), None),
    }
}

/// The twin of `cell` over gRPC.
async fn grpc_cell(caller: &mut Clients, cell: &Cell, op: Op, org: Org, kind: Kind) -> Decision {
    let fresh = || input(&cell.patient, TARGET_REGION, org.code(), kind.code());
    let query = |types: Vec<String>| pb::PointerQuery { nhs_number: cell.patient.clone(), types, ..Default::default() };
    let types = || match op {
        Op::SearchForType | Op::CountForType => vec![kind.code().to_string()],
        _ => vec![],
    };
    let id = cell.target.id.clone();
    match op {
        Op::Create => {
            settle(caller.registry.create_pointer(pb::CreatePointerRequest { pointer: Some(fresh()) }).await, |_| None)
        }
        Op::Get => settle(caller.registry.get_pointer(pb::GetPointerRequest { id }).await, |_| None),
        Op::Update | Op::UpdateSuperseding => {
            let mut changed = fresh();
            changed.content = vec![content("https://qwo.example.nhs.uk/records/updated")];
            let request = pb::UpdatePointerRequest { id, version: cell.target.version, pointer: Some(changed) };
            settle(caller.registry.update_pointer(request).await, |_| None)
        }
        Op::Delete => {
            settle(caller.registry.delete_pointer(pb::DeletePointerRequest { id, version: 0 }).await, |_| None)
        }
        Op::Supersede => {
            let request = pb::SupersedePointerRequest { pointer: Some(fresh()), supersedes: vec![id] };
            settle(caller.registry.supersede_pointer(request).await, |_| None)
        }
        Op::Search | Op::SearchForType => {
            let request = pb::SearchPointersRequest { query: Some(query(types())), ..Default::default() };
            settle(caller.registry.search_pointers(request).await, |r| Some(r.pointers.len() as u64))
        }
        Op::Count | Op::CountForType => {
            let request = pb::CountPointersRequest { query: Some(query(types())) };
            settle(caller.registry.count_pointers(request).await, |r| Some(r.count))
        }
        Op::AccessLog => {
            let request =
                pb::GetAccessLogRequest { nhs_number: cell.patient.clone(), page_size: 0, page_token: String::new() };
            settle(caller.audit.get_access_log(request).await, |_| None)
        }
    }
}

/// The decision a FHIR answer stands for, after checking the answer is what FHIR says it must be:
/// a valid resource on success, an OperationOutcome with the right Spine code on refusal.
fn fhir_decision(what: &str, answer: &Answer, shown: impl FnOnce(&Value) -> Option<u64>) -> Decision {
    match answer.status {
        200 | 201 => {
            assert_valid(what, &answer.body);
            (Code::Ok, shown(&answer.body))
        }
        status => {
            assert_outcome(what, answer);
            let spine = match status {
                403 => Some("ACCESS DENIED"),
                404 => Some("NO_RECORD_FOUND"),
                _ => None,
            };
            if let Some(spine) = spine {
                assert_eq!(answer.spine(), spine, "{what}: {}", answer.text);
            }
            (answer.code(), None)
        }
    }
}

/// Two FHIR forms of one interaction must agree; the decision, or a note of the disagreement.
fn agreeing(what: &str, a: Decision, b: Decision) -> Decision {
    assert_eq!(a, b, "{what}: the two FHIR forms of the interaction disagree");
    a
}

fn total(body: &Value) -> Option<u64> {
    body["total"].as_u64()
}

fn entries(body: &Value) -> Option<u64> {
    Some(body["entry"].as_array().map_or(0, |e| e.len() as u64))
}

/// The cell over FHIR. Search is asked as GET and as POST `_search`; count as `_summary=count`
/// and as NRLF's `_count`: each pair must agree.
async fn fhir_cell(caller: &Fhir, cell: &Cell, op: Op, org: Org, kind: Kind) -> Decision {
    let what = format!("FHIR {op:?} ({org:?}, {kind:?})");
    let fresh = || document(&cell.patient, TARGET_REGION, org.code(), kind.code());
    let subject = format!("{NHS_NUMBER_SYSTEM}|{}", cell.patient);
    let type_filter = match op {
        Op::SearchForType | Op::CountForType => Some(format!("{SNOMED_SYSTEM}|{}", kind.code())),
        _ => None,
    };
    let mut query = search_path(&cell.patient);
    if let Some(t) = &type_filter {
        query.push_str(&format!("&type={}", form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()));
    }
    let id = &cell.target.id;
    match op {
        Op::Create => fhir_decision(&what, &caller.post("DocumentReference", &fresh()).await, |_| None),
        Op::Get => fhir_decision(&what, &caller.get(&format!("DocumentReference/{id}")).await, |_| None),
        Op::Update | Op::UpdateSuperseding => {
            let mut changed = fresh();
            changed["content"][0]["attachment"]["url"] = json!("https://qwo.example.nhs.uk/records/updated");
            if let Some(replaced) = &cell.replaced {
                changed["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": replaced}}}]);
            }
            let tag = format!("W/\"{}\"", cell.target.version);
            fhir_decision(&what, &caller.put(&format!("DocumentReference/{id}"), &changed, Some(&tag)).await, |_| None)
        }
        Op::Delete => fhir_decision(&what, &caller.delete(&format!("DocumentReference/{id}")).await, |_| None),
        Op::Supersede => {
            let mut doc = fresh();
            doc["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": id}}}]);
            fhir_decision(&what, &caller.post("DocumentReference", &doc).await, |_| None)
        }
        Op::Search | Op::SearchForType => {
            let get = fhir_decision(&what, &caller.get(&query).await, entries);
            let mut body = json!({"subject:identifier": subject});
            if let Some(t) = &type_filter {
                body["type"] = json!(t);
            }
            let post = fhir_decision(&what, &caller.post("DocumentReference/_search", &body).await, entries);
            agreeing(&what, get, post)
        }
        Op::Count | Op::CountForType => {
            let summary = fhir_decision(&what, &caller.get(&format!("{query}&_summary=count")).await, total);
            let nrlf = fhir_decision(&what, &caller.get(&query.replacen('?', "/_count?", 1)).await, total);
            agreeing(&what, summary, nrlf)
        }
        Op::AccessLog => fhir_decision(&what, &caller.get(&audit_path(&cell.patient)).await, |_| None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fhir_cell_of_the_matrix_decides_as_its_grpc_twin() {
    let server = start().await;
    let seeders = Seeders {
        own: Clients::bearer(&server.channel, &token("seed-own", OWN, &["producer"], None)),
        other: Clients::bearer(&server.channel, &token("seed-other", OTHER, &["producer"], None)),
    };
    let base = server.fhir_base();
    let mut cells = 0;
    let mut allowed = 0;
    let mut wrong = Vec::new();
    for role in Role::ALL {
        for op in Op::ALL {
            for org in [Org::Own, Org::Other] {
                for kind in [Kind::Permitted, Kind::Unpermitted] {
                    let grpc_cell_data = prepare(&seeders, op, org, kind).await;
                    let mut grpc = Clients::bearer(&server.channel, &role.token(&grpc_cell_data.patient));
                    let by_grpc = grpc_cell(&mut grpc, &grpc_cell_data, op, org, kind).await;
                    let fhir_cell_data = prepare(&seeders, op, org, kind).await;
                    let fhir = Fhir::bearer(&base, &role.token(&fhir_cell_data.patient));
                    let by_fhir = fhir_cell(&fhir, &fhir_cell_data, op, org, kind).await;
                    let want = expected(role, op, org, kind);
                    cells += 1;
                    allowed += usize::from(by_fhir.0 == Code::Ok);
                    if by_fhir != by_grpc || by_grpc != want {
                        wrong.push(format!(
                            "{role:?} {op:?} {org:?} {kind:?}: FHIR {by_fhir:?}, gRPC {by_grpc:?}, documented {want:?}"
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(cells, Role::ALL.len() * Op::ALL.len() * 4);
    assert!(wrong.is_empty(), "{} of {cells} cells differ:\n  {}", wrong.len(), wrong.join("\n  "));
    assert!(allowed > 40, "the matrix allows something: {allowed} of {cells}");
    server.stop().await.expect("stop");
}

/// A pointer the caller may not see answers exactly like an id that never existed: same status,
/// same body but for the id. (The gRPC twin: tests/security's
/// `invisible_pointers_are_indistinguishable_from_missing_ones`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_pointers_answer_exactly_like_missing_ones() {
    let server = start().await;
    let theirs = Clients::bearer(&server.channel, &token("ra7-loader", OTHER, &["producer"], None));
    let patient = new_patient();
    let restricted = new_patient();
    let news2 = seed(&theirs, input(&patient, "QWO", OTHER, NEWS2)).await;
    let hidden = seed(&theirs, input(&restricted, "QWO", OTHER, CRISIS_PLAN)).await;
    Clients::bearer(&server.channel, &token("x26-admin", "X26", &["admin"], None))
        .admin
        .set_restriction(pb::SetRestrictionRequest { nhs_number: restricted.clone(), restricted: true })
        .await
        .expect("restrict");
    let base = server.fhir_base();
    let cases = [
        ("consumer, unpermitted type", token("narrow", OWN, &["consumer"], Some(&[PERMITTED])), &news2.id),
        ("producer, another organisation", token("rr8", OWN, &["producer"], None), &news2.id),
        ("consumer, restricted patient", token("reader", OWN, &["consumer"], None), &hidden.id),
    ];
    for (case, bearer, id) in cases {
        for base_path in ["/FHIR/R4", "/consumer/FHIR/R4"] {
            let caller = Fhir::bearer(&server.fhir_base_at(base_path), &bearer);
            let invisible = caller.get(&format!("DocumentReference/{id}")).await;
            let missing = caller.get(&format!("DocumentReference/{NEVER}")).await;
            assert_refused(case, &invisible, 404, "NO_RECORD_FOUND");
            let normalise = |a: &Answer, id: &str| {
                let mut headers: Vec<(String, String)> = a
                    .headers
                    .iter()
                    .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
                    .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_string()))
                    .collect();
                headers.sort();
                (a.status, a.text.replace(id, "<id>"), headers)
            };
            assert_eq!(normalise(&invisible, id), normalise(&missing, NEVER), "{case} at {base_path}");
        }
        let mut twin = Clients::bearer(&server.channel, &bearer);
        let err = twin.registry.get_pointer(pb::GetPointerRequest { id: id.clone() }).await.expect_err(case);
        assert_eq!(err.code(), Code::NotFound, "{case} over gRPC");
    }
    drop(base);
    server.stop().await.expect("stop");
}

/// A producer naming another organisation's pointer in a PUT, a DELETE or a supersede learns
/// nothing about it: whatever patient and type it guesses, with or without `relatesTo`, the
/// answer is the same 403, as over gRPC; and the pointer is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_naming_another_organisations_pointer_are_403_and_reveal_nothing() {
    let server = start().await;
    let theirs = Clients::bearer(&server.channel, &token("ra7-loader", OTHER, &["producer"], None));
    let prober = Fhir::bearer(&server.fhir_base(), &token("rr8-prober", OWN, &["producer"], None));
    let patient = new_patient();
    let old = seed(&theirs, input(&patient, "QWO", OTHER, CRISIS_PLAN)).await;
    let target = theirs
        .registry
        .clone()
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", OTHER, CRISIS_PLAN)),
            supersedes: vec![old.id.clone()],
        })
        .await
        .expect("supersede")
        .into_inner()
        .pointer
        .expect("pointer");
    let guesses = [
        ("wrong patient", new_patient(), NEWS2),
        ("right patient, wrong type", patient.clone(), NEWS2),
        ("right patient, right type", patient.clone(), CRISIS_PLAN),
    ];
    let mut answers = Vec::new();
    for (guess, nhs, ty) in &guesses {
        let body = document(nhs, "QWO", OWN, ty);
        let mut with_relation = body.clone();
        with_relation["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": old.id}}}]);
        let mut supersede = body.clone();
        supersede["relatesTo"] = json!([{"code": "replaces", "target": {"identifier": {"value": target.id}}}]);
        let path = format!("DocumentReference/{}", target.id);
        for (how, answer) in [
            ("PUT", prober.put(&path, &body, Some("W/\"1\"")).await),
            ("PUT without If-Match", prober.put(&path, &body, None).await),
            ("PUT repeating relatesTo", prober.put(&path, &with_relation, None).await),
            ("DELETE", prober.delete(&path).await),
            (
                "DELETE with If-Match",
                prober.send(reqwest::Method::DELETE, &path, None, &[("if-match", "W/\"1\"")]).await,
            ),
            ("supersede", prober.post("DocumentReference", &supersede).await),
        ] {
            let what = format!("{how}, {guess}");
            assert_refused(&what, &answer, 403, "ACCESS DENIED");
            answers.push((how, guess, answer.text.replace(&target.id, "<id>")));
        }
    }
    for (how, guess, text) in &answers {
        let first = answers.iter().find(|(h, _, _)| h == how).map(|(_, _, t)| t).expect("first");
        assert_eq!(text, first, "{how}: the answer to {guess} differs from the first guess's");
    }
    let reader = Fhir::bearer(&server.fhir_base(), &token("ra7-viewer", OTHER, &["consumer"], None));
    let untouched = reader.get(&format!("DocumentReference/{}", target.id)).await;
    assert_eq!(untouched.status, 200, "{}", untouched.text);
    assert_eq!(
        (untouched.body["meta"]["versionId"].as_str(), untouched.body["status"].as_str()),
        (Some("1"), Some("current"))
    );
    server.stop().await.expect("stop");
}
