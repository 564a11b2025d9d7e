//! [`Metered`]: times and counts every call through any storage port, whatever the backend. One
//! decorator, four implementations: `Metered<dyn PointerStore>` (its ping drives `nrl_store_up`,
//! which `/ready` reads), `Metered<dyn AuditStore>` (`audit_append` is an audit write),
//! `Metered<dyn ChangeFeed>` and `Metered<dyn RegionIndex>`.
//!
//! Each forwards every method of its port, including the ones with default bodies, so a backend's
//! own pipelined `apply_each` or single-round-trip reads are kept. A method added to a port must
//! be forwarded here too.

use super::audit::{AuditEvent, AuditStore, EventPage};
use super::feed::{Change, ChangeFeed, SnapshotPage};
use super::index::{IndexEntry, IndexUpdate, RegionIndex};
use super::{PatientRecord, PatientWrite, PointerStore, ReferenceKey, StoreError};
use crate::domain::RegionCode;
use crate::domain::{NhsNumber, Pointer, PointerId, PointerIdCodec};
use crate::metrics::{Metrics, Refusal};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// A storage port, timed and counted.
pub struct Metered<P: ?Sized> {
    inner: Arc<P>,
    metrics: Arc<Metrics>,
}

impl<P: ?Sized> Metered<P> {
    pub fn new(inner: Arc<P>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

async fn timed<T>(
    metrics: &Metrics,
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    metrics.store_call(operation, &[outcome(&result)], started.elapsed());
    result
}

/// A batch: one latency observation for the call, one count per entry.
async fn timed_each<T>(
    metrics: &Metrics,
    operation: &'static str,
    call: impl Future<Output = Vec<Result<T, StoreError>>>,
) -> Vec<Result<T, StoreError>> {
    let started = Instant::now();
    let results = call.await;
    let outcomes: Vec<&'static str> = results.iter().map(outcome).collect();
    metrics.store_call(operation, &outcomes, started.elapsed());
    results
}

fn outcome<T>(result: &Result<T, StoreError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StoreError::ConditionFailed) => "condition_failed",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Corrupt(_)) => "corrupt",
        Err(StoreError::OutOfRange(_)) => "out_of_range",
        Err(StoreError::Unsupported(_)) => "unsupported",
    }
}

#[async_trait]
impl PointerStore for Metered<dyn PointerStore> {
    async fn get(&self, id: PointerId) -> Result<Option<Pointer>, StoreError> {
        timed(&self.metrics, "get", self.inner.get(id)).await
    }

    async fn get_by_reference(&self, key: &ReferenceKey) -> Result<Option<Pointer>, StoreError> {
        timed(&self.metrics, "get_by_reference", self.inner.get_by_reference(key)).await
    }

    async fn patient_record(&self, nhs_number: NhsNumber) -> Result<PatientRecord, StoreError> {
        timed(&self.metrics, "patient_record", self.inner.patient_record(nhs_number)).await
    }

    async fn get_for_read(&self, id: PointerId) -> Result<Option<(Pointer, bool)>, StoreError> {
        timed(&self.metrics, "get_for_read", self.inner.get_for_read(id)).await
    }

    async fn set_restriction(&self, nhs_number: NhsNumber, restricted: bool) -> Result<(), StoreError> {
        timed(&self.metrics, "set_restriction", self.inner.set_restriction(nhs_number, restricted)).await
    }

    async fn apply(&self, write: PatientWrite) -> Result<(), StoreError> {
        timed(&self.metrics, "apply", self.inner.apply(write)).await
    }

    async fn apply_each(&self, writes: Vec<PatientWrite>) -> Vec<Result<(), StoreError>> {
        timed_each(&self.metrics, "apply_each", self.inner.apply_each(writes)).await
    }

