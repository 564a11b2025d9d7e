//! nrl-registry: a National Record Locator-style pointer registry.
//!
//! # Layout
//! Layers import only downwards (`tests/architecture.rs` checks it): api → registry → store → domain.
//! - [`domain`]: NHS numbers, ODS codes, regions, pointer types, pointers, queries, the write rules.
//!   Pure: no I/O, no protobuf, no storage.
//! - [`registry`]: every operation (create, update, supersede, delete, search, locate, audit, the
//!   change feed for peers): authorise ([`auth::policy`]), act, audit.
//! - [`store`]: the four storage ports (pointers, audit, change feed, national index), their
//!   metering, and two backends: memory and Redis (standalone and Cluster).
//! - [`api`]: the only inbound edge: [`api::grpc`] holds every tonic service, the interceptor,
//!   proto ↔ domain conversions, the error → status map, and the client side of node-to-node calls.
//! - [`federation`]: outbound work: following regional feeds into the national index, the
//!   federated-search fan-out, the peer directory.
//! - [`auth`]: callers (JWT, mTLS) and the policy; [`error`]: the one error type; [`clock`].
//! - [`server`]: assembles stores, registry and services with health and reflection; graceful shutdown.
//! - [`config`], [`telemetry`], [`cli`], [`load`]: process concerns for the `nrl` and `nrl-load` binaries;
//!   [`otel`]: OpenTelemetry trace export and W3C trace context, when configured.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin HTTP listener (/metrics, /live, /ready).
//! - [`limits`]: what the server takes on at once: connections (caps, handshake and idle
//!   timeouts, the accept loop) and calls (the in-flight cap, the request deadline, metadata size).
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod otel;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    pub mod nrl {
        pub mod v1 {
            tonic::include_proto!("nrl.v1");
        }
    }
    /// The encoded descriptor set behind server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nrl_descriptor");
}
