//! Pages of large pointers, over a real socket: a SearchPointers page holds what was asked for,
//! whatever its size up to `MAX_RESPONSE_BYTES`, and a client asking for pages of 500 pointers at
//! every size limit must raise its receive limit above the 4 MiB gRPC clients accept by default
//! (README, The API); a national node's ask of a region takes them. Figures: printed by the test.

use nrl_registry::api::grpc::peer_client::search_region;
use nrl_registry::api::grpc::MAX_RESPONSE_BYTES;
use nrl_registry::config::StoreConfig;
use nrl_registry::domain::limits::{MAX_CONTENT, MAX_DISPLAY_LEN, MAX_MESSAGE_BYTES, MAX_PAGE_SIZE, MAX_URL_LEN};
use nrl_registry::domain::RegionDirectory;
use nrl_registry::federation::peers::Peers;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use prost::Message;
use testkit::fixtures::{content, input, new_patient, query};
use testkit::TestServer;
use tonic::metadata::MetadataMap;

/// A pointer at the size limits: every rendition, each url as long as allowed.
fn largest(patient: &str, n: usize) -> pb::PointerInput {
    let mut pointer = input(patient, "QWO", "RR8.ABCDEFGHIJKL", "736253002");
    pointer.content = (0..MAX_CONTENT)
        .map(|i| {
            let url = format!("https://qwo.example.nhs.uk/{n}/{i}/");
            content(&format!("{url}{}", "a".repeat(MAX_URL_LEN - url.len())))
        })
        .collect();
    pointer.author = "Y05868.ABCDEFGHIJKL".into();
    pointer.practice_setting = Some(pb::Coding { code: "394802001".into(), display: "g".repeat(MAX_DISPLAY_LEN) });
    pointer.producer_reference = format!("{n:0128}");
    pointer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_500_of_the_largest_pointers_is_sent_and_needs_a_raised_client_limit() {
    let server = TestServer::start(StoreConfig::Memory).await;
    let patient = new_patient();
    let mut registry = server.registry();
    for batch in 0..5 {
        let pointers: Vec<_> = (0..100).map(|n| largest(&patient, batch * 100 + n)).collect();
        let request = pb::BatchCreatePointersRequest { pointers };
        assert!(request.encoded_len() < MAX_MESSAGE_BYTES, "each batch request fits the request limit");
        let outcomes = registry.batch_create_pointers(request).await.expect("batch of 100").into_inner().outcomes;
        assert!(outcomes.iter().all(|o| matches!(o.result, Some(pb::batch_outcome::Result::Created(_)))));
    }
    let search = |page_size: i32| pb::SearchPointersRequest {
        query: Some(query(&patient)),
        page_size,
        page_token: String::new(),
    };

    // With the receive limit raised, one page holds all 500.
    let mut raised = PointerRegistryClient::new(server.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let page = raised.search_pointers(search(MAX_PAGE_SIZE as i32)).await.expect("a page of 500").into_inner();
    assert_eq!(page.pointers.len(), 500);
    assert!(page.next_page_token.is_empty());
    let page_bytes = page.encoded_len();
    let pointer_bytes = page.pointers.iter().map(Message::encoded_len).max().unwrap_or_default();
    println!("the largest pointer: {pointer_bytes} bytes; a page of 500 of them: {page_bytes} bytes");
    assert!(page_bytes > MAX_MESSAGE_BYTES && page_bytes < MAX_RESPONSE_BYTES, "{page_bytes}");

    // A client with the default 4 MiB receive limit refuses that page, and takes smaller ones.
    let err = registry.search_pointers(search(500)).await.expect_err("over a default client's limit");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let fits = (4 * 1024 * 1024 / pointer_bytes) as i32 - 1;
    let small = registry.search_pointers(search(fits)).await.expect("a page under 4 MiB").into_inner();
    println!("a default client takes pages of up to {fits} of them");
    assert_eq!(small.pointers.len(), fits as usize);

    // A national node's ask of a region (FederatedSearch) takes such pages too.
    let peers = Peers::from_directory(&RegionDirectory::default_directory(), None);
    let qwo = RegionDirectory::default_directory().parse_code("QWO").expect("QWO");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = format!("http://{}", server.addr);
    let asked = search_region(&peers, &url, &qwo, &query(&patient), &MetadataMap::new(), deadline).await;
    assert_eq!(asked.map(|pointers| pointers.len()).map_err(|e| e.to_string()), Ok(500));
    server.stop().await.expect("stop");
}
