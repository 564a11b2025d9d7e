//! The audit side of the fault tests: read every event the registry recorded (a patient's access
//! log, `AuditLog/GetAccessLog`, paged; the export, `AuditLog/StreamAuditEvents`) and check that
//! the pointers a [`crate::writer`] workload left behind and the events agree.
//!
//! The guarantee under test is "nothing is changed without a record of it": a write and its audit
//! event are one atomic step, so whatever a fault (kill -9, a hung store) does mid-write, either
//! both are there or neither is. [`check_write_events`] finds every exception:
//! - a pointer that exists with no OK event of the write that made it (`CreatePointer`, or
//!   `SupersedePointer` listing the new id and the ids it retired);
//! - a superseded pointer with no OK `SupersedePointer` event listing it beside its successor;
//! - an OK write event naming a pointer that does not exist (the record of a write that never
//!   happened).
//!
//! Read the events *before* [`crate::writer::verify`]: it sends every stored pointer's create again
//! (to check the reference index), and each of those idempotent answers is itself an OK
//! `CreatePointer` event listing the pointer, which would hide a missing one.

use crate::writer::{is_superseded, timed, Journal, HANG_LIMIT};
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::audit_log_client::AuditLogClient;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// The largest page GetAccessLog serves.
const PAGE_SIZE: i32 = 500;
/// How many exceptions a failure message spells out (all are counted).
const SHOWN: usize = 12;

/// The operations a workload's writes are recorded under.
pub const CREATE: &str = "CreatePointer";
pub const SUPERSEDE: &str = "SupersedePointer";

/// The patient's whole access log, newest first, walking every page. Needs a caller that may read
/// it (an auditor, or a server with authentication off).
pub async fn access_log(client: &mut AuditLogClient<Channel>, patient: &str) -> Vec<pb::AuditEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    let mut seen_tokens = HashSet::new();
    loop {
        let request = pb::GetAccessLogRequest { nhs_number: patient.to_string(), page_size: PAGE_SIZE, page_token };
        let page = timed(client.get_access_log(request)).await.0.expect("GetAccessLog while checking the audit trail");
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        assert!(
            seen_tokens.insert(page.next_page_token.clone()),
            "GetAccessLog handed out the same page token twice ({:?}): paging would never end",
            page.next_page_token
        );
        page_token = page.next_page_token;
    }
}

/// The whole export, oldest first, without following. Needs an auditor (or authentication off).
pub async fn export(client: &mut AuditLogClient<Channel>) -> Vec<pb::AuditEvent> {
    let request = pb::StreamAuditEventsRequest { after: String::new(), follow: false };
    let read = async {
        let mut stream = client.stream_audit_events(request).await.expect("StreamAuditEvents starts").into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event.expect("an event of the export"));
        }
        events
    };
    // Bounded like every call of the harness; the export of a fault test is a few thousand events.
    tokio::time::timeout(HANG_LIMIT * 3, read).await.expect("the export ends within its bound")
}

/// What [`check_write_events`] found, for the test's assertion and its log.
#[derive(Debug, Default)]
pub struct AuditTrail {
    /// Where the events came from (`access logs`, `export`), for messages.
    pub source: String,
    /// Pointers checked, and of those how many were superseded (so needed a retirement event too).
    pub pointers: usize,
    pub superseded: usize,
    /// Events read, and of those the OK write events (create or supersede).
    pub events: usize,
    pub write_events: usize,
    /// Exceptions counted by kind and by what the writer heard of the call (`acknowledged`,
    /// `failed: UNAVAILABLE`, ...).
    pub counts: BTreeMap<String, usize>,
    /// Every exception, spelled out.
    pub exceptions: Vec<String>,
}

impl AuditTrail {
    fn exception(&mut self, kind: &str, heard: &str, detail: String) {
        *self.counts.entry(format!("{kind} (the writer's call: {heard})")).or_default() += 1;
        self.exceptions.push(format!("{kind}: {detail}"));
    }

    /// Panics, with the counts and the first exceptions, unless there are none.
    pub fn assert_complete(&self) {
        assert!(
            self.exceptions.is_empty(),
            "{} audit exceptions in the {} ({self}):\n  {}{}",
            self.exceptions.len(),
            self.source,
            self.exceptions.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n  "),
            match self.exceptions.len().saturating_sub(SHOWN) {
                0 => String::new(),
                more => format!("\n  ... and {more} more"),
            }
        );
    }
}

impl std::fmt::Display for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} pointers checked ({} superseded) against {} events ({} OK writes); {} exceptions {:?}",
            self.source,
            self.pointers,
            self.superseded,
            self.events,
            self.write_events,
            self.exceptions.len(),
            self.counts
        )
    }
}

/// The operation the workload used for the write that made `pointer`: a create, or a supersede if
/// it was sent with ids to retire.
fn made_by(pointer: &pb::Pointer, journal: &Journal) -> &'static str {
    match journal.sent.get(&pointer.producer_reference) {
        Some(sent) if !sent.supersedes.is_empty() => SUPERSEDE,
        Some(_) => CREATE,
        // verify() reports a pointer nobody sent; judge it by what it says it replaced.
        None if pointer.supersedes.is_empty() => CREATE,
        None => SUPERSEDE,
    }
}

fn is_ok_write(event: &pb::AuditEvent) -> bool {
    event.outcome == "OK" && (event.operation == CREATE || event.operation == SUPERSEDE)
}

