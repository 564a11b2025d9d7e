//! The Redis Cluster client under topology changes, with real parts only: a real cluster of
//! redis-server processes (the `testkit::redis` harness) and real gRPC over real sockets.
//!
//! The guarantee under test: when a patient's hash slot moves to another master (resharding) or
//! its master is replaced by its replica (a coordinated manual failover), the registry follows by
//! itself (MOVED/ASK redirects, slot map refresh), keeps serving reads and writes for that patient,
//! and loses no acknowledged write.
//!
//! The writer and the verification are the ones `durability.rs` uses (`testkit::writer`).

use testkit::eventually;
use testkit::writer::*;

use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use nrl_registry::store::redis::RedisConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::fixtures::{new_patient, query};
use testkit::redis::{key_slot, RedisCluster};
use testkit::TestServer;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The registry's bound on every store call (the default).
const STORE_TIMEOUT: Duration = Duration::from_millis(1000);
/// After a topology change, reads and writes for the patient must work again within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

fn cluster_store(url: &str) -> StoreConfig {
    let mut config = RedisConfig::parse(url).expect("harness url parses");
    assert!(config.cluster, "{url} names a cluster");
    config.timeout = STORE_TIMEOUT;
    config.startup_wait = Duration::from_secs(5);
    StoreConfig::Redis(config)
}

/// The harness blocks; these keep it off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking harness call panicked")
}

// ---------------------------------------------------------------------------------------------
// Cluster plumbing
// ---------------------------------------------------------------------------------------------

async fn start_cluster(masters: usize, replicas_per_master: usize) -> Arc<RedisCluster> {
    Arc::new(blocking(move || RedisCluster::start(masters, replicas_per_master)).await)
}

/// Runs blocking harness work on the cluster off the async workers.
async fn admin<T: Send + 'static>(
    cluster: &Arc<RedisCluster>,
    work: impl FnOnce(&RedisCluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    blocking(move || work(&cluster)).await
}

