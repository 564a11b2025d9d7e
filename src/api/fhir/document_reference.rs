//! FHIR `DocumentReference` ↔ pointer, following NRLF's profile (README: "FHIR mapping").
//!
//! Reading is strict where it matters and lenient where FHIR says to be: every element of R4's
//! DocumentReference is recognised; those the pointer models are validated and kept, the others
//! (`description`, `securityLabel`, attachment `title`, ...) are accepted and dropped, as the
//! README's mapping table lists; anything that is not an element of DocumentReference is refused,
//! naming it. Elements whose meaning the registry cannot honour (`modifierExtension`, `contained`,
//! inline `attachment.data`) are refused too. Every error names the element by its FHIRPath.

use super::codes::*;
use super::outcome::{FhirError, SpineCode};
use crate::domain::limits::{MAX_CONTENT, MAX_DISPLAY_LEN, MAX_SUPERSEDES};
use crate::domain::{
    Asid, Coding, Content, ContentFormat, ContentType, ContentUrl, NhsNumber, OdsCode, Pointer, PointerDraft,
    PointerId, ProducerReference, ReferenceData, RegionCode, RetrievalMechanism, Stability,
};
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde_json::Value;

type Result<T> = std::result::Result<T, FhirError>;

const ROOT: &str = "DocumentReference";

mod input;
mod output;
use input::*;
pub use output::{DocumentReferenceOut, LinkOut, SearchsetOut};

// ---- Reading a submission ----

/// A DocumentReference as submitted, validated into the registry's terms.
#[derive(Debug)]
pub struct Submission {
    pub id: Option<String>,
    pub draft: PointerDraft,
    /// `relatesTo[code=replaces]` targets: the pointers this one supersedes.
    pub replaces: Vec<PointerId>,
}

/// What reading a submission needs besides the body.
pub struct ReadContext<'a> {
    pub reference: &'a ReferenceData,
    /// The region when the region extension is absent: the caller's single permitted region, else
    /// the node's single region.
    pub default_region: Option<RegionCode>,
}

/// Parses JSON into `T`, naming the element that failed by its FHIRPath under `root`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], root: &str) -> Result<T> {
    let not_json = |e: &serde_json::Error| {
        FhirError::invalid(
            SpineCode::MessageNotWellFormed,
            "",
            format!("the body is not valid JSON ({})", without_position(e)),
        )
    };
    // Syntax first, so a broken body is MESSAGE_NOT_WELL_FORMED and not a complaint about an element.
    let value: Value = serde_json::from_slice(body).map_err(|e| not_json(&e))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let expression = if path == "." { root.to_string() } else { format!("{root}.{path}") };
        FhirError::invalid(SpineCode::InvalidResource, expression, without_position(e.inner()))
    })
}

/// serde's message without its " at line 1 column 9" (the caller has the path).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn path(field: &str) -> String {
    format!("{ROOT}.{field}")
}

fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| FhirError::invalid(SpineCode::InvalidResource, path(field), "is required"))
}

fn identifier_value<'a>(identifier: Option<&'a Identifier>, field: &str, system: &str) -> Result<&'a str> {
    let identifier = required(identifier, field)?;
    let found = identifier.system.as_deref().unwrap_or("");
    if found != system {
        return Err(FhirError::invalid(
            SpineCode::InvalidIdentifierSystem,
            path(&format!("{field}.system")),
            format!("must be {system}"),
        ));
    }
    required(identifier.value.as_deref(), &format!("{field}.value"))
}

fn ods(reference: Option<&Reference>, field: &str) -> Result<OdsCode> {
    let reference = required(reference, field)?;
    let value = identifier_value(reference.identifier.as_ref(), &format!("{field}.identifier"), ODS_SYSTEM)?;
    OdsCode::parse(value).map_err(|e| {
        FhirError::invalid(SpineCode::InvalidIdentifierValue, path(&format!("{field}.identifier.value")), e.to_string())
    })
}

/// The one coding of a concept, from `system`.
fn single_coding<'a>(concept: &'a CodeableConcept, field: &str, system: &str) -> Result<&'a str> {
    let [coding] = concept.coding.as_slice() else {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path(&format!("{field}.coding")),
            "must hold exactly one coding",
        ));
    };
    code_of(coding, &format!("{field}.coding[0]"), system)
}

fn code_of<'a>(coding: &'a CodingIn, field: &str, system: &str) -> Result<&'a str> {
    if coding.system.as_deref() != Some(system) {
        return Err(FhirError::invalid(
            SpineCode::InvalidCodeSystem,
            path(&format!("{field}.system")),
            format!("must be {system}"),
        ));
    }
    match coding.code.as_deref().map(str::trim) {
        Some(code) if !code.is_empty() => Ok(code),
        _ => Err(FhirError::invalid(SpineCode::InvalidCodeValue, path(&format!("{field}.code")), "is required")),
    }
}

