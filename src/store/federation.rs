//! What federation needs from storage: the change feed (written in the same atomic step as every
//! change) and, on the national node, the patient → regions index fed from regional feeds.

use super::{PatientWrite, StoreError};
use crate::domain::{Coding, NhsNumber, Pointer, PointerId, PointerStatus, RegionCode};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChangeKind {
    Created,
    Updated,
    Superseded,
    Deleted,
}

/// One change as the feed records it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    /// Position in the feed; set when read back.
    pub cursor: Option<String>,
    pub body: ChangeBody,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ChangeBody {
    /// A pointer was created, updated, superseded or deleted: the pointer after the change (for a
    /// delete, as it was).
    Pointer { kind: ChangeKind, pointer: Box<Pointer> },
    /// A patient's restriction was set or lifted on this node (it applies to every pointer of the
    /// patient here, whatever their region or type).
    Restriction { nhs_number: NhsNumber, restricted: bool },
}

impl Change {
    fn pointer(kind: ChangeKind, pointer: &Pointer) -> Self {
        Self { cursor: None, body: ChangeBody::Pointer { kind, pointer: Box::new(pointer.clone()) } }
    }

    pub fn restriction(nhs_number: NhsNumber, restricted: bool) -> Self {
        Self { cursor: None, body: ChangeBody::Restriction { nhs_number, restricted } }
    }
}

/// The changes a write makes, in the order the feed records them.
pub fn changes_of(write: &PatientWrite) -> Vec<Change> {
    let deleted = write
        .deletes
        .iter()
        .filter(|d| !write.puts.iter().any(|p| p.id == d.id))
        .map(|pointer| Change::pointer(ChangeKind::Deleted, pointer));
    let put = write.puts.iter().map(|pointer| {
        let kind = match (pointer.status, pointer.version) {
            (PointerStatus::Superseded, _) => ChangeKind::Superseded,
            (PointerStatus::Current, 1) => ChangeKind::Created,
            (PointerStatus::Current, _) => ChangeKind::Updated,
        };
        Change::pointer(kind, pointer)
    });
    deleted.chain(put).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The cursor is older than the retained history: the follower must resynchronise.
    #[error("cursor {0} is older than the retained change history")]
    OutOfRange(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Changes strictly after `after` (from the oldest retained when `None`), oldest first.
    async fn changes_after(&self, after: Option<String>, limit: usize) -> Result<Vec<Change>, FeedError>;

    /// Could this store have produced `cursor`?
    fn valid_feed_cursor(&self, cursor: &str) -> bool;

    /// The cursor of the newest change, or a cursor before every change when there is none yet.
    /// Taken before a snapshot, it is where a follower resumes once the snapshot is applied: every
    /// change up to it is already reflected in what the snapshot reads afterwards.
    async fn latest_cursor(&self) -> Result<String, FeedError>;

    /// One page of a snapshot of every patient's pointers (current and superseded) and
    /// restrictions. Positions are opaque and belong to one snapshot.
    async fn snapshot_page(&self, after: Option<String>, limit: usize) -> Result<SnapshotPage, FeedError>;
}

/// A page of a snapshot.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SnapshotPage {
    pub pointers: Vec<Pointer>,
    /// Patients restricted on this node (among those the page covers).
    pub restricted: Vec<NhsNumber>,
    /// The position to ask for next; `None` when the snapshot is complete.
    pub next: Option<String>,
}

/// What the national index keeps of one pointer: enough to say where a patient's records are.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IndexEntry {
    pub id: PointerId,
    pub region: RegionCode,
    pub pointer_type: Coding,
    pub updated_at: DateTime<Utc>,
    /// The resynchronisation that wrote this entry (its start, in unix ms), or 0 when it was
    /// written by following the feed. A resync sweeps its region's entries older than itself.
    pub generation: u64,
}

/// One change as the index sees it: the pointer is now current (`Some`) or not (`None`: deleted or
/// superseded).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IndexUpdate {
    pub nhs_number: NhsNumber,
    pub id: PointerId,
    pub current: Option<IndexEntry>,
}

#[async_trait]
pub trait RegionIndex: Send + Sync + 'static {
    /// Applies changes from a regional feed. Idempotent: replaying changes in feed order after a
    /// crash leaves the same index.
    async fn index_changes(&self, updates: &[IndexUpdate]) -> Result<(), StoreError>;

    /// The index entries of one patient's current pointers and whether the patient is restricted
    /// (on this node, or by any region's node), in one round trip.
    async fn index_entries(&self, nhs_number: NhsNumber) -> Result<(Vec<IndexEntry>, bool), StoreError>;

    /// Records that `region`'s node has restricted the patient (`Some(generation)`: 0 when
    /// followed from the feed, else the resync that found it) or lifted it (`None`).
    async fn set_region_restriction(
        &self,
        nhs_number: NhsNumber,
        region: &RegionCode,
        restricted: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Where following `source` (a regional node) has got to.
    async fn follow_cursor(&self, source: &str) -> Result<Option<String>, StoreError>;

    async fn set_follow_cursor(&self, source: &str, cursor: &str) -> Result<(), StoreError>;

    /// Removes every entry and restriction of `region` written before resynchronisation
    /// `generation` (a smaller generation): what a snapshot did not rewrite is gone from the
    /// region. Returns how many were removed. Walks the whole index: for resynchronisation only.
    async fn sweep_region(&self, region: &RegionCode, generation: u64) -> Result<u64, StoreError>;
}
