//! The inbound edge: the only place requests from outside enter the library. Each protocol is a
//! sibling module with its own conversions and its own error mapping, over the same `Registry`:
//! - [`grpc`]: every tonic service the server registers, the gRPC interceptor that authenticates,
//!   proto ↔ domain conversions, the error → `Status` map, and the gRPC clients one node uses to
//!   call another (peer search, the regional change feed).
//! - [`fhir`]: the FHIR R4 REST API (NRLF-compatible DocumentReference, the access log as
//!   AuditEvent): its router and listener, the resource mappings, the error → OperationOutcome map.
//!
//! Generated proto types go no deeper than this module (the client programs, `cli` and `load`,
//! use them too: they are gRPC clients, not layers of the server).

pub mod fhir;
pub mod grpc;
