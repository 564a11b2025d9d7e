//! [`MeteredStore`]: times and counts every call to the store it wraps, whatever the backend, and
//! turns the health watcher's ping into `nrl_store_up` (which `/ready` reads). [`MeteredAuditStore`]
//! does the same for the audit log (`audit_append` is an audit write).
//!
//! It forwards every `PointerStore` method, including the ones with default bodies, so a backend's
//! own pipelined `apply_each` or single-round-trip reads are kept. A method added to the trait must
//! be forwarded here too.

use super::Metrics;
use crate::audit::{AuditEvent, AuditStore, EventPage};
use crate::domain::{NhsNumber, Pointer, PointerId, PointerIdCodec};
use crate::store::{PatientRecord, PatientWrite, PointerStore, ReferenceKey, StoreError};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

pub struct MeteredStore {
    inner: Arc<dyn PointerStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn PointerStore>, metrics: Arc<Metrics>) -> Self {
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
    }
}

#[async_trait]
impl PointerStore for MeteredStore {
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

pub struct MeteredAuditStore {
    inner: Arc<dyn AuditStore>,
    metrics: Arc<Metrics>,
}

impl MeteredAuditStore {
    pub fn new(inner: Arc<dyn AuditStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl AuditStore for MeteredAuditStore {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        timed(&self.metrics, "audit_append", self.inner.append_all(events)).await
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
