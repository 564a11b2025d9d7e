//! Black-box tests of the gRPC API against a real server over a real socket.
//!
//! `on_every_backend!` (testkit) runs every scenario in `scenarios/` against each store backend,
//! so all backends are held to one behaviour.

mod scenarios;

use nrl_registry::config::{ServerConfig, StoreConfig};
use std::time::Duration;
use testkit::{on_every_backend, Backend, TestServer};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod backends {
    use super::*;
    use nrl_registry::store::redis::RedisConfig;
    use std::sync::OnceLock;
    use testkit::redis::{RedisCluster, RedisOptions, RedisServer};

    pub async fn memory() -> TestServer {
        TestServer::start(StoreConfig::Memory).await
    }

    // One private server and one cluster per test binary, shared by every scenario (each scenario
    // uses its own patients). The harness's watchdog stops them when the binary exits.
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

    fn store(url: &str) -> StoreConfig {
        let mut config = RedisConfig::parse(url).expect("harness url");
        config.timeout = Duration::from_secs(3);
        StoreConfig::Redis(config)
    }

    pub async fn redis() -> TestServer {
        let url = REDIS.get_or_init(|| RedisServer::start(RedisOptions::default())).url();
        TestServer::start(store(&url)).await
    }

    pub async fn redis_cluster() -> TestServer {
        let url = CLUSTER.get_or_init(|| RedisCluster::start(3, 0)).url();
        TestServer::start(store(&url)).await
    }

    pub async fn start(backend: Backend) -> TestServer {
        match backend {
            Backend::Memory => memory().await,
            Backend::Redis => redis().await,
            Backend::RedisCluster => redis_cluster().await,
        }
    }
}

/// Runs one scenario against a server on `backend`, then stops the server.
async fn with_server(backend: Backend, scenario: impl AsyncFnOnce(&TestServer)) {
    let server = backends::start(backend).await;
    scenario(&server).await;
    server.stop().await.expect("server stops cleanly");
}

// The scenario modules, so the list below reads `module::scenario`.
use scenarios::{batch, create, locate, search, ssp, supersede, update_delete, validation};

on_every_backend!(with_server; [
    create::create_and_get_round_trip,
    create::create_with_reference_is_idempotent,
    create::concurrent_creates_with_one_reference_register_once,
    create::get_unknown_or_malformed_id,
    create::directories_are_listed,
    validation::malformed_pointers_are_rejected_naming_the_field,
    validation::missing_messages_are_rejected,
    update_delete::update_changes_mutable_fields_with_version_check,
    update_delete::concurrent_updates_at_one_version_let_one_win,
    update_delete::delete_removes_and_frees_the_reference,
    supersede::supersede_replaces_atomically,
    supersede::supersede_rejections_change_nothing,
    supersede::concurrent_supersedes_of_one_pointer_let_one_win,
    search::search_filters_and_count_agree,
    search::search_pages_newest_first_with_default_and_clamped_sizes,
    search::paging_while_writing_has_no_duplicates_or_gaps,
    search::search_filters_are_validated,
    batch::batch_reports_one_outcome_per_entry_in_order,
    batch::batch_size_is_bounded,
    locate::locate_lists_regions_with_counts_and_endpoints,
    ssp::an_ssp_pointer_keeps_its_asid_through_every_read_and_write,
    ssp::ssp_content_without_an_asid_is_refused_naming_the_field,
]);

async fn health_of(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client.check(HealthCheckRequest { service: service.into() }).await.expect("health check").into_inner().status
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = TestServer::start(StoreConfig::Memory).await;
    let mut health = HealthClient::new(server.channel.clone());
    // The store watcher sets the statuses right after start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health.check(HealthCheckRequest { service: String::new() }).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "health never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for service in ["", "nrl.v1.PointerRegistry", "nrl.v1.RecordLocator"] {
        assert_eq!(health_of(&mut health, service).await, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health.check(HealthCheckRequest { service: "nrl.v1.Nope".into() }).await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start(StoreConfig::Memory).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflect").into_inner();
    let response = responses.message().await.expect("stream").expect("one response");
    let services: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for expected in ["nrl.v1.PointerRegistry", "nrl.v1.RecordLocator", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == expected), "{expected} missing from {services:?}");
    }
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_then_stops_within_the_grace_period() {
    let mut config = ServerConfig::for_tests();
    config.shutdown_grace = Duration::from_millis(1500);
    let mut server = TestServer::start_with(config).await;
    let mut health = HealthClient::new(server.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: "nrl.v1.PointerRegistry".into() })
        .await
        .expect("watch")
        .into_inner();
    // The watch stream is an in-flight call that never ends by itself: it must see NOT_SERVING
    // before the server cuts it at the end of the grace period.
    let mut saw_serving = false;
    let started = tokio::time::Instant::now();
    let mut signalled = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
            Ok(Ok(Some(update))) if update.status == ServingStatus::Serving as i32 => {
                saw_serving = true;
                if !signalled {
                    server.begin_shutdown();
                    signalled = true;
                }
            }
            Ok(Ok(Some(update))) if update.status == ServingStatus::NotServing as i32 => {
                assert!(saw_serving, "was serving before the drain");
                break;
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("health watch ended without NOT_SERVING: {other:?}"),
        }
    }
    let result =
        tokio::time::timeout(Duration::from_secs(5), server.join()).await.expect("stops within grace + margin");
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    use nrl_registry::proto::nrl::v1 as pb;
    let server = TestServer::start(StoreConfig::Memory).await;
    let mut client = server.registry();
    let mut huge =
        testkit::fixtures::input(&testkit::fixtures::new_patient(), "QWO", "RR8", testkit::fixtures::CRISIS_PLAN);
    huge.producer_reference = "x".repeat(5 * 1024 * 1024);
    let err = client.create_pointer(pb::CreatePointerRequest { pointer: Some(huge) }).await.expect_err("too big");
    // tonic reports a message over the decoding limit as OUT_OF_RANGE, naming the limit.
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("4194304"), "{err:?}");
    server.stop().await.expect("stop");
}
