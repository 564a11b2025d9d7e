//! Pointer files for `create`, `supersede` and `import`: JSON shaped like `PointerInput`, in either
//! of two spellings, with the document date in RFC 3339:
//! - the CLI's short form: proto field names (`nhs_number`) and enums by their short names (`"SSP"`,
//!   `"STATIC"`);
//! - the canonical protobuf JSON mapping, what grpcurl and generated clients speak: lowerCamelCase
//!   names (`nhsNumber`; proto names are accepted too) and enums by their full names
//!   (`"RETRIEVAL_MECHANISM_SSP"`) or numbers.
//!
//! Unknown fields are refused in both, so a typo (`"nhs_numbr"`) is reported here instead of being
//! silently dropped.

use crate::proto::nrl::v1 as pb;
use chrono::{DateTime, FixedOffset};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::Deserialize;
use std::io::Read;
use std::sync::OnceLock;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointerFile {
    nhs_number: String,
    region: String,
    custodian: String,
    #[serde(default)]
    author: String,
    #[serde(rename = "type")]
    pointer_type: String,
    #[serde(default)]
    category: String,
    content: Vec<ContentFile>,
    #[serde(default)]
    practice_setting: Option<CodingFile>,
    #[serde(default, deserialize_with = "rfc3339")]
    document_date: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    producer_reference: String,
    /// The Spine ASID serving `ssp://` content (the server requires it for such content).
    #[serde(default)]
    related_asid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentFile {
    url: String,
    content_type: String,
    format: String,
    retrieval_mechanism: Mechanism,
    stability: StabilityName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodingFile {
    code: String,
    #[serde(default)]
    display: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Mechanism {
    Ssp,
    Direct,
    Ldr,
    InContext,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum StabilityName {
    Static,
    Dynamic,
}

/// chrono's own error ("input contains invalid characters") says neither which field nor what was
/// expected.
fn rfc3339<'de, D>(deserializer: D) -> Result<Option<DateTime<FixedOffset>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "document_date {text:?} is not an RFC 3339 date-time like 2025-03-04T10:00:00Z ({e})"
        ))
    })
}

impl From<PointerFile> for pb::PointerInput {
    fn from(f: PointerFile) -> Self {
        pb::PointerInput {
            nhs_number: f.nhs_number,
            region: f.region,
            custodian: f.custodian,
            author: f.author,
            r#type: f.pointer_type,
            category: f.category,
            content: f.content.into_iter().map(pb::Content::from).collect(),
            practice_setting: f.practice_setting.map(|c| pb::Coding { code: c.code, display: c.display }),
            document_date: f.document_date.map(|at| prost_types::Timestamp {
                seconds: at.timestamp(),
                // Always below 2e9 (chrono keeps leap seconds under 2 s), so it fits an i32.
                nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
            }),
            producer_reference: f.producer_reference,
            related_asid: f.related_asid,
        }
    }
}

impl From<ContentFile> for pb::Content {
    fn from(c: ContentFile) -> Self {
        pb::Content {
            url: c.url,
            content_type: c.content_type,
            format: c.format,
            retrieval_mechanism: match c.retrieval_mechanism {
                Mechanism::Ssp => pb::RetrievalMechanism::Ssp,
                Mechanism::Direct => pb::RetrievalMechanism::Direct,
                Mechanism::Ldr => pb::RetrievalMechanism::Ldr,
                Mechanism::InContext => pb::RetrievalMechanism::InContext,
            } as i32,
            stability: match c.stability {
                StabilityName::Static => pb::Stability::Static,
                StabilityName::Dynamic => pb::Stability::Dynamic,
            } as i32,
        }
    }
}

/// `nrl.v1.PointerInput` as the descriptor set compiled into the binary describes it.
fn pointer_input_descriptor() -> Result<&'static MessageDescriptor, String> {
    static DESCRIPTOR: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
            pool.get_message_by_name("nrl.v1.PointerInput").ok_or_else(|| "no nrl.v1.PointerInput".to_string())
        })
        .as_ref()
        .map_err(|e| format!("the descriptor set compiled into the binary does not load: {e}"))
}

/// Reads the canonical protobuf JSON mapping with prost-reflect (unknown fields refused).
fn parse_canonical(json: &str) -> Result<pb::PointerInput, serde_json::Error> {
    let descriptor = pointer_input_descriptor().map_err(serde::de::Error::custom)?;
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)?;
    deserializer.end()?;
    message.transcode_to::<pb::PointerInput>().map_err(serde::de::Error::custom)
}

/// Parses the text of a pointer file in either spelling. When neither reads it, the error is the
/// one of the reading that got further into the text (the short form's on a tie), since that is the
/// spelling the author most likely meant; it names the line and column.
pub fn parse_pointer(json: &str) -> Result<pb::PointerInput, serde_json::Error> {
    let short = match serde_json::from_str::<PointerFile>(json) {
        Ok(file) => return Ok(file.into()),
        Err(e) => e,
    };
    match parse_canonical(json) {
        Ok(input) => Ok(input),
        Err(canonical) if (canonical.line(), canonical.column()) > (short.line(), short.column()) => Err(canonical),
        Err(_) => Err(short),
    }
}

