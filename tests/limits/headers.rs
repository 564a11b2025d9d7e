//! Oversized request metadata gets a status naming the header, up to the transport's own limit;
//! README, Limits, lists what a client sees at each size.

use super::*;
use nrl_registry::config::StoreConfig;
use nrl_registry::proto::nrl::v1 as pb;
use nrl_registry::proto::nrl::v1::pointer_registry_client::PointerRegistryClient;
use testkit::auth::{jwt_server_config, token, Clients, Credentials};
use testkit::fixtures::{new_patient, query};
use tonic::metadata::AsciiMetadataValue;
use tonic::Code;

const KIB: usize = 1024;

/// A search sent with an `authorization` header of exactly `size` bytes.
async fn search_with_authorization(channel: &Channel, size: usize) -> tonic::Status {
    let value = format!("Bearer {}", "a".repeat(size - "Bearer ".len()));
    let mut clients = Clients::new(channel, Credentials::authorization(&value).purpose("direct-care"));
    let request = pb::SearchPointersRequest { query: Some(query(&new_patient())), ..Default::default() };
    let answer = tokio::time::timeout(Duration::from_secs(10), clients.registry.search_pointers(request))
        .await
        .expect("an answer");
    answer.expect_err("no such token is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_authorization_headers_get_the_documented_answer_at_each_size() {
    let _alone = alone().await;
    let (server, _admin) = start(jwt_server_config(StoreConfig::Memory)).await;
    let limit = "over the limit of 16384 bytes";

    // 8 KiB: under the metadata limit, so the token itself is read, and refused.
    let status = search_with_authorization(&server.channel, 8 * KIB).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains(limit), "{status:?}");
    // 16 KiB and over, up to the transport's 128 KiB: refused for its size, naming the header.
    for size in [16 * KIB, 17 * KIB, 100 * KIB] {
        let status = search_with_authorization(&server.channel, size).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{size}: {status:?}");
        assert!(status.message().starts_with("authorization: request metadata is"), "{size}: {status:?}");
        assert!(status.message().contains(limit), "{size}: {status:?}");
    }
    // Over the transport's limit (NRL_MAX_HEADER_LIST_BYTES) HTTP/2 answers before any service
    // sees the call: HTTP 431, which clients report as UNKNOWN...
    let status = search_with_authorization(&server.channel, 200 * KIB).await;
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    // ...and far over it (about 2.4 times) a GOAWAY (ENHANCE_YOUR_CALM) that ends the connection,
    // which tonic reports as RESOURCE_EXHAUSTED, or as UNKNOWN if the socket closes first.
    let status = search_with_authorization(&server.channel, 1024 * KIB).await;
    assert!(matches!(status.code(), Code::ResourceExhausted | Code::Unknown), "{status:?}");
    assert!(!status.message().contains("authorization"), "not the server's own answer: {status:?}");

    // The channel still serves calls afterwards (on a new connection after the GOAWAY).
    let mut clients = Clients::bearer(&server.channel, &token("sub", "RA7", &["consumer"], None));
    let request = pb::SearchPointersRequest { query: Some(query(&new_patient())), ..Default::default() };
    clients.registry.search_pointers(request).await.expect("a good call after the oversized ones");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_oversized_header_is_an_invalid_argument_naming_it() {
    let _alone = alone().await;
    let (server, _admin) = start(ServerConfig::for_tests()).await;
    let padding = AsciiMetadataValue::try_from("p".repeat(20 * KIB)).expect("ascii");
    let mut client =
        PointerRegistryClient::with_interceptor(server.channel.clone(), move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("x-padding", padding.clone());
            Ok(request)
        });
    let request = pb::SearchPointersRequest { query: Some(query(&new_patient())), ..Default::default() };
    let status = client.search_pointers(request).await.expect_err("too much metadata");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("x-padding: request metadata is"), "{status:?}");
    drop(server);
}
