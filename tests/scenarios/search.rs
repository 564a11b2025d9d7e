use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use std::collections::BTreeSet;
use testkit::fixtures::*;
use testkit::TestServer;
use tonic::transport::Channel;
use tonic::Code;

async fn create_many(client: &mut PointerRegistryClient<Channel>, inputs: Vec<pb::PointerInput>) -> Vec<pb::Pointer> {
    let mut created = Vec::new();
    for chunk in inputs.chunks(1000) {
        let outcomes = client
            .batch_create_pointers(pb::BatchCreatePointersRequest { pointers: chunk.to_vec() })
            .await
            .expect("batch")
            .into_inner()
            .outcomes;
        for outcome in outcomes {
            match outcome.result {
                Some(pb::batch_outcome::Result::Created(p)) => created.push(p),
                other => panic!("expected created, got {other:?}"),
            }
        }
    }
    created
}

async fn search_all(
    client: &mut PointerRegistryClient<Channel>,
    q: pb::PointerQuery,
    page_size: i32,
) -> Vec<pb::Pointer> {
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_pointers(pb::SearchPointersRequest { query: Some(q.clone()), page_size, page_token: token })
            .await
            .expect("search page")
            .into_inner();
        assert!(page.pointers.len() <= page_size.max(1) as usize);
        found.extend(page.pointers);
        if page.next_page_token.is_empty() {
            return found;
        }
        token = page.next_page_token;
    }
}

async fn count(client: &mut PointerRegistryClient<Channel>, q: pb::PointerQuery) -> u64 {
    client.count_pointers(pb::CountPointersRequest { query: Some(q) }).await.expect("count").into_inner().count
}

pub async fn search_filters_and_count_agree(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let other = new_patient();
    let mut inputs = Vec::new();
    for (region, custodian, ty) in [
        ("QWO", "RR8", CRISIS_PLAN),
        ("QWO", "RR8", NEWS2),
        ("QF7", "RP5", CRISIS_PLAN),
        ("QF7", "RP5", RESPECT_FORM),
        ("QUY", "RA7", NEWS2),
        ("SCT", "SA9", CRISIS_PLAN),
    ] {
        inputs.push(input(&patient, region, custodian, ty));
    }
    inputs.push(input(&other, "QWO", "RR8", CRISIS_PLAN));
    create_many(&mut client, inputs).await;

    let cases: Vec<(pb::PointerQuery, usize)> = vec![
        (query(&patient), 6),
        (pb::PointerQuery { types: vec![CRISIS_PLAN.into()], ..query(&patient) }, 3),
        (pb::PointerQuery { types: vec![CRISIS_PLAN.into(), NEWS2.into()], ..query(&patient) }, 5),
        (pb::PointerQuery { categories: vec![OBSERVATIONS.into()], ..query(&patient) }, 2),
        (pb::PointerQuery { categories: vec![CARE_PLAN.into()], ..query(&patient) }, 4),
        (pb::PointerQuery { custodians: vec!["rp5".into()], ..query(&patient) }, 2),
        (pb::PointerQuery { regions: vec!["qwo".into(), "SCT".into()], ..query(&patient) }, 3),
        (pb::PointerQuery { regions: vec!["QWO".into()], types: vec![NEWS2.into()], ..query(&patient) }, 1),
        (pb::PointerQuery { regions: vec!["QOP".into()], ..query(&patient) }, 0),
        (query(&new_patient()), 0),
    ];
    for (q, expected) in cases {
        let found = search_all(&mut client, q.clone(), 2).await;
        assert_eq!(found.len(), expected, "{q:?}");
        assert!(found.iter().all(|p| p.nhs_number == patient), "only this patient's pointers");
        assert_eq!(count(&mut client, q.clone()).await, expected as u64, "count = len(search) for {q:?}");
    }
}