/// Reads and parses a pointer file, `-` meaning stdin. The error is ready to print: it names the
/// file and what is wrong with it.
pub fn read_pointer(path: &str) -> Result<pb::PointerInput, String> {
    let (name, text) = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read stdin: {e}"))?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        (path.to_string(), text)
    };
    parse_pointer(&text).map_err(|e| format!("{name} is not a valid pointer file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "nhs_number": "943 476 5919",
        "region": "QWO",
        "custodian": "RR8",
        "author": "Y05868",
        "type": "736253002",
        "category": "734163000",
        "content": [{
            "url": "https://qwo.example.nhs.uk/doc/1",
            "content_type": "application/pdf",
            "format": "urn:nhs-ic:unstructured",
            "retrieval_mechanism": "IN_CONTEXT",
            "stability": "STATIC"
        }],
        "practice_setting": {"code": "394802001", "display": "General medicine"},
        "document_date": "2025-03-04T10:00:00+01:00",
        "producer_reference": "DOC-1",
        "related_asid": "200000000123"
    }"#;

    #[test]
    fn a_full_file_maps_every_field() {
        let input = parse_pointer(FULL).expect("valid");
        assert_eq!(input.nhs_number, "943 476 5919");
        assert_eq!(input.r#type, "736253002");
        assert_eq!(input.author, "Y05868");
        assert_eq!(input.content[0].retrieval_mechanism, pb::RetrievalMechanism::InContext as i32);
        assert_eq!(input.content[0].stability, pb::Stability::Static as i32);
        assert_eq!(input.document_date.map(|t| t.seconds), Some(1_741_078_800), "the offset is applied");
        assert_eq!(input.practice_setting.map(|c| c.code).as_deref(), Some("394802001"));
        assert_eq!(input.related_asid, "200000000123");
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let minimal = r#"{"nhs_number":"9434765919","region":"QWO","custodian":"RR8","type":"736253002",
            "content":[{"url":"https://x.example/1","content_type":"text/html",
            "format":"urn:nhs-ic:unstructured","retrieval_mechanism":"SSP","stability":"DYNAMIC"}]}"#;
        let input = parse_pointer(minimal).expect("valid");
        assert!(input.author.is_empty() && input.producer_reference.is_empty() && input.related_asid.is_empty());
        assert!(input.document_date.is_none() && input.practice_setting.is_none());
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let typo = FULL.replace("\"nhs_number\"", "\"nhs_numbr\"");
        let err = parse_pointer(&typo).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("nhs_numbr")), "{err:?}");
        let mechanism = FULL.replace("IN_CONTEXT", "EMAIL");
        let err = parse_pointer(&mechanism).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("EMAIL")), "{err:?}");
        let date = FULL.replace("2025-03-04T10:00:00+01:00", "yesterday");
        let err = parse_pointer(&date).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("document_date \"yesterday\"")), "{err:?}");
    }

    /// FULL in the canonical protobuf JSON mapping, as grpcurl would send it.
    const CANONICAL: &str = r#"{
        "nhsNumber": "943 476 5919",
        "region": "QWO",
        "custodian": "RR8",
        "author": "Y05868",
        "type": "736253002",
        "category": "734163000",
        "content": [{
            "url": "https://qwo.example.nhs.uk/doc/1",
            "contentType": "application/pdf",
            "format": "urn:nhs-ic:unstructured",
            "retrievalMechanism": "RETRIEVAL_MECHANISM_IN_CONTEXT",
            "stability": "STABILITY_STATIC"
        }],
        "practiceSetting": {"code": "394802001", "display": "General medicine"},
        "documentDate": "2025-03-04T10:00:00+01:00",
        "producerReference": "DOC-1",
        "relatedAsid": "200000000123"
    }"#;

    #[test]
    fn the_canonical_mapping_reads_the_same_pointer_as_the_short_form() {
        let short = parse_pointer(FULL).expect("short form");
        let canonical = parse_pointer(CANONICAL).expect("canonical form");
        assert_eq!(canonical, short);
        // Proto field names with full enum names, and enums as numbers, are canonical JSON too.
        let proto_names = FULL
            .replace("\"IN_CONTEXT\"", "\"RETRIEVAL_MECHANISM_IN_CONTEXT\"")
            .replace("\"STATIC\"", "\"STABILITY_STATIC\"");
        assert_eq!(parse_pointer(&proto_names).expect("proto names, full enum names"), short);
        let numbers = CANONICAL
            .replace("\"RETRIEVAL_MECHANISM_IN_CONTEXT\"", &(pb::RetrievalMechanism::InContext as i32).to_string())
            .replace("\"STABILITY_STATIC\"", &(pb::Stability::Static as i32).to_string());
        assert_eq!(parse_pointer(&numbers).expect("enums as numbers"), short);
    }

    #[test]
    fn a_canonical_file_with_a_mistake_gets_the_canonical_error() {
        let typo = CANONICAL.replace("\"producerReference\"", "\"producerRef\"");
        let err = parse_pointer(&typo).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("producerRef")), "{err:?}");
        // The short enum name in an otherwise canonical file is the canonical reading's error.
        let short_enum = CANONICAL.replace("RETRIEVAL_MECHANISM_IN_CONTEXT", "IN_CONTEXT");
        let err = parse_pointer(&short_enum).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("IN_CONTEXT") && e.contains("line 12")), "{err:?}");
        // A short-form file's mistakes keep the short form's wording.
        let typo = FULL.replace("\"stability\"", "\"stabilty\"");
        let err = parse_pointer(&typo).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.starts_with("unknown field `stabilty`")), "{err:?}");
    }
}
