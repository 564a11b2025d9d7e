//! `GET /metadata`: the CapabilityStatement, listing exactly the interactions and search parameters
//! served (a test compares it with the router), and publishing the registry's own extensions.

use super::audit_event;
use super::codes::{FHIR_JSON, REGION_EXTENSION, REGION_SEARCH_PARAMETER, SUPERSEDED_BY_EXTENSION};
use super::search;
use serde_json::{json, Value};

fn parameter(name: &str, kind: &str, documentation: &str) -> Value {
    json!({"name": name, "type": kind, "documentation": documentation})
}

pub fn statement(base: &str, published: &str) -> Value {
    let document_reference = json!({
        "type": "DocumentReference",
        "profile": "https://fhir.nhs.uk/England/StructureDefinition/England-DocumentReference",
        "interaction": [
            {"code": "read", "documentation": "GET [base]/DocumentReference/[id]: ETag W/\"version\" and meta.versionId"},
            {"code": "update", "documentation": "PUT [base]/DocumentReference/[id]; If-Match W/\"version\" for optimistic concurrency (412 when stale)"},
            {"code": "delete", "documentation": "DELETE [base]/DocumentReference/[id]; honours If-Match"},
            {"code": "create", "documentation": "POST [base]/DocumentReference: idempotent on masterIdentifier; relatesTo[code=replaces] supersedes atomically"},
            {"code": "search-type", "documentation": "GET [base]/DocumentReference?..., POST [base]/DocumentReference/_search (form or JSON body), GET [base]/DocumentReference/_count?..."},
        ],
        "versioning": "versioned-update",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": [
            parameter(search::SUBJECT, "token", "Required: https://fhir.nhs.uk/Id/nhs-number|<NHS number>"),
            parameter(search::TYPE, "token", "http://snomed.info/sct|<code>; comma-separated alternatives"),
            parameter(search::CATEGORY, "token", "http://snomed.info/sct|<code>; comma-separated alternatives"),
            parameter(search::CUSTODIAN, "token", "https://fhir.nhs.uk/Id/ods-organization-code|<ODS code>; comma-separated alternatives"),
            json!({"name": search::REGION, "definition": REGION_SEARCH_PARAMETER, "type": "token",
                   "documentation": format!("Region code(s) as in the extension {REGION_EXTENSION}; comma-separated alternatives")}),
            parameter(search::COUNT, "number", "Page size, 1 to 500 (default 50)"),
            parameter(search::SUMMARY, "token", "count: the total alone"),
            parameter(search::PAGE_TOKEN, "string", "The opaque token of the next page, as the Bundle's next link carries it"),
        ],
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-expectation", "valueCode": "SHALL"},
        ],
    });
    let audit_event = json!({
        "type": "AuditEvent",
        "interaction": [{"code": "search-type", "documentation": "The patient's access log, newest first; auditor and portal (own patient only) roles"}],
        "searchParam": [
            parameter(audit_event::PATIENT, "token", "https://fhir.nhs.uk/Id/nhs-number|<NHS number> (this or entity.identifier is required)"),
            parameter(audit_event::ENTITY, "token", "https://fhir.nhs.uk/Id/nhs-number|<NHS number>"),
            parameter(search::COUNT, "number", "Page size, 1 to 500 (default 50)"),
            parameter(search::PAGE_TOKEN, "string", "The opaque token of the next page, as the Bundle's next link carries it"),
        ],
    });
    json!({
        "resourceType": "CapabilityStatement",
        "url": format!("{base}/metadata"),
        "name": "NrlRegistry",
        "title": "nrl-registry FHIR R4 API",
        "status": "active",
        "date": published,
        "publisher": "nrl-registry",
        "description": format!(
            "An NRL-style pointer registry, compatible with NHS England's NRL Futures API. Own extensions: \
             {REGION_EXTENSION} (the pointer's region, valueCode) and {SUPERSEDED_BY_EXTENSION} (on a superseded \
             pointer, valueReference)."
        ),
        "kind": "instance",
        "software": {"name": "nrl-registry", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "nrl-registry", "url": base},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "application/json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Authorization: Bearer <JWT>, or a client certificate (mTLS), as for the gRPC API"},
            "resource": [document_reference, audit_event],
        }],
    })
}
