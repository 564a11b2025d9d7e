//! The Redis store, standalone or Redis Cluster, for anything real.
//!
//! Layout and atomicity: see `keys` (every key of a patient shares the patient's hash slot) and
//! `scripts` (each patient-level write is one Lua script). Values are compact protobuf (`encoding`).
//! Reads are one round trip: a patient's pointers are one HGETALL; a pointer by id is one HGET,
//! because the id itself names the patient (`domain::PointerIdCodec`).
//!
//! Outage behaviour: every call is bounded by `timeout` and fails with `Unavailable` rather than
//! hang; the connection (redis-rs ConnectionManager or cluster connection) reconnects by itself.

mod audit;
mod config;
mod connection;
mod encoding;
mod keys;
mod pointers;
mod scripts;
mod stream;

pub use config::{redact, RedisConfig};

use connection::{check_settings, connect, load_id_key, Connection};
use stream::stream_position;

use super::feed::{self, Change, ChangeFeed, SnapshotPage};
use super::index::{IndexEntry, IndexUpdate, RegionIndex};
use super::StoreError;
use crate::domain::{NhsNumber, Pointer, PointerIdCodec, PointerTypeCatalogue, RegionCode};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisError, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisStore {
    connection: Connection,
    catalogue: Arc<PointerTypeCatalogue>,
    ids: PointerIdCodec,
    timeout: Duration,
    wait: Option<(u32, Duration)>,
    backend: &'static str,
    /// The feed's MAXLEN when this store writes a feed (standalone Redis), else `None`.
    feed: Option<u64>,
    /// The audit export's approximate MAXLEN.
    audit_export_retention: u64,
    cluster: bool,
}

fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

impl RedisStore {
    /// Connects (retrying for up to `startup_wait`) and loads, or creates, the shared id key.
    pub async fn connect(config: &RedisConfig, catalogue: Arc<PointerTypeCatalogue>) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + config.startup_wait;
        let mut connection = loop {
            match tokio::time::timeout(config.timeout * 2, connect(config)).await {
                Ok(Ok(connection)) => break connection,
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::Unavailable(format!(
                            "cannot reach redis at {}: {why}",
                            config.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>().join(",")
                        )));
                    }
                    tracing::warn!(error = %why, "redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let key = load_id_key(&mut connection, config.timeout).await?;
        check_settings(&mut connection, config.timeout).await;
        Ok(Self {
            connection,
            catalogue,
            ids: PointerIdCodec::new(key),
            timeout: config.timeout,
            wait: (config.wait_replicas > 0).then_some((config.wait_replicas, config.wait_timeout)),
            backend: if config.cluster { "redis-cluster" } else { "redis" },
            feed: (!config.cluster).then_some(config.feed_retention),
            audit_export_retention: config.audit_export_retention,
            cluster: config.cluster,
        })
    }

    /// Runs one Redis call under the store timeout.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!("redis did not answer within {:?}", self.timeout))),
        }
    }

    fn decode(&self, nhs: NhsNumber, id: &[u8], value: &[u8]) -> Result<Pointer, StoreError> {
        encoding::decode(nhs, id, value, &self.catalogue)
    }
}

#[async_trait]
impl ChangeFeed for RedisStore {
    async fn changes_after(&self, after: Option<String>, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.feed_supported()?;
        let after = after.as_deref();
        self.stream_page(&stream::FEED, after, limit, |id, bytes| encoding::decode_change(id, bytes, &self.catalogue))
            .await
            .map_err(|e| match (e, after) {
                // Only a cursor the retention has passed is out of range; the feed's own error
                // tells the follower to resynchronise.
                (StoreError::OutOfRange(_), Some(cursor)) => feed::cursor_out_of_range(cursor),
                (other, _) => other,
            })
    }

    fn valid_feed_cursor(&self, cursor: &str) -> bool {
        stream_position(cursor).is_some()
    }

