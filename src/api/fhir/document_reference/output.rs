//! A pointer as an NRLF-profile DocumentReference, and a page of them as a searchset Bundle, as
//! typed views that serialise straight from the pointer: no intermediate `serde_json::Value` tree
//! (a `String` and a map node per key, built, copied and dropped on every search), which was most
//! of a FHIR search's cost (loadtest/FHIR-PROFILE.md). Absent elements are left out; FHIR JSON has
//! no nulls and no empty arrays.

use super::super::codes::*;
use super::{format_display, instant, retrieval_display, stability_display};
use crate::domain::{Coding, Pointer, PointerStatus};
use serde::Serialize;
use std::borrow::Cow;

fn is_empty(text: &&str) -> bool {
    text.is_empty()
}

#[derive(Serialize)]
struct CodingOut<'a> {
    system: &'static str,
    code: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    display: &'a str,
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: [CodingOut<'a>; 1],
}

impl<'a> Concept<'a> {
    fn snomed(coding: &'a Coding) -> Self {
        Self { coding: [CodingOut { system: SNOMED_SYSTEM, code: &coding.code, display: &coding.display }] }
    }

    fn of(system: &'static str, code: &'a str, display: &'a str) -> Self {
        Self { coding: [CodingOut { system, code, display }] }
    }
}

#[derive(Serialize)]
struct IdentifierOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'static str>,
    value: Cow<'a, str>,
}

/// `{"identifier": {...}}`: a Reference by identifier.
#[derive(Serialize)]
struct ByIdentifier<'a> {
    identifier: IdentifierOut<'a>,
}

impl<'a> ByIdentifier<'a> {
    fn new(system: &'static str, value: impl Into<Cow<'a, str>>) -> Self {
        Self { identifier: IdentifierOut { system: Some(system), value: value.into() } }
    }
}

#[derive(Serialize)]
struct ReferenceOut {
    reference: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtensionOut<'a> {
    url: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_reference: Option<ReferenceOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_codeable_concept: Option<Concept<'a>>,
}

impl<'a> ExtensionOut<'a> {
    fn concept(url: &'static str, concept: Concept<'a>) -> Self {
        Self { url, value_code: None, value_reference: None, value_codeable_concept: Some(concept) }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    version_id: String,
    last_updated: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentOut<'a> {
    content_type: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    extension: [ExtensionOut<'a>; 2],
    attachment: AttachmentOut<'a>,
    format: CodingOut<'a>,
}

#[derive(Serialize)]
struct TargetOut<'a> {
    reference: String,
    identifier: IdentifierOut<'a>,
}

#[derive(Serialize)]
struct RelatesToOut<'a> {
    code: &'static str,
    target: TargetOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContextOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    practice_setting: Option<Concept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    related: Vec<ByIdentifier<'a>>,
}

/// A pointer as a DocumentReference (README: "FHIR mapping").
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReferenceOut<'a> {
    resource_type: &'static str,
    id: String,
    meta: Meta,
    extension: Vec<ExtensionOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    master_identifier: Option<IdentifierOut<'a>>,
    status: &'static str,
    #[serde(rename = "type")]
    kind: Concept<'a>,
    category: [Concept<'a>; 1],
    subject: ByIdentifier<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    date: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    author: Vec<ByIdentifier<'a>>,
    custodian: ByIdentifier<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relates_to: Vec<RelatesToOut<'a>>,
    content: Vec<ContentOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<ContextOut<'a>>,
}

impl<'a> DocumentReferenceOut<'a> {
    pub fn of(pointer: &'a Pointer) -> Self {
        let draft = &pointer.draft;
        let mut extension = vec![ExtensionOut {
            url: REGION_EXTENSION,
            value_code: Some(draft.region.as_str()),
            value_reference: None,
            value_codeable_concept: None,
        }];
        if let Some(by) = pointer.superseded_by {
            extension.push(ExtensionOut {
                url: SUPERSEDED_BY_EXTENSION,
                value_code: None,
                value_reference: Some(ReferenceOut { reference: format!("DocumentReference/{by}") }),
                value_codeable_concept: None,
            });
        }
        let content = draft
            .content
            .iter()
            .map(|c| ContentOut {
                extension: [
                    ExtensionOut::concept(
                        STABILITY_EXTENSION,
                        Concept::of(STABILITY_SYSTEM, c.stability.as_str(), stability_display(c.stability)),
                    ),
                    ExtensionOut::concept(
                        RETRIEVAL_EXTENSION,
                        Concept::of(
                            RETRIEVAL_SYSTEM,
                            c.retrieval_mechanism.as_str(),
                            retrieval_display(c.retrieval_mechanism),
                        ),
                    ),
                ],
                attachment: AttachmentOut { content_type: c.content_type.as_str(), url: c.url.as_str() },
                format: CodingOut { system: FORMAT_SYSTEM, code: c.format.as_str(), display: format_display(c.format) },
            })
            .collect();
        let related: Vec<ByIdentifier<'a>> =
            draft.related_asid.iter().map(|asid| ByIdentifier::new(ASID_SYSTEM, asid.as_str())).collect();
        let practice_setting = draft.practice_setting.as_ref().map(Concept::snomed);
        let context =
            (practice_setting.is_some() || !related.is_empty()).then_some(ContextOut { practice_setting, related });
        Self {
            resource_type: "DocumentReference",
            id: pointer.id.to_string(),
            meta: Meta { version_id: pointer.version.to_string(), last_updated: instant(pointer.updated_at) },
            extension,
            master_identifier: draft
                .producer_reference
                .as_ref()
                .map(|r| IdentifierOut { system: None, value: Cow::Borrowed(r.as_str()) }),
            status: match pointer.status {
                PointerStatus::Current => "current",
                PointerStatus::Superseded => "superseded",
            },
            kind: Concept::snomed(&draft.pointer_type.coding),
            category: [Concept::snomed(&draft.pointer_type.category)],
            subject: ByIdentifier::new(NHS_NUMBER_SYSTEM, draft.nhs_number.to_string()),
            date: draft.document_date.map(instant),
            author: draft.author.iter().map(|a| ByIdentifier::new(ODS_SYSTEM, a.as_str())).collect(),
            custodian: ByIdentifier::new(ODS_SYSTEM, draft.custodian.as_str()),
            relates_to: pointer
                .supersedes
                .iter()
                .map(|old| RelatesToOut {
                    code: "replaces",
                    target: TargetOut {
                        reference: format!("DocumentReference/{old}"),
                        identifier: IdentifierOut { system: None, value: Cow::Owned(old.to_string()) },
                    },
                })
                .collect(),
            content,
            context,
        }
    }
}

#[derive(Serialize)]
pub struct LinkOut {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize)]
struct SearchMode {
    mode: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryOut<'a> {
    full_url: String,
    resource: DocumentReferenceOut<'a>,
    search: SearchMode,
}

/// A searchset Bundle of DocumentReferences.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchsetOut<'a> {
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    total: u64,
    link: Vec<LinkOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<EntryOut<'a>>,
}

impl<'a> SearchsetOut<'a> {
    pub fn new(total: u64, link: Vec<LinkOut>, base: &str, pointers: &'a [Pointer]) -> Self {
        let entry = pointers
            .iter()
            .map(|p| EntryOut {
                full_url: format!("{base}/DocumentReference/{}", p.id),
                resource: DocumentReferenceOut::of(p),
                search: SearchMode { mode: "match" },
            })
            .collect();
        Self { resource_type: "Bundle", kind: "searchset", total, link, entry }
    }
}
