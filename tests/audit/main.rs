//! The access audit over a real socket, against the memory store and a real Redis: exactly one event
//! per operation with who, why, what and the outcome; break-glass flagged only when a restricted
//! patient's pointers were shown; the patient's log holding only what read or changed the
//! patient's data, and refusals, invalid requests and failures in the export only (`streams`); the
//! access log newest first and paged; the export stream in order, resumable and following, its
//! cursors the one kind of cursor an event carries; and a failed audit write failing the read (Redis).

use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::batch_outcome::Result as BatchResult;
use std::time::Duration;
use testkit::auth::*;
use testkit::fixtures::*;
use testkit::redis::{RedisCluster, RedisOptions, RedisServer};
use testkit::{on_every_backend, Backend, TestServer};
use tokio_stream::StreamExt;
use tonic::Code;

mod scenarios;
mod streams;

struct Env {
    server: TestServer,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

impl Env {
    /// A JWT-authenticated server on a fresh store (its own redis-server, so the export stream holds
    /// only this test's events).
    async fn start(backend: Backend) -> Env {
        match backend {
            Backend::Memory => {
                let server = TestServer::start_with(jwt_server_config(StoreConfig::Memory)).await;
                Env { server, redis: None, cluster: None }
            }
            Backend::Redis => {
                let redis = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
                    .await
                    .expect("start redis-server");
                let server = TestServer::start_with(jwt_server_config(redis_store(&redis.url()))).await;
                Env { server, redis: Some(redis), cluster: None }
            }
            Backend::RedisCluster => {
                let cluster =
                    tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.expect("start a redis cluster");
                let server = TestServer::start_with(jwt_server_config(redis_store(&cluster.url()))).await;
                Env { server, redis: None, cluster: Some(cluster) }
            }
        }
    }

    fn actor(
        &self,
        sub: &'static str,
        org: &'static str,
        roles: &[&str],
        purpose: &'static str,
        end_user: &'static str,
    ) -> Actor {
        self.actor_with_types(sub, org, roles, None, purpose, end_user)
    }

    fn actor_with_types(
        &self,
        sub: &'static str,
        org: &'static str,
        roles: &[&str],
        types: Option<&[&str]>,
        purpose: &'static str,
        end_user: &'static str,
    ) -> Actor {
        let mut credentials = Credentials::bearer(&token(sub, org, roles, types)).without_purpose();
        if !purpose.is_empty() {
            credentials = credentials.purpose(purpose);
        }
        if !end_user.is_empty() {
            credentials = credentials.end_user(end_user);
        }
        Actor { sub, org, purpose, end_user, c: Clients::new(&self.server.channel, credentials) }
    }

    /// The patient portal, signed in as `patient` (purpose patient-request, end user the patient).
    fn portal(&self, sub: &'static str, org: &'static str, patient: &str) -> Actor {
        let credentials =
            Credentials::bearer(&portal_token(sub, org, patient)).purpose("patient-request").end_user("the-patient");
        Actor {
            sub,
            org,
            purpose: "patient-request",
            end_user: "the-patient",
            c: Clients::new(&self.server.channel, credentials),
        }
    }

    fn auditor(&self) -> Actor {
        self.actor("x26-auditor", "X26", &["auditor"], "audit", "auditor.smith")
    }

    async fn stop(self) {
        self.server.stop().await.expect("server stops cleanly");
        drop(self.redis);
        drop(self.cluster);
    }
}

/// A caller: its clients and what the audit should say about it.
struct Actor {
    sub: &'static str,
    org: &'static str,
    purpose: &'static str,
    end_user: &'static str,
    c: Clients,
}

/// The parts of an event a test can predict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    operation: String,
    outcome: String,
    nhs_number: String,
    pointer_ids: Vec<String>,
    application: String,
    organisation: String,
    purpose: String,
    end_user: String,
    break_glass: bool,
}

fn seen(e: &pb::AuditEvent) -> Seen {
    let mut pointer_ids = e.pointer_ids.clone();
    pointer_ids.sort();
    Seen {
        operation: e.operation.clone(),
        outcome: e.outcome.clone(),
        nhs_number: e.nhs_number.clone(),
        pointer_ids,
        application: e.application.clone(),
        organisation: e.organisation.clone(),
        purpose: e.purpose.clone(),
        end_user: e.end_user.clone(),
        break_glass: e.break_glass,
    }
}

/// An event without its cursor (the patient's log and the export number events independently).
fn without_cursor(e: &pb::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent { cursor: String::new(), ..e.clone() }
}

