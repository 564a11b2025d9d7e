//! Sample pointers for unit tests.

use super::*;
use chrono::{TimeZone, Utc};
use std::sync::LazyLock;

/// One codec for every fixture, so fixture ids increase in creation order.
static CODEC: LazyLock<PointerIdCodec> = LazyLock::new(|| PointerIdCodec::new([0; 32]));

pub fn nhs(s: &str) -> NhsNumber {
    NhsNumber::parse(s).unwrap_or_else(|e| panic!("fixture NHS number {s}: {e}"))
}

/// A current pointer of `type_code` for `nhs_number` in `region`, held by `custodian`.
pub fn pointer(nhs_number: &str, region: &str, custodian: &str, type_code: &str) -> Pointer {
    let catalogue = PointerTypeCatalogue::default_catalogue();
    let directory = RegionDirectory::default_directory();
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap_or_default();
    Pointer {
        id: CODEC.generate(nhs(nhs_number)),
        draft: PointerDraft {
            nhs_number: nhs(nhs_number),
            region: directory.parse_code(region).unwrap_or_else(|e| panic!("fixture region {region}: {e}")),
            custodian: OdsCode::parse(custodian).unwrap_or_else(|e| panic!("fixture ODS {custodian}: {e}")),
            author: None,
            pointer_type: catalogue
                .pointer_type(type_code)
                .cloned()
                .unwrap_or_else(|e| panic!("fixture type {type_code}: {e}")),
            content: vec![Content {
                url: ContentUrl::parse("https://example.nhs.uk/doc/1").unwrap_or_else(|e| panic!("{e}")),
                content_type: ContentType::Pdf,
                format: ContentFormat::Unstructured,
                retrieval_mechanism: RetrievalMechanism::Direct,
                stability: Stability::Static,
            }],
            practice_setting: None,
            document_date: None,
            producer_reference: None,
            related_asid: None,
        },
        status: PointerStatus::Current,
        supersedes: vec![],
        superseded_by: None,
        version: 1,
        created_at: at,
        updated_at: at,
    }
}