/// `Operation:OUTCOME[ids]`, short, for messages.
fn describe(event: &pb::AuditEvent) -> String {
    format!("{}:{}{:?}", event.operation, event.outcome, event.pointer_ids)
}

/// The events naming a pointer, for messages: the writes spelled out, the reads (searches list
/// every pointer they return) only counted.
fn describe_naming(named: &[&pb::AuditEvent]) -> String {
    const WRITES: [&str; 5] = [CREATE, SUPERSEDE, "BatchCreatePointers", "UpdatePointer", "DeletePointer"];
    let writes: Vec<String> =
        named.iter().filter(|e| WRITES.contains(&e.operation.as_str())).map(|e| describe(e)).collect();
    format!("writes {writes:?} and {} other events", named.len() - writes.len())
}

/// Checks `pointers` (every pointer that exists, of every patient the workload wrote to) against
/// `events` (every event read from `source`, any patient), with `journal` saying which operation
/// made each pointer and what the writer heard of it. See the module doc for what is an exception.
pub fn check_write_events(
    source: &str,
    pointers: &[pb::Pointer],
    events: &[pb::AuditEvent],
    journal: &Journal,
) -> AuditTrail {
    let mut trail = AuditTrail { source: source.into(), events: events.len(), ..AuditTrail::default() };
    let patients: HashSet<&str> = journal.sent.values().map(|s| s.input.nhs_number.as_str()).collect();
    // Every event that names a pointer, by pointer id; and per patient, the write events that
    // named none (a failed write's event).
    let mut naming: HashMap<&str, Vec<&pb::AuditEvent>> = HashMap::new();
    let mut unnamed: HashMap<(&str, &str), Vec<&pb::AuditEvent>> = HashMap::new();
    for event in events {
        for id in &event.pointer_ids {
            naming.entry(id.as_str()).or_default().push(event);
        }
        if event.pointer_ids.is_empty() && (event.operation == CREATE || event.operation == SUPERSEDE) {
            unnamed.entry((event.nhs_number.as_str(), event.operation.as_str())).or_default().push(event);
        }
    }
    let lists_all = |event: &pb::AuditEvent, pointer: &pb::Pointer, ids: &[&str]| {
        event.nhs_number == pointer.nhs_number && ids.iter().all(|id| event.pointer_ids.iter().any(|e| e == id))
    };

    for pointer in pointers {
        trail.pointers += 1;
        let id = pointer.id.as_str();
        let op = made_by(pointer, journal);
        let heard = journal.heard(&pointer.producer_reference);
        let outcome = journal.outcome_of(&pointer.producer_reference);
        let named: &[&pb::AuditEvent] = naming.get(id).map(Vec::as_slice).unwrap_or_default();
        // The write that made it lists it, and a supersede also the ids it retired.
        let mut made_ids = vec![id];
        made_ids.extend(pointer.supersedes.iter().map(String::as_str));
        let made = named.iter().any(|e| e.outcome == "OK" && e.operation == op && lists_all(e, pointer, &made_ids));
        if !made {
            let failed_writes: Vec<String> = unnamed
                .get(&(pointer.nhs_number.as_str(), op))
                .map(|events| events.iter().map(|e| format!("{}:{}", e.operation, e.outcome)).collect())
                .unwrap_or_default();
            trail.exception(
                &format!("no OK {op} event lists the pointer it made"),
                &heard,
                format!(
                    "pointer {id} (reference {}, version {}, supersedes {:?}); the writer's call: {outcome}; events \
                     naming it: {}; the patient's {op} events that name no pointer: {} {:?}",
                    pointer.producer_reference,
                    pointer.version,
                    pointer.supersedes,
                    describe_naming(named),
                    failed_writes.len(),
                    failed_writes.iter().take(3).collect::<Vec<_>>(),
                ),
            );
        }
        if is_superseded(pointer) {
            trail.superseded += 1;
            let retired_ids = [id, pointer.superseded_by.as_str()];
            let retired = named
                .iter()
                .any(|e| e.outcome == "OK" && e.operation == SUPERSEDE && lists_all(e, pointer, &retired_ids));
            if !retired {
                let successor = pointers.iter().find(|p| p.id == pointer.superseded_by);
                let reference = successor.map(|s| s.producer_reference.as_str()).unwrap_or("?");
                let heard = journal.heard(reference);
                trail.exception(
                    "no OK SupersedePointer event lists a superseded pointer beside its successor",
                    &heard,
                    format!(
                        "pointer {id} superseded by {} (reference {reference}); the writer's supersede: {}; events \
                         naming it: {}",
                        pointer.superseded_by,
                        journal.outcome_of(reference),
                        describe_naming(named)
                    ),
                );
            }
        }
    }

    // The other half of one atomic step: no record of a write that did not happen.
    let existing: HashSet<&str> = pointers.iter().map(|p| p.id.as_str()).collect();
    for event in events.iter().filter(|e| is_ok_write(e) && patients.contains(e.nhs_number.as_str())) {
        trail.write_events += 1;
        for id in event.pointer_ids.iter().filter(|id| !existing.contains(id.as_str())) {
            trail.exception(
                "an OK write event names a pointer that does not exist",
                "n/a",
                format!("{} names {id}, which no search of its patient returns", describe(event)),
            );
        }
    }
    trail
}
