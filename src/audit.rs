//! The access audit: one event for every call that touches a patient's pointers, kept append-only
//! through the storage layer. A read whose event cannot be written fails: nothing is ever shown
//! without a record of it.

use crate::domain::{NhsNumber, PointerId};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEvent {
    /// Position in the export stream; set by the store when it is read back.
    pub cursor: Option<String>,
    pub time: DateTime<Utc>,
    pub application: String,
    pub organisation: String,
    pub end_user: Option<String>,
    pub purpose: Option<String>,
    /// The RPC name, e.g. "SearchPointers".
    pub operation: String,
    pub nhs_number: NhsNumber,
    /// Pointers returned or changed.
    pub pointer_ids: Vec<PointerId>,
    /// The gRPC code name of the answer ("OK", "PERMISSION_DENIED", ...).
    pub outcome: String,
    pub break_glass: bool,
}

/// A page of one patient's events, newest first.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EventPage {
    pub events: Vec<AuditEvent>,
    /// The cursor to pass as `before` for the next page, when there is one.
    pub next_before: Option<String>,
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends an event to the patient's log and to the export stream.
    async fn append(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// The patient's events strictly older than `before` (all when `None`), newest first.
    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// Export: every event strictly after `after` (from the start when `None`), oldest first.
    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    /// Is `cursor` a cursor this store could have produced? (Page tokens are checked with it.)
    fn valid_cursor(&self, cursor: &str) -> bool;
}
