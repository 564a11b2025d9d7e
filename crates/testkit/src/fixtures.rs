//! Request builders and assertions shared by the API tests.

use nrl_registry::domain::NhsNumber;
use nrl_registry::proto::nrl::v1 as pb;
use rand::Rng;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub const CRISIS_PLAN: &str = "736253002";
pub const RESPECT_FORM: &str = "1382601000000107";
pub const NEWS2: &str = "1363501000000100";
pub const CARE_PLAN: &str = "734163000";
pub const OBSERVATIONS: &str = "1102421000000108";

/// A fresh valid NHS number from the synthetic test range, so tests sharing a store never collide.
pub fn new_patient() -> String {
    let mut rng = rand::rng();
    loop {
        if let Some(n) = NhsNumber::from_prefix(rng.random_range(999_000_000..=999_999_999)) {
            return n.to_string();
        }
    }
}

pub fn content(url: &str) -> pb::Content {
    pb::Content {
        url: url.to_string(),
        content_type: "application/pdf".into(),
        format: "urn:nhs-ic:unstructured".into(),
        retrieval_mechanism: pb::RetrievalMechanism::Ssp as i32,
        stability: pb::Stability::Static as i32,
    }
}

pub fn input(nhs_number: &str, region: &str, custodian: &str, type_code: &str) -> pb::PointerInput {
    pb::PointerInput {
        nhs_number: nhs_number.into(),
        region: region.into(),
        custodian: custodian.into(),
        author: String::new(),
        r#type: type_code.into(),
        category: String::new(),
        content: vec![content(&format!(
            "https://{}.example.nhs.uk/records/{}",
            region.to_lowercase(),
            rand::random::<u32>()
        ))],
        practice_setting: None,
        document_date: None,
        producer_reference: String::new(),
        related_asid: String::new(),
    }
}

pub fn query(nhs_number: &str) -> pb::PointerQuery {
    pb::PointerQuery { nhs_number: nhs_number.into(), ..Default::default() }
}

/// Asserts an INVALID_ARGUMENT (or other `code`) that names `field` in its message and in a
/// BadRequest field violation.
pub fn assert_field_error(status: &Status, code: Code, field: &str) {
    assert_eq!(status.code(), code, "expected {code:?} naming {field}, got {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "message should start with the field {field:?}: {:?}",
        status.message()
    );
    let details = status.get_error_details();
    let named = match code {
        Code::InvalidArgument => {
            details.bad_request().map(|b| b.field_violations.iter().any(|v| v.field == field)).unwrap_or(false)
        }
        Code::FailedPrecondition => {
            details.precondition_failure().map(|p| p.violations.iter().any(|v| v.subject == field)).unwrap_or(false)
        }
        _ => true,
    };
    assert!(named, "error details should name {field:?}: {details:?}");
}
