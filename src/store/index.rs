//! The national index port: on a national node in federated mode, the patient → regions index fed
//! from the regional nodes' change feeds, and the cursor of each feed followed.

use super::StoreError;
use crate::domain::{Coding, NhsNumber, PointerId, RegionCode};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

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
