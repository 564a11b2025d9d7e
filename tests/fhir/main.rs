//! Black-box tests of the FHIR R4 API over real sockets: a real server with its FHIR listener on
//! 127.0.0.1:0, spoken to with a plain HTTP client, on every store backend.
//!
//! Sections, one module each: [`interactions`] (every interaction and its success shape, the base
//! paths, `/metadata`, `/_status`), [`errors`] (every error row: status, Spine code, FHIRPath),
//! [`paging`] (walking `next` links while others write), [`races`] (atomic supersede and
//! `If-Match` under racing clients), [`equivalence`] (what gRPC writes FHIR reads, and back) and
//! [`nrlf`] (requests shaped as NRLF's producers and consumers send them). [`client`] checks every
//! answer: JSON, a conformant R4 resource, and an OperationOutcome with a Spine code on every error.

mod client;
mod equivalence;
mod errors;
mod interactions;
mod nrlf;
mod paging;
mod races;

use nrl_registry::config::{ServerConfig, StoreConfig};
use nrl_registry::domain::RegionCode;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{on_every_backend, Backend, TestServer};

mod backends {
    use super::*;
    use nrl_registry::store::redis::RedisConfig;
    use std::sync::OnceLock;
    use testkit::redis::{RedisCluster, RedisOptions, RedisServer};

    // One private server and one cluster per test binary, shared by every scenario (each scenario
    // uses its own patients). The harness's watchdog stops them when the binary exits.
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

    fn redis_store(url: &str) -> StoreConfig {
        let mut config = RedisConfig::parse(url).expect("harness url");
        config.timeout = Duration::from_secs(3);
        StoreConfig::Redis(config)
    }

    pub fn store(backend: Backend) -> StoreConfig {
        match backend {
            Backend::Memory => StoreConfig::Memory,
            Backend::Redis => redis_store(&REDIS.get_or_init(|| RedisServer::start(RedisOptions::default())).url()),
            Backend::RedisCluster => redis_store(&CLUSTER.get_or_init(|| RedisCluster::start(3, 0)).url()),
        }
    }
}

/// A test server on `backend` with the FHIR listener on; `regions`: the regions the node holds
/// (`None`: every region).
async fn start(backend: Backend, regions: Option<&[&str]>) -> TestServer {
    let mut config = ServerConfig::for_tests();
    config.store = backends::store(backend);
    config.fhir.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.node.regions =
        regions.map(|codes| codes.iter().map(|c| RegionCode::parse(c).expect("a region code")).collect());
    TestServer::start_with(config).await
}

/// Runs one scenario against a server on `backend` that holds every region (so a pointer must
/// name its region: the test caller may register for any), then stops the server.
async fn with_server(backend: Backend, scenario: impl AsyncFnOnce(&TestServer)) {
    let server = start(backend, None).await;
    scenario(&server).await;
    server.stop().await.expect("server stops cleanly");
}

on_every_backend!(with_server; [
    interactions::create_answers_201_with_location_etag_and_an_outcome,
    interactions::create_with_prefer_representation_returns_the_resource,
    interactions::create_is_idempotent_on_master_identifier,
    interactions::read_returns_the_resource_with_its_version,
    interactions::update_with_and_without_if_match,
    interactions::delete_then_read_is_not_found,
    interactions::search_by_get_post_form_post_json_and_count_agree,
    interactions::search_filters_select_and_comma_means_or,
    interactions::supersede_retires_every_target_atomically,
    interactions::every_base_path_serves_the_same_registry,
    interactions::metadata_lists_exactly_what_is_served,
    interactions::status_says_ok,
    errors::invalid_documents_are_refused_naming_the_element,
    errors::bodies_that_are_not_a_document_reference,
    errors::invalid_searches_are_refused_naming_the_parameter,
    errors::page_tokens_are_checked,
    errors::update_and_delete_errors,
    errors::immutable_elements_are_refused_on_update_naming_them,
    errors::unknown_ids_and_methods,
    errors::a_region_is_required_where_it_is_ambiguous,
    errors::media_types_are_negotiated,
    paging::paging_while_writing_has_no_duplicates_or_gaps,
    races::eight_racing_supersedes_let_exactly_one_win,
    races::racing_updates_with_one_if_match_let_exactly_one_win,
    races::racing_updates_without_if_match_each_apply_or_conflict,
    equivalence::what_grpc_writes_fhir_reads_field_by_field,
    equivalence::what_fhir_writes_grpc_reads_field_by_field,
    equivalence::supersede_and_search_agree_across_apis,
]);

/// Runs one scenario against a regional node holding only QWO, where a pointer without the region
/// extension belongs to QWO: NRLF's clients send no region.
async fn with_regional_server(backend: Backend, scenario: impl AsyncFnOnce(&TestServer)) {
    let server = start(backend, Some(&["QWO"])).await;
    scenario(&server).await;
    server.stop().await.expect("server stops cleanly");
}

mod regional {
    use super::{errors, nrlf, with_regional_server};
    use testkit::on_every_backend;

    on_every_backend!(with_regional_server; [
        nrlf::an_nrlf_producer_payload_is_accepted_unchanged,
        nrlf::ssp_content_with_context_related_is_accepted_unchanged,
        nrlf::an_nrlf_supersede_by_target_identifier,
        nrlf::nrlf_consumer_searches,
        errors::the_region_defaults_to_the_nodes_only_region,
    ]);
}
