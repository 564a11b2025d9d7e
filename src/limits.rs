//! What the server takes on at once, so that overload is refused early and cheaply instead of
//! queueing until everything is slow (README, Limits):
//!
//! - [`connection`]: every open connection of both listeners, with per-listener caps, the
//!   handshake and idle deadlines, and eviction of the longest-idle connection when a listener is
//!   full or the process runs out of file descriptors.
//! - [`coalesced_writes`]: a gRPC connection's writes, held back for one turn of the scheduler so
//!   that the answers finished together leave in one system call.
//! - [`accept`]: the accept loop of both listeners: it admits connections through
//!   [`connection::Connections`], and backs off (instead of spinning) when `accept` fails.
//!
//! The per-call limits are at each edge, since each answers in its own protocol:
//! `api::grpc::admission` (the request-metadata size limit, the in-flight cap with a retry hint,
//! the request deadline answered DEADLINE_EXCEEDED) and the FHIR listener's `admit` middleware.
//!
//! The size limits of the API's messages are elsewhere, in `domain::limits`.

pub mod accept;
pub mod coalesced_writes;
pub mod connection;

use std::time::Duration;

/// How long a connection may take to make its first call, and may sit without a call after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections this listener keeps open at once.
    pub max_connections: usize,
    /// From accept to the first call's headers: TLS, the HTTP/2 preface and the headers themselves.
    pub handshake_timeout: Duration,
    /// With no call in flight, after the last one ended.
    pub idle_timeout: Duration,
    /// How long one call may hold the connection, if bounded here (the admin listener: its
    /// answers are small, so a client that reads them slowly is cut off). gRPC calls are bounded
    /// by the request timeout and HTTP/2 keepalive instead, as streams may rightly run long.
    pub call_timeout: Option<Duration>,
}

/// Every limit `nrl serve` applies to the gRPC listener, from its flags (`config.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    pub connections: ConnectionLimits,
    /// HTTP/2 PING interval on every connection, and how long an answer may take.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Calls in flight at once, across all connections (grpc.health.v1 not counted).
    pub max_in_flight: usize,
    /// Request metadata a call may carry, counted as HTTP/2 does (name + value + 32 per entry).
    pub max_metadata_bytes: usize,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: what the HTTP/2 transport accepts at all.
    pub max_header_list_bytes: u32,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// hyper's own default before the limit was explicit, so no client that worked is refused now.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 128 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
                idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
                call_timeout: None,
            },
            keepalive_interval: Duration::from_millis(DEFAULT_KEEPALIVE_INTERVAL_MS),
            keepalive_timeout: Duration::from_millis(DEFAULT_KEEPALIVE_TIMEOUT_MS),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
        }
    }
}

impl ConnectionLimits {
    /// The admin listener's: `max_connections` of its own, the gRPC handshake timeout as its idle
    /// timeout too (scrapers reconnect cheaply), and the same bound on one request.
    pub fn admin(max_connections: usize, handshake_timeout: Duration) -> Self {
        Self {
            max_connections,
            handshake_timeout,
            idle_timeout: handshake_timeout,
            call_timeout: Some(handshake_timeout),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::admin(DEFAULT_ADMIN_MAX_CONNECTIONS, Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS))
    }
}
