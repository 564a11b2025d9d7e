//! The access audit: one event for every call that touches a patient's pointers, kept append-only
//! through the storage layer. A read whose event cannot be written fails: nothing is ever shown
//! without a record of it.
//!
//! Two streams: each patient's own log holds the accesses that read or changed that patient's
//! data (reads that returned something, writes, break-glass); the export holds every event,
//! refusals and failures included. An event marked `export_only` goes to the export alone, so a
//! caller who is refused cannot write into a patient's log (which is kept in full on Redis).

pub mod codec;
pub mod group_commit;

use crate::domain::{NhsNumber, PointerId};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEvent {
    /// Where the event sits in what it was read from (the patient's log or the export); set by the
    /// store when it is read back, and used as a page token or resume cursor.
    pub cursor: Option<String>,
    pub time: DateTime<Utc>,
    pub application: String,
    pub organisation: String,
    pub end_user: Option<String>,
    pub purpose: Option<String>,
    /// The RPC name, e.g. "SearchPointers".
    pub operation: String,
    /// The patient the call named; `None` when it named no valid one (an invalid request, or an
    /// id that is no pointer of this registry).
    pub nhs_number: Option<NhsNumber>,
    /// Pointers returned or changed.
    pub pointer_ids: Vec<PointerId>,
    /// The gRPC code name of the answer ("OK", "PERMISSION_DENIED", ...).
    pub outcome: String,
    pub break_glass: bool,
    /// Recorded in the export only, not in the patient's log: the call read and changed nothing of
    /// the patient's (a refusal, an invalid request, a failure, a read that found nothing).
    pub export_only: bool,
}

impl AuditEvent {
    /// The patient whose own log holds this event, if any.
    pub fn patient_log(&self) -> Option<NhsNumber> {
        if self.export_only {
            None
        } else {
            self.nhs_number
        }
    }
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
    /// Appends events, each to the export and, unless it is `export_only`, to its patient's log
    /// ([`AuditEvent::patient_log`]), in as few round trips as the backend allows (one call may record a whole batch). All of them are recorded, or the call
    /// fails; after a failure some may have been recorded (a retry may then record one twice, never
    /// none).
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError>;

    /// The patient's events strictly older than `before` (all when `None`), newest first.
    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// Export: every event strictly after `after` (from the oldest kept when `None`), oldest first.
    /// The export has bounded retention on Redis: a cursor older than what is kept is
    /// `StoreError::OutOfRange` (the patients' own logs still hold every event).
    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    /// Is `cursor` a `patient_events` cursor this store could have produced?
    fn valid_log_cursor(&self, cursor: &str) -> bool;

    /// Is `cursor` an `events_after` cursor this store could have produced?
    fn valid_export_cursor(&self, cursor: &str) -> bool;
}
