//! The change feed port: every change of this node, written in the same atomic step as the change
//! itself, read back in order by followers (the national node) and snapshots.
//!
//! A cursor older than the retained history is `StoreError::OutOfRange` (the follower must
//! resynchronise); a backend that cannot keep a feed (Redis Cluster) answers `StoreError::Unsupported`.

use super::{PatientWrite, StoreError};
use crate::domain::{NhsNumber, Pointer, PointerStatus};
use async_trait::async_trait;

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

/// A follower's cursor that the feed no longer holds: it must resynchronise from a snapshot.
pub fn cursor_out_of_range(cursor: &str) -> StoreError {
    StoreError::OutOfRange(format!(
        "after: cursor {cursor} is older than the retained change history; resynchronise and follow from the oldest"
    ))
}

#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Changes strictly after `after` (from the oldest retained when `None`), oldest first.
    async fn changes_after(&self, after: Option<String>, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// Could this store have produced `cursor`?
    fn valid_feed_cursor(&self, cursor: &str) -> bool;

    /// The cursor of the newest change, or a cursor before every change when there is none yet.
    /// Taken before a snapshot, it is where a follower resumes once the snapshot is applied: every
    /// change up to it is already reflected in what the snapshot reads afterwards.
    async fn latest_cursor(&self) -> Result<String, StoreError>;

    /// One page of a snapshot of every patient's pointers (current and superseded) and
    /// restrictions. Positions are opaque and belong to one snapshot.
    async fn snapshot_page(&self, after: Option<String>, limit: usize) -> Result<SnapshotPage, StoreError>;
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