fn bad_code(field: &str, reason: impl Into<String>) -> FhirError {
    FhirError::invalid(SpineCode::InvalidCodeValue, path(field), reason)
}

/// Reads and validates a DocumentReference body.
pub fn read(body: &[u8], context: &ReadContext<'_>) -> Result<Submission> {
    let input: DocumentReferenceIn = parse_json(body, ROOT)?;
    if input.resource_type != "DocumentReference" {
        return Err(FhirError::invalid(SpineCode::InvalidResource, path("resourceType"), "must be DocumentReference"));
    }
    if !input.modifier_extension.is_empty() {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path("modifierExtension"),
            "is not supported: the registry cannot honour a modifier it does not know",
        ));
    }
    if !input.contained.is_empty() {
        return Err(FhirError::invalid(SpineCode::InvalidResource, path("contained"), "is not supported"));
    }
    match input.status.as_deref() {
        Some("current") => {}
        Some(_) => {
            return Err(bad_code("status", "must be current (a pointer is retired by superseding or deleting it)"))
        }
        None => return Err(FhirError::invalid(SpineCode::InvalidResource, path("status"), "is required")),
    }

    let subject = required(input.subject.as_ref(), "subject")?;
    let nhs = identifier_value(subject.identifier.as_ref(), "subject.identifier", NHS_NUMBER_SYSTEM)?;
    let nhs_number = NhsNumber::parse(nhs).map_err(|e| {
        FhirError::invalid(SpineCode::InvalidNhsNumber, path("subject.identifier.value"), e.to_string())
    })?;

    let region = region(&input.extension, context)?;
    let custodian = ods(input.custodian.as_ref(), "custodian")?;
    let author = match input.author.as_slice() {
        [] => None,
        [author] => Some(ods(Some(author), "author[0]")?),
        _ => {
            return Err(FhirError::invalid(
                SpineCode::InvalidResource,
                path("author"),
                "at most one author (the authoring organisation)",
            ))
        }
    };

    let kind = required(input.kind.as_ref(), "type")?;
    let type_code = single_coding(kind, "type", SNOMED_SYSTEM)?;
    let pointer_type = context
        .reference
        .pointer_types
        .pointer_type(type_code)
        .map_err(|e| bad_code("type.coding[0].code", e.to_string()))?
        .clone();
    let category = match input.category.as_slice() {
        [category] => single_coding(category, "category[0]", SNOMED_SYSTEM)?,
        [] => return Err(FhirError::invalid(SpineCode::InvalidResource, path("category"), "is required")),
        _ => {
            return Err(FhirError::invalid(
                SpineCode::InvalidResource,
                path("category"),
                "must hold exactly one category",
            ))
        }
    };
    context
        .reference
        .pointer_types
        .check_category(&pointer_type, category)
        .map_err(|e| bad_code("category[0].coding[0].code", e.to_string()))?;

    if input.content.is_empty() {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path("content"),
            "at least one content entry is required",
        ));
    }
    if input.content.len() > MAX_CONTENT {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path("content"),
            format!("at most {MAX_CONTENT} entries"),
        ));
    }
    let content = input
        .content
        .iter()
        .enumerate()
        .map(|(i, c)| content(c, &format!("content[{i}]")))
        .collect::<Result<Vec<_>>>()?;

    let (practice_setting, related_asid) = match input.context.as_ref() {
        Some(ctx) => {
            if !ctx.modifier_extension.is_empty() {
                return Err(FhirError::invalid(
                    SpineCode::InvalidResource,
                    path("context.modifierExtension"),
                    "is not supported",
                ));
            }
            (ctx.practice_setting.as_ref().map(practice_setting).transpose()?, related_asid(&ctx.related)?)
        }
        None => (None, None),
    };
    let document_date = input.date.as_deref().map(document_date).transpose()?;
    let producer_reference = match input.master_identifier.as_ref() {
        None => None,
        Some(identifier) => {
            let value = required(identifier.value.as_deref(), "masterIdentifier.value")?;
            Some(ProducerReference::parse(value).map_err(|e| {
                FhirError::invalid(SpineCode::InvalidIdentifierValue, path("masterIdentifier.value"), e)
            })?)
        }
    };
    let replaces = replaces(&input.relates_to)?;

    Ok(Submission {
        id: input.id,
        draft: PointerDraft {
            nhs_number,
            region,
            custodian,
            author,
            pointer_type,
            content,
            practice_setting,
            document_date,
            producer_reference,
            related_asid,
        },
        replaces,
    })
}