impl Actor {
    fn expect(&self, operation: &str, outcome: &str, nhs: &str, ids: &[&str]) -> Seen {
        let mut pointer_ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        pointer_ids.sort();
        Seen {
            operation: operation.into(),
            outcome: outcome.into(),
            nhs_number: nhs.into(),
            pointer_ids,
            application: self.sub.into(),
            organisation: self.org.into(),
            purpose: self.purpose.into(),
            end_user: self.end_user.into(),
            break_glass: false,
        }
    }

    fn glass(&self, operation: &str, nhs: &str, ids: &[&str]) -> Seen {
        Seen { break_glass: true, ..self.expect(operation, "OK", nhs, ids) }
    }

    async fn create(&mut self, pointer: pb::PointerInput) -> pb::Pointer {
        self.c
            .registry
            .create_pointer(pb::CreatePointerRequest { pointer: Some(pointer) })
            .await
            .expect("create")
            .into_inner()
            .pointer
            .expect("pointer")
    }

    async fn search(&mut self, nhs: &str) -> Result<Vec<String>, tonic::Status> {
        let request = pb::SearchPointersRequest { query: Some(query(nhs)), ..Default::default() };
        Ok(self.c.registry.search_pointers(request).await?.into_inner().pointers.into_iter().map(|p| p.id).collect())
    }

    async fn count(&mut self, nhs: &str) -> Result<u64, tonic::Status> {
        Ok(self
            .c
            .registry
            .count_pointers(pb::CountPointersRequest { query: Some(query(nhs)) })
            .await?
            .into_inner()
            .count)
    }

    async fn locate(&mut self, nhs: &str) -> Result<usize, tonic::Status> {
        Ok(self
            .c
            .locator
            .locate_patient(pb::LocatePatientRequest { nhs_number: nhs.into() })
            .await?
            .into_inner()
            .regions
            .len())
    }

    async fn get(&mut self, id: &str) -> Result<pb::Pointer, tonic::Status> {
        Ok(self
            .c
            .registry
            .get_pointer(pb::GetPointerRequest { id: id.into() })
            .await?
            .into_inner()
            .pointer
            .expect("pointer"))
    }

    async fn access_log(
        &mut self,
        nhs: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::GetAccessLogResponse, tonic::Status> {
        let request = pb::GetAccessLogRequest { nhs_number: nhs.into(), page_size, page_token: page_token.into() };
        Ok(self.c.audit.get_access_log(request).await?.into_inner())
    }

    async fn restrict(&mut self, nhs: &str, restricted: bool) {
        self.c
            .admin
            .set_restriction(pb::SetRestrictionRequest { nhs_number: nhs.into(), restricted })
            .await
            .expect("set restriction");
    }
}

/// `patient`'s own log (GetAccessLog), oldest first, read by `reader`, every page. Each page read
/// is itself recorded after it is answered, so a read sees the reads before it, never its own.
async fn log_of(reader: &mut Actor, patient: &str) -> Vec<Seen> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = reader.access_log(patient, 500, &token).await.expect("read the patient's log");
        events.extend(page.events.iter().map(seen));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    events.reverse();
    events
}

/// Reads the export from where it last stopped.
struct Tail {
    auditor: Actor,
    cursor: String,
}

impl Tail {
    async fn new(env: &Env) -> Tail {
        let mut tail = Tail { auditor: env.auditor(), cursor: String::new() };
        tail.take().await;
        tail
    }

    /// Every event written since the last call, oldest first.
    async fn take(&mut self) -> Vec<pb::AuditEvent> {
        let events = self.auditor.c.export(&self.cursor).await.expect("auditor reads the export");
        let now = now();
        for e in &events {
            assert!(!e.cursor.is_empty(), "every exported event has a cursor: {e:?}");
            let at = e.time.as_ref().map(|t| t.seconds).unwrap_or_default();
            assert!((now - 120..=now + 5).contains(&at), "event time {at} is not about now ({now}): {e:?}");
        }
        if let Some(last) = events.last() {
            self.cursor = last.cursor.clone();
        }
        events
    }

    async fn seen(&mut self) -> Vec<Seen> {
        self.take().await.iter().map(seen).collect()
    }
}

fn assert_code<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
        Ok(value) => panic!("{what}: expected {code:?}, got {value:?}"),
    }
}

/// Orders a cursor of either store (memory: a position; Redis: `ms-seq`).
fn cursor_key(cursor: &str) -> (u64, u64) {
    match cursor.split_once('-') {
        Some((ms, seq)) => (ms.parse().expect("cursor ms"), seq.parse().expect("cursor seq")),
        None => (cursor.parse().expect("cursor position"), 0),
    }
}

