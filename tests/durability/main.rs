//! Fault tolerance of the Redis store, with real parts only: real redis-server processes (the
//! `testkit::redis` harness), real gRPC over real sockets, and the real `nrl` binary where a
//! registry process has to die.
//!
//! The guarantee under test: a write the registry acknowledged survives a crash of Redis (AOF with
//! `appendfsync always`) or of the registry itself; nothing is ever half-written; while the store is
//! down every call fails fast with UNAVAILABLE, health says NOT_SERVING, and the service recovers by
//! itself once the store is back.
//!
//! What a SIGKILL of Redis can and cannot show: the kernel keeps what Redis wrote to the AOF, so
//! these tests prove that a write reaches the AOF before it is acknowledged and is replayed on
//! restart; they cannot tell `appendfsync always` from `everysec` or `no` (only losing the machine
//! would). Without the AOF they fail.
//!
//! `audit_trail`: the same faults (and a hung Redis) under concurrent writers, checking that no
//! pointer exists without the audit event of the write that made it. `hung_store`: a call against
//! a Redis that stopped answering comes back within the store timeout.

mod audit_trail;
mod hung_store;

use testkit::eventually;
use testkit::writer::*;

use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use nrl_registry::store::redis::RedisConfig;
use std::time::Duration;
use testkit::fixtures::{input, new_patient, query, CRISIS_PLAN};
use testkit::nodes::NrlNode;
use testkit::process::TempDir;
use testkit::redis::{RedisOptions, RedisServer};
use testkit::TestServer;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The registry's bound on every store call in these tests.
const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// A call while the store is down must come back within the store timeout plus this much.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// The health watcher pings the store every second; NOT_SERVING must show within this.
const HEALTH_LIMIT: Duration = Duration::from_secs(5);
/// After the store (or the registry) is back, writes and SERVING must return within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
const PATIENTS: usize = 20;

fn durable() -> RedisOptions {
    RedisOptions { appendonly: true, appendfsync: "always", ..RedisOptions::default() }
}

fn redis_store(url: &str) -> StoreConfig {
    let mut config = RedisConfig::parse(url).expect("harness url parses");
    config.timeout = STORE_TIMEOUT;
    config.startup_wait = Duration::from_secs(2);
    StoreConfig::Redis(config)
}

/// The harness blocks; these keep it off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking harness call panicked")
}

async fn start_redis(opts: RedisOptions) -> RedisServer {
    blocking(move || RedisServer::start(opts)).await
}

async fn kill_redis(mut redis: RedisServer) -> RedisServer {
    blocking(move || {
        redis.kill9();
        redis
    })
    .await
}

async fn restart_redis(mut redis: RedisServer) -> RedisServer {
    blocking(move || {
        redis.restart();
        redis
    })
    .await
}

async fn health(channel: &Channel) -> Result<i32, String> {
    let mut client = HealthClient::new(channel.clone());
    let (result, _) = timed(client.check(HealthCheckRequest { service: String::new() })).await;
    result.map(|r| r.status).map_err(|s| format!("health check failed: {s:?}"))
}

async fn wait_health(channel: &Channel, wanted: ServingStatus, within: Duration, what: &str) -> Duration {
    let (_, took) = eventually(what, within, || async {
        match health(channel).await? {
            status if status == wanted as i32 => Ok(()),
            status => Err(format!("health is {:?}", ServingStatus::try_from(status))),
        }
    })
    .await;
    took
}

