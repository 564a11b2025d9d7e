use super::*;
use crate::domain::fixtures::pointer;
use crate::domain::{Asid, Content, ContentUrl, OdsCode, ProducerReference};

#[test]
fn an_update_must_name_the_stored_version_of_a_current_pointer() {
    let stored = pointer("9434765919", "QWO", "RR8", "736253002");
    assert!(check_updatable(&stored, 1, &stored.draft).is_ok());
    assert!(matches!(check_updatable(&stored, 2, &stored.draft), Err(RegistryError::Aborted(_))));
    let superseded = Pointer { status: PointerStatus::Superseded, ..stored.clone() };
    let refusal = check_updatable(&superseded, 1, &stored.draft).expect_err("superseded");
    assert_eq!(refusal.field(), Some("id"));
}

type Change<'a> = Box<dyn Fn(&mut PointerDraft) + 'a>;

#[test]
fn every_immutable_field_is_refused_by_its_own_name() {
    let stored = pointer("9434765919", "QWO", "RR8", "736253002");
    let other = pointer("9990000018", "QHM", "RA7", "887701000000100");
    let changes: [(&str, Change); 5] = [
        ("pointer.nhs_number", Box::new(|d| d.nhs_number = other.draft.nhs_number)),
        ("pointer.region", Box::new(|d| d.region = other.draft.region.clone())),
        ("pointer.custodian", Box::new(|d| d.custodian = OdsCode::parse("RR8.X01").expect("ods"))),
        ("pointer.type", Box::new(|d| d.pointer_type = other.draft.pointer_type.clone())),
        (
            "pointer.producer_reference",
            Box::new(|d| d.producer_reference = Some(ProducerReference::parse("ref-2").expect("reference"))),
        ),
    ];
    for (field, change) in changes {
        let mut draft = stored.draft.clone();
        change(&mut draft);
        let refusal = check_updatable(&stored, 1, &draft).expect_err(field);
        assert_eq!(refusal.field(), Some(field), "{refusal}");
        assert!(IMMUTABLE_ON_UPDATE.contains(&field));
    }
}

#[test]
fn only_a_current_pointer_of_the_same_patient_type_and_custodian_is_replaceable() {
    let old = pointer("9434765919", "QWO", "RR8", "736253002");
    assert!(check_replaceable(&old, &old.draft, "supersedes[0]").is_ok());
    let other_type = pointer("9434765919", "QWO", "RR8", "887701000000100");
    let refusal = check_replaceable(&old, &other_type.draft, "supersedes[0]").expect_err("type");
    assert_eq!(refusal.field(), Some("supersedes[0]"));
    assert!(refusal.to_string().contains("different type"), "{refusal}");
    let retired = retired(old.clone(), &other_type);
    assert_eq!(
        (retired.status, retired.superseded_by, retired.version),
        (PointerStatus::Superseded, Some(other_type.id), 2)
    );
    assert!(check_replaceable(&retired, &old.draft, "supersedes[0]").is_err(), "already superseded");
}

#[test]
fn ssp_content_needs_the_asid_of_the_system_serving_it() {
    let mut draft = pointer("9434765919", "QWO", "RR8", "736253002").draft;
    assert!(check_draft(&draft, "pointer").is_ok(), "https content needs no ASID");
    let asid = Asid::parse("200000000123").ok();
    draft.related_asid = asid.clone();
    assert!(check_draft(&draft, "pointer").is_ok(), "and may still carry one");

    let ssp = ContentUrl::parse("ssp://spine.example.nhs.uk/qwo/1").expect("url");
    draft.content.push(Content { url: ssp, ..draft.content[0].clone() });
    assert!(check_draft(&draft, "pointer").is_ok());
    draft.related_asid = None;
    let refusal = check_draft(&draft, "pointer").expect_err("ssp:// without an ASID");
    assert!(matches!(refusal, RegistryError::InvalidArgument { .. }), "{refusal:?}");
    assert_eq!(refusal.field(), Some("pointer.related_asid"));
    assert!(refusal.to_string().contains("ssp://"), "{refusal}");
    let in_batch = check_draft(&draft, "").expect_err("a batch entry");
    assert_eq!(in_batch.field(), Some("related_asid"), "named from the entry");
}
