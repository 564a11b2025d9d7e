//! FHIR R4 conformance of the HTTP API's response bodies, judged by a maintained R4 model rather
//! than by hand-written expectations, so that a malformed resource cannot pass a test.
//!
//! The model is `fhirkit`: every R4 (4.0.1) resource and datatype generated from the official
//! `hl7.fhir.r4.core` package, with no dependencies of its own. Only its `foundation` feature is
//! built, which holds all five resource types the API returns. Its strict reading reports, each
//! with the element's path:
//! - an element of the wrong JSON type or lexical form (a number for a `code`, an `instant`
//!   without a time zone, an empty string or array, `null`),
//! - an element the model does not have (an unknown element, including a misspelt one),
//! - a missing required element (cardinality 1..1 or 1..*),
//! - a `[x]` choice given twice, a repeated key, a `resourceType` that is not the expected one.
//!
//! Two checks are added here, because the model does not make them:
//! - **required bindings.** fhirkit checks that a `code` is lexically a code, not that it is in the
//!   value set its element is bound to. [`REQUIRED_BINDINGS`] lists, for the coded elements of the
//!   five resources (and of the resources they carry), the codes the R4 specification allows.
//!   Bindings of datatypes (`Identifier.use`, `Narrative.status`, ...) are not listed.
//! - **a round trip.** The model is written back out and compared with what was read; an element
//!   that the model dropped or changed fails the check. fhirkit is itself lossless and reports
//!   unknown elements, so this is a guard against a future version that is not, not a substitute.
//!
//! Every function takes the parsed body and returns `Err` with every problem found, one per line.

use fhirkit::{FhirJson, Issue};
use serde_json::Value;
use std::collections::BTreeMap;

/// The resource types the API returns, and so the ones [`resource`] and a Bundle's entries accept.
pub const API_RESOURCE_TYPES: [&str; 5] =
    ["DocumentReference", "Bundle", "OperationOutcome", "CapabilityStatement", "AuditEvent"];

/// A DocumentReference (NRLF pointer), as `GET /DocumentReference/{id}` returns it.
pub fn document_reference(json: &Value) -> Result<(), String> {
    check::<fhirkit::r4::DocumentReference>(json)
}

/// A Bundle (a searchset, say). Its entries are read by the model as part of the Bundle, and each
/// `entry.resource` must also be one of the [`API_RESOURCE_TYPES`].
pub fn bundle(json: &Value) -> Result<(), String> {
    check::<fhirkit::r4::Bundle>(json)
}

/// An OperationOutcome, the body of every error.
pub fn operation_outcome(json: &Value) -> Result<(), String> {
    check::<fhirkit::r4::OperationOutcome>(json)
}

/// The CapabilityStatement of `GET /metadata`.
pub fn capability_statement(json: &Value) -> Result<(), String> {
    check::<fhirkit::r4::CapabilityStatement>(json)
}

/// An AuditEvent.
pub fn audit_event(json: &Value) -> Result<(), String> {
    check::<fhirkit::r4::AuditEvent>(json)
}

/// Any response body: dispatched on `resourceType` to the function for that type. A Bundle's
/// entries are checked with it (see [`bundle`]). A type the API does not return is an error.
pub fn resource(json: &Value) -> Result<(), String> {
    match json.get("resourceType").and_then(Value::as_str) {
        Some("DocumentReference") => document_reference(json),
        Some("Bundle") => bundle(json),
        Some("OperationOutcome") => operation_outcome(json),
        Some("CapabilityStatement") => capability_statement(json),
        Some("AuditEvent") => audit_event(json),
        Some(other) => {
            Err(format!("resourceType {other:?} is not one the API returns (one of {API_RESOURCE_TYPES:?})"))
        }
        None => Err(format!("not a FHIR resource: no string resourceType in {}", brief(json))),
    }
}