    async fn latest_cursor(&self) -> Result<String, StoreError> {
        self.feed_supported()?;
        let mut connection = self.connection.clone();
        let info: HashMap<String, redis::Value> =
            match self.bounded(redis::cmd("XINFO").arg("STREAM").arg(keys::FEED).query_async(&mut connection)).await {
                Ok(info) => info,
                // No stream: no change yet. `0-0` is before every id Redis will generate.
                Err(StoreError::Unavailable(e)) if e.contains("no such key") => return Ok("0-0".into()),
                Err(e) => return Err(e),
            };
        info.get("last-generated-id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .ok_or_else(|| StoreError::Corrupt("the feed stream has no last-generated-id".into()))
    }

    /// A SCAN over the patients' hashes: `after` is the SCAN cursor. SCAN returns every key that
    /// exists for the whole scan at least once (a key may come twice: applying is idempotent).
    async fn snapshot_page(&self, after: Option<String>, limit: usize) -> Result<SnapshotPage, StoreError> {
        self.feed_supported()?;
        let Connection::Single(connection) = &self.connection else {
            return Err(StoreError::Unsupported("snapshots need a standalone Redis store".into()));
        };
        let cursor = after.unwrap_or_else(|| "0".into());
        let (next, keys) = self.scan_page(connection, &cursor, "nrl:{*}:p", limit).await?;
        let reads = keys.iter().map(|key| {
            let mut connection = self.connection.clone();
            async move {
                let fields: Vec<(Vec<u8>, Vec<u8>)> =
                    self.bounded(redis::cmd("HGETALL").arg(key).query_async(&mut connection)).await?;
                Ok::<_, StoreError>((key, fields))
            }
        });
        let mut page = SnapshotPage { next: (next != "0").then_some(next), ..SnapshotPage::default() };
        for read in futures::future::join_all(reads).await {
            let (key, fields) = read?;
            let nhs = keys::patient_of(key).ok_or_else(|| StoreError::Corrupt(format!("key {key}")))?;
            for (field, value) in &fields {
                if keys::is_pointer_field(field) {
                    page.pointers.push(self.decode(nhs, field, value)?);
                } else if field.as_slice() == keys::RESTRICTED_FIELD.as_bytes() {
                    page.restricted.push(nhs);
                }
            }
        }
        Ok(page)
    }
}

impl RedisStore {
    fn feed_supported(&self) -> Result<(), StoreError> {
        match self.feed {
            Some(_) => Ok(()),
            None => Err(StoreError::Unsupported(
                "the change feed needs a memory or standalone Redis store (on Redis Cluster it would span slots)"
                    .into(),
            )),
        }
    }

    /// One SCAN step on one node: (next cursor, "0" when done; keys matching `pattern`).
    async fn scan_page(
        &self,
        connection: &ConnectionManager,
        cursor: &str,
        pattern: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), StoreError> {
        let mut connection = connection.clone();
        self.bounded(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut connection),
        )
        .await
    }

    /// One SCAN step on the master serving `slot` (Redis Cluster).
    async fn scan_page_at(
        &self,
        connection: &ClusterConnection,
        slot: u16,
        cursor: &str,
        pattern: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), StoreError> {
        let mut connection = connection.clone();
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
        let value = self.bounded(connection.route_command(scan, route)).await?;
        redis::from_redis_value(value).map_err(|e| StoreError::Corrupt(format!("SCAN reply: {e}")))
    }

    /// Every key matching `pattern`, page by page, on every master; `visit` gets each page.
    async fn scan_all<F, Fut>(&self, pattern: &str, mut visit: F) -> Result<(), StoreError>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        const PAGE: usize = 1000;
        match &self.connection {
            Connection::Single(connection) => {
                let mut cursor = "0".to_string();
                loop {
                    let (next, keys) = self.scan_page(connection, &cursor, pattern, PAGE).await?;
                    visit(keys).await?;
                    if next == "0" {
                        return Ok(());
                    }
                    cursor = next;
                }
            }
            Connection::Cluster(connection) => {
                for slot in self.one_slot_per_master(connection).await? {
                    let mut cursor = "0".to_string();
                    loop {
                        let (next, keys) = self.scan_page_at(connection, slot, &cursor, pattern, PAGE).await?;
                        visit(keys).await?;
                        if next == "0" {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(())
            }
        }
    }

    /// A slot served by each master (from CLUSTER SLOTS), to route a per-node command like SCAN.
    async fn one_slot_per_master(&self, connection: &ClusterConnection) -> Result<Vec<u16>, StoreError> {
        let mut connection = connection.clone();
        let value = self
            .bounded(connection.route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            ))
            .await?;
        let ranges: Vec<Value> =
            redis::from_redis_value(value).map_err(|e| StoreError::Corrupt(format!("CLUSTER SLOTS: {e}")))?;
        let mut masters: HashMap<(String, u16), u16> = HashMap::new();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let start = parts.first().and_then(|v| redis::from_redis_value::<u16>(v.clone()).ok());
            let master = parts.get(2).and_then(|v| redis::from_redis_value::<Vec<Value>>(v.clone()).ok());
            let address = master.and_then(|m| {
                let host = m.first().and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())?;
                let port = m.get(1).and_then(|v| redis::from_redis_value::<u16>(v.clone()).ok())?;
                Some((host, port))
            });
            if let (Some(start), Some(address)) = (start, address) {
                masters.entry(address).or_insert(start);
            }
        }
        Ok(masters.into_values().collect())
    }
}