/// Redis only: the export stream is made unwritable (`nrl:audit` becomes a string, so XADD fails
/// with WRONGTYPE). Every read then fails UNAVAILABLE and shows nothing; mending it mends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_write_fails_the_read() {
    let env = Env::start(Backend::Redis).await;
    let redis = env.redis.as_ref().expect("redis");
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut auditor = env.auditor();
    let p = new_patient();
    let a = producer.create(input(&p, "QWO", "RR8", CRISIS_PLAN)).await;
    assert_eq!(consumer.search(&p).await.expect("search"), vec![a.id.clone()]);

    assert_eq!(redis.cli(&["SET", "nrl:audit", "not-a-stream"]).trim(), "OK");
    assert_code("search", consumer.search(&p).await, Code::Unavailable);
    assert_code("get", consumer.get(&a.id).await, Code::Unavailable);
    assert_code("count", consumer.count(&p).await, Code::Unavailable);
    assert_code("locate", consumer.locate(&p).await, Code::Unavailable);
    assert_code("access log", auditor.access_log(&p, 0, "").await, Code::Unavailable);
    let mut emergency = env.actor("ra7-viewer", "RA7", &["consumer"], "emergency", "dr.jones");
    assert_code("break-glass search", emergency.search(&p).await, Code::Unavailable);

    assert_eq!(redis.cli(&["DEL", "nrl:audit"]).trim(), "1");
    assert_eq!(consumer.search(&p).await.expect("search again"), vec![a.id.clone()]);
    assert_eq!(consumer.get(&a.id).await.expect("get again").id, a.id);
    assert_eq!(consumer.count(&p).await.expect("count again"), 1);
    assert_eq!(consumer.locate(&p).await.expect("locate again"), 1);
    let events = auditor.c.export("").await.expect("export");
    assert_eq!(
        events.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(),
        ["SearchPointers", "GetPointer", "CountPointers", "LocatePatient"],
        "the export restarts with the reads after the repair"
    );
    env.stop().await;
}

/// Redis only: the export stream keeps about NRL_AUDIT_EXPORT_RETENTION events. A cursor the
/// retention has passed is OUT_OF_RANGE, never a silent skip; the patient's own log keeps everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cursor_older_than_the_retention_is_out_of_range() {
    let redis =
        tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default())).await.expect("start redis-server");
    let mut store = redis_store(&redis.url());
    if let StoreConfig::Redis(config) = &mut store {
        config.audit_export_retention = 100;
    }
    let env = Env { server: TestServer::start_with(jwt_server_config(store)).await, redis: Some(redis), cluster: None };
    let mut producer = env.actor("qwo-shared-care", "RR8", &["producer"], "administration", "");
    let mut consumer = env.actor("ra7-viewer", "RA7", &["consumer"], "direct-care", "dr.jones");
    let mut auditor = env.auditor();
    let p = new_patient();
    producer.create(input(&p, "QWO", "RR8", CRISIS_PLAN)).await;
    let first = auditor.c.export("").await.expect("export");
    assert_eq!(first.len(), 1);
    for _ in 0..400 {
        consumer.count(&p).await.expect("count");
    }
    let kept = auditor.c.export("").await.expect("export what is kept");
    assert!((100..400).contains(&kept.len()), "about 100 kept (whole stream nodes are trimmed): {}", kept.len());
    assert_eq!(kept.last().map(|e| e.operation.as_str()), Some("CountPointers"), "the newest is kept");
    let err = auditor.c.export(&first[0].cursor).await.expect_err("a trimmed cursor");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("retention"), "the message says why: {:?}", err.message());
    // A kept cursor still resumes; the patient's log still has all 401 events.
    let tail = auditor.c.export(&kept[kept.len() - 2].cursor).await.expect("resume from a kept cursor");
    assert_eq!(tail.len(), 1);
    let mut total = 0;
    let mut token = String::new();
    loop {
        let page = auditor.access_log(&p, 500, &token).await.expect("access log");
        total += page.events.iter().filter(|e| e.operation != "GetAccessLog").count();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(total, 401, "the patient's log is not trimmed");
    env.stop().await;
}

/// Runs a scenario that starts its own server and store on `backend` (`Env::start`). On a Redis
/// Cluster that is its own 3-master cluster: patients' logs spread over the masters, the export
/// on one.
async fn own_environment(backend: Backend, scenario: impl AsyncFnOnce(Backend)) {
    scenario(backend).await;
}

on_every_backend!(own_environment; [
    scenarios::each_operation_leaves_exactly_the_expected_event,
    scenarios::unknown_ids_leave_no_event_against_an_unrelated_patient,
    scenarios::break_glass_is_flagged_only_when_a_restricted_patients_pointers_are_shown,
    scenarios::access_log_is_newest_first_pages_exactly_once_and_is_itself_recorded,
    scenarios::export_streams_every_event_in_order_resumes_and_follows,
    scenarios::an_event_cursor_is_an_export_position_on_every_backend,
    streams::refused_calls_leave_no_event_in_any_patients_log,
]);
