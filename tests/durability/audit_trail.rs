//! Nothing is changed without a record of it, whatever fails mid-write: kill -9 of `nrl`, kill -9
//! of Redis, Redis hung (SIGSTOP) for 5 s. Several writers create and supersede concurrently over
//! the same patients through a real `nrl serve` on a durable Redis (AOF, `appendfsync always`);
//! after the fault and the recovery, every pointer that exists, current or superseded, must have
//! the OK event of the write that made it in its patient's access log and in the export (and a
//! superseded one the OK event of the supersede that retired it), every OK write event must name
//! pointers that exist, and every acknowledged write must be there (`verify`).
//!
//! A write whose answer was lost (the client saw an error or nothing) may have landed: that is
//! allowed, but then its event must have landed with it.

use super::*;
use nrl_registry::proto::nrl::v1::audit_log_client::AuditLogClient;
use testkit::audit_trail::{access_log, check_write_events, export};
use testkit::nodes::START_LIMIT;
use testkit::redis::RedisServer;

/// Concurrent writers, all over the same patients.
const WRITERS: usize = 8;
const WRITER_PATIENTS: usize = 12;
/// The store bound of the node under test: the production default, so that a busy machine's
/// fsync does not time writes out outside the faults.
const NODE_STORE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Acknowledged writes to wait for before the first fault and after each recovery, so that every
/// fault meets writers in full flow.
const WRITES_BETWEEN: usize = 40;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of `nrl serve`, then a new one on the same port.
    KillRegistry,
    /// kill -9 of redis-server, then a restart on its AOF.
    KillRedis,
    /// SIGSTOP of redis-server for this long, then SIGCONT.
    FreezeRedis(Duration),
}

impl Fault {
    /// Codes a writer's call may fail with during this fault: a cut connection surfaces as
    /// UNAVAILABLE, or UNKNOWN/CANCELLED for a call whose stream was reset; a store that does not
    /// answer as UNAVAILABLE (or DEADLINE_EXCEEDED, if the server bounds the call itself).
    fn allows(self, code: Code) -> bool {
        match self {
            Fault::KillRegistry => matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled),
            Fault::KillRedis => code == Code::Unavailable,
            Fault::FreezeRedis(_) => matches!(code, Code::Unavailable | Code::DeadlineExceeded),
        }
    }
}

/// Runs `rounds` of `fault` under the writers, then checks the audit trail and the writes.
async fn no_write_without_its_event(fault: Fault, rounds: usize, tag: &str) {
    let mut redis = start_redis(durable()).await;
    let logs = TempDir::new("nrl-audit-trail");
    let mut node = spawn_nrl_bounded("registry", free_port(), &redis.url(), &logs, NODE_STORE_TIMEOUT);
    node.wait_serving(START_LIMIT).await;
    let channel = node.channel();
    let patients: Vec<String> = (0..WRITER_PATIENTS).map(|_| new_patient()).collect();
    let writers = Writers::spawn(channel.clone(), &patients, WRITERS, tag);
    writers.wait_acked(WRITES_BETWEEN, RECOVERY_LIMIT, "writes before the first fault").await;

    for round in 1..=rounds {
        let started = Instant::now();
        match fault {
            Fault::KillRegistry => {
                node.kill9();
                wait_for_failures(&writers, started, "the writers to see the registry gone").await;
                node.restart();
                node.wait_serving(START_LIMIT).await;
            }
            Fault::KillRedis => {
                redis = kill_redis(redis).await;
                wait_for_failures(&writers, started, "the writers to see redis gone").await;
                redis = restart_redis(redis).await;
            }
            Fault::FreezeRedis(hung_for) => {
                redis = signal_redis(redis, RedisServer::freeze).await;
                tokio::time::sleep(hung_for).await;
                let seen = writers.failures_since(started).len();
                redis = signal_redis(redis, RedisServer::thaw).await;
                assert!(seen > 0, "round {round}: no writer call failed while redis was hung for {hung_for:?}");
            }
        }
        let wanted = writers.acked() + WRITES_BETWEEN;
        writers
            .wait_acked(wanted, RECOVERY_LIMIT, &format!("writes after recovery from {fault:?} round {round}"))
            .await;
    }
    let journal = writers.stop().await;
    node.assert_running();

    for failure in &journal.failures {
        assert!(fault.allows(failure.code), "unexpected failure during {fault:?}: {failure:?}");
    }
    assert_no_patient_data(&journal.failures, &patients);

    // The events first: verify() sends creates again, and their idempotent answers are audited.
    let mut registry = PointerRegistryClient::new(channel.clone());
    let mut audit = AuditLogClient::new(channel.clone());
    let mut pointers = Vec::new();
    let mut logged = Vec::new();
    for patient in &patients {
        pointers.extend(all_pointers(&mut registry, patient).await);
        logged.extend(access_log(&mut audit, patient).await);
    }
    let exported = export(&mut audit).await;
    let in_logs = check_write_events("access logs", &pointers, &logged, &journal);
    let in_export = check_write_events("export", &pointers, &exported, &journal);
    eprintln!(
        "{fault:?} x{rounds}, {WRITERS} writers over {WRITER_PATIENTS} patients: acknowledged {:?}, failures {:?}\n  \
         {in_logs}\n  {in_export}",
        journal.ops(),
        journal.failure_summary(),
    );

    let verified = verify(&mut registry, &patients, &journal).await;
    eprintln!("{fault:?}: {verified}");
    assert!(verified.acked_writes >= 80, "too few acknowledged writes to mean anything: {verified}");
    in_logs.assert_complete();
    in_export.assert_complete();
    drop(node);
    drop(redis);
}

async fn wait_for_failures(writers: &Writers, since: Instant, what: &str) {
    eventually(what, HEALTH_LIMIT, || async {
        match writers.failures_since(since).len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} failures since the fault")),
        }
    })
    .await;
}

async fn signal_redis(mut redis: RedisServer, signal: fn(&mut RedisServer)) -> RedisServer {
    blocking(move || {
        signal(&mut redis);
        redis
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_registry_mid_write_leaves_no_pointer_without_the_event_of_its_write() {
    no_write_without_its_event(Fault::KillRegistry, 4, "AK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_write_leaves_no_pointer_without_the_event_of_its_write() {
    no_write_without_its_event(Fault::KillRedis, 2, "AR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_hung_for_5s_mid_write_leaves_no_pointer_without_the_event_of_its_write() {
    no_write_without_its_event(Fault::FreezeRedis(Duration::from_secs(5)), 1, "AF").await;
}
