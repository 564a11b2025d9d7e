//! `RegionIndex` on Redis: the national index of each patient (a HASH in the patient's slot), the
//! followers' cursors, and the resync sweep of a region's stale entries.

use super::{encoding, keys, RedisStore};
use crate::domain::{NhsNumber, RegionCode};
use crate::store::index::{IndexEntry, IndexUpdate, RegionIndex};
use crate::store::StoreError;
use async_trait::async_trait;

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
