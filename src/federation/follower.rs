//! The national node's follower: one task per regional node, following its change feed from the
//! cursor stored in the national index and applying each change to the index.
//!
//! At-least-once: the cursor is stored after the change is applied, and applying is idempotent, so a
//! crash in between replays one change harmlessly. A regional node that is down is retried with
//! backoff; a cursor past the regional feed's retention restarts from the oldest retained change.

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
                tracing::error!(
                    region = %region,
                    "the regional feed no longer holds our cursor: following again from its oldest retained \
                     change; changes trimmed meanwhile are missing from the index until a resync exists"
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
    let after = index.follow_cursor(region.as_str()).await.map_err(|e| unavailable(e.to_string()))?.unwrap_or_default();
    let channel = peers.channel(url).map_err(unavailable)?;
    let mut request =
        tonic::Request::new(pb::WatchPointersRequest { after, regions: vec![region.to_string()], types: vec![] });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| unavailable("the peer token is not valid header text".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    request
        .metadata_mut()
        .insert(crate::auth::PURPOSE_HEADER, tonic::metadata::MetadataValue::from_static("administration"));
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
