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
//! region (`SnapshotPointers`): the feed cursor first, then every current pointer. It writes each
//! pointer's index entry stamped with the resync's generation, sweeps the region's entries the
//! snapshot did not rewrite, stores the cursor and follows from there. A crash mid-resync leaves
//! the cursor unset, so the next start resynchronises again.

use super::feed_service::index_update;
use super::peers::Peers;
use crate::domain::RegionCode;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::change_feed_client::ChangeFeedClient;
use crate::registry::ReferenceData;
use crate::store::federation::RegionIndex;
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
            let (region, url) = (region.clone(), url.to_string());
            let (peers, index, reference, token) = (peers.clone(), index.clone(), reference.clone(), token.clone());
            tokio::spawn(async move { follow(region, url, peers, index, reference, token).await })
        })
        .collect()
}

async fn follow(
    region: RegionCode,
    url: String,
    peers: Arc<Peers>,
    index: Arc<dyn RegionIndex>,
    reference: Arc<ReferenceData>,
    token: Option<String>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let (outcome, applied) = follow_once(&region, &url, &peers, index.as_ref(), &reference, token.as_deref()).await;
        if applied > 0 {
            // The stream was healthy for a while: reconnect quickly, whatever ended it.
            backoff = MIN_BACKOFF;
        }
        match outcome {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                tracing::warn!(
                    region = %region,
                    "the regional feed no longer holds our cursor: resynchronising the region from a snapshot"
                );
                if let Err(e) = index.set_follow_cursor(region.as_str(), "").await {
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

/// Follows until the stream breaks; returns how it ended and how many changes were applied.
async fn follow_once(
    region: &RegionCode,
    url: &str,
    peers: &Peers,
    index: &dyn RegionIndex,
    reference: &ReferenceData,
    token: Option<&str>,
) -> (Result<usize, tonic::Status>, usize) {
    let mut applied = 0;
    let outcome = follow_stream(region, url, peers, index, reference, token, &mut applied).await;
    (outcome, applied)
}

async fn follow_stream(
    region: &RegionCode,
    url: &str,
    peers: &Peers,
    index: &dyn RegionIndex,
    reference: &ReferenceData,
    token: Option<&str>,
    applied: &mut usize,
) -> Result<usize, tonic::Status> {
    let unavailable = |e: String| tonic::Status::unavailable(e);
    let stored = index.follow_cursor(region.as_str()).await.map_err(|e| unavailable(e.to_string()))?;
    let after = match stored.filter(|c| !c.is_empty()) {
        Some(cursor) => cursor,
        None => resync(region, url, peers, index, reference, token).await?,
    };
    let channel = peers.channel(url).map_err(unavailable)?;
    let request =
        peer_request(pb::WatchPointersRequest { after, regions: vec![region.to_string()], types: vec![] }, token)?;
    let mut stream = ChangeFeedClient::new(channel).watch_pointers(request).await?.into_inner();
    tracing::info!(region = %region, url, "following the regional change feed");
    while let Some(change) = stream.message().await? {
        if let Some(update) = index_update(&change, reference) {
            index.index_changes(&[update]).await.map_err(|e| unavailable(e.to_string()))?;
        } else {
            tracing::warn!(region = %region, cursor = %change.cursor, "skipping a change the index cannot read");
        }
        index.set_follow_cursor(region.as_str(), &change.cursor).await.map_err(|e| unavailable(e.to_string()))?;
        *applied += 1;
    }
    Ok(*applied)
}

/// A request to a regional node's feed, with the peer token and the purpose the feed expects.
fn peer_request<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, tonic::Status> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::unavailable("the peer token is not valid header text"))?;
        request.metadata_mut().insert("authorization", value);
    }
    request
        .metadata_mut()
        .insert(crate::auth::PURPOSE_HEADER, tonic::metadata::MetadataValue::from_static("administration"));
    Ok(request)
}

/// How many index entries a resync writes per store call.
const RESYNC_BATCH: usize = 500;

/// Replaces what the index holds for `region` with a snapshot from its node; returns the feed
/// cursor to follow from (already stored).
async fn resync(
    region: &RegionCode,
    url: &str,
    peers: &Peers,
    index: &dyn RegionIndex,
    reference: &ReferenceData,
    token: Option<&str>,
) -> Result<String, tonic::Status> {
    let unavailable = |e: String| tonic::Status::unavailable(e);
    // Entries of earlier resyncs carry earlier start times, entries from following carry 0.
    let generation = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1).max(1);
    let channel = peers.channel(url).map_err(unavailable)?;
    let request = peer_request(pb::SnapshotPointersRequest { regions: vec![region.to_string()] }, token)?;
    let mut stream = ChangeFeedClient::new(channel).snapshot_pointers(request).await?.into_inner();
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
        if let Some(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::Pointer(pointer)) }) = item {
            let change = pb::PointerChange {
                cursor: String::new(),
                kind: pb::ChangeKind::Created as i32,
                pointer: Some(*pointer),
            };
            match index_update(&change, reference) {
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
            index.index_changes(&batch).await.map_err(|e| unavailable(e.to_string()))?;
            written += batch.len();
            batch.clear();
        }
        if done {
            break;
        }
    }
    let removed = index.sweep_region(region, generation).await.map_err(|e| unavailable(e.to_string()))?;
    index.set_follow_cursor(region.as_str(), &cursor).await.map_err(|e| unavailable(e.to_string()))?;
    tracing::info!(region = %region, written, removed, "resynchronised the region from a snapshot");
    Ok(cursor)
}
