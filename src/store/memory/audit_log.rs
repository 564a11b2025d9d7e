//! The memory store's audit log: bounded, compact, and one position space for both readers.
//!
//! The embedded store is for development, tests and demos, so its audit log must not grow until
//! the process is killed (an OOM kill loses everything). It keeps the newest `retention` events,
//! each in the compact stored form (`audit::codec`, ~100 bytes), drops the oldest beyond that,
//! counts the drops (`nrl_audit_events_dropped_total`) and warns once. An event's cursor is its
//! position in the log, which serves as the access log's page token and the export's cursor
//! alike; an export cursor older than what is kept is `OutOfRange`, as on Redis.

use crate::domain::NhsNumber;
use crate::metrics::Metrics;
use crate::store::audit::{codec, AuditEvent, EventPage};
use crate::store::StoreError;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Events the memory store keeps by default: ~10-20 MB.
pub const DEFAULT_RETENTION: usize = 100_000;

/// An event in its stored form, encoded before the store's lock is taken (the lock is held only
/// to append it).
pub struct Encoded {
    patient: Option<NhsNumber>,
    bytes: Box<[u8]>,
}

impl Encoded {
    pub fn of(event: &AuditEvent) -> Self {
        Self { patient: event.patient_log(), bytes: codec::encode(event).into_boxed_slice() }
    }
}

pub struct AuditLog {
    /// (position, the patient whose log holds it, encoded event), oldest first; positions are
    /// consecutive. An export-only event is in no patient's log.
    events: VecDeque<(u64, Option<NhsNumber>, Box<[u8]>)>,
    /// Each patient's log: its positions, oldest first.
    by_patient: HashMap<NhsNumber, VecDeque<u64>>,
    next: u64,
    retention: usize,
    dropped: u64,
    metrics: Option<Arc<Metrics>>,
}

