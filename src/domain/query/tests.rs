use super::*;
use crate::domain::fixtures::{nhs, pointer};
use crate::domain::PointerStatus;

const PATIENT: &str = "9434765919";
const CRISIS: &str = "736253002";
const NEWS2: &str = "1363501000000100";

fn sample() -> Vec<Pointer> {
    vec![
        pointer(PATIENT, "QWO", "RR8", CRISIS),
        pointer(PATIENT, "QF7", "RP5", NEWS2),
        pointer(PATIENT, "QUY", "RA7", CRISIS),
        pointer("9990000018", "QWO", "RR8", CRISIS),
    ]
}

#[test]
fn filters_combine_with_and_and_values_with_or() {
    let pointers = sample();
    let mut q = PointerQuery::for_patient(nhs(PATIENT));
    assert_eq!(count(&pointers, &q), 3, "other patients never match");
    q.types.insert(CRISIS.into());
    assert_eq!(count(&pointers, &q), 2);
    q.regions.insert(RegionCode::clone(&pointers[0].draft.region));
    assert_eq!(count(&pointers, &q), 1);
    q.regions.insert(RegionCode::clone(&pointers[2].draft.region));
    assert_eq!(count(&pointers, &q), 2);
    q.custodians.insert(OdsCode::parse("RA7").expect("valid"));
    assert_eq!(count(&pointers, &q), 1);
    let mut by_category = PointerQuery::for_patient(nhs(PATIENT));
    by_category.categories.insert("1102421000000108".into());
    assert_eq!(count(&pointers, &by_category), 1);
}

#[test]
fn superseded_pointers_are_hidden_unless_asked_for() {
    let mut pointers = sample();
    pointers[0].status = PointerStatus::Superseded;
    let mut q = PointerQuery::for_patient(nhs(PATIENT));
    assert_eq!(count(&pointers, &q), 2);
    q.include_superseded = true;
    assert_eq!(count(&pointers, &q), 3);
}

#[test]
fn pages_walk_newest_first_without_repeats_or_gaps() {
    let pointers: Vec<Pointer> = (0..7).map(|_| pointer(PATIENT, "QWO", "RR8", CRISIS)).collect();
    let q = PointerQuery::for_patient(nhs(PATIENT));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = select_page(pointers.clone(), &q, PageRequest { size: 3, after });
        seen.extend(page.pointers.iter().map(|p| p.id));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<PointerId> = pointers.iter().map(|p| p.id).collect();
    expected.reverse();
    assert_eq!(seen, expected);
}

#[test]
fn page_tokens_round_trip_and_are_bound_to_their_query() {
    let q = PointerQuery::for_patient(nhs(PATIENT));
    let id = crate::domain::PointerIdCodec::random().generate(nhs(PATIENT));
    let token = encode_page_token(&q, id);
    assert_eq!(decode_page_token(&token, &q), Ok(id));
    let mut other = q.clone();
    other.include_superseded = true;
    assert!(decode_page_token(&token, &other).is_err());
    assert!(decode_page_token("garbage!", &q).is_err());
    assert!(decode_page_token("", &q).is_err());
    assert!(decode_page_token(&URL_SAFE_NO_PAD.encode([9u8; 25]), &q).is_err());
}

#[test]
fn locate_groups_current_pointers_by_region() {
    let mut pointers = sample();
    pointers.push(pointer(PATIENT, "QWO", "RR8", NEWS2));
    let mut superseded = pointer(PATIENT, "QOP", "R0A", CRISIS);
    superseded.status = PointerStatus::Superseded;
    pointers.push(superseded);
    let mine: Vec<Pointer> = pointers.into_iter().filter(|p| p.draft.nhs_number == nhs(PATIENT)).collect();
    let regions = crate::domain::locate::summarise_regions(&mine);
    let codes: Vec<&str> = regions.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(codes.len(), 3, "superseded-only region is absent: {codes:?}");
    assert!(!codes.contains(&"QOP"));
    let qwo = regions.iter().find(|r| r.region.as_str() == "QWO").expect("QWO present");
    assert_eq!(qwo.total, 2);
    assert_eq!(qwo.counts.len(), 2);
}
