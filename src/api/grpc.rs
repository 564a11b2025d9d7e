//! The gRPC edge. Each service reads: validate → convert (`conversions`) → call the `Registry` →
//! convert back; errors become statuses only in `status`.
//!
//! - `registry_service` (`nrl.v1.PointerRegistry`), `locator_service` (`nrl.v1.RecordLocator`),
//!   `admin_service` (`nrl.v1.PatientAdmin`, `nrl.v1.AuditLog`), `change_feed_service`
//!   (`nrl.v1.ChangeFeed`, for peer nodes), `federated_locator_service` (`nrl.v1.FederatedLocator`).
//! - `interceptor`: authenticates every call to a protected service (`auth::Authenticator`).
//! - `peer_client`: the outbound side, calls to other nodes (a region's search, its change feed).

mod admin_service;
mod change_feed_service;
pub mod conversions;
mod federated_locator_service;
pub mod interceptor;
mod locator_service;
pub mod peer_client;
mod registry_service;
pub mod status;

pub use admin_service::{AuditLogService, PatientAdminService};
pub use change_feed_service::ChangeFeedService;
pub use federated_locator_service::FederatedLocatorService;
pub use locator_service::RecordLocatorService;
pub use registry_service::PointerRegistryService;