pub async fn search_pages_newest_first_with_default_and_clamped_sizes(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let created =
        create_many(&mut client, (0..520).map(|_| input(&patient, "QWO", "RR8", CRISIS_PLAN)).collect()).await;

    let first = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(query(&patient)),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(first.pointers.len(), 50, "default page size");
    let newest: Vec<&str> = created.iter().rev().take(50).map(|p| p.id.as_str()).collect();
    assert_eq!(first.pointers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), newest, "newest first");

    let big = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(query(&patient)),
            page_size: 10_000,
            page_token: String::new(),
        })
        .await
        .expect("clamped page")
        .into_inner();
    assert_eq!(big.pointers.len(), 500, "page size clamped to 500");
    assert!(!big.next_page_token.is_empty());

    let err = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(query(&patient)),
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("negative");
    assert_field_error(&err, Code::InvalidArgument, "page_size");
    let err = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(pb::PointerQuery { include_superseded: true, ..query(&patient) }),
            page_size: 10,
            page_token: first.next_page_token.clone(),
        })
        .await
        .expect_err("token of another query");
    assert_field_error(&err, Code::InvalidArgument, "page_token");
    let err = client
        .search_pointers(pb::SearchPointersRequest {
            query: Some(query(&patient)),
            page_size: 10,
            page_token: "!!".into(),
        })
        .await
        .expect_err("garbage token");
    assert_field_error(&err, Code::InvalidArgument, "page_token");
}

pub async fn paging_while_writing_has_no_duplicates_or_gaps(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    let stable = create_many(&mut client, (0..120).map(|_| input(&patient, "QOP", "R0A", CRISIS_PLAN)).collect()).await;
    let stable_ids: BTreeSet<String> = stable.iter().map(|p| p.id.clone()).collect();

    // A writer adds and removes other pointers of the same patient throughout the walk.
    let writer = {
        let mut client = server.registry();
        let patient = patient.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let created = client
                    .create_pointer(pb::CreatePointerRequest {
                        pointer: Some(input(&patient, "QOP", "R0A", CRISIS_PLAN)),
                    })
                    .await
                    .expect("concurrent create")
                    .into_inner()
                    .pointer
                    .expect("pointer");
                client
                    .delete_pointer(pb::DeletePointerRequest { id: created.id, version: 0 })
                    .await
                    .expect("concurrent delete");
                client
                    .create_pointer(pb::CreatePointerRequest {
                        pointer: Some(input(&patient, "QOP", "R0A", CRISIS_PLAN)),
                    })
                    .await
                    .expect("concurrent create");
            }
        })
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_pointers(pb::SearchPointersRequest {
                query: Some(query(&patient)),
                page_size: 7,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.pointers.into_iter().map(|p| p.id));
        tokio::task::yield_now().await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    writer.await.expect("writer");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no pointer appears twice in one walk");
    assert!(stable_ids.is_subset(&unique), "every pointer that existed throughout the walk was returned");
}

pub async fn search_filters_are_validated(server: &TestServer) {
    let mut client = server.registry();
    let patient = new_patient();
    type Mutation = fn(&mut pb::PointerQuery);
    let cases: [(Mutation, &str); 7] = [
        (|q| q.nhs_number.clear(), "query.nhs_number"),
        (|q| q.nhs_number = "9434765918".into(), "query.nhs_number"),
        (|q| q.types = vec![CRISIS_PLAN.into(), "42".into()], "query.types[1]"),
        (|q| q.categories = vec!["123456789".into()], "query.categories[0]"),
        (|q| q.custodians = vec!["R".into()], "query.custodians[0]"),
        (|q| q.regions = vec!["QZZ".into()], "query.regions[0]"),
        (|q| q.types = vec![CRISIS_PLAN.into(); 21], "query.types"),
    ];
    for (mutate, field) in cases {
        let mut q = query(&patient);
        mutate(&mut q);
        let err = client
            .search_pointers(pb::SearchPointersRequest { query: Some(q.clone()), ..Default::default() })
            .await
            .expect_err(field);
        assert_field_error(&err, Code::InvalidArgument, field);
        let err = client.count_pointers(pb::CountPointersRequest { query: Some(q) }).await.expect_err(field);
        assert_field_error(&err, Code::InvalidArgument, field);
    }
}
