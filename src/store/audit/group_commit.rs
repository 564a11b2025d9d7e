//! Group commit for audit events: concurrent calls' events are recorded in one store call.
//!
//! A read may not answer before its event is durable, so on Redis every read used to cost a
//! second round trip of its own. [`GroupCommit`] queues each call's events for one writer task,
//! which takes everything queued (up to [`MAX_BATCH_EVENTS`]) and records it in one
//! `append_all` (on a cluster, one script per patient's slot and one for the export, sent
//! together). It never waits to fill a batch: a batch is whatever arrived while the previous one
//! was being written, so an idle server records each event at once, and a busy one amortises a
//! round trip over many calls. Each caller still gets its own answer, and none before its event
//! is stored.
//!
//! Bounds: the queue holds [`QUEUE_CALLS`] calls (a full queue makes callers wait, within their
//! budget); a batch holds at most [`MAX_BATCH_EVENTS`] events; each caller waits at most its call
//! budget (`store::budget`), then fails UNAVAILABLE.

use super::{AuditEvent, AuditStore, EventPage};
use crate::domain::NhsNumber;
use crate::metrics::Metrics;
use crate::store::{budget, StoreError};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The most events one batch records.
pub const MAX_BATCH_EVENTS: usize = 256;
/// Calls that may wait in the queue at once.
pub const QUEUE_CALLS: usize = 4096;

struct Pending {
    events: Vec<AuditEvent>,
    queued: Instant,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// An `AuditStore` whose appends are group-committed; reads go straight through.
pub struct GroupCommit {
    inner: Arc<dyn AuditStore>,
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the writer task (on the current tokio runtime); it ends when this is dropped.
    pub fn start(inner: Arc<dyn AuditStore>, metrics: Arc<Metrics>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CALLS);
        tokio::spawn(write_batches(inner.clone(), receiver, metrics));
        Self { inner, queue }
    }
}

async fn write_batches(inner: Arc<dyn AuditStore>, mut receiver: mpsc::Receiver<Pending>, metrics: Arc<Metrics>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let mut events = batch[0].events.len();
        while events < MAX_BATCH_EVENTS {
            match receiver.try_recv() {
                Ok(next) => {
                    events += next.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up (their budget ran out) need nothing written.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let all: Vec<AuditEvent> = batch.iter_mut().flat_map(|p| std::mem::take(&mut p.events)).collect();
        let count = all.len();
        let result = inner.append_all(all).await;
        let now = Instant::now();
        metrics.audit_batch(count, batch.iter().map(|p| now.saturating_duration_since(p.queued)));
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}

fn gave_up(waited: Duration) -> StoreError {
    StoreError::Unavailable(format!("the audit log did not record the event within the call's budget ({waited:?})"))
}

#[async_trait]
impl AuditStore for GroupCommit {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let limit = budget::remaining();
        let (done, answer) = oneshot::channel();
        let pending = Pending { events, queued: started, done };
        let queued = tokio::time::timeout(limit, self.queue.send(pending)).await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Unavailable("the audit writer has stopped".into())),
            Err(_) => return Err(gave_up(started.elapsed())),
        }
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("the audit writer has stopped".into())),
            Err(_) => Err(gave_up(started.elapsed())),
        }
    }

    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        self.inner.patient_events(nhs_number, before, limit).await
    }

    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.events_after(after, limit).await
    }

    fn valid_log_cursor(&self, cursor: &str) -> bool {
        self.inner.valid_log_cursor(cursor)
    }

    fn valid_export_cursor(&self, cursor: &str) -> bool {
        self.inner.valid_export_cursor(cursor)
    }
}

#[cfg(test)]
mod tests;
