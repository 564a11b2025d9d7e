//! The gRPC edge. Each service reads: validate → convert (`conversions`) → call the `Registry` →
//! convert back; errors become statuses only in `status`.
//!
//! - `registry_service` (`nrl.v1.PointerRegistry`), `locator_service` (`nrl.v1.RecordLocator`),
//!   `admin_service` (`nrl.v1.PatientAdmin`, `nrl.v1.AuditLog`), `change_feed_service`
//!   (`nrl.v1.ChangeFeed`, for peer nodes), `federated_locator_service` (`nrl.v1.FederatedLocator`).
//! - `interceptor`: authenticates every call to a protected service (`auth::Authenticator`).
//! - `admission`: the per-call layer in front of every service: the metadata size limit, the
//!   in-flight cap (RESOURCE_EXHAUSTED with a retry hint), the request deadline.
//! - `budget`: opens each call's store budget (the store timeout, or the caller's deadline).
//! - `codec` and `framing`: a request that is not one well-framed, decodable message of its type
//!   is INVALID_ARGUMENT naming the type, before any handler runs.
//! - `validation`: hands the registry each request that fails validation, to record as a refusal.
//! - `peer_client`: the outbound side, calls to other nodes (a region's search, its change feed).

mod admin_service;
pub mod admission;
pub mod budget;
mod change_feed_service;
pub mod codec;
pub mod conversions;
mod federated_locator_service;
mod framing;
pub mod interceptor;
mod locator_service;
pub mod peer_client;
mod registry_service;
pub mod status;
mod validation;

pub use admin_service::{AuditLogService, PatientAdminService};
pub use change_feed_service::ChangeFeedService;
pub use federated_locator_service::FederatedLocatorService;
pub use locator_service::RecordLocatorService;
pub use registry_service::PointerRegistryService;

use crate::auth::Authenticator;
use crate::domain::limits::MAX_MESSAGE_BYTES;
use crate::federation::peers::Peers;
use crate::proto::nrl::v1::audit_log_server::AuditLogServer;
use crate::proto::nrl::v1::change_feed_server::ChangeFeedServer;
use crate::proto::nrl::v1::federated_locator_server::FederatedLocatorServer;
use crate::proto::nrl::v1::patient_admin_server::PatientAdminServer;
use crate::proto::nrl::v1::pointer_registry_server::PointerRegistryServer;
use crate::proto::nrl::v1::record_locator_server::RecordLocatorServer;
use crate::registry::Registry;
use framing::CheckedFraming;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

/// The largest answer PointerRegistry sends. A page of 500 pointers at every size limit (ten
/// renditions with 2,048-character urls) is about 11 MB and a BatchCreatePointers answer repeats
/// its up-to-4-MiB request with ids and timestamps added, so answers may pass the 4 MiB a request
/// may weigh. Below this, the server sends what it was asked for (it used to fail such a page with
/// OUT_OF_RANGE after recording the read); a client asking for pages that large raises its receive
/// limit to this (README, The API).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Adds every `nrl.v1` service to `routes`, each behind authentication (health and reflection,
/// which reveal nothing about patients, are the server's and stay open for probes and tooling),
/// and each with its requests' framing checked once the caller is authenticated.
/// `peers` are the regional nodes a national node fans out to (none on any other node).
pub fn add_services(routes: Routes, registry: &Registry, peers: Arc<Peers>, authenticator: Authenticator) -> Routes {
    let authenticate = interceptor::interceptor(authenticator);
    routes
        .add_service(InterceptedService::new(
            CheckedFraming::new(
                PointerRegistryServer::new(PointerRegistryService::new(registry.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES),
            ),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CheckedFraming::new(
                RecordLocatorServer::new(RecordLocatorService::new(registry.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES),
            ),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CheckedFraming::new(PatientAdminServer::new(PatientAdminService::new(registry.clone()))),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CheckedFraming::new(AuditLogServer::new(AuditLogService::new(registry.clone()))),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CheckedFraming::new(ChangeFeedServer::new(ChangeFeedService::new(registry.clone()))),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CheckedFraming::new(FederatedLocatorServer::new(FederatedLocatorService::new(registry.clone(), peers))),
            authenticate,
        ))
}