// ---------------------------------------------------------------------------------------------
// 1. Redis dies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_loses_no_acknowledged_write_and_the_service_recovers_by_itself() {
    let redis = start_redis(durable()).await;
    let server = TestServer::start(redis_store(&redis.url())).await;
    wait_health(&server.channel, ServingStatus::Serving, HEALTH_LIMIT, "SERVING at start").await;
    let patients: Vec<String> = (0..PATIENTS).map(|_| new_patient()).collect();
    let writer = Writer::spawn(server.channel.clone(), patients.clone(), "K");
    writer.wait_acked(40, RECOVERY_LIMIT, "writes before the crash").await;

    let kill_started = Instant::now();
    let redis = kill_redis(redis).await;
    let acked_at_kill = writer.acked();

    // While down: NOT_SERVING, and calls fail fast with UNAVAILABLE.
    let not_serving_after = wait_health(&server.channel, ServingStatus::NotServing, HEALTH_LIMIT, "NOT_SERVING").await;
    let mut client = server.registry();
    let probe_patient = new_patient();
    for attempt in 0..3 {
        let mut sent = input(&probe_patient, REGION, CUSTODIAN, CRISIS_PLAN);
        sent.producer_reference = format!("probe-down-{attempt}");
        let (result, took) = timed(client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) })).await;
        let status = result.expect_err("a create while redis is down must fail");
        assert_eq!(status.code(), Code::Unavailable, "while redis is down: {status:?}");
        assert!(took <= CALL_LIMIT, "a call while redis is down took {took:?} (limit {CALL_LIMIT:?})");
        assert!(!status.message().contains(probe_patient.as_str()), "NHS number in an error: {status:?}");
    }
    eventually("the writer to see the outage", HEALTH_LIMIT, || async {
        match writer.failures_since(kill_started).len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since the kill")),
        }
    })
    .await;
    let acked_while_down = writer.acked() - acked_at_kill;
    assert_eq!(acked_while_down, 0, "writes were acknowledged while redis was down");

    // Back: the same registry, without a restart, serves again.
    let redis = restart_redis(redis).await;
    let acked_at_restart = writer.acked();
    let (_, writes_back_after) = eventually("a write after redis restarted", RECOVERY_LIMIT, || {
        let mut client = server.registry();
        async move {
            let mut sent = input(&new_patient(), REGION, CUSTODIAN, CRISIS_PLAN);
            sent.producer_reference = "probe-up".into();
            timed(client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) }))
                .await
                .0
                .map_err(|status| format!("{status:?}"))
        }
    })
    .await;
    let recovered_at = Instant::now();
    let serving_after = wait_health(&server.channel, ServingStatus::Serving, RECOVERY_LIMIT, "SERVING again").await;
    writer.wait_acked(acked_at_restart + 40, RECOVERY_LIMIT, "the writer's writes after the restart").await;
    let journal = writer.stop().await;

    for failure in &journal.failures {
        assert_eq!(failure.code, Code::Unavailable, "only UNAVAILABLE is allowed during an outage: {failure:?}");
        assert!(failure.elapsed <= CALL_LIMIT, "a failing call took {:?}: {failure:?}", failure.elapsed);
        assert!(
            failure.started + failure.elapsed >= kill_started && failure.started < recovered_at,
            "a failure outside the outage: {failure:?}"
        );
    }
    assert_no_patient_data(&journal.failures, &patients);

    let mut client = server.registry();
    let verified = verify(&mut client, &patients, &journal).await;
    eprintln!(
        "redis crash: {acked_at_kill} writes acknowledged before the kill; failures {:?} (slowest {:?}); \
         NOT_SERVING {not_serving_after:?} after the kill; writes back {writes_back_after:?} after the restart, \
         SERVING a further {serving_after:?} later; {verified}; replayed first sends: {:?}",
        journal.failure_summary(),
        journal.failures.iter().map(|f| f.elapsed).max(),
        journal.replayed
    );
    assert!(verified.acked_writes >= 80, "too few acknowledged writes to mean anything: {verified}");
    server.stop().await.expect("the registry stops cleanly");
    drop(redis);
}

// ---------------------------------------------------------------------------------------------
// 2. The registry process dies
// ---------------------------------------------------------------------------------------------

/// `nrl serve` on `port` over the Redis at `store_url`, logging to `LOGS/NAME.log`, under the
/// harness's watchdog like every process the tests start.
fn spawn_nrl(name: &str, port: u16, store_url: &str, logs: &TempDir) -> NrlNode {
    spawn_nrl_bounded(name, port, store_url, logs, STORE_TIMEOUT)
}

/// [`spawn_nrl`] with `--redis-timeout-ms` set to `store_timeout`.
fn spawn_nrl_bounded(name: &str, port: u16, store_url: &str, logs: &TempDir, store_timeout: Duration) -> NrlNode {
    let timeout = store_timeout.as_millis().to_string();
    let args = ["--store", store_url, "--redis-timeout-ms", &timeout, "--redis-startup-wait-secs", "5"]
        .into_iter()
        .chain(["--shutdown-grace-secs", "1"])
        .map(String::from)
        .collect();
    NrlNode::spawn(name, port, args, logs.path())
}

use testkit::ports::free_port;

