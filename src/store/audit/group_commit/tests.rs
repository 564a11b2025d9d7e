use super::*;
use crate::domain::fixtures::nhs;
use crate::store::budget;
use crate::store::memory::MemoryStore;
use std::sync::atomic::{AtomicUsize, Ordering};

fn event(patient: &str) -> AuditEvent {
    AuditEvent {
        cursor: None,
        time: chrono::Utc::now(),
        application: "app".into(),
        organisation: "RR8".into(),
        end_user: None,
        purpose: None,
        operation: "SearchPointers".into(),
        nhs_number: Some(nhs(patient)),
        pointer_ids: vec![],
        outcome: "OK".into(),
        break_glass: false,
        export_only: false,
    }
}

/// Counts `append_all` calls and holds each one for `hold`, so callers pile up behind it.
struct Slow {
    inner: MemoryStore,
    calls: AtomicUsize,
    hold: Duration,
}

#[async_trait]
impl AuditStore for Slow {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        self.inner.append_all(events).await
    }
    async fn patient_events(&self, n: NhsNumber, b: Option<String>, l: usize) -> Result<EventPage, StoreError> {
        self.inner.patient_events(n, b, l).await
    }
    async fn events_after(&self, a: Option<String>, l: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.events_after(a, l).await
    }
    fn valid_log_cursor(&self, c: &str) -> bool {
        self.inner.valid_log_cursor(c)
    }
    fn valid_export_cursor(&self, c: &str) -> bool {
        self.inner.valid_export_cursor(c)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_store_calls_and_each_answers_only_once_recorded() {
    let slow =
        Arc::new(Slow { inner: MemoryStore::new(), calls: AtomicUsize::new(0), hold: Duration::from_millis(20) });
    let metrics = Arc::new(Metrics::new("memory"));
    let group = Arc::new(GroupCommit::start(slow.clone(), metrics.clone()));
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let group = group.clone();
            tokio::spawn(async move { group.append_all(vec![event("9434765919")]).await })
        })
        .collect();
    for call in calls {
        call.await.expect("joins").expect("recorded");
    }
    // Every event is stored before its caller was answered...
    let page = slow.inner.patient_events(nhs("9434765919"), None, 500).await.expect("page");
    assert_eq!(page.events.len(), 64);
    // ...in far fewer store calls than calls: the ones that arrived while a batch was written
    // went together.
    let store_calls = slow.calls.load(Ordering::SeqCst);
    assert!(store_calls < 16, "64 calls took {store_calls} store calls");
    let text = metrics.render().expect("render");
    assert!(text.contains(&format!("nrl_audit_batch_events_count {store_calls}")), "{text}");
    assert!(text.contains("nrl_audit_batch_wait_seconds_count 64"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_budget_runs_out_fails_unavailable_on_time() {
    let slow = Arc::new(Slow { inner: MemoryStore::new(), calls: AtomicUsize::new(0), hold: Duration::from_secs(2) });
    let group = GroupCommit::start(slow, Arc::new(Metrics::new("memory")));
    let started = Instant::now();
    let answer = budget::within(Duration::from_millis(150), group.append_all(vec![event("9434765919")])).await;
    let took = started.elapsed();
    assert!(matches!(answer, Err(StoreError::Unavailable(_))), "{answer:?}");
    assert!(took < Duration::from_millis(400), "answered after {took:?}");
}
