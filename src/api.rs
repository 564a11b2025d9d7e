//! The gRPC edge: tonic services, proto ↔ domain conversions and the error → status mapping.
//! Generated proto types go no deeper than this module.

mod admin_service;
pub mod conversions;
mod locator_service;
mod registry_service;
pub mod status;

pub use admin_service::{AuditLogService, PatientAdminService};
pub use locator_service::RecordLocatorService;
pub use registry_service::PointerRegistryService;