/// The keys a node holds in `slot` (a patient's slot holds the patient's pointers and audit stream).
fn slot_keys(cluster: &RedisCluster, port: u16, slot: u16) -> Vec<String> {
    let listing = cluster.cli(port, &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"]);
    listing.lines().map(str::trim).filter(|key| !key.is_empty()).map(str::to_string).collect()
}

async fn keys_in_slot(cluster: &Arc<RedisCluster>, port: u16, slot: u16) -> Vec<String> {
    admin(cluster, move |c| slot_keys(c, port, slot)).await
}

/// The patient's pointer hash, whose slot the tests move about.
fn pointers_key(patient: &str) -> String {
    format!("nrl:{{{patient}}}:p")
}

/// Stops every node off the async workers (the harness waits for each process to exit).
async fn stop_cluster(cluster: Arc<RedisCluster>) {
    blocking(move || drop(cluster)).await;
}

/// A patient's slot; every key of the patient carries the NHS number as its hash tag.
fn slot_of(patient: &str) -> u16 {
    let slot = key_slot(&pointers_key(patient));
    assert_eq!(slot, key_slot(patient), "the NHS number is the hash tag of the patient's key");
    slot
}

/// A look at a journal; the lock never outlives `look`.
fn read<T>(journal: &Mutex<Journal>, look: impl FnOnce(&Journal) -> T) -> T {
    look(&journal.lock().expect("journal lock"))
}

/// Four creates and a supersede of the first, journaled like the writer's writes; returns all of
/// the patient's pointers afterwards, by id.
async fn register_baseline(
    client: &mut PointerRegistryClient<Channel>,
    journal: &Mutex<Journal>,
    patient: &str,
) -> Vec<pb::Pointer> {
    let mut created = Vec::new();
    for k in 0..4 {
        let pointer = send(client, journal, patient, format!("B-C-{k}"), None).await;
        created.push(pointer.unwrap_or_else(|| panic!("baseline create: {:?}", read(journal, Journal::last_failures))));
    }
    send(client, journal, patient, "B-S-0".into(), Some(&created[0]))
        .await
        .unwrap_or_else(|| panic!("baseline supersede: {:?}", read(journal, Journal::last_failures)));
    by_id(all_pointers(client, patient).await)
}

fn by_id(mut pointers: Vec<pb::Pointer>) -> Vec<pb::Pointer> {
    pointers.sort_by(|a, b| a.id.cmp(&b.id));
    pointers
}

/// Sends until acknowledged (a fresh reference each attempt); panics after [`RECOVERY_LIMIT`].
async fn send_until_acked(
    client: &mut PointerRegistryClient<Channel>,
    journal: &Mutex<Journal>,
    patient: &str,
    tag: &str,
    old: Option<&pb::Pointer>,
) -> (pb::Pointer, Duration) {
    let started = Instant::now();
    for attempt in 0.. {
        if let Some(pointer) = send(client, journal, patient, format!("{tag}-{attempt}"), old).await {
            return (pointer, started.elapsed());
        }
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "{tag}: no write acknowledged within {RECOVERY_LIMIT:?}; last failures: {:?}",
            read(journal, Journal::last_failures)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop above only ends by returning or panicking")
}

/// `into`'s entries followed by `from`'s.
fn merge(into: &Mutex<Journal>, from: Journal) -> Journal {
    let mut journal = std::mem::take(&mut *into.lock().expect("journal lock"));
    journal.sent.extend(from.sent);
    journal.acked.extend(from.acked);
    journal.failures.extend(from.failures);
    journal.replayed.extend(from.replayed);
    journal
}

/// A topology change may cost a few UNAVAILABLE answers while it happens (a paused master, a
/// redirect chain longer than the client's retries), never anything else, never before it began,
/// and never with patient data in the message.
fn assert_only_unavailable(journal: &Journal, change_started: Instant, patient: &str) {
    for failure in &journal.failures {
        assert_eq!(failure.code, Code::Unavailable, "unexpected failure during a topology change: {failure:?}");
        assert!(failure.elapsed < HANG_LIMIT, "a call hung: {failure:?}");
        assert!(failure.started + failure.elapsed >= change_started, "a failure before the change: {failure:?}");
    }
    assert_no_patient_data(&journal.failures, &[patient.to_string()]);
}

/// Puts `slot` in the state `redis-cli --cluster reshard` leaves it in between MIGRATE and the
/// final SETSLOT NODE: IMPORTING on `dest`, MIGRATING on `source`, and every key of the slot
/// already moved to `dest`. Every command for the slot's keys is then answered ASK by `source`.
fn hold_mid_migration(cluster: &RedisCluster, slot: u16, source: u16, dest: u16) {
    let source_id = cluster.cli(source, &["CLUSTER", "MYID"]);
    let dest_id = cluster.cli(dest, &["CLUSTER", "MYID"]);
    let slot_arg = slot.to_string();
    assert_eq!(cluster.cli(dest, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source_id]), "OK");
    assert_eq!(cluster.cli(source, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &dest_id]), "OK");
    let keys = slot_keys(cluster, source, slot);
    let dest_port = dest.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &dest_port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    assert_eq!(cluster.cli(source, &migrate), "OK", "MIGRATE of {keys:?}");
}

/// Ends a [`hold_mid_migration`]: `dest` owns the slot on every master; waits until all agree.
fn finish_migration(cluster: &RedisCluster, slot: u16, dest: u16) {
    let dest_id = cluster.cli(dest, &["CLUSTER", "MYID"]);
    let slot_arg = slot.to_string();
    let mut masters = cluster.master_ports();
    masters.sort_by_key(|&port| port != dest);
    for port in masters {
        assert_eq!(cluster.cli(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &dest_id]), "OK");
    }
    cluster.wait_healthy();
    assert_eq!(cluster.master_of_slot(slot), dest);
}

