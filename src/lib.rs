//! nrl-registry: a National Record Locator-style pointer registry.
//!
//! # Layout
//! - [`domain`]: NHS numbers, ODS codes, regions, pointer types, pointers, queries. Pure rules.
//! - [`registry`]: the operations (create, update, supersede, delete, search, locate) over a store.
//! - [`store`]: the [`store::PointerStore`] trait and its backends.
//! - [`api`]: tonic services, proto ↔ domain conversions, error → status mapping.
//! - [`server`]: assembles the services with health, reflection and limits; graceful shutdown.
//! - [`config`], [`telemetry`], [`cli`]: process concerns for the `nrl` binary.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin HTTP listener (/metrics, /live, /ready).
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
pub mod load;
pub mod metrics;
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