impl AuditLog {
    pub fn new(retention: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            events: VecDeque::new(),
            by_patient: HashMap::new(),
            next: 0,
            retention: retention.max(1),
            dropped: 0,
            metrics,
        }
    }

    pub fn append(&mut self, event: Encoded) {
        let position = self.next;
        self.next += 1;
        let Encoded { patient, bytes } = event;
        self.events.push_back((position, patient, bytes));
        if let Some(patient) = patient {
            self.by_patient.entry(patient).or_default().push_back(position);
        }
        while self.events.len() > self.retention {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some((_, patient, _)) = self.events.pop_front() else { return };
        if let Some(patient) = patient {
            if let Some(positions) = self.by_patient.get_mut(&patient) {
                positions.pop_front();
                if positions.is_empty() {
                    self.by_patient.remove(&patient);
                }
            }
        }
        if self.dropped == 0 {
            tracing::warn!(
                retention = self.retention,
                "the memory store's audit log is full: dropping its oldest events (the embedded store is for \
                 development and tests; use Redis to keep every event)"
            );
        }
        self.dropped += 1;
        if let Some(metrics) = &self.metrics {
            metrics.audit_events_dropped(1);
        }
    }

    fn first(&self) -> u64 {
        self.events.front().map_or(self.next, |(position, _, _)| *position)
    }

    fn decode(&self, position: u64) -> Result<AuditEvent, StoreError> {
        let offset = usize::try_from(position - self.first())
            .map_err(|_| StoreError::Corrupt(format!("audit position {position}")))?;
        let (_, _, bytes) =
            self.events.get(offset).ok_or_else(|| StoreError::Corrupt(format!("audit position {position} missing")))?;
        codec::decode(position.to_string(), bytes)
    }

    /// The patient's events strictly before `before` (all when `None`), newest first.
    pub fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let Some(positions) = self.by_patient.get(&nhs_number) else { return Ok(EventPage::default()) };
        let before = before.unwrap_or(u64::MAX);
        let mut older = positions.iter().rev().filter(|p| **p < before);
        let events = older.by_ref().take(limit).map(|p| self.decode(*p)).collect::<Result<Vec<_>, _>>()?;
        let more = older.next().is_some();
        let next_before = if more { events.last().and_then(|e| e.cursor.clone()) } else { None };
        Ok(EventPage { events, next_before })
    }

    /// Every event strictly after `after` (from the oldest kept when `None`), oldest first.
    pub fn events_after(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let first = self.first();
        let start = match after {
            None => first,
            Some(cursor) if cursor.saturating_add(1) < first => {
                return Err(StoreError::OutOfRange(format!(
                    "after: cursor {cursor} is older than the {} events this store keeps; the oldest kept is {first}",
                    self.retention
                )))
            }
            Some(cursor) => cursor.saturating_add(1),
        };
        (start..self.next).take(limit).map(|p| self.decode(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::nhs;

    fn event(patient: &str, n: usize) -> AuditEvent {
        AuditEvent {
            cursor: None,
            time: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap_or_default(),
            application: "app".into(),
            organisation: "RR8".into(),
            end_user: None,
            purpose: Some("direct-care".into()),
            operation: format!("Op{n}"),
            nhs_number: Some(nhs(patient)),
            pointer_ids: vec![],
            outcome: "OK".into(),
            break_glass: false,
            export_only: false,
        }
    }

    #[test]
    fn export_only_events_are_in_the_export_and_in_no_patient_log() {
        let mut log = AuditLog::new(3, None);
        log.append(Encoded::of(&event("9434765919", 0)));
        log.append(Encoded::of(&AuditEvent {
            export_only: true,
            outcome: "PERMISSION_DENIED".into(),
            ..event("9434765919", 1)
        }));
        log.append(Encoded::of(&AuditEvent { nhs_number: None, export_only: true, ..event("9434765919", 2) }));
        let patient = log.patient_events(nhs("9434765919"), None, 10).expect("log");
        assert_eq!(patient.events.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["Op0"]);
        let export = log.events_after(None, 10).expect("export");
        assert_eq!(export.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["Op0", "Op1", "Op2"]);
        assert_eq!(export[2].nhs_number, None);
        // Past the retention the oldest goes from both, export-only or not.
        log.append(Encoded::of(&AuditEvent { export_only: true, ..event("9434765919", 3) }));
        log.append(Encoded::of(&AuditEvent { export_only: true, ..event("9434765919", 4) }));
        assert!(log.patient_events(nhs("9434765919"), None, 10).expect("log").events.is_empty());
        assert!(log.by_patient.is_empty(), "no patient left with an empty log");
    }

    #[test]
    fn the_oldest_events_go_past_the_retention_and_are_counted() {
        let metrics = Arc::new(Metrics::new("memory"));
        let mut log = AuditLog::new(3, Some(metrics.clone()));
        for n in 0..5 {
            log.append(Encoded::of(&event(if n % 2 == 0 { "9434765919" } else { "9990000018" }, n)));
        }
        let kept: Vec<String> = log.events_after(None, 10).expect("export").into_iter().map(|e| e.operation).collect();
        assert_eq!(kept, ["Op2", "Op3", "Op4"]);
        let patient = log.patient_events(nhs("9434765919"), None, 10).expect("log");
        assert_eq!(patient.events.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["Op4", "Op2"]);
        assert!(matches!(log.events_after(Some(0), 10), Err(StoreError::OutOfRange(_))), "cursor 0 was dropped");
        assert_eq!(log.events_after(Some(1), 10).expect("from the oldest kept").len(), 3);
        let text = metrics.render().expect("render");
        assert!(text.contains("nrl_audit_events_dropped_total 2"), "{text}");
    }

    #[test]
    fn a_patient_log_pages_newest_first_with_one_cursor_space() {
        let mut log = AuditLog::new(100, None);
        for n in 0..5 {
            log.append(Encoded::of(&event("9434765919", n)));
        }
        let first = log.patient_events(nhs("9434765919"), None, 2).expect("page");
        assert_eq!(first.events.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(), ["Op4", "Op3"]);
        let before = first.next_before.and_then(|c| c.parse().ok());
        let second = log.patient_events(nhs("9434765919"), before, 10).expect("page");
        assert_eq!(second.events.len(), 3);
        assert_eq!(second.next_before, None);
        // The same cursor resumes the export.
        let cursor: u64 = second.events[0].cursor.as_deref().and_then(|c| c.parse().ok()).expect("cursor");
        assert_eq!(log.events_after(Some(cursor), 10).expect("export").len(), 2);
    }
}