#[async_trait]
impl RegionIndex for RedisStore {
    /// HSET/HDEL are idempotent, so a replay after a crash converges to the same index.
    async fn index_changes(&self, updates: &[IndexUpdate]) -> Result<(), StoreError> {
        let calls = updates.iter().map(|update| {
            let mut command = match &update.current {
                Some(_) => redis::cmd("HSET"),
                None => redis::cmd("HDEL"),
            };
            command.arg(keys::index(update.nhs_number)).arg(update.id.as_bytes().as_slice());
            if let Some(entry) = &update.current {
                command.arg(encoding::encode_index_entry(entry));
            }
            let mut connection = self.connection.clone();
            async move { self.bounded(command.query_async::<i64>(&mut connection)).await }
        });
        // Updates to one pointer come from one region's feed, in order; sends on one connection
        // keep their order, so the last write wins as it should.
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    async fn index_entries(&self, nhs_number: NhsNumber) -> Result<(Vec<IndexEntry>, bool), StoreError> {
        let mut connection = self.connection.clone();
        // Both keys are in the patient's slot: one pipeline, one round trip, on a cluster too.
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(keys::index(nhs_number));
        pipe.cmd("HEXISTS").arg(keys::pointers(nhs_number)).arg(keys::RESTRICTED_FIELD);
        let (fields, restricted_here): (Vec<(Vec<u8>, String)>, bool) =
            self.bounded(pipe.query_async(&mut connection)).await?;
        let mut restricted = restricted_here;
        let mut entries = Vec::with_capacity(fields.len());
        for (field, value) in &fields {
            match keys::restricting_region(field) {
                Some(_) => restricted = true,
                None => entries.push(encoding::decode_index_entry(field, value, &self.catalogue)?),
            }
        }
        Ok((entries, restricted))
    }

    async fn follow_cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("GET").arg(keys::follow_cursor(source)).query_async(&mut connection)).await
    }

    async fn set_follow_cursor(&self, source: &str, cursor: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: () = self
            .bounded(redis::cmd("SET").arg(keys::follow_cursor(source)).arg(cursor).query_async(&mut connection))
            .await?;
        Ok(())
    }

    async fn set_region_restriction(
        &self,
        nhs_number: NhsNumber,
        region: &RegionCode,
        restricted: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut command = match restricted {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        command.arg(keys::index(nhs_number)).arg(keys::region_restriction_field(region));
        if let Some(generation) = restricted {
            command.arg(generation);
        }
        let _: i64 = self.bounded(command.query_async(&mut connection)).await?;
        Ok(())
    }

    /// SCANs every patient's index hash (on every master of a cluster) and HDELs the region's
    /// entries and restriction older than `generation`. Only this region's follower writes this region's entries,
    /// and it is the one sweeping, so nothing it removes can be a newer write.
    async fn sweep_region(&self, region: &RegionCode, generation: u64) -> Result<u64, StoreError> {
        let removed = std::sync::atomic::AtomicU64::new(0);
        let removed_ref = &removed;
        self.scan_all("nrl:{*}:i", |keys| async move {
            let sweeps = keys.into_iter().map(|key| async move {
                let mut connection = self.connection.clone();
                let fields: Vec<(Vec<u8>, String)> =
                    self.bounded(redis::cmd("HGETALL").arg(&key).query_async(&mut connection)).await?;
                let mut stale = Vec::new();
                for (field, value) in &fields {
                    let (of_region, written) = match keys::restricting_region(field) {
                        Some(restricting) => (restricting == region.as_str(), value.parse::<u64>().unwrap_or(0)),
                        None => {
                            let entry = encoding::decode_index_entry(field, value, &self.catalogue)?;
                            (entry.region == *region, entry.generation)
                        }
                    };
                    if of_region && written < generation {
                        stale.push(field.clone());
                    }
                }
                if !stale.is_empty() {
                    let n: u64 =
                        self.bounded(redis::cmd("HDEL").arg(&key).arg(&stale).query_async(&mut connection)).await?;
                    removed_ref.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<(), StoreError>(())
            });
            for result in futures::future::join_all(sweeps).await {
                result?;
            }
            Ok(())
        })
        .await?;
        Ok(removed.into_inner())
    }
}