// ---------------------------------------------------------------------------------------------
// 4. Resharding
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_slot_migration() {
    let cluster = start_cluster(3, 0).await;
    let server = TestServer::start(cluster_store(&cluster.url())).await;
    let mut client = server.registry();
    let patient = new_patient();
    let slot = slot_of(&patient);
    let journal = Mutex::new(Journal::default());
    let before = register_baseline(&mut client, &journal, &patient).await;
    assert_eq!(before.len(), 5, "four creates and one supersede: {before:?}");

    let masters = admin(&cluster, |c| c.master_ports()).await;
    let origin = admin(&cluster, move |c| c.master_of_slot(slot)).await;
    let target = *masters.iter().find(|&&port| port != origin).expect("another master");
    let third = *masters.iter().find(|&&port| port != origin && port != target).expect("a third master");
    let key = pointers_key(&patient);
    assert!(keys_in_slot(&cluster, origin, slot).await.contains(&key), "the patient's key lives on :{origin}");

    admin(&cluster, move |c| c.migrate_slot(slot, target)).await;
    assert_eq!(admin(&cluster, move |c| c.master_of_slot(slot)).await, target);
    assert!(keys_in_slot(&cluster, target, slot).await.contains(&key), "the key moved to :{target}");
    assert_eq!(keys_in_slot(&cluster, origin, slot).await, Vec::<String>::new(), "the slot's keys left :{origin}");

    // The registry's slot map is stale now: each of these is answered MOVED first, and must still
    // succeed at the first attempt, with the same data as before.
    assert_eq!(by_id(all_pointers(&mut client, &patient).await), before, "search after the move");
    for pointer in &before {
        let (got, _) = timed(client.get_pointer(pb::GetPointerRequest { id: pointer.id.clone() })).await;
        let got = got.unwrap_or_else(|e| panic!("GetPointer {} after the move: {e:?}", pointer.id)).pointer;
        assert_eq!(got.as_ref(), Some(pointer), "GetPointer after the move");
    }
    send(&mut client, &journal, &patient, "A-C-0".into(), None)
        .await
        .unwrap_or_else(|| panic!("create after the move: {:?}", read(&journal, Journal::last_failures)));
    let current = before.iter().find(|p| is_current(p)).expect("a current baseline pointer");
    let superseding = send(&mut client, &journal, &patient, "A-S-0".into(), Some(current))
        .await
        .unwrap_or_else(|| panic!("supersede after the move: {:?}", read(&journal, Journal::last_failures)));
    assert_eq!(superseding.supersedes, vec![current.id.clone()]);
    let failures = read(&journal, |j| j.last_failures());
    assert!(failures.is_empty(), "calls failed after the move: {failures:?}");

    // A second move while a writer keeps writing for the patient.
    let writer = Writer::spawn(server.channel.clone(), vec![patient.clone()], "W");
    writer.wait_acked(10, RECOVERY_LIMIT, "the writer's first writes").await;
    let acked_before_move = writer.acked();
    let move_started = Instant::now();
    admin(&cluster, move |c| c.migrate_slot(slot, third)).await;
    let acked_at_move = writer.acked();
    assert!(keys_in_slot(&cluster, third, slot).await.contains(&key), "the key moved to :{third}");
    writer.wait_acked(acked_at_move + 10, RECOVERY_LIMIT, "the writer's writes after the second move").await;
    let writes = writer.stop().await;
    assert_only_unavailable(&writes, move_started, &patient);

    let journal = merge(&journal, writes);
    let verified = verify(&mut client, std::slice::from_ref(&patient), &journal).await;
    eprintln!(
        "slot migration: {} writes acknowledged while the slot moved; failures {:?}; {verified}; replayed first \
         sends: {:?}",
        acked_at_move - acked_before_move,
        journal.failure_summary(),
        journal.replayed
    );
    server.stop().await.expect("the registry stops cleanly");
    stop_cluster(cluster).await;
}

