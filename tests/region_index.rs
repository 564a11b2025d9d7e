//! The national index's storage contract (`RegionIndex`), on every backend: memory, a private
//! redis-server and a 3-master Redis Cluster (where a resync's sweep must SCAN every master).

use chrono::{TimeZone, Utc};
use nrl_registry::domain::{Coding, NhsNumber, PointerIdCodec, PointerTypeCatalogue, RegionCode};
use nrl_registry::store::index::{IndexEntry, IndexUpdate, RegionIndex};
use nrl_registry::store::memory::MemoryStore;
use nrl_registry::store::redis::{RedisConfig, RedisStore};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use testkit::fixtures::new_patient;
use testkit::redis::{RedisCluster, RedisOptions, RedisServer};

fn region(code: &str) -> RegionCode {
    RegionCode::parse(code).expect("region code")
}

fn entry(codec: &PointerIdCodec, nhs: NhsNumber, code: &str, generation: u64) -> IndexUpdate {
    let id = codec.generate(nhs);
    IndexUpdate {
        nhs_number: nhs,
        id,
        current: Some(IndexEntry {
            id,
            region: region(code),
            pointer_type: Coding { code: "736253002".into(), display: "Mental health crisis plan".into() },
            updated_at: Utc.timestamp_millis_opt(1_763_700_000_000).single().expect("time"),
            generation,
        }),
    }
}

async fn regions_of(index: &dyn RegionIndex, nhs: NhsNumber) -> BTreeSet<String> {
    let (entries, _) = index.index_entries(nhs).await.expect("index entries");
    entries.iter().map(|e| e.region.to_string()).collect()
}

/// 40 patients (spread over every master of a cluster), each in QWO and QF7. A resync of QWO at
/// generation 10 rewrote the first 20 patients' QWO entries; the sweep removes the other 20's
/// QWO entries and nothing of QF7, and a second sweep finds nothing left to remove.
async fn a_sweep_removes_only_the_regions_entries_older_than_the_resync(index: &dyn RegionIndex) {
    let codec = PointerIdCodec::random();
    let patients: Vec<NhsNumber> =
        (0..40).map(|_| NhsNumber::parse(&new_patient()).expect("nhs")).collect::<BTreeSet<_>>().into_iter().collect();
    let mut updates = Vec::new();
    for (i, nhs) in patients.iter().enumerate() {
        updates.push(entry(&codec, *nhs, "QWO", if i < 20 { 10 } else { 0 }));
        updates.push(entry(&codec, *nhs, "QF7", 0));
    }
    index.index_changes(&updates).await.expect("index changes");
    assert_eq!(regions_of(index, patients[30]).await, BTreeSet::from(["QF7".to_string(), "QWO".to_string()]));

    let removed = index.sweep_region(&region("QWO"), 10).await.expect("sweep");
    assert_eq!(removed, (patients.len() - 20) as u64, "every QWO entry older than the resync, and only those");
    for (i, nhs) in patients.iter().enumerate() {
        let expected: BTreeSet<String> =
            if i < 20 { ["QF7", "QWO"].map(String::from).into() } else { ["QF7"].map(String::from).into() };
        assert_eq!(regions_of(index, *nhs).await, expected, "patient {i}");
    }
    assert_eq!(index.sweep_region(&region("QWO"), 10).await.expect("sweep again"), 0, "idempotent");
    assert_eq!(index.sweep_region(&region("QE1"), u64::MAX).await.expect("sweep a region with nothing"), 0);
}

fn catalogue() -> Arc<PointerTypeCatalogue> {
    Arc::new(PointerTypeCatalogue::default_catalogue())
}

async fn redis_store(url: &str) -> RedisStore {
    let mut config = RedisConfig::parse(url).expect("url");
    config.timeout = Duration::from_secs(3);
    RedisStore::connect(&config, catalogue()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sweep() {
    a_sweep_removes_only_the_regions_entries_older_than_the_resync(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sweep() {
    let server =
        tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default())).await.expect("redis-server");
    a_sweep_removes_only_the_regions_entries_older_than_the_resync(&redis_store(&server.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sweep() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.expect("redis cluster");
    a_sweep_removes_only_the_regions_entries_older_than_the_resync(&redis_store(&cluster.url()).await).await;
}
