//! A gRPC connection's answers share socket writes (`limits/coalesced_writes.rs`): without that,
//! h2 wrote every answer over 256 bytes in a system call of its own.

use super::*;
use nrl_registry::proto::nrl::v1 as pb;
use testkit::fixtures::{input, new_patient, query, CRISIS_PLAN};

const WRITES: &str = "nrl_grpc_socket_writes_total";
const CONCURRENT: usize = 64;
const ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_of_concurrent_calls_on_one_connection_share_socket_writes() {
    let _alone = alone().await;
    let (server, admin) = start(ServerConfig::for_tests()).await;
    // One channel is one HTTP/2 connection.
    let mut client = server.registry();
    let patient = new_patient();
    for custodian in ["RR8", "RJ1", "RGT"] {
        client
            .create_pointer(pb::CreatePointerRequest { pointer: Some(input(&patient, "QWO", custodian, CRISIS_PLAN)) })
            .await
            .expect("create");
    }
    let search = pb::SearchPointersRequest { query: Some(query(&patient)), ..Default::default() };

    let before = value(&scrape(admin).await, WRITES);
    for _ in 0..ROUNDS {
        let calls = (0..CONCURRENT).map(|_| {
            let mut client = client.clone();
            let search = search.clone();
            async move { client.search_pointers(search).await }
        });
        for answer in futures::future::join_all(calls).await {
            let answer = answer.expect("search").into_inner();
            // Each answer is well over h2's 256-byte threshold.
            assert_eq!(answer.pointers.len(), 3);
        }
    }
    let writes = value(&scrape(admin).await, WRITES) - before;
    let calls = (CONCURRENT * ROUNDS) as f64;
    println!("{writes} socket writes for {calls} searches");
    assert!(writes > 0.0, "the writes are counted");
    // One write per answer, at least, before; a few answers per write is enough to show sharing
    // on a slow, busy machine (h2load measures 0.18 writes per call).
    assert!(writes <= calls / 2.0, "{writes} socket writes for {calls} concurrent searches");
    server.stop().await.expect("the server drains and stops");
}
