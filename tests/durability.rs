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

use testkit::writer::*;

use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::proto::nrl::v1::record_locator_client::RecordLocatorClient;
use nrl_registry::store::redis::RedisConfig;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use testkit::fixtures::{input, new_patient, query, CRISIS_PLAN};
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
        match writer.failures_since(kill_started) {
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

/// Runs `nrl` under a watchdog `sh`, like the redis harness does: the watchdog SIGKILLs `nrl` as
/// soon as the pipe on its stdin closes, which happens in [`NrlProcess::kill9`], on drop, and when
/// the test process dies in any way, so no `nrl serve` outlives the test.
const NRL_WATCHDOG: &str = r#"
log="$1"; shift
exec 3<&0
"$@" </dev/null >>"$log" 2>&1 3<&- &
pid=$!
echo "$pid"
( read -r _ <&3; kill -9 "$pid" ) >/dev/null 2>&1 &
guard=$!
exec 3<&-
wait "$pid"
status=$?
kill "$guard" 2>/dev/null
exit "$status"
"#;

struct NrlProcess {
    watchdog: Child,
    _stdout: ChildStdout,
    pid: u32,
    log: PathBuf,
}

impl NrlProcess {
    fn spawn(port: u16, store_url: &str, log: &Path) -> NrlProcess {
        let mut command = Command::new("/bin/sh");
        // Only the flags below configure it, whatever NRL_* the test runs under.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NRL_") {
                command.env_remove(name);
            }
        }
        let mut watchdog = command
            .arg("-c")
            .arg(NRL_WATCHDOG)
            .arg("nrl-watchdog")
            .arg(log)
            .arg(env!("CARGO_BIN_EXE_nrl"))
            // No admin listener: its default port (9090) is shared by every process on the host.
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "off", "--store", store_url])
            .args(["--redis-timeout-ms", &STORE_TIMEOUT.as_millis().to_string(), "--redis-startup-wait-secs", "5"])
            .args(["--shutdown-grace-secs", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the nrl watchdog");
        let mut stdout = BufReader::new(watchdog.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let pid = line.trim().parse().unwrap_or_else(|_| {
            let _ = watchdog.kill();
            panic!("the nrl watchdog reported no pid ({read:?}, {line:?})")
        });
        NrlProcess { watchdog, _stdout: stdout.into_inner(), pid, log: log.to_path_buf() }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with the log if `nrl` has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.watchdog.try_wait() {
            panic!("nrl serve exited ({status}); log:\n{}", self.log_tail());
        }
    }

    /// SIGKILL (via the watchdog) and wait until `nrl` and its watchdog are gone.
    fn kill9(&mut self) {
        drop(self.watchdog.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.watchdog.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                other => {
                    let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
                    let _ = self.watchdog.kill();
                    let _ = self.watchdog.wait();
                    panic!("nrl pid {} did not die within 5 s of SIGKILL ({other:?})", self.pid);
                }
            }
        }
        assert!(!Path::new(&format!("/proc/{}", self.pid)).exists(), "nrl pid {} still exists", self.pid);
    }
}

impl Drop for NrlProcess {
    fn drop(&mut self) {
        if self.watchdog.stdin.is_some() {
            drop(self.watchdog.stdin.take());
            let _ = self.watchdog.wait();
        }
    }
}

use testkit::ports::free_port;

async fn wait_serving(channel: &Channel, nrl: &mut NrlProcess, what: &str) -> Duration {
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
    let logs = tempdir("nrl-durability");
    let port = free_port();
    let mut first = NrlProcess::spawn(port, &redis.url(), &logs.0.join("first.log"));
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
        match writer.failures_since(kill_started) {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since the kill")),
        }
    })
    .await;
    assert_eq!(writer.acked(), acked_at_kill, "writes were acknowledged while no registry was running");

    let mut second = NrlProcess::spawn(port, &redis.url(), &logs.0.join("second.log"));
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

/// A temp dir removed on drop.
struct TempDir(PathBuf);

fn tempdir(label: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("{label}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
