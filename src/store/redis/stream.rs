//! Reading a stream by cursor, shared by the audit export and the change feed: one XRANGE page
//! reader, the check that the retention has not passed a cursor (from XINFO STREAM, which the
//! feed's latest cursor reads too), and stream ids as positions.

use super::{keys, RedisStore};
use crate::store::StoreError;
use std::collections::HashMap;

/// A stream read by cursor: its key, and what its entries and their payload are called in errors.
pub(super) struct Stream {
    key: &'static str,
    entry: &'static str,
    payload: &'static str,
}

/// The audit export (`keys::AUDIT_EXPORT`): one encoded `AuditEvent` per entry.
pub(super) const AUDIT_EXPORT: Stream = Stream { key: keys::AUDIT_EXPORT, entry: "audit entry", payload: "event" };
/// The change feed (`keys::FEED`, standalone Redis): one encoded `Change` per entry.
pub(super) const FEED: Stream = Stream { key: keys::FEED, entry: "feed entry", payload: "change" };

/// The field every entry keeps its payload in: the scripts XADD it as `e`.
const PAYLOAD_FIELD: &str = "e";

/// An XRANGE reply: each entry's id and its (field, value) pairs.
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

impl RedisStore {
    /// Up to `limit` entries of `stream` strictly after the entry `after` (from the oldest kept when
    /// `None`), oldest first, each decoded from its id and payload by `decode`. Fails with
    /// `OutOfRange` when the retention has passed `after` (see `check_kept`).
    pub(super) async fn stream_page<T>(
        &self,
        stream: &Stream,
        after: Option<&str>,
        limit: usize,
        decode: impl Fn(String, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        if let Some(cursor) = after {
            self.check_kept(stream.key, cursor).await?;
        }
        let mut connection = self.connection.clone();
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".into());
        let entries: Entries = self
            .bounded(
                redis::cmd("XRANGE")
                    .arg(stream.key)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut connection),
            )
            .await?;
        entries
            .into_iter()
            .map(|(id, fields)| {
                let bytes =
                    fields.into_iter().find(|(name, _)| name == PAYLOAD_FIELD).map(|(_, value)| value).ok_or_else(
                        || StoreError::Corrupt(format!("{} {id} has no {}", stream.entry, stream.payload)),
                    )?;
                decode(id, &bytes)
            })
            .collect()
    }

    /// Fails with `OutOfRange` when `cursor` points before the oldest entry `stream` still keeps.
    ///
    /// Trimmed history shows as entries-added > length, with the cursor older than the first entry
    /// kept. (Redis 7.0 leaves max-deleted-entry-id at 0-0 when MAXLEN trims, so it cannot be
    /// used.) A cursor equal to the last trimmed entry is reported too: the reader then re-reads
    /// what is kept, which is harmless.
    async fn check_kept(&self, stream: &str, cursor: &str) -> Result<(), StoreError> {
        // No stream yet: nothing was ever written, so nothing was trimmed.
        let info = self.stream_info(stream).await?.unwrap_or_default();
        let number = |name: &str| info.get(name).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
        let first_kept = info
            .get("recorded-first-entry-id")
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .and_then(|id| stream_position(&id));
        let trimmed = matches!((number("entries-added"), number("length")), (Some(added), Some(kept)) if added > kept);
        match (trimmed, first_kept, stream_position(cursor)) {
            (true, Some(first_kept), Some(position)) if position < first_kept => Err(StoreError::OutOfRange(format!(
                "cursor {cursor} is older than the oldest entry kept; the retention has passed it"
            ))),
            _ => Ok(()),
        }
    }

    /// XINFO STREAM of `stream`, or `None` while it does not exist (nothing was ever appended).
    pub(super) async fn stream_info(&self, stream: &str) -> Result<Option<HashMap<String, redis::Value>>, StoreError> {
        let mut connection = self.connection.clone();
        match self.bounded(redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(&mut connection)).await {
            Ok(info) => Ok(Some(info)),
            // Redis answers XINFO on a missing key with an error, which `bounded` makes Unavailable.
            Err(StoreError::Unavailable(e)) if e.contains("no such key") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Stream ids as (ms, seq) for comparison.
pub(super) fn stream_position(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