/// The codes the R4 specification allows for coded elements with a *required* binding, by element
/// path (array indices left out). Only elements of the five API resource types are listed.
pub const REQUIRED_BINDINGS: &[(&str, &[&str])] = &[
    ("DocumentReference.status", &["current", "superseded", "entered-in-error"]),
    ("DocumentReference.docStatus", &["preliminary", "final", "amended", "entered-in-error"]),
    ("DocumentReference.relatesTo.code", &["replaces", "transforms", "signs", "appends"]),
    (
        "Bundle.type",
        &[
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        ],
    ),
    ("Bundle.entry.search.mode", &["match", "include", "outcome"]),
    ("Bundle.entry.request.method", &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
    ("OperationOutcome.issue.severity", &["fatal", "error", "warning", "information"]),
    (
        "OperationOutcome.issue.code",
        &[
            "invalid",
            "structure",
            "required",
            "value",
            "invariant",
            "security",
            "login",
            "unknown",
            "expired",
            "forbidden",
            "suppressed",
            "processing",
            "not-supported",
            "duplicate",
            "multiple-matches",
            "not-found",
            "deleted",
            "too-long",
            "code-invalid",
            "extension",
            "too-costly",
            "business-rule",
            "conflict",
            "transient",
            "lock-error",
            "no-store",
            "exception",
            "timeout",
            "incomplete",
            "throttled",
            "informational",
        ],
    ),
    ("CapabilityStatement.status", &["draft", "active", "retired", "unknown"]),
    ("CapabilityStatement.kind", &["instance", "capability", "requirements"]),
    (
        "CapabilityStatement.fhirVersion",
        &[
            "0.01", "0.05", "0.06", "0.11", "0.0.80", "0.0.81", "0.0.82", "0.4.0", "0.5.0", "1.0.0", "1.0.1", "1.0.2",
            "1.1.0", "1.4.0", "1.6.0", "1.8.0", "3.0.0", "3.0.1", "3.3.0", "3.5.0", "4.0.0", "4.0.1",
        ],
    ),
    ("CapabilityStatement.rest.mode", &["client", "server"]),
    ("CapabilityStatement.rest.resource.type", fhirkit::r4::RESOURCE_TYPES),
    (
        "CapabilityStatement.rest.resource.interaction.code",
        &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"],
    ),
    ("CapabilityStatement.rest.resource.versioning", &["no-version", "versioned", "versioned-update"]),
    (
        "CapabilityStatement.rest.resource.conditionalRead",
        &["not-supported", "modified-since", "not-match", "full-support"],
    ),
    ("CapabilityStatement.rest.resource.conditionalDelete", &["not-supported", "single", "multiple"]),
    ("CapabilityStatement.rest.resource.referencePolicy", &["literal", "logical", "resolves", "enforced", "local"]),
    (
        "CapabilityStatement.rest.resource.searchParam.type",
        &["number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"],
    ),
    ("CapabilityStatement.rest.interaction.code", &["transaction", "batch", "search-system", "history-system"]),
    ("AuditEvent.action", &["C", "R", "U", "D", "E"]),
    ("AuditEvent.outcome", &["0", "4", "8", "12"]),
    ("AuditEvent.agent.network.type", &["1", "2", "3", "4", "5"]),
];

/// Read `json` strictly as a `T`, then add the checks the model does not make.
fn check<T: FhirJson>(json: &Value) -> Result<(), String> {
    let mut problems = Vec::new();
    // fhirkit reads JSON text with its own parser (it keeps decimals exactly as written).
    let (decoded, issues) = match fhirkit::from_json::<T>(&json.to_string()) {
        Ok(read) => read,
        Err(e) => return Err(format!("not JSON to the FHIR model: {e}")),
    };
    // Every issue counts, warnings too: a response should leave nothing questionable.
    problems.extend(issues.iter().map(Issue::to_string));
    match decoded {
        None => problems.push(format!("the model could not read it as a {} at all", T::TYPE_NAME)),
        Some(model) if issues.is_empty() => round_trip(json, &fhirkit::to_json(&model), &mut problems),
        Some(_) => {} // already failing; a round trip would only repeat the issues
    }
    let root = json.get("resourceType").and_then(Value::as_str).unwrap_or(T::TYPE_NAME);
    bindings(json, root, root, &mut problems);
    if T::TYPE_NAME == "Bundle" {
        entry_types(json, &mut problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("not a valid FHIR R4 {}:\n  {}", T::TYPE_NAME, problems.join("\n  ")))
    }
}

/// Compare what went in with what the model writes back out: any leaf lost, added or changed.
fn round_trip(input: &Value, written: &str, problems: &mut Vec<String>) {
    let output: Value = match serde_json::from_str(written) {
        Ok(v) => v,
        Err(e) => return problems.push(format!("the model wrote JSON that does not parse: {e}")),
    };
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    leaves(input, String::new(), &mut before);
    leaves(&output, String::new(), &mut after);
    for (path, value) in &before {
        match after.get(path) {
            None => problems.push(format!("round trip: {path} was lost by the model (an element it does not know?)")),
            Some(v) if v != value => problems.push(format!("round trip: {path} came back as {v}, not {value}")),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        problems.push(format!("round trip: {path} was added by the model"));
    }
}

/// Every leaf of `v` (a primitive, or an empty object or array) by its JSON path.
fn leaves(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

/// Check every coded element listed in [`REQUIRED_BINDINGS`]. `element` is the FHIR element path
/// without indices (what the table is keyed by); `shown` is the same path with indices, for the
/// message. A nested resource (`entry.resource`, `contained`, `outcome`) starts its own element
/// path, at its `resourceType`.
fn bindings(v: &Value, element: &str, shown: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let (element, shown) = match x.get("resourceType").and_then(Value::as_str) {
                    Some(rt) => (rt.to_string(), format!("{shown}.{k}")),
                    _ => (format!("{element}.{k}"), format!("{shown}.{k}")),
                };
                bindings(x, &element, &shown, problems);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                bindings(x, element, &format!("{shown}[{i}]"), problems);
            }
        }
        Value::String(code) => {
            if let Some((_, allowed)) = REQUIRED_BINDINGS.iter().find(|(path, _)| *path == element) {
                if !allowed.contains(&code.as_str()) {
                    problems.push(format!(
                        "error at {shown}: {code:?} is not in the required value set (one of {})",
                        allowed.join(", ")
                    ));
                }
            }
        }
        _ => {}
    }
}

/// Each `Bundle.entry.resource` must be a type the API returns.
fn entry_types(json: &Value, problems: &mut Vec<String>) {
    let Some(entries) = json.get("entry").and_then(Value::as_array) else { return };
    for (i, entry) in entries.iter().enumerate() {
        let Some(rt) = entry.get("resource").and_then(|r| r.get("resourceType")).and_then(Value::as_str) else {
            continue; // an entry without a resource is allowed (a deleted one in a history, say)
        };
        if !API_RESOURCE_TYPES.contains(&rt) {
            problems.push(format!("error at Bundle.entry[{i}].resource: {rt} is not a type the API returns"));
        }
    }
}

/// The start of a JSON value, for a message.
fn brief(json: &Value) -> String {
    let text = json.to_string();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