/// While a slot is held mid-migration every command for its keys is answered ASK, and the client
/// must send ASKING and then the command to the importing node. redis-rs (1.8.1, and 2.0.0-rc.2)
/// sends the two as separate requests on the multiplexed connection it shares between concurrent
/// calls, so another call's command can land between them, use up the one-shot ASKING flag, and
/// the redirected command is answered MOVED back to the old owner, and the call failed with
/// UNAVAILABLE. The store now sends ASKING and the command as one pipeline (`follow_ask` in
/// src/store/redis.rs); this test holds it to that: no call may fail during the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_ask_redirects_while_a_slot_is_held_mid_migration() {
    let cluster = start_cluster(3, 0).await;
    let server = TestServer::start(cluster_store(&cluster.url())).await;
    let mut client = server.registry();
    let patient = new_patient();
    let slot = slot_of(&patient);
    let journal = Mutex::new(Journal::default());
    let before = register_baseline(&mut client, &journal, &patient).await;
    let source = admin(&cluster, move |c| c.master_of_slot(slot)).await;
    let masters = admin(&cluster, |c| c.master_ports()).await;
    let dest = *masters.iter().find(|&&port| port != source).expect("another master");

    let writer = Writer::spawn(server.channel.clone(), vec![patient.clone()], "W");
    writer.wait_acked(5, RECOVERY_LIMIT, "the writer's first writes").await;
    let hold_started = Instant::now();
    admin(&cluster, move |c| hold_mid_migration(c, slot, source, dest)).await;
    let key = pointers_key(&patient);
    assert!(keys_in_slot(&cluster, dest, slot).await.contains(&key), "the key is on the importing node :{dest}");
    assert_eq!(keys_in_slot(&cluster, source, slot).await, Vec::<String>::new(), "the keys left :{source}");

    // Concurrent readers beside the writer, as in production.
    let acked_at_hold = writer.acked();
    let readers = (0..3).map(|_| {
        let mut client = client.clone();
        let patient = patient.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..20 {
                let request = pb::SearchPointersRequest {
                    query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
                    ..Default::default()
                };
                outcomes.push(timed(client.search_pointers(request)).await.0.map(|page| page.pointers.len()));
            }
            outcomes
        })
    });
    let searches: Vec<Result<usize, Status>> =
        futures::future::join_all(readers).await.into_iter().flat_map(|r| r.expect("reader task")).collect();
    writer.wait_acked(acked_at_hold + 10, RECOVERY_LIMIT, "writes answered ASK during the hold").await;
    let acked_in_hold = writer.acked() - acked_at_hold;
    let failed_in_hold = writer.read(|j| j.failures.len());
    let failed_searches: Vec<&Status> = searches.iter().filter_map(|r| r.as_ref().err()).collect();

    admin(&cluster, move |c| finish_migration(c, slot, dest)).await;
    let writes = writer.stop().await;
    let journal = merge(&journal, writes);
    eprintln!(
        "mid-migration hold: {acked_in_hold} writes followed ASK; {} of {} searches and {failed_in_hold} writes \
         failed; failures {:?}",
        failed_searches.len(),
        searches.len(),
        journal.failure_summary()
    );
    assert!(
        failed_searches.is_empty() && journal.failures.is_empty(),
        "calls failed while the slot was held mid-migration (nothing changed during the hold): {} searches, e.g. \
         {:?}; writes: {:?}",
        failed_searches.len(),
        failed_searches.first(),
        journal.last_failures()
    );
    assert_only_unavailable(&journal, hold_started, &patient);
    for found in searches.iter().flatten() {
        assert!(*found >= before.len(), "a search during the hold missed pointers: {found} < {}", before.len());
    }
    let verified = verify(&mut client, std::slice::from_ref(&patient), &journal).await;
    eprintln!("mid-migration hold: {verified}");
    server.stop().await.expect("the registry stops cleanly");
    stop_cluster(cluster).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Failover
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_failover() {
    let cluster = start_cluster(3, 1).await;
    let server = TestServer::start(cluster_store(&cluster.url())).await;
    let mut client = server.registry();
    let patient = new_patient();
    let slot = slot_of(&patient);
    let journal = Mutex::new(Journal::default());
    let before = register_baseline(&mut client, &journal, &patient).await;

    let writer = Writer::spawn(server.channel.clone(), vec![patient.clone()], "W");
    writer.wait_acked(10, RECOVERY_LIMIT, "the writer's first writes").await;
    let old_master = admin(&cluster, move |c| c.master_of_slot(slot)).await;
    let started = Instant::now();
    let new_master = admin(&cluster, move |c| c.failover(old_master)).await;
    let failover_took = started.elapsed();
    assert_ne!(new_master, old_master, "failover hands the slot to the replica");
    assert_eq!(admin(&cluster, move |c| c.master_of_slot(slot)).await, new_master);
    assert!(
        keys_in_slot(&cluster, new_master, slot).await.contains(&pointers_key(&patient)),
        "the new master holds the patient's key"
    );

    // Reads and writes for the patient work again within the deadline, without a registry restart.
    let (_, read_back) = eventually("a search after the failover", RECOVERY_LIMIT, || {
        let mut client = client.clone();
        let request = pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
            ..Default::default()
        };
        async move { timed(client.search_pointers(request)).await.0.map_err(|status| format!("{status:?}")) }
    })
    .await;
    let (_, write_back) = send_until_acked(&mut client, &journal, &patient, "F-C", None).await;
    let current = before.iter().find(|p| is_current(p)).expect("a current baseline pointer");
    send_until_acked(&mut client, &journal, &patient, "F-S", Some(current)).await;
    let acked_after = writer.acked();
    writer.wait_acked(acked_after + 10, RECOVERY_LIMIT, "the writer's writes after the failover").await;
    let writes = writer.stop().await;

    // CLUSTER FAILOVER (not FORCE) waits for the replica to catch up with the paused master, so
    // every write acknowledged before or during it is on the new master.
    let journal = merge(&journal, writes);
    assert_only_unavailable(&journal, started, &patient);
    let verified = verify(&mut client, std::slice::from_ref(&patient), &journal).await;
    eprintln!(
        "failover: took {failover_took:?}; reads back {read_back:?} and writes back {write_back:?} after it; \
         failures {:?}; {verified}; replayed first sends: {:?}",
        journal.failure_summary(),
        journal.replayed
    );
    server.stop().await.expect("the registry stops cleanly");
    stop_cluster(cluster).await;
}
