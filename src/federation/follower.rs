//! The national node's follower: one task per regional node, following its change feed from the
//! cursor stored in the national index and applying each change to the index.
//!
//! At-least-once: the cursor is stored after the change is applied, and applying is idempotent, so a
//! crash in between replays one change harmlessly. A regional node that is down is retried with
//! backoff.
//!
//! Resynchronisation: with no cursor yet (a new national node, or a new region), or when the
//! regional feed no longer holds our cursor (OUT_OF_RANGE: we were away longer than its retention,
//! or the node restarted on a store that lost its history), the follower reads a snapshot of the
//! region (`SnapshotPointers`): the feed cursor first, then every current pointer and restricted
//! patient. It writes each index entry and restriction stamped with the resync's generation, sweeps
//! the region's entries the snapshot did not rewrite, stores the cursor and follows from there.
//!
//! Restriction changes set or clear the region's restriction of the patient in the index; while
//! any region restricts a patient, LocatePatient on the national node treats the patient as
//! restricted. A crash mid-resync leaves
//! the cursor unset, so the next start resynchronises again.

use super::feed_service::index_update;
use super::peers::Peers;
use crate::domain::{NhsNumber, RegionCode};
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::change_feed_client::ChangeFeedClient;
use crate::registry::ReferenceData;
use crate::store::index::RegionIndex;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts a follower for every regional node in `peers`.
pub fn spawn(
    peers: Arc<Peers>,
    index: Arc<dyn RegionIndex>,
    reference: Arc<ReferenceData>,
    token: Option<String>,
) -> Vec<JoinHandle<()>> {
    peers
        .regions()
        .map(|(region, url)| {
            let follower = Follower {
                region: region.clone(),
                url: url.to_string(),
                peers: peers.clone(),
                index: index.clone(),
                reference: reference.clone(),
                token: token.clone(),
            };
            tokio::spawn(async move { follower.run().await })
        })
        .collect()
}

/// How many index entries a resync writes per store call.
const RESYNC_BATCH: usize = 500;

/// Follows one regional node into the index.
struct Follower {
    region: RegionCode,
    url: String,
    peers: Arc<Peers>,
    index: Arc<dyn RegionIndex>,
    reference: Arc<ReferenceData>,
    token: Option<String>,
}

fn unavailable(e: impl ToString) -> tonic::Status {
    tonic::Status::unavailable(e.to_string())
}

