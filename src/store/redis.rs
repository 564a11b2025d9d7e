//! The Redis store, standalone or Redis Cluster, for anything real.
//!
//! Layout and atomicity: see `keys` (every key of a patient shares the patient's hash slot) and
//! `scripts` (each patient-level write is one Lua script). Values are compact protobuf (`encoding`).
//! Reads are one round trip: a patient's pointers are one HGETALL; a pointer by id is one HGET,
//! because the id itself names the patient (`domain::PointerIdCodec`).
//!
//! Outage behaviour: every call is bounded by `timeout` and fails with `Unavailable` rather than
//! hang; the connection (redis-rs ConnectionManager or cluster connection) reconnects by itself.
//!
//! Code map: this file holds `RedisStore`, its startup and the helpers every port uses (`bounded`,
//! `decode`). `config` parses the URL; `connection` is the one handle over either topology (ASK
//! redirects, the settings check, the shared id key). One module per port: `pointers`
//! (`PointerStore`, WAIT for replicas), `audit` (`AuditStore`), `feed` (`ChangeFeed`), `index`
//! (`RegionIndex`). Shared by the ports: `stream` (a stream page after a cursor, for the audit
//! export and the feed) and `scan` (SCAN on every master, for snapshots and the index sweep).

mod audit;
mod config;
mod connection;
mod encoding;
mod feed;
mod index;
mod keys;
mod pointers;
mod scan;
mod scripts;
mod stream;

pub use config::{redact, RedisConfig};

use connection::{check_settings, connect, load_id_key, Connection};

use super::{budget, StoreError};
use crate::domain::{NhsNumber, Pointer, PointerIdCodec, PointerTypeCatalogue};
use redis::RedisError;
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
    /// One Redis call, bounded by the store timeout or by what is left of the call's budget
    /// (`store::budget`), whichever is less.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        let limit = budget::bound(self.timeout);
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!("redis did not answer within {limit:?}"))),
        }
    }

    fn decode(&self, nhs: NhsNumber, id: &[u8], value: &[u8]) -> Result<Pointer, StoreError> {
        encoding::decode(nhs, id, value, &self.catalogue)
    }
}
