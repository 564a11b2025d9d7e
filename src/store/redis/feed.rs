//! `ChangeFeed` on Redis (standalone only): changes from the feed stream the write scripts append
//! to (read through `stream`), its latest cursor, and snapshot pages by SCAN over the patients.

use super::connection::Connection;
use super::stream::{self, stream_position};
use super::{encoding, keys, RedisStore};
use crate::store::feed::{self, Change, ChangeFeed, SnapshotPage};
use crate::store::StoreError;
use async_trait::async_trait;

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
        let Some(info) = self.stream_info(keys::FEED).await? else {
            // No stream: no change yet. `0-0` is before every id Redis will generate.
            return Ok("0-0".into());
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
}
