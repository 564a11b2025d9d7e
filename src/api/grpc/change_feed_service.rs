//! `nrl.v1.ChangeFeed/WatchPointers`: the node's changes, oldest first, then live.

use super::interceptor::caller_of;
use crate::domain::RegionCode;
use crate::error::RegistryError;
use crate::proto::nrl::v1 as pb;
use crate::proto::nrl::v1::change_feed_server::ChangeFeed as ChangeFeedApi;
use crate::registry::Registry;
use crate::store::feed::{Change, ChangeBody, ChangeKind};
use crate::store::StoreError;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often an idle stream looks for new changes.
const POLL: Duration = Duration::from_millis(100);
const BATCH: usize = 500;

pub struct ChangeFeedService {
    registry: Registry,
}

impl ChangeFeedService {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

fn status(error: StoreError) -> Status {
    RegistryError::from(error).into()
}

fn kind(kind: ChangeKind) -> pb::ChangeKind {
    match kind {
        ChangeKind::Created => pb::ChangeKind::Created,
        ChangeKind::Updated => pb::ChangeKind::Updated,
        ChangeKind::Superseded => pb::ChangeKind::Superseded,
        ChangeKind::Deleted => pb::ChangeKind::Deleted,
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::PointerChange, Status>> + Send>>;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotItem, Status>> + Send>>;

impl ChangeFeedService {
    fn regions(&self, regions: &[String]) -> Result<BTreeSet<RegionCode>, Status> {
        let parsed = regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                self.registry
                    .reference()
                    .regions
                    .parse_code(r)
                    .map_err(|e| RegistryError::invalid(format!("regions[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(parsed)
    }
}

#[tonic::async_trait]
impl ChangeFeedApi for ChangeFeedService {
    type WatchPointersStream = ChangeStream;
    type SnapshotPointersStream = SnapshotStream;

    /// The cursor first (taken before the first page is read), then the current pointers of the
    /// wanted regions, page by page. Like the feed, this is node-to-node replication for the
    /// `peer` role, logged as one operation rather than audited per patient.
    async fn snapshot_pointers(
        &self,
        request: Request<pb::SnapshotPointersRequest>,
    ) -> Result<Response<Self::SnapshotPointersStream>, Status> {
        let caller = caller_of(&request)?;
        let feed = self.registry.snapshot_source(&caller)?;
        let regions = self.regions(&request.get_ref().regions)?;
        let cursor = feed.latest_cursor().await.map_err(status)?;
        let first = feed.snapshot_page(None, BATCH).await.map_err(status)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(BATCH);
        let application = caller.application.clone();
        tokio::spawn(async move {
            if sender.send(Ok(pb::SnapshotItem { item: Some(pb::snapshot_item::Item::Cursor(cursor)) })).await.is_err()
            {
                return;
            }
            let mut page = first;
            let mut sent = 0u64;
            loop {
                let pointers = page
                    .pointers
                    .iter()
                    .filter(|p| p.is_current() && (regions.is_empty() || regions.contains(&p.draft.region)))
                    .map(|p| pb::snapshot_item::Item::Pointer(Box::new(p.into())));
                let restricted =
                    page.restricted.iter().map(|nhs| pb::snapshot_item::Item::RestrictedNhsNumber(nhs.to_string()));
                for item in pointers.chain(restricted) {
                    if sender.send(Ok(pb::SnapshotItem { item: Some(item) })).await.is_err() {
                        return; // The follower went away.
                    }
                    sent += 1;
                }
                let Some(after) = page.next else { break };
                page = match feed.snapshot_page(Some(after), BATCH).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = sender.send(Err(status(e))).await;
                        return;
                    }
                };
            }
            tracing::info!(application = crate::telemetry::log_safe(&application), items = sent, "snapshot sent");
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn watch_pointers(
        &self,
        request: Request<pb::WatchPointersRequest>,
    ) -> Result<Response<Self::WatchPointersStream>, Status> {
        let caller = caller_of(&request)?;
        let feed = self.registry.change_feed(&caller)?;
        let req = request.into_inner();
        let mut after = match req.after.as_str() {
            "" => None,
            cursor if feed.valid_feed_cursor(cursor) => Some(cursor.to_string()),
            _ => return Err(RegistryError::invalid("after", "is not a cursor from this feed").into()),
        };
        let regions = self.regions(&req.regions)?;
        let types: BTreeSet<String> = req
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.registry
                    .reference()
                    .pointer_types
                    .pointer_type(t)
                    .map(|t| t.coding.code.clone())
                    .map_err(|e| RegistryError::invalid(format!("types[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        // A restriction covers every pointer of the patient here: every watcher gets it.
        let wanted = move |change: &Change| match &change.body {
            ChangeBody::Pointer { pointer, .. } => {
                (regions.is_empty() || regions.contains(&pointer.draft.region))
                    && (types.is_empty() || types.contains(&pointer.draft.pointer_type.coding.code))
            }
            ChangeBody::Restriction { .. } => true,
        };
        // The first read happens before the stream starts, so a stale cursor is a status.
        let first = feed.changes_after(after.clone(), BATCH).await.map_err(status)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(BATCH);
        tokio::spawn(async move {
            let mut batch = first;
            loop {
                let idle = batch.is_empty();
                for change in batch {
                    after = change.cursor.clone().or(after);
                    if !wanted(&change) {
                        continue;
                    }
                    let cursor = change.cursor.clone().unwrap_or_default();
                    let message = match &change.body {
                        ChangeBody::Pointer { kind: k, pointer } => pb::PointerChange {
                            cursor,
                            kind: kind(*k) as i32,
                            pointer: Some(pointer.as_ref().into()),
                            nhs_number: pointer.draft.nhs_number.to_string(),
                        },
                        ChangeBody::Restriction { nhs_number, restricted } => pb::PointerChange {
                            cursor,
                            kind: if *restricted { pb::ChangeKind::Restricted } else { pb::ChangeKind::Unrestricted }
                                as i32,
                            pointer: None,
                            nhs_number: nhs_number.to_string(),
                        },
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return; // The follower went away.
                    }
                }
                if idle {
                    if sender.is_closed() {
                        return; // The follower went away while the feed was quiet.
                    }
                    tokio::time::sleep(POLL).await;
                }
                batch = match feed.changes_after(after.clone(), BATCH).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = sender.send(Err(status(e))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
