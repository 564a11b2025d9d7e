//! `AuditStore` on Redis: each patient's access log (a LIST in the patient's slot) and the audit
//! export (a STREAM with bounded retention, read through `stream`).

use super::stream::{self, stream_position};
use super::{keys, scripts, RedisStore};
use crate::domain::NhsNumber;
use crate::store::audit::codec;
use crate::store::audit::{AuditEvent, AuditStore, EventPage};
use crate::store::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;

/// Audit events: each patient's log is a LIST in the patient's slot (`keys::audit`), read by
/// GetAccessLog, and kept in full, so only what read or changed the patient's data goes there
/// (`AuditEvent::patient_log`); the export is one STREAM with bounded retention
/// (`keys::AUDIT_EXPORT`) and takes every event. On
/// standalone Redis one script records a whole call's events in both, atomically. On a cluster
/// the export lives in another slot, so it is recorded by its own script call, sent together with
/// the patients' (one round trip in flight); the call fails unless all of them succeed.
#[async_trait]
impl AuditStore for RedisStore {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // The distinct patients' logs in first-seen order, and each event's log as a 1-based
        // index (0: the export only, for an event that belongs in no patient's log).
        let mut patients: Vec<NhsNumber> = Vec::new();
        let mut index_of: HashMap<NhsNumber, usize> = HashMap::new();
        let encoded: Vec<(usize, Vec<u8>)> = events
            .iter()
            .map(|event| {
                let log = event.patient_log().map_or(0, |nhs| {
                    *index_of.entry(nhs).or_insert_with(|| {
                        patients.push(nhs);
                        patients.len()
                    })
                });
                (log, codec::encode(event))
            })
            .collect();
        let mut invocations = Vec::new();
        if self.cluster {
            // The export lives in another slot: one call for it, and one per patient's log.
            let mut export = scripts::RECORD.prepare_invoke();
            export.key(keys::AUDIT_EXPORT).arg(0).arg(self.audit_export_retention);
            let mut logs: Vec<redis::ScriptInvocation<'static>> = patients
                .iter()
                .map(|nhs| {
                    let mut log = scripts::RECORD.prepare_invoke();
                    log.key(keys::audit(*nhs)).arg(1).arg(0);
                    log
                })
                .collect();
            for (log, bytes) in &encoded {
                export.arg(0).arg(bytes.as_slice());
                if *log > 0 {
                    logs[log - 1].arg(1).arg(bytes.as_slice());
                }
            }
            invocations.push(export);
            invocations.extend(logs);
        } else {
            let mut all = scripts::RECORD.prepare_invoke();
            for nhs in &patients {
                all.key(keys::audit(*nhs));
            }
            all.key(keys::AUDIT_EXPORT).arg(patients.len()).arg(self.audit_export_retention);
            for (log, bytes) in &encoded {
                all.arg(*log).arg(bytes.as_slice());
            }
            invocations.push(all);
        }
        let calls = invocations.iter().map(|invocation| {
            let mut connection = self.connection.clone();
            async move { self.bounded(invocation.invoke_async::<i64>(&mut connection)).await }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    async fn patient_events(
        &self,
        nhs_number: NhsNumber,
        before: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let mut connection = self.connection.clone();
        let before: i64 = match before {
            None => -1,
            Some(cursor) => cursor.parse().map_err(|_| StoreError::Corrupt(format!("log cursor {cursor:?}")))?,
        };
        let mut invocation = scripts::LOG_PAGE.prepare_invoke();
        invocation.key(keys::audit(nhs_number)).arg(before).arg(limit);
        let (first, entries): (u64, Vec<Vec<u8>>) = self.bounded(invocation.invoke_async(&mut connection)).await?;
        let mut events = entries
            .iter()
            .zip(first..)
            .map(|(bytes, position)| codec::decode(position.to_string(), bytes))
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        let next_before = (first > 0).then(|| first.to_string());
        Ok(EventPage { events, next_before })
    }

    async fn events_after(&self, after: Option<String>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.stream_page(&stream::AUDIT_EXPORT, after.as_deref(), limit, codec::decode).await
    }

    /// A position in the patient's list: digits that fit the i64 the page script is given.
    fn valid_log_cursor(&self, cursor: &str) -> bool {
        !cursor.is_empty() && cursor.bytes().all(|b| b.is_ascii_digit()) && cursor.parse::<i64>().is_ok()
    }

    fn valid_export_cursor(&self, cursor: &str) -> bool {
        stream_position(cursor).is_some()
    }
}