impl Follower {
    async fn run(&self) {
        let region = &self.region;
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut applied = 0;
            let outcome = self.follow(&mut applied).await;
            if applied > 0 {
                // The stream was healthy for a while: reconnect quickly, whatever ended it.
                backoff = MIN_BACKOFF;
            }
            match outcome {
                Ok(()) => {}
                Err(status) if status.code() == tonic::Code::OutOfRange => {
                    tracing::warn!(
                        region = %region,
                        "the regional feed no longer holds our cursor: resynchronising the region from a snapshot"
                    );
                    if let Err(e) = self.index.set_follow_cursor(region.as_str(), "").await {
                        tracing::warn!(region = %region, error = %e, "cannot reset the follow cursor");
                    }
                }
                Err(status) => {
                    tracing::warn!(region = %region, code = ?status.code(), error = %status.message(), "following the regional feed failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A request to the regional node's feed, with the peer token and the purpose it expects.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| unavailable("the peer token is not valid header text"))?;
            request.metadata_mut().insert("authorization", value);
        }
        request
            .metadata_mut()
            .insert(crate::auth::PURPOSE_HEADER, tonic::metadata::MetadataValue::from_static("administration"));
        Ok(request)
    }

    fn client(&self) -> Result<ChangeFeedClient<tonic::transport::Channel>, tonic::Status> {
        Ok(ChangeFeedClient::new(self.peers.channel(&self.url).map_err(unavailable)?))
    }

    /// Follows until the stream breaks (resynchronising first when there is no cursor), counting
    /// the changes applied.
    async fn follow(&self, applied: &mut usize) -> Result<(), tonic::Status> {
        let (region, index) = (&self.region, self.index.as_ref());
        let stored = index.follow_cursor(region.as_str()).await.map_err(unavailable)?;
        let after = match stored.filter(|c| !c.is_empty()) {
            Some(cursor) => cursor,
            None => self.resync().await?,
        };
        let request =
            self.request(pb::WatchPointersRequest { after, regions: vec![region.to_string()], types: vec![] })?;
        let mut stream = self.client()?.watch_pointers(request).await?.into_inner();
        tracing::info!(region = %region, url = %self.url, "following the regional change feed");
        while let Some(change) = stream.message().await? {
            let restriction = match pb::ChangeKind::try_from(change.kind) {
                Ok(pb::ChangeKind::Restricted) => Some(Some(0)),
                Ok(pb::ChangeKind::Unrestricted) => Some(None),
                _ => None,
            };
            if let Some(restricted) = restriction {
                match NhsNumber::parse(&change.nhs_number) {
                    Ok(nhs) => index.set_region_restriction(nhs, region, restricted).await.map_err(unavailable)?,
                    Err(_) => {
                        tracing::warn!(region = %region, cursor = %change.cursor, "skipping a restriction change without a valid NHS number")
                    }
                }
            } else if let Some(update) = index_update(&change, &self.reference) {
                index.index_changes(&[update]).await.map_err(unavailable)?;
            } else {
                tracing::warn!(region = %region, cursor = %change.cursor, "skipping a change the index cannot read");
            }
            index.set_follow_cursor(region.as_str(), &change.cursor).await.map_err(unavailable)?;
            *applied += 1;
        }
        Ok(())
    }

    /// Replaces what the index holds for the region with a snapshot from its node; returns the
    /// feed cursor to follow from (already stored).
    async fn resync(&self) -> Result<String, tonic::Status> {
        let (region, index) = (&self.region, self.index.as_ref());
        // Entries of earlier resyncs carry earlier start times, entries from following carry 0.
        let generation = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1).max(1);
        let request = self.request(pb::SnapshotPointersRequest { regions: vec![region.to_string()] })?;
        let mut stream = self.client()?.snapshot_pointers(request).await?.into_inner();
        let cursor = match stream.message().await? {
            Some(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::Cursor(cursor)) }) => cursor,
            other => {
                return Err(tonic::Status::internal(format!("a snapshot must start with its cursor, got {other:?}")));
            }
        };
        let mut batch = Vec::with_capacity(RESYNC_BATCH);
        let mut written = 0usize;
        loop {
            let item = stream.message().await?;
            let done = item.is_none();
            if let Some(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::RestrictedNhsNumber(nhs)) }) = &item {
                match NhsNumber::parse(nhs) {
                    Ok(nhs) => {
                        index.set_region_restriction(nhs, region, Some(generation)).await.map_err(unavailable)?
                    }
                    Err(_) => {
                        tracing::warn!(region = %region, "skipping a snapshot restriction without a valid NHS number")
                    }
                }
            }
            if let Some(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::Pointer(pointer)) }) = item {
                let change = pb::PointerChange {
                    cursor: String::new(),
                    kind: pb::ChangeKind::Created as i32,
                    nhs_number: pointer.nhs_number.clone(),
                    pointer: Some(*pointer),
                };
                match index_update(&change, &self.reference) {
                    Some(mut update) => {
                        if let Some(entry) = update.current.as_mut() {
                            entry.generation = generation;
                        }
                        batch.push(update);
                    }
                    None => tracing::warn!(region = %region, "skipping a snapshot pointer the index cannot read"),
                }
            }
            if batch.len() >= RESYNC_BATCH || (done && !batch.is_empty()) {
                index.index_changes(&batch).await.map_err(unavailable)?;
                written += batch.len();
                batch.clear();
            }
            if done {
                break;
            }
        }
        let removed = index.sweep_region(region, generation).await.map_err(unavailable)?;
        index.set_follow_cursor(region.as_str(), &cursor).await.map_err(unavailable)?;
        tracing::info!(region = %region, written, removed, "resynchronised the region from a snapshot");
        Ok(cursor)
    }
}
