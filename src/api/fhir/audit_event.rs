//! A patient's access log as FHIR `AuditEvent`s, after IHE's Basic Audit Log Patterns: who (the
//! calling organisation, its application and end user, the stated purpose), what (the operation, the
//! patient, the pointers shown or changed), when, the outcome, and break-glass flagged.

use super::codes::{BREAK_GLASS_EXTENSION, NHS_NUMBER_SYSTEM, ODS_SYSTEM, OPERATION_SYSTEM, PURPOSE_SYSTEM};
use super::document_reference::instant;
use super::outcome::FhirError;
use super::search::{self, Parameters, COUNT, FORMAT, PAGE_TOKEN};
use crate::domain::NhsNumber;
use crate::registry::MAX_AUDIT_PAGE;
use crate::store::audit::{AuditEvent, EventPage};
use serde_json::{json, Value};

pub const PATIENT: &str = "patient.identifier";
pub const ENTITY: &str = "entity.identifier";
pub const PARAMETERS: [&str; 5] = [PATIENT, ENTITY, COUNT, FORMAT, PAGE_TOKEN];
const DEFAULT_PAGE: usize = 50;
/// Page tokens are store cursors: short, and never more than this.
const MAX_CURSOR_LEN: usize = 64;

/// A validated access-log request.
pub struct LogRequest {
    pub nhs_number: NhsNumber,
    pub before: Option<String>,
    pub limit: usize,
}

pub fn read(parameters: &Parameters) -> Result<LogRequest, FhirError> {
    let (name, value) = match (parameters.get(PATIENT), parameters.get(ENTITY)) {
        (Some(_), Some(_)) => {
            return Err(FhirError::parameter(ENTITY, format!("give {PATIENT} or {ENTITY}, not both")))
        }
        (Some(value), None) => (PATIENT, Some(value)),
        (None, value) => (ENTITY, value),
    };
    let nhs_number = search::nhs_number(if value.is_some() { name } else { PATIENT }, value)?;
    let limit = match parameters.get(COUNT) {
        None => DEFAULT_PAGE,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_AUDIT_PAGE),
            _ => return Err(FhirError::parameter(COUNT, format!("must be a whole number from 1 to {MAX_AUDIT_PAGE}"))),
        },
    };
    let before = match parameters.get(PAGE_TOKEN) {
        None => None,
        Some(token) if token.is_empty() || token.len() > MAX_CURSOR_LEN => {
            return Err(FhirError::parameter(PAGE_TOKEN, "is not a page token from this service"))
        }
        Some(token) => Some(token.to_string()),
    };
    Ok(LogRequest { nhs_number, before, limit })
}

/// What the operation did, as AuditEvent's action codes say it.
fn action(operation: &str) -> &'static str {
    match operation {
        "CreatePointer" | "BatchCreatePointers" => "C",
        "UpdatePointer" | "SupersedePointer" | "SetRestriction" => "U",
        "DeletePointer" => "D",
        "GetPointer" | "SearchPointers" | "CountPointers" | "LocatePatient" | "GetAccessLog" | "GetRestriction"
        | "FederatedSearch" => "R",
        _ => "E",
    }
}

/// 0 success, 4 the caller's failure, 8 the server's.
fn outcome(code: &str) -> &'static str {
    match code {
        "OK" => "0",
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" => "8",
        _ => "4",
    }
}

pub fn resource(event: &AuditEvent) -> Value {
    let mut agent = json!({
        "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP",
            "display": "information recipient",
        }]},
        "who": {"identifier": {"system": ODS_SYSTEM, "value": event.organisation}},
        "altId": event.application,
        "requestor": true,
    });
    if let Some(user) = &event.end_user {
        agent["name"] = json!(user);
    }
    if let Some(purpose) = &event.purpose {
        agent["purposeOfUse"] = json!([{"coding": [{"system": PURPOSE_SYSTEM, "code": purpose}]}]);
    }
    let mut entities = Vec::new();
    if let Some(nhs) = event.nhs_number {
        entities.push(json!({
            "what": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs.to_string()}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        }));
    }
    for id in &event.pointer_ids {
        entities.push(json!({
            "what": {"reference": format!("DocumentReference/{id}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
        }));
    }
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": OPERATION_SYSTEM, "code": event.operation}],
        "action": action(&event.operation),
        "recorded": instant(event.time),
        "outcome": outcome(&event.outcome),
        "outcomeDesc": event.outcome,
        "source": {"observer": {"display": "nrl-registry"}, "type": [{
            "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    resource["agent"] = Value::Array(vec![agent]);
    if !entities.is_empty() {
        resource["entity"] = Value::Array(entities);
    }
    if let Some(cursor) = event.cursor.as_deref().filter(|c| is_fhir_id(c)) {
        resource["id"] = json!(cursor);
    }
    if let Some(purpose) = &event.purpose {
        resource["purposeOfEvent"] = json!([{"coding": [{"system": PURPOSE_SYSTEM, "code": purpose}]}]);
    }
    if event.break_glass {
        resource["extension"] = json!([{"url": BREAK_GLASS_EXTENSION, "valueBoolean": true}]);
    }
    resource
}

/// FHIR ids: 1 to 64 of `A-Za-z0-9-.`.
fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// One page of the log as a searchset Bundle, newest first, with a `next` link while more follow.
pub fn bundle(page: &EventPage, base: &str, parameters: &Parameters) -> Value {
    let url = |token: Option<&str>| format!("{base}/AuditEvent?{}", parameters.encode(&PARAMETERS, token));
    let mut links = vec![json!({"relation": "self", "url": url(parameters.get(PAGE_TOKEN))})];
    if let Some(next) = &page.next_before {
        links.push(json!({"relation": "next", "url": url(Some(next))}));
    }
    let entries: Vec<Value> = page
        .events
        .iter()
        .map(|e| {
            let mut entry = json!({"search": {"mode": "match"}});
            // Moved in, not through json!: json! serialises a Value it is given into a deep copy.
            entry["resource"] = resource(e);
            entry
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset"});
    bundle["link"] = Value::Array(links);
    // FHIR JSON has no empty arrays: an empty log page leaves `entry` out.
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}