async fn wait_serving(channel: &Channel, nrl: &mut NrlNode, what: &str) -> Duration {
    let (_, took) = eventually(what, RECOVERY_LIMIT, || {
        nrl.assert_running();
        async {
            match health(channel).await? {
                status if status == ServingStatus::Serving as i32 => Ok(()),
                status => Err(format!("health is {:?}", ServingStatus::try_from(status))),
            }
        }
    })
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_registry_process_loses_no_acknowledged_write() {
    let redis = start_redis(durable()).await;
    let logs = TempDir::new("nrl-durability");
    let port = free_port();
    let mut first = spawn_nrl("first", port, &redis.url(), &logs);
    // Lazy: it connects on first use and reconnects by itself after the server comes back.
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    wait_serving(&channel, &mut first, "the first nrl to serve").await;

    let patients: Vec<String> = (0..PATIENTS).map(|_| new_patient()).collect();
    let writer = Writer::spawn(channel.clone(), patients.clone(), "P");
    writer.wait_acked(40, RECOVERY_LIMIT, "writes before the registry is killed").await;

    let kill_started = Instant::now();
    first.kill9();
    let acked_at_kill = writer.acked();
    eventually("the writer to see the registry gone", HEALTH_LIMIT, || async {
        match writer.failures_since(kill_started).len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since the kill")),
        }
    })
    .await;
    assert_eq!(writer.acked(), acked_at_kill, "writes were acknowledged while no registry was running");

    let mut second = spawn_nrl("second", port, &redis.url(), &logs);
    let serving_after = wait_serving(&channel, &mut second, "the second nrl to serve").await;
    let recovered_at = Instant::now();
    writer.wait_acked(acked_at_kill + 40, RECOVERY_LIMIT, "the writer's writes through the new registry").await;
    let journal = writer.stop().await;

    // A connection cut mid-call surfaces as UNAVAILABLE, or as UNKNOWN/CANCELLED for a call whose
    // stream was reset; nothing else (no ALREADY_EXISTS, FAILED_PRECONDITION, ...) may appear.
    for failure in &journal.failures {
        assert!(
            matches!(failure.code, Code::Unavailable | Code::Unknown | Code::Cancelled),
            "unexpected failure while the registry was down: {failure:?}"
        );
        assert!(
            failure.started + failure.elapsed >= kill_started && failure.started < recovered_at,
            "a failure outside the outage: {failure:?}"
        );
    }
    assert_no_patient_data(&journal.failures, &patients);

    let mut client = PointerRegistryClient::new(channel.clone());
    let verified = verify(&mut client, &patients, &journal).await;
    eprintln!(
        "registry crash: {acked_at_kill} writes acknowledged before the kill; failures {:?}; the second registry \
         was SERVING {serving_after:?} after its spawn; {verified}; replayed first sends: {:?}",
        journal.failure_summary(),
        journal.replayed
    );
    assert!(verified.acked_writes >= 80, "too few acknowledged writes to mean anything: {verified}");
    second.assert_running();
    drop(second);
    drop(redis);
}

// ---------------------------------------------------------------------------------------------
// 3. The store is down when the requests come
// ---------------------------------------------------------------------------------------------

fn assert_unavailable<T: std::fmt::Debug>(what: &str, (result, took): (Result<T, Status>, Duration), patient: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(took <= CALL_LIMIT, "{what} took {took:?} (limit {CALL_LIMIT:?})");
    assert!(!status.message().contains(patient), "{what}: the error holds the NHS number: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_at_first_request_answers_unavailable_quickly() {
    let redis = start_redis(RedisOptions::default()).await;
    let server = TestServer::start(redis_store(&redis.url())).await;
    let patient = new_patient();
    let mut client = server.registry();
    // A real id of this patient (an id names its patient, so GetPointer of it must ask the store).
    let (created, _) = timed(
        client.create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) }),
    )
    .await;
    let id = created.expect("create while redis is up").pointer.expect("pointer").id;
    let _redis = kill_redis(redis).await;

    let all = || Some(pb::PointerQuery { include_superseded: true, ..query(&patient) });
    assert_unavailable(
        "SearchPointers",
        timed(client.search_pointers(pb::SearchPointersRequest { query: all(), ..Default::default() })).await,
        &patient,
    );
    assert_unavailable(
        "CountPointers",
        timed(client.count_pointers(pb::CountPointersRequest { query: all() })).await,
        &patient,
    );
    assert_unavailable(
        "GetPointer",
        timed(client.get_pointer(pb::GetPointerRequest { id: id.clone() })).await,
        &patient,
    );
    assert_unavailable(
        "CreatePointer",
        timed(
            client
                .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)) }),
        )
        .await,
        &patient,
    );
    assert_unavailable(
        "SupersedePointer",
        timed(client.supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QWO", "RR8", CRISIS_PLAN)),
            supersedes: vec![id.clone()],
        }))
        .await,
        &patient,
    );
    let mut locator = RecordLocatorClient::new(server.channel.clone());
    assert_unavailable(
        "LocatePatient",
        timed(locator.locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() })).await,
        &patient,
    );

    // A batch answers per entry: each entry UNAVAILABLE.
    let other = new_patient();
    let mut with_reference = input(&other, "QWO", "RR8", CRISIS_PLAN);
    with_reference.producer_reference = "BATCH-1".into();
    let (batch, took) = timed(client.batch_create_pointers(pb::BatchCreatePointersRequest {
        pointers: vec![input(&patient, "QWO", "RR8", CRISIS_PLAN), with_reference],
    }))
    .await;
    assert!(took <= CALL_LIMIT, "BatchCreatePointers took {took:?} (limit {CALL_LIMIT:?})");
    let outcomes = batch.expect("a batch answers per entry").outcomes;
    assert_eq!(outcomes.len(), 2, "one outcome per entry: {outcomes:?}");
    for outcome in &outcomes {
        match &outcome.result {
            Some(pb::batch_outcome::Result::Error(error)) => {
                assert_eq!(error.code, Code::Unavailable as i32, "batch entry: {error:?}");
                for nhs in [&patient, &other] {
                    assert!(!error.message.contains(nhs.as_str()), "the error holds the NHS number: {error:?}");
                }
            }
            other => panic!("a batch entry registered while redis is down: {other:?}"),
        }
    }
    server.stop().await.expect("the registry stops cleanly");
}
