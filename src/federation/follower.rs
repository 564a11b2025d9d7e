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

use super::peers::Peers;
use crate::domain::{NhsNumber, RegionCode};
use crate::error::RegistryError;
use crate::metrics::Metrics;
use crate::store::index::{IndexUpdate, RegionIndex};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One change read from a regional feed, with the feed cursor just after it.
#[derive(Clone, Debug)]
pub struct FollowedChange {
    pub cursor: String,
    pub item: FeedItem,
}

/// What a regional feed or snapshot says, as the index needs it.
#[derive(Clone, Debug)]
pub enum FeedItem {
    /// A pointer changed: the index's view of it.
    Pointer(IndexUpdate),
    /// The region's node restricted (true) or lifted the restriction of (false) a patient.
    Restriction { nhs_number: NhsNumber, restricted: bool },
    /// Something the index cannot read (logged and skipped, so one bad change cannot stall a region).
    Unreadable(&'static str),
}

/// How the follower reaches a regional node's change feed. `api::grpc::peer_client` implements it
/// over gRPC (`nrl.v1.ChangeFeed`); the follower knows only domain types.
#[async_trait]
pub trait RegionalFeed: Send + Sync + 'static {
    /// The node's changes to `region` after `after`, as they happen; the stream ends when the
    /// connection does. A cursor the node no longer holds is `RegistryError::OutOfRange`.
    async fn watch(
        &self,
        url: &str,
        region: &RegionCode,
        after: String,
    ) -> Result<BoxStream<'static, Result<FollowedChange, RegistryError>>, RegistryError>;

    /// A snapshot of the node's current pointers of `region` and its restricted patients: the feed
    /// cursor taken before the first read, then the items.
    async fn snapshot(
        &self,
        url: &str,
        region: &RegionCode,
    ) -> Result<(String, BoxStream<'static, Result<FeedItem, RegistryError>>), RegistryError>;
}

/// Starts a follower for every regional node in `peers`.
/// Each reports how it follows in `metrics` (`nrl_federation_*`).
pub fn spawn(
    peers: &Peers,
    index: Arc<dyn RegionIndex>,
    feed: Arc<dyn RegionalFeed>,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    peers
        .regions()
        .map(|(region, url)| {
            let follower = Follower {
                region: region.clone(),
                url: url.to_string(),
                index: index.clone(),
                feed: feed.clone(),
                metrics: metrics.clone(),
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
    index: Arc<dyn RegionIndex>,
    feed: Arc<dyn RegionalFeed>,
    metrics: Arc<Metrics>,
}

impl Follower {
    async fn run(&self) {
        let region = &self.region;
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut applied = 0;
            let outcome = self.follow(&mut applied).await;
            self.metrics.federation().set_connected(region.as_str(), false);
            if let Err(error) = &outcome {
                self.metrics.federation().failed(region.as_str(), error.code_name());
            }
            if applied > 0 {
                // The stream was healthy for a while: reconnect quickly, whatever ended it.
                backoff = MIN_BACKOFF;
            }
            match outcome {
                Ok(()) => {}
                Err(RegistryError::OutOfRange(_)) => {
                    tracing::warn!(
                        region = %region,
                        "the regional feed no longer holds our cursor: resynchronising the region from a snapshot"
                    );
                    if let Err(e) = self.index.set_follow_cursor(region.as_str(), "").await {
                        tracing::warn!(region = %region, error = %e, "cannot reset the follow cursor");
                    }
                }
                Err(error) => {
                    tracing::warn!(region = %region, code = error.code_name(), error = %error, "following the regional feed failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Applies one feed or snapshot item to the index (`generation`: 0 when followed, else the
    /// resync writing it). Pointer updates are returned for the caller to batch.
    async fn apply(&self, item: FeedItem, generation: u64) -> Result<Option<IndexUpdate>, RegistryError> {
        let region = &self.region;
        match item {
            FeedItem::Pointer(mut update) => {
                if let Some(entry) = update.current.as_mut() {
                    entry.generation = generation;
                }
                Ok(Some(update))
            }
            FeedItem::Restriction { nhs_number, restricted } => {
                let restricted = restricted.then_some(generation);
                self.index.set_region_restriction(nhs_number, region, restricted).await?;
                Ok(None)
            }
            FeedItem::Unreadable(what) => {
                tracing::warn!(region = %region, what, "skipping a change the index cannot read");
                Ok(None)
            }
        }
    }

    /// Follows until the stream breaks (resynchronising first when there is no cursor), counting
    /// the changes applied.
    async fn follow(&self, applied: &mut usize) -> Result<(), RegistryError> {
        let (region, index) = (&self.region, self.index.as_ref());
        let stored = index.follow_cursor(region.as_str()).await?;
        let after = match stored.filter(|c| !c.is_empty()) {
            Some(cursor) => cursor,
            None => self.resync().await?,
        };
        let mut stream = self.feed.watch(&self.url, region, after).await?;
        tracing::info!(region = %region, url = %self.url, "following the regional change feed");
        let metrics = self.metrics.federation();
        metrics.set_connected(region.as_str(), true);
        while let Some(change) = stream.next().await {
            let change = change?;
            let mut changed_at = None;
            if let Some(update) = self.apply(change.item, 0).await? {
                changed_at = update.current.as_ref().map(|entry| entry.updated_at);
                index.index_changes(&[update]).await?;
            }
            index.set_follow_cursor(region.as_str(), &change.cursor).await?;
            metrics.applied(region.as_str(), changed_at);
            *applied += 1;
        }
        Ok(())
    }

    /// Replaces what the index holds for the region with a snapshot from its node; returns the
    /// feed cursor to follow from (already stored).
    async fn resync(&self) -> Result<String, RegistryError> {
        let (region, index) = (&self.region, self.index.as_ref());
        // Entries of earlier resyncs carry earlier start times, entries from following carry 0.
        let generation = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1).max(1);
        let (cursor, mut stream) = self.feed.snapshot(&self.url, region).await?;
        let mut batch = Vec::with_capacity(RESYNC_BATCH);
        let mut written = 0usize;
        while let Some(item) = stream.next().await {
            if let Some(update) = self.apply(item?, generation).await? {
                batch.push(update);
            }
            if batch.len() >= RESYNC_BATCH {
                index.index_changes(&batch).await?;
                written += batch.len();
                batch.clear();
            }
        }
        if !batch.is_empty() {
            index.index_changes(&batch).await?;
            written += batch.len();
        }
        let removed = index.sweep_region(region, generation).await?;
        self.metrics.federation().resynced(region.as_str());
        index.set_follow_cursor(region.as_str(), &cursor).await?;
        tracing::info!(region = %region, written, removed, "resynchronised the region from a snapshot");
        Ok(cursor)
    }
}
