//! SCAN over every key matching a pattern, on standalone Redis or on each master of a cluster;
//! the feed's snapshot pages and the region index's sweep both walk the keyspace with it.

use super::connection::Connection;
use super::RedisStore;
use crate::store::StoreError;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::Value;
use std::collections::HashMap;
use std::future::Future;

impl RedisStore {
    /// One SCAN step on one node: (next cursor, "0" when done; keys matching `pattern`).
    pub(super) async fn scan_page(
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
    pub(super) async fn scan_all<F, Fut>(&self, pattern: &str, mut visit: F) -> Result<(), StoreError>
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
