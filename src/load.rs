//! The load runner behind `nrl-load`: it runs ghz JSON config files (the ones in `loadtest/`)
//! without ghz, so the same scenarios run where ghz cannot be installed.
//!
//! - [`config`]: ghz's config keys, checked; Go duration strings.
//! - [`template`]: the ghz call-data templates (`{{.RequestNumber}}`, `{{newUUID}}`, …).
//! - [`schema`]: methods and request messages by name from the compiled-in descriptor sets
//!   (`prost-reflect`), and the raw-bytes codec calls are sent with.
//! - [`run`]: workers, connections, total/duration, rps pacing, timeouts, metadata.
//! - [`report`]: ghz-style summary and JSON (HDR histogram percentiles, status codes, errors).
//! - [`prepare`]: the data files the configs name, and bulk `fill` for the large runs.
//! - [`frame`]: one call as a raw gRPC body (5-byte prefix + message) and headers, for h2load;
//!   and bodies decoded back into JSON.
//!
//! Non-OK grpc-status is an error, as in ghz; latency figures cover OK calls only (ghz's default).

pub mod config;
pub mod frame;
pub mod prepare;
pub mod report;
pub mod run;
pub mod schema;
pub mod template;

pub use config::GhzConfig;
pub use report::Report;
pub use run::{run, Overrides, Scenario};
