//! What a client may send: every element of R4's DocumentReference (and of the datatypes it
//! uses), so that serde refuses anything else by name. The elements the pointer does not model are
//! listed only to be accepted and dropped, so most fields here are never read.
#![allow(dead_code)]

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DocumentReferenceIn {
    pub(super) resource_type: String,
    pub(super) id: Option<String>,
    pub(super) meta: Option<IgnoredAny>,
    pub(super) implicit_rules: Option<IgnoredAny>,
    pub(super) language: Option<IgnoredAny>,
    pub(super) text: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) contained: Vec<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<Extension>,
    #[serde(default)]
    pub(super) modifier_extension: Vec<IgnoredAny>,
    pub(super) master_identifier: Option<Identifier>,
    pub(super) identifier: Option<IgnoredAny>,
    pub(super) status: Option<String>,
    pub(super) doc_status: Option<IgnoredAny>,
    #[serde(rename = "type")]
    pub(super) kind: Option<CodeableConcept>,
    #[serde(default)]
    pub(super) category: Vec<CodeableConcept>,
    pub(super) subject: Option<Reference>,
    pub(super) date: Option<String>,
    #[serde(default)]
    pub(super) author: Vec<Reference>,
    pub(super) authenticator: Option<IgnoredAny>,
    pub(super) custodian: Option<Reference>,
    #[serde(default)]
    pub(super) relates_to: Vec<RelatesTo>,
    pub(super) description: Option<IgnoredAny>,
    pub(super) security_label: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) content: Vec<ContentIn>,
    pub(super) context: Option<ContextIn>,
}

/// Extensions are open: an unknown (non-modifier) extension may be ignored, as FHIR allows.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Extension {
    pub(super) url: String,
    pub(super) value_code: Option<String>,
    pub(super) value_codeable_concept: Option<CodeableConcept>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Identifier {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    #[serde(rename = "use")]
    pub(super) usage: Option<IgnoredAny>,
    #[serde(rename = "type")]
    pub(super) kind: Option<IgnoredAny>,
    pub(super) system: Option<String>,
    pub(super) value: Option<String>,
    pub(super) period: Option<IgnoredAny>,
    pub(super) assigner: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Reference {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    pub(super) reference: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<IgnoredAny>,
    pub(super) identifier: Option<Identifier>,
    pub(super) display: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CodeableConcept {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    #[serde(default)]
    pub(super) coding: Vec<CodingIn>,
    pub(super) text: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CodingIn {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    pub(super) system: Option<String>,
    pub(super) version: Option<IgnoredAny>,
    pub(super) code: Option<String>,
    pub(super) display: Option<String>,
    pub(super) user_selected: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RelatesTo {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    #[serde(default)]
    pub(super) modifier_extension: Vec<IgnoredAny>,
    pub(super) code: Option<String>,
    pub(super) target: Option<Reference>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ContentIn {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<Extension>,
    #[serde(default)]
    pub(super) modifier_extension: Vec<IgnoredAny>,
    pub(super) attachment: Option<Attachment>,
    pub(super) format: Option<CodingIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Attachment {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    pub(super) content_type: Option<String>,
    pub(super) language: Option<IgnoredAny>,
    pub(super) data: Option<IgnoredAny>,
    pub(super) url: Option<String>,
    pub(super) size: Option<IgnoredAny>,
    pub(super) hash: Option<IgnoredAny>,
    pub(super) title: Option<IgnoredAny>,
    pub(super) creation: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ContextIn {
    pub(super) id: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) extension: Vec<IgnoredAny>,
    #[serde(default)]
    pub(super) modifier_extension: Vec<IgnoredAny>,
    pub(super) encounter: Option<IgnoredAny>,
    pub(super) event: Option<IgnoredAny>,
    pub(super) period: Option<IgnoredAny>,
    pub(super) facility_type: Option<IgnoredAny>,
    pub(super) practice_setting: Option<CodeableConcept>,
    pub(super) source_patient_info: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) related: Vec<Reference>,
}