fn region(extensions: &[Extension], context: &ReadContext<'_>) -> Result<RegionCode> {
    let field = format!("extension('{REGION_EXTENSION}')");
    let mut found = extensions.iter().filter(|e| e.url == REGION_EXTENSION);
    let Some(extension) = found.next() else {
        return context.default_region.clone().ok_or_else(|| {
            FhirError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "business-rule",
                SpineCode::UnprocessableEntity,
                format!(
                    "{ROOT}.{field}: the region is required: the caller may register for several regions and \
                     this node holds several, so the pointer must say which (valueCode, e.g. QWO)"
                ),
            )
            .at(path(&field))
        });
    };
    if found.next().is_some() {
        return Err(FhirError::invalid(SpineCode::InvalidResource, path(&field), "must appear once"));
    }
    let code = required(extension.value_code.as_deref(), &format!("{field}.valueCode"))?;
    context.reference.regions.parse_code(code).map_err(|e| bad_code(&format!("{field}.valueCode"), e.to_string()))
}

fn content(input: &ContentIn, field: &str) -> Result<Content> {
    if !input.modifier_extension.is_empty() {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path(&format!("{field}.modifierExtension")),
            "is not supported",
        ));
    }
    let attachment = required(input.attachment.as_ref(), &format!("{field}.attachment"))?;
    if attachment.data.is_some() {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path(&format!("{field}.attachment.data")),
            "is not accepted: the registry holds where a record is (attachment.url), never its content",
        ));
    }
    let url_field = format!("{field}.attachment.url");
    let url = ContentUrl::parse(required(attachment.url.as_deref(), &url_field)?)
        .map_err(|e| FhirError::invalid(SpineCode::InvalidResource, path(&url_field), e))?;
    let type_field = format!("{field}.attachment.contentType");
    let content_type = ContentType::parse(required(attachment.content_type.as_deref(), &type_field)?)
        .map_err(|e| bad_code(&type_field, e))?;
    let format_field = format!("{field}.format");
    let format = code_of(required(input.format.as_ref(), &format_field)?, &format_field, FORMAT_SYSTEM)?;
    let format = ContentFormat::parse(format).map_err(|e| bad_code(&format!("{format_field}.code"), e))?;

    let extension_code = |url: &str, system: &str, name: &str| -> Result<Option<String>> {
        let mut matching = input.extension.iter().enumerate().filter(|(_, e)| e.url == url);
        let Some((i, extension)) = matching.next() else { return Ok(None) };
        let at = format!("{field}.extension[{i}]");
        if matching.next().is_some() {
            return Err(FhirError::invalid(SpineCode::InvalidResource, path(&at), format!("{name} must appear once")));
        }
        let concept = required(extension.value_codeable_concept.as_ref(), &format!("{at}.valueCodeableConcept"))?;
        single_coding(concept, &format!("{at}.valueCodeableConcept"), system).map(|c| Some(c.to_string()))
    };
    let stability = match extension_code(STABILITY_EXTENSION, STABILITY_SYSTEM, "ContentStability")? {
        Some(code) => {
            Stability::parse(&code).map_err(|e| bad_code(&format!("{field}.extension('ContentStability')"), e))?
        }
        None => {
            return Err(FhirError::invalid(
                SpineCode::InvalidResource,
                path(&format!("{field}.extension('ContentStability')")),
                format!("is required: an extension {STABILITY_EXTENSION} saying static or dynamic"),
            ))
        }
    };
    // NRLF's retrieval mechanism extension is optional: without it, an ssp:// url is fetched
    // through the Spine Secure Proxy and anything else directly.
    let retrieval_mechanism = match extension_code(RETRIEVAL_EXTENSION, RETRIEVAL_SYSTEM, "NRLRetrievalMechanism")? {
        Some(code) => RetrievalMechanism::parse(&code)
            .map_err(|e| bad_code(&format!("{field}.extension('NRLRetrievalMechanism')"), e))?,
        None if url.as_str().starts_with("ssp://") => RetrievalMechanism::Ssp,
        None => RetrievalMechanism::Direct,
    };
    Ok(Content { url, content_type, format, retrieval_mechanism, stability })
}

fn practice_setting(concept: &CodeableConcept) -> Result<Coding> {
    let field = "context.practiceSetting";
    let code = single_coding(concept, field, SNOMED_SYSTEM)?;
    if !crate::domain::is_snomed_code(code) {
        return Err(bad_code(&format!("{field}.coding[0].code"), "must be a SNOMED CT code (6 to 18 digits)"));
    }
    let display = concept.coding[0].display.as_deref().unwrap_or("").trim();
    if display.chars().count() > MAX_DISPLAY_LEN || display.chars().any(char::is_control) {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path(&format!("{field}.coding[0].display")),
            format!("must be at most {MAX_DISPLAY_LEN} printable characters"),
        ));
    }
    Ok(Coding { code: code.to_string(), display: display.to_string() })
}

