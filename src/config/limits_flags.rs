//! The `nrl serve` flags of `crate::limits` (connections, in-flight calls, timeouts, header
//! sizes), checked the way every other setting is: each bad value reported, named as given.

use super::{ServeArgs, MIN_METADATA_BYTES};
use crate::limits::{ConnectionLimits, LimitsConfig};
use std::time::Duration;

/// The connection and call limits, from the flags: every bad value reported into `problems`
/// (where a value is bad, its minimum stands in, and the configuration is refused anyway).
pub(super) fn limits_config(args: &ServeArgs, problems: &mut Vec<String>) -> ParsedLimits {
    let p = problems;
    let max_connections = args.number::<usize>("max_connections", &args.max_connections, 1, p);
    let admin_max_connections = args.number::<usize>("admin_max_connections", &args.admin_max_connections, 1, p);
    let handshake_timeout_ms = args.number::<u64>("handshake_timeout_ms", &args.handshake_timeout_ms, 1, p);
    let idle_timeout_ms = args.number::<u64>("idle_timeout_ms", &args.idle_timeout_ms, 1, p);
    let keepalive_interval_ms = args.number::<u64>("keepalive_interval_ms", &args.keepalive_interval_ms, 1, p);
    let keepalive_timeout_ms = args.number::<u64>("keepalive_timeout_ms", &args.keepalive_timeout_ms, 1, p);
    let max_in_flight = args.number::<usize>("max_in_flight", &args.max_in_flight, 1, p);
    if max_in_flight > tokio::sync::Semaphore::MAX_PERMITS {
        p.push(format!("{}={:?}: is too large", args.name("max_in_flight"), args.max_in_flight));
    }
    let max_metadata_bytes =
        args.number::<usize>("max_metadata_bytes", &args.max_metadata_bytes, MIN_METADATA_BYTES, p);
    let max_header_list_bytes = args.number::<u32>("max_header_list_bytes", &args.max_header_list_bytes, 1, p);
    if (max_header_list_bytes as usize) < max_metadata_bytes {
        p.push(format!(
            "{}={:?}: must be at least {} ({max_metadata_bytes}), or calls over that get HTTP 431 instead of a \
             status",
            args.name("max_header_list_bytes"),
            args.max_header_list_bytes,
            args.name("max_metadata_bytes"),
        ));
    }
    ParsedLimits {
        config: LimitsConfig {
            connections: ConnectionLimits {
                max_connections,
                handshake_timeout: Duration::from_millis(handshake_timeout_ms),
                idle_timeout: Duration::from_millis(idle_timeout_ms),
                call_timeout: None,
            },
            keepalive_interval: Duration::from_millis(keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(keepalive_timeout_ms),
            max_in_flight,
            max_metadata_bytes,
            max_header_list_bytes,
        },
        admin_max_connections,
    }
}

/// The gRPC listener's limits, and the admin listener's connection cap.
pub(super) struct ParsedLimits {
    pub(super) config: LimitsConfig,
    pub(super) admin_max_connections: usize,
}
