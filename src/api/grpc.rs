//! The gRPC edge. Each service reads: validate → convert (`conversions`) → call the `Registry` →
//! convert back; errors become statuses only in `status`.
//!
//! - `registry_service` (`nrl.v1.PointerRegistry`), `locator_service` (`nrl.v1.RecordLocator`),
//!   `admin_service` (`nrl.v1.PatientAdmin`, `nrl.v1.AuditLog`), `change_feed_service`
//!   (`nrl.v1.ChangeFeed`, for peer nodes), `federated_locator_service` (`nrl.v1.FederatedLocator`).
//! - `interceptor`: authenticates every call to a protected service (`auth::Authenticator`).
//! - `budget`: opens each call's store budget (the store timeout, or the caller's deadline).
//! - `validation`: hands the registry each request that fails validation, to record as a refusal.
//! - `peer_client`: the outbound side, calls to other nodes (a region's search, its change feed).

mod admin_service;
pub mod budget;
mod change_feed_service;
pub mod conversions;
mod federated_locator_service;
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
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

/// Adds every `nrl.v1` service to `routes`, each behind authentication (health and reflection,
/// which reveal nothing about patients, are the server's and stay open for probes and tooling).
/// `peers` are the regional nodes a national node fans out to (none on any other node).
pub fn add_services(routes: Routes, registry: &Registry, peers: Arc<Peers>, authenticator: Authenticator) -> Routes {
    let authenticate = interceptor::interceptor(authenticator);
    routes
        .add_service(InterceptedService::new(
            PointerRegistryServer::new(PointerRegistryService::new(registry.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            RecordLocatorServer::new(RecordLocatorService::new(registry.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            PatientAdminServer::new(PatientAdminService::new(registry.clone())),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            AuditLogServer::new(AuditLogService::new(registry.clone())),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            ChangeFeedServer::new(ChangeFeedService::new(registry.clone())),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            FederatedLocatorServer::new(FederatedLocatorService::new(registry.clone(), peers)),
            authenticate,
        ))
}