/// The ASID of the system serving SSP content: the one `context.related` identifier of the ASID
/// system (NRLF's profile). Other related references are accepted and dropped.
fn related_asid(related: &[Reference]) -> Result<Option<Asid>> {
    let mut asids = related.iter().enumerate().filter_map(|(i, reference)| {
        let identifier = reference.identifier.as_ref().filter(|id| id.system.as_deref() == Some(ASID_SYSTEM))?;
        Some((i, identifier))
    });
    let Some((i, identifier)) = asids.next() else { return Ok(None) };
    if let Some((j, _)) = asids.next() {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path(&format!("context.related[{j}]")),
            "only one ASID identifier is allowed",
        ));
    }
    let field = format!("context.related[{i}].identifier.value");
    let value = required(identifier.value.as_deref(), &field)?;
    Asid::parse(value).map(Some).map_err(|e| FhirError::invalid(SpineCode::InvalidIdentifierValue, path(&field), e))
}

fn document_date(input: &str) -> Result<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(input)
        .map_err(|_| {
            FhirError::invalid(
                SpineCode::InvalidResource,
                path("date"),
                "must be an instant (e.g. 2024-05-01T10:00:00Z)",
            )
        })?
        .with_timezone(&Utc);
    if !(1900..=2200).contains(&parsed.year()) {
        return Err(FhirError::invalid(SpineCode::InvalidResource, path("date"), "must be between 1900 and 2200"));
    }
    Ok(parsed)
}

fn replaces(relates_to: &[RelatesTo]) -> Result<Vec<PointerId>> {
    if relates_to.len() > MAX_SUPERSEDES {
        return Err(FhirError::invalid(
            SpineCode::InvalidResource,
            path("relatesTo"),
            format!("at most {MAX_SUPERSEDES} entries"),
        ));
    }
    let mut ids: Vec<PointerId> = Vec::new();
    for (i, relation) in relates_to.iter().enumerate() {
        let field = format!("relatesTo[{i}]");
        if !relation.modifier_extension.is_empty() {
            return Err(FhirError::invalid(
                SpineCode::InvalidResource,
                path(&format!("{field}.modifierExtension")),
                "is not supported",
            ));
        }
        match relation.code.as_deref() {
            Some("replaces") => {}
            Some(_) => return Err(bad_code(&format!("{field}.code"), "only replaces is supported")),
            None => {
                return Err(FhirError::invalid(
                    SpineCode::InvalidResource,
                    path(&format!("{field}.code")),
                    "is required",
                ))
            }
        }
        let target = required(relation.target.as_ref(), &format!("{field}.target"))?;
        let (text, at) =
            match (target.identifier.as_ref().and_then(|i| i.value.as_deref()), target.reference.as_deref()) {
                (Some(value), _) => (value, format!("{field}.target.identifier.value")),
                (None, Some(reference)) => {
                    let id = reference.rsplit_once("DocumentReference/").map_or(reference, |(_, id)| id);
                    (id, format!("{field}.target.reference"))
                }
                (None, None) => {
                    return Err(FhirError::invalid(
                        SpineCode::InvalidResource,
                        path(&format!("{field}.target")),
                        "must give the replaced pointer's id (identifier.value or reference DocumentReference/<id>)",
                    ))
                }
            };
        let id =
            PointerId::parse(text).map_err(|e| FhirError::invalid(SpineCode::InvalidIdentifierValue, path(&at), e))?;
        if ids.contains(&id) {
            return Err(FhirError::invalid(SpineCode::InvalidResource, path(&at), "is listed twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

// ---- Writing a pointer as a DocumentReference ----

fn format_display(format: ContentFormat) -> &'static str {
    match format {
        ContentFormat::Unstructured => "Unstructured Document",
        ContentFormat::Structured => "Structured Document",
        ContentFormat::RecordContact => "Contact details (HTTP Unsecured)",
    }
}

fn retrieval_display(mechanism: RetrievalMechanism) -> &'static str {
    match mechanism {
        RetrievalMechanism::Ssp => "Spine Secure Proxy",
        RetrievalMechanism::Direct => "Direct",
        RetrievalMechanism::Ldr => "Large Document Retrieval",
        RetrievalMechanism::InContext => "In Context",
    }
}

fn stability_display(stability: Stability) -> &'static str {
    match stability {
        Stability::Static => "Static",
        Stability::Dynamic => "Dynamic",
    }
}

pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The weak ETag of a pointer version, as `ETag` and `If-Match` carry it.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// A pointer as an NRLF-profile DocumentReference, as a JSON value (for single answers; a search
/// serialises [`DocumentReferenceOut`] straight into its Bundle).
pub fn resource(pointer: &Pointer) -> Value {
    serde_json::to_value(DocumentReferenceOut::of(pointer)).unwrap_or_else(|e| {
        // Strings and numbers only: serialising cannot fail.
        tracing::error!(error = %e, "cannot serialise a DocumentReference");
        Value::Null
    })
}

#[cfg(test)]
mod tests;