    async fn get_by_references(&self, keys: Vec<ReferenceKey>) -> Vec<Result<Option<Pointer>, StoreError>> {
        timed_each(&self.metrics, "get_by_references", self.inner.get_by_references(keys)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let result = timed(&self.metrics, "ping", self.inner.ping()).await;
        self.metrics.set_store_up(result.is_ok());
        result
    }

    fn ids(&self) -> &PointerIdCodec {
        self.inner.ids()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[async_trait]
impl AuditStore for Metered<dyn AuditStore> {
    /// Also counts the refusals and failures among the events once they are recorded
    /// (`nrl_refusals_total`): every event whose outcome is not OK.
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let refusals: Vec<Refusal> =
            events.iter().filter(|e| e.outcome != "OK").map(|e| Refusal::of(&e.operation, &e.outcome)).collect();
        let result = timed(&self.metrics, "audit_append", self.inner.append_all(events)).await;
        if result.is_ok() {
            refusals.iter().for_each(|refusal| self.metrics.refusal(refusal));
        }
        result
    }

    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        timed(&self.metrics, "audit_patient_events", self.inner.patient_events(nhs_number, before, limit)).await
    }

    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        timed(&self.metrics, "audit_events_after", self.inner.events_after(after, limit)).await
    }

    fn valid_log_cursor(&self, cursor: &str) -> bool {
        self.inner.valid_log_cursor(cursor)
    }

    fn valid_export_cursor(&self, cursor: &str) -> bool {
        self.inner.valid_export_cursor(cursor)
    }
}

#[async_trait]
impl ChangeFeed for Metered<dyn ChangeFeed> {
    async fn changes_after(&self, after: Option<String>, limit: usize) -> Result<Vec<Change>, StoreError> {
        timed(&self.metrics, "feed_changes_after", self.inner.changes_after(after, limit)).await
    }

    fn valid_feed_cursor(&self, cursor: &str) -> bool {
        self.inner.valid_feed_cursor(cursor)
    }

    async fn latest_cursor(&self) -> Result<String, StoreError> {
        timed(&self.metrics, "feed_latest_cursor", self.inner.latest_cursor()).await
    }

    async fn snapshot_page(&self, after: Option<String>, limit: usize) -> Result<SnapshotPage, StoreError> {
        timed(&self.metrics, "feed_snapshot_page", self.inner.snapshot_page(after, limit)).await
    }
}

#[async_trait]
impl RegionIndex for Metered<dyn RegionIndex> {
    async fn index_changes(&self, updates: &[IndexUpdate]) -> Result<(), StoreError> {
        timed(&self.metrics, "index_changes", self.inner.index_changes(updates)).await
    }

    async fn index_entries(&self, nhs_number: NhsNumber) -> Result<(Vec<IndexEntry>, bool), StoreError> {
        timed(&self.metrics, "index_entries", self.inner.index_entries(nhs_number)).await
    }

    async fn set_region_restriction(
        &self,
        nhs_number: NhsNumber,
        region: &RegionCode,
        restricted: Option<u64>,
    ) -> Result<(), StoreError> {
        timed(
            &self.metrics,
            "index_set_region_restriction",
            self.inner.set_region_restriction(nhs_number, region, restricted),
        )
        .await
    }

    async fn follow_cursor(&self, source: &str) -> Result<Option<String>, StoreError> {
        timed(&self.metrics, "index_follow_cursor", self.inner.follow_cursor(source)).await
    }

    async fn set_follow_cursor(&self, source: &str, cursor: &str) -> Result<(), StoreError> {
        timed(&self.metrics, "index_set_follow_cursor", self.inner.set_follow_cursor(source, cursor)).await
    }

    async fn sweep_region(&self, region: &RegionCode, generation: u64) -> Result<u64, StoreError> {
        timed(&self.metrics, "index_sweep_region", self.inner.sweep_region(region, generation)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn the_metered_store_counts_outcomes_and_tracks_store_health() {
        let metrics = Arc::new(Metrics::new("memory"));
        let store: Metered<dyn PointerStore> = Metered::new(Arc::new(MemoryStore::new()), metrics.clone());
        assert!(!metrics.store_up(), "not up before the first ping");
        store.ping().await.expect("memory store answers");
        assert!(metrics.store_up());
        let id = store.ids().generate(crate::domain::NhsNumber::parse("9434765919").expect("valid"));
        assert_eq!(store.get(id).await, Ok(None));
        let text = metrics.render().expect("render");
        assert!(text.contains(r#"nrl_store_up{backend="memory"} 1"#), "{text}");
        assert!(text.contains(r#"nrl_store_operations_total{operation="get",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"nrl_store_operations_total{operation="ping",outcome="ok"} 1"#), "{text}");
        assert!(!text.contains("9434765919"));
    }
}
