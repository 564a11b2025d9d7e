//! Pointers to content served through the Spine Secure Proxy, and the ASID of the system serving it
//! (`related_asid`, NRLF's `context.related`).

use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::Code;

const ASID: &str = "200000000123";

fn ssp_input(patient: &str, reference: &str) -> pb::PointerInput {
    let mut sent = input(patient, "QWO", "RR8", CRISIS_PLAN);
    sent.content = vec![content(&format!("ssp://spine.example.nhs.uk/qwo/{reference}"))];
    sent.related_asid = ASID.into();
    sent.producer_reference = reference.into();
    sent
}

pub async fn an_ssp_pointer_keeps_its_asid_through_every_read_and_write(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let sent = ssp_input(&patient, "SSP-1");
    let created = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await;
    let created = created.expect("create").into_inner().pointer.expect("pointer");
    assert_eq!(created.related_asid, ASID);
    assert_eq!(created.content, sent.content);

    let fetched = client.get_pointer(pb::GetPointerRequest { id: created.id.clone() }).await.expect("get");
    assert_eq!(fetched.into_inner().pointer.as_ref(), Some(&created), "read back as created");
    let found = client
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("search")
        .into_inner()
        .pointers;
    assert_eq!(found, vec![created.clone()]);

    // The ASID is part of what was registered: a replay matches it, another ASID is other content.
    let again = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await;
    let again = again.expect("replay").into_inner();
    assert!(!again.created);
    assert_eq!(again.pointer.as_ref(), Some(&created));
    let other = pb::PointerInput { related_asid: "200000000456".into(), ..sent.clone() };
    let err = client.create_pointer(pb::CreatePointerRequest { pointer: Some(other.clone()) }).await;
    assert_eq!(err.expect_err("same reference, other ASID").code(), Code::AlreadyExists);

    // An update may change it.
    let updated = client
        .update_pointer(pb::UpdatePointerRequest { id: created.id.clone(), version: 1, pointer: Some(other) })
        .await
        .expect("update")
        .into_inner()
        .pointer
        .expect("pointer");
    assert_eq!((updated.version, updated.related_asid.as_str()), (2, "200000000456"));
    let fetched = client.get_pointer(pb::GetPointerRequest { id: created.id.clone() }).await.expect("get");
    assert_eq!(fetched.into_inner().pointer.as_ref(), Some(&updated));

    // A batch entry carries one too, and content that is not ssp:// may name one (leading zeros kept).
    let mut https = input(&patient, "QWO", "RR8", NEWS2);
    https.related_asid = "000000000042".into();
    let outcomes = client
        .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: vec![ssp_input(&patient, "SSP-2"), https] })
        .await
        .expect("batch")
        .into_inner()
        .outcomes;
    let asids: Vec<&str> = outcomes
        .iter()
        .map(|o| match &o.result {
            Some(pb::batch_outcome::Result::Created(p)) => p.related_asid.as_str(),
            other => panic!("expected a created pointer, got {other:?}"),
        })
        .collect();
    assert_eq!(asids, [ASID, "000000000042"]);
    let found = client
        .search_pointers(pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() })
        .await
        .expect("search")
        .into_inner()
        .pointers;
    let mut stored: Vec<&str> = found.iter().map(|p| p.related_asid.as_str()).collect();
    stored.sort_unstable();
    assert_eq!(stored, ["000000000042", ASID, "200000000456"], "each as it was written");
}

/// NRLF's rule, on every write that takes a pointer: ssp:// content names the system serving it.
/// (Create, supersede and batch create are in `validation`, with every other malformed pointer.)
pub async fn ssp_content_without_an_asid_is_refused_naming_the_field(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    for url in ["ssp://spine.example.nhs.uk/qwo/1", "SSP://spine.example.nhs.uk/qwo/1"] {
        let sent = pb::PointerInput { related_asid: String::new(), ..ssp_input(&patient, "SSP-NONE") };
        let sent = pb::PointerInput { content: vec![content(url)], ..sent };
        let err = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent) }).await.expect_err(url);
        assert_field_error(&err, Code::InvalidArgument, "pointer.related_asid");
        assert!(err.message().contains("ssp://"), "the message says why: {err:?}");
    }

    // An update that moves the content behind the proxy must name the system too.
    let sent = input(&patient, "QWO", "RR8", CRISIS_PLAN);
    let created = client.create_pointer(pb::CreatePointerRequest { pointer: Some(sent.clone()) }).await;
    let created = created.expect("https content needs no ASID").into_inner().pointer.expect("pointer");
    assert_eq!(created.related_asid, "");
    let behind_proxy = pb::PointerInput { content: vec![content("ssp://spine.example.nhs.uk/qwo/2")], ..sent };
    let err = client
        .update_pointer(pb::UpdatePointerRequest {
            id: created.id.clone(),
            version: 1,
            pointer: Some(behind_proxy.clone()),
        })
        .await
        .expect_err("ssp:// without an ASID");
    assert_field_error(&err, Code::InvalidArgument, "pointer.related_asid");
    let unchanged = client.get_pointer(pb::GetPointerRequest { id: created.id.clone() }).await.expect("get");
    assert_eq!(unchanged.into_inner().pointer.as_ref(), Some(&created), "nothing written");

    let with_asid = pb::PointerInput { related_asid: ASID.into(), ..behind_proxy };
    let updated = client
        .update_pointer(pb::UpdatePointerRequest { id: created.id.clone(), version: 1, pointer: Some(with_asid) })
        .await
        .expect("with the ASID, the update is made")
        .into_inner()
        .pointer
        .expect("pointer");
    assert_eq!((updated.version, updated.related_asid.as_str()), (2, ASID));
}
