use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::*;
use testkit::TestServer;

pub async fn locate_lists_regions_with_counts_and_endpoints(server: &TestServer) {
    let mut client = server.registry();
    let mut locator = server.locator();
    let patient = new_patient();

    let none = locator
        .locate_patient(pb::LocatePatientRequest { nhs_number: patient.clone() })
        .await
        .expect("locate unknown patient")
        .into_inner();
    assert!(none.regions.is_empty(), "a patient with no pointers is no error, just no regions");

    let mut last = None;
    for (region, custodian, ty) in [
        ("QF7", "RP5", CRISIS_PLAN),
        ("QUY", "RA7", NEWS2),
        ("QWO", "RR8", CRISIS_PLAN),
        ("QWO", "RR8", CRISIS_PLAN),
        ("QWO", "RR8", NEWS2),
    ] {
        last = client
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, region, custodian, ty)) })
            .await
            .expect("create")
            .into_inner()
            .pointer;
    }
    // A region whose only pointer is superseded holds no current records.
    let old = client
        .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QOP", "R0A", CRISIS_PLAN)) })
        .await
        .expect("create")
        .into_inner()
        .pointer
        .expect("pointer");
    let replacement = client
        .supersede_pointer(pb::SupersedePointerRequest {
            pointer: Some(input(&patient, "QOP", "R0A", CRISIS_PLAN)),
            supersedes: vec![old.id.clone()],
        })
        .await
        .expect("supersede")
        .into_inner()
        .pointer
        .expect("pointer");
    client
        .delete_pointer(pb::DeletePointerRequest { id: replacement.id, version: 0 })
        .await
        .expect("delete replacement");

    let located = locator
        .locate_patient(pb::LocatePatientRequest {
            nhs_number: format!("{}-{}-{}", &patient[..3], &patient[3..6], &patient[6..]),
        })
        .await
        .expect("locate")
        .into_inner();
    assert_eq!(located.nhs_number, patient);
    let codes: Vec<&str> = located.regions.iter().filter_map(|r| r.region.as_ref()).map(|r| r.code.as_str()).collect();
    assert_eq!(codes.len(), 3, "{codes:?}");
    assert_eq!(codes[0], "QWO", "most recently updated region first");
    assert!(codes.contains(&"QF7") && codes.contains(&"QUY"));
    assert!(!codes.contains(&"QOP"), "no current pointer in QOP");

    let qwo = &located.regions[0];
    let region = qwo.region.as_ref().expect("region");
    assert_eq!(region.name, "NHS West Yorkshire Integrated Care Board");
    assert!(region.endpoints.iter().any(|e| e.purpose == "shared-care-record" && e.url.starts_with("https://")));
    assert_eq!(qwo.total, 3);
    let counts: Vec<(&str, u32)> = qwo
        .pointer_counts
        .iter()
        .map(|c| (c.r#type.as_ref().map(|t| t.code.as_str()).unwrap_or(""), c.count))
        .collect();
    assert_eq!(counts, vec![(CRISIS_PLAN, 2), (NEWS2, 1)]);
    assert_eq!(qwo.last_updated, last.and_then(|p| p.updated_at));
}
