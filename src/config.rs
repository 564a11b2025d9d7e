//! Server configuration, from flags or `NRL_*` environment variables (clap reads both, flags win).
//! Everything is validated before the server starts, every bad value at once (so clap takes each
//! value as text and the checks here parse it), each named as the user gave it: the flag or the
//! variable. Then `nrl` exits 64.

use crate::admin::AdminConfig;
use crate::auth::Authenticator;
use crate::domain::ReferenceData;
use crate::domain::{PointerTypeCatalogue, RegionCode, RegionDirectory};
use crate::limits::{self, ConnectionLimits, LimitsConfig};
use crate::otel::OtlpConfig;
use crate::store::redis::RedisConfig;
use auth::auth_config;
use clap::parser::ValueSource;
use limits_flags::limits_config;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::IntErrorKind;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

mod auth;
mod fhir_listen;
mod limits_flags;
mod otlp;
mod tls;

pub use tls::{TlsError, TlsMaterial};

pub use fhir_listen::FhirConfig;

pub const ENV_LISTEN: &str = "NRL_LISTEN";
pub const ENV_STORE: &str = "NRL_STORE";
pub const ENV_REGIONS: &str = "NRL_REGIONS";
pub const ENV_POINTER_TYPES: &str = "NRL_POINTER_TYPES";
pub const ENV_SHUTDOWN_GRACE: &str = "NRL_SHUTDOWN_GRACE_SECS";
pub const ENV_REQUEST_TIMEOUT: &str = "NRL_REQUEST_TIMEOUT_MS";
pub const ENV_STREAMS_PER_CONNECTION: &str = "NRL_MAX_CONCURRENT_STREAMS";
pub const ENV_LOG_FORMAT: &str = "NRL_LOG_FORMAT";
pub const ENV_REDIS_TIMEOUT: &str = "NRL_REDIS_TIMEOUT_MS";
pub const ENV_REDIS_WAIT_REPLICAS: &str = "NRL_REDIS_WAIT_REPLICAS";
pub const ENV_REDIS_WAIT_TIMEOUT: &str = "NRL_REDIS_WAIT_TIMEOUT_MS";
pub const ENV_REDIS_STARTUP_WAIT: &str = "NRL_REDIS_STARTUP_WAIT_SECS";
pub const ENV_ADMIN_LISTEN: &str = "NRL_ADMIN_LISTEN";
pub const ENV_FHIR_LISTEN: &str = "NRL_FHIR_LISTEN";
pub const ENV_JWT_HS256_SECRET_FILE: &str = "NRL_JWT_HS256_SECRET_FILE";
pub const ENV_JWT_PUBLIC_KEY_FILE: &str = "NRL_JWT_PUBLIC_KEY_FILE";
pub const ENV_JWT_ISSUER: &str = "NRL_JWT_ISSUER";
pub const ENV_JWT_AUDIENCE: &str = "NRL_JWT_AUDIENCE";
pub const ENV_TLS_CERT_FILE: &str = "NRL_TLS_CERT_FILE";
pub const ENV_TLS_KEY_FILE: &str = "NRL_TLS_KEY_FILE";
pub const ENV_TLS_CLIENT_CA_FILE: &str = "NRL_TLS_CLIENT_CA_FILE";
pub const ENV_MTLS_CLIENTS_FILE: &str = "NRL_MTLS_CLIENTS_FILE";
pub const ENV_NODE_REGIONS: &str = "NRL_NODE_REGIONS";
pub const ENV_FEDERATION: &str = "NRL_FEDERATION";
pub const ENV_PEER_TOKEN_FILE: &str = "NRL_PEER_TOKEN_FILE";
pub const ENV_FEED_RETENTION: &str = "NRL_FEED_RETENTION";
pub const ENV_AUDIT_EXPORT_RETENTION: &str = "NRL_AUDIT_EXPORT_RETENTION";
pub const ENV_MEMORY_AUDIT_RETENTION: &str = "NRL_MEMORY_AUDIT_RETENTION";
pub const ENV_MAX_CONNECTIONS: &str = "NRL_MAX_CONNECTIONS";
pub const ENV_ADMIN_MAX_CONNECTIONS: &str = "NRL_ADMIN_MAX_CONNECTIONS";
pub const ENV_HANDSHAKE_TIMEOUT: &str = "NRL_HANDSHAKE_TIMEOUT_MS";
pub const ENV_IDLE_TIMEOUT: &str = "NRL_IDLE_TIMEOUT_MS";
pub const ENV_KEEPALIVE_INTERVAL: &str = "NRL_KEEPALIVE_INTERVAL_MS";
pub const ENV_KEEPALIVE_TIMEOUT: &str = "NRL_KEEPALIVE_TIMEOUT_MS";
pub const ENV_MAX_IN_FLIGHT: &str = "NRL_MAX_IN_FLIGHT";
pub const ENV_MAX_METADATA_BYTES: &str = "NRL_MAX_METADATA_BYTES";
pub const ENV_MAX_HEADER_LIST_BYTES: &str = "NRL_MAX_HEADER_LIST_BYTES";
pub const ENV_OTLP_ENDPOINT: &str = "NRL_OTLP_ENDPOINT";
pub const ENV_OTLP_SERVICE_NAME: &str = "NRL_OTLP_SERVICE_NAME";
/// The smallest metadata limit allowed: an ordinary call's own headers take a few hundred bytes.
const MIN_METADATA_BYTES: usize = 1024;
/// Issuer and audience of development tokens (`nrl token`) unless configured otherwise.
pub const DEFAULT_JWT_ISSUER: &str = "nrl-registry-dev";
pub const DEFAULT_JWT_AUDIENCE: &str = "nrl-registry";

/// `nrl serve` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default; anything else needs authentication configured.
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Where pointers are kept: `memory` (default; lost on restart), `redis://host:port/db`,
    /// `rediss://…` (TLS), or `redis+cluster://host:port,host:port,…` (`rediss+cluster://` for TLS).
    /// Credentials go in the URL: `redis://user:password@host:port`.
    #[arg(long, env = ENV_STORE, default_value = "memory")]
    pub store: String,
    /// Region directory JSON file replacing the built-in one (42 ICBs and 3 nations).
    #[arg(long, env = ENV_REGIONS)]
    pub regions: Option<PathBuf>,
    /// Pointer-type catalogue JSON file replacing the built-in one.
    #[arg(long, env = ENV_POINTER_TYPES)]
    pub pointer_types: Option<PathBuf>,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, allow_negative_numbers = true, default_value = "20")]
    pub shutdown_grace_secs: String,
    /// Per-request timeout in milliseconds (DEADLINE_EXCEEDED after it).
    #[arg(long, env = ENV_REQUEST_TIMEOUT, allow_negative_numbers = true, default_value = "10000")]
    pub request_timeout_ms: String,
    /// Concurrent calls allowed on one client connection, advertised to clients as HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS (a client queues its own excess; the server queues nothing).
    #[arg(long, env = ENV_STREAMS_PER_CONNECTION, allow_negative_numbers = true, default_value = "256")]
    pub max_concurrent_streams: String,
    /// Calls in flight at once across all connections; the excess is refused at once with
    /// RESOURCE_EXHAUSTED and a retry hint (grpc.health.v1 is not counted).
    #[arg(long, env = ENV_MAX_IN_FLIGHT, allow_negative_numbers = true, default_value_t = limits::DEFAULT_MAX_IN_FLIGHT.to_string())]
    pub max_in_flight: String,
    /// gRPC connections open at once. At the cap a new connection replaces the longest-idle one, or
    /// is refused if none is idle. Lowered to fit the process's open-file limit.
    #[arg(long, env = ENV_MAX_CONNECTIONS, allow_negative_numbers = true, default_value_t = limits::DEFAULT_MAX_CONNECTIONS.to_string())]
    pub max_connections: String,
    /// Admin listener connections open at once, kept apart from the gRPC ones.
    #[arg(long, env = ENV_ADMIN_MAX_CONNECTIONS, allow_negative_numbers = true, default_value_t = limits::DEFAULT_ADMIN_MAX_CONNECTIONS.to_string())]
    pub admin_max_connections: String,
    /// A connection that has not sent its first call's headers this long after connecting (TLS and
    /// HTTP/2 setup included) is closed. On the admin listener, also the idle and request limit.
    #[arg(long, env = ENV_HANDSHAKE_TIMEOUT, allow_negative_numbers = true, default_value_t = limits::DEFAULT_HANDSHAKE_TIMEOUT_MS.to_string())]
    pub handshake_timeout_ms: String,
    /// A gRPC connection with no call in flight for this long is closed.
    #[arg(long, env = ENV_IDLE_TIMEOUT, allow_negative_numbers = true, default_value_t = limits::DEFAULT_IDLE_TIMEOUT_MS.to_string())]
    pub idle_timeout_ms: String,
    /// HTTP/2 PING interval on every gRPC connection...
    #[arg(long, env = ENV_KEEPALIVE_INTERVAL, allow_negative_numbers = true, default_value_t = limits::DEFAULT_KEEPALIVE_INTERVAL_MS.to_string())]
    pub keepalive_interval_ms: String,
    /// ...and how long its answer may take before the connection is closed.
    #[arg(long, env = ENV_KEEPALIVE_TIMEOUT, allow_negative_numbers = true, default_value_t = limits::DEFAULT_KEEPALIVE_TIMEOUT_MS.to_string())]
    pub keepalive_timeout_ms: String,
    /// Request metadata one call may carry (names + values + 32 per entry, as HTTP/2 counts).
    /// Over it, the call is answered UNAUTHENTICATED (if `authorization` is the largest entry) or
    /// INVALID_ARGUMENT naming the largest entry.
    #[arg(long, env = ENV_MAX_METADATA_BYTES, allow_negative_numbers = true, default_value_t = limits::DEFAULT_MAX_METADATA_BYTES.to_string())]
    pub max_metadata_bytes: String,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: the headers the transport takes at all. Over it, HTTP/2
    /// itself answers (HTTP 431, or GOAWAY for a header block far over it).
    #[arg(long, env = ENV_MAX_HEADER_LIST_BYTES, allow_negative_numbers = true, default_value_t = limits::DEFAULT_MAX_HEADER_LIST_BYTES.to_string())]
    pub max_header_list_bytes: String,
    /// Redis: every store call fails with UNAVAILABLE after this many milliseconds.
    #[arg(long, env = ENV_REDIS_TIMEOUT, allow_negative_numbers = true, default_value = "1000")]
    pub redis_timeout_ms: String,
    /// Redis: acknowledge a write only once this many replicas have it (WAIT). 0 = primary only.
    #[arg(long, env = ENV_REDIS_WAIT_REPLICAS, allow_negative_numbers = true, default_value = "0")]
    pub redis_wait_replicas: String,
    /// Redis: how long WAIT may take before the write is reported UNAVAILABLE.
    #[arg(long, env = ENV_REDIS_WAIT_TIMEOUT, allow_negative_numbers = true, default_value = "500")]
    pub redis_wait_timeout_ms: String,
    /// Redis: how long startup keeps trying to reach Redis before exiting.
    #[arg(long, env = ENV_REDIS_STARTUP_WAIT, allow_negative_numbers = true, default_value = "30")]
    pub redis_startup_wait_secs: String,
    /// Regions this node holds pointers for, comma-separated (e.g. `QWO`): a regional node. Empty:
    /// every region (a national node). Writes for other regions get FAILED_PRECONDITION naming the
    /// node that holds them (the region's `record-locator` endpoint in the region directory).
    #[arg(long, env = ENV_NODE_REGIONS, default_value = "")]
    pub node_regions: String,
    /// `off`: answer LocatePatient and FederatedSearch from this node's own pointers (central
    /// mode). `national`: follow every regional node named by a `record-locator` endpoint in the
    /// region directory, keep a patient → regions index, and fan FederatedSearch out to them.
    #[arg(long, env = ENV_FEDERATION, default_value = "off")]
    pub federation: String,
    /// Bearer token (a `peer` role) the national node presents to regional nodes' change feeds.
    #[arg(long, env = ENV_PEER_TOKEN_FILE)]
    pub peer_token_file: Option<PathBuf>,
    /// How many changes the change feed keeps for followers (standalone Redis; memory keeps 1,000,000).
    #[arg(long, env = ENV_FEED_RETENTION, allow_negative_numbers = true, default_value = "1000000")]
    pub feed_retention: String,
    /// How many events the audit export stream keeps (Redis; approximate, as Redis trims whole
    /// stream nodes). Each patient's own access log keeps every event regardless.
    #[arg(long, env = ENV_AUDIT_EXPORT_RETENTION, allow_negative_numbers = true, default_value = "10000000")]
    pub audit_export_retention: String,
    /// How many audit events the memory store keeps (the newest; older ones are dropped, counted
    /// and warned about once). The memory store is for development and tests: Redis keeps every
    /// patient's log in full.
    #[arg(long, env = ENV_MEMORY_AUDIT_RETENTION, allow_negative_numbers = true, default_value_t = crate::store::memory::DEFAULT_AUDIT_RETENTION.to_string())]
    pub memory_audit_retention: String,
    /// JWT: file holding the HS256 shared secret (at least 32 bytes). For development and tests.
    #[arg(long, env = ENV_JWT_HS256_SECRET_FILE)]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// JWT: the identity provider's public key (PEM, RSA for RS256 or EC P-256 for ES256).
    #[arg(long, env = ENV_JWT_PUBLIC_KEY_FILE)]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWT: the required `iss` claim.
    #[arg(long, env = ENV_JWT_ISSUER, default_value = DEFAULT_JWT_ISSUER)]
    pub jwt_issuer: String,
    /// JWT: the required `aud` claim.
    #[arg(long, env = ENV_JWT_AUDIENCE, default_value = DEFAULT_JWT_AUDIENCE)]
    pub jwt_audience: String,
    /// TLS: the server certificate chain (PEM). With --tls-key-file, the server speaks TLS only.
    #[arg(long, env = ENV_TLS_CERT_FILE)]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS: the server private key (PEM).
    #[arg(long, env = ENV_TLS_KEY_FILE)]
    pub tls_key_file: Option<PathBuf>,
    /// mTLS: the CA that signs client certificates (PEM). Needs TLS and --mtls-clients-file.
    #[arg(long, env = ENV_TLS_CLIENT_CA_FILE)]
    pub tls_client_ca_file: Option<PathBuf>,
    /// mTLS: which client certificate (by common name) is which caller: see README, Security.
    #[arg(long, env = ENV_MTLS_CLIENTS_FILE)]
    pub mtls_clients_file: Option<PathBuf>,
    /// Admin HTTP listener (/metrics, /live, /ready); empty or `off` for none. It serves no patient
    /// data, so a non-loopback address needs no authentication.
    #[arg(long, env = ENV_ADMIN_LISTEN, default_value = crate::admin::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// FHIR R4 API listener; `off` for none. Same credentials, TLS and loopback rule as gRPC.
    #[arg(long, env = ENV_FHIR_LISTEN, default_value = crate::api::fhir::DEFAULT_FHIR_LISTEN)]
    pub fhir_listen: String,
    /// OpenTelemetry: export traces over OTLP/gRPC to this collector (`http://host:4317`, or
    /// `https://…`). Empty or `off`: no traces leave the process.
    #[arg(long, env = ENV_OTLP_ENDPOINT, default_value = "")]
    pub otlp_endpoint: String,
    /// OpenTelemetry: the `service.name` of this node's spans.
    #[arg(long, env = ENV_OTLP_SERVICE_NAME, default_value = crate::otel::DEFAULT_SERVICE_NAME)]
    pub otlp_service_name: String,
    /// Which settings came from a flag and which from the environment (`Origins::of`), so that
    /// problems name what the user typed.
    #[arg(skip)]
    pub origins: Origins,
}

/// How the `nrl serve` settings were given: by flag or by environment variable, by argument id.
#[derive(Clone, Debug, Default)]
pub struct Origins(HashMap<String, Origin>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Flag,
    Env,
}

impl Origins {
    /// From the matches `ServeArgs` were parsed from (clap's `value_source`).
    pub fn of(matches: &clap::ArgMatches) -> Self {
        let origin = |id: &clap::Id| match matches.value_source(id.as_str()) {
            Some(ValueSource::CommandLine) => Some((id.to_string(), Origin::Flag)),
            Some(ValueSource::EnvVariable) => Some((id.to_string(), Origin::Env)),
            _ => None,
        };
        Self(matches.ids().filter_map(origin).collect())
    }
}

/// Each `nrl serve` setting's flag and variable, by argument id, from the clap definition.
static SETTING_NAMES: LazyLock<HashMap<String, (String, String)>> = LazyLock::new(|| {
    let serve = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
    let names = |arg: &clap::Arg| {
        let env = arg.get_env()?.to_string_lossy().into_owned();
        Some((arg.get_id().to_string(), (format!("--{}", arg.get_long()?), env)))
    };
    serve.get_arguments().filter_map(names).collect()
});

impl ServeArgs {
    /// How a problem names setting `id`: the flag if the value came from one, the variable if it
    /// came from the environment, both (`--flag/NRL_VAR`) when it was not given.
    fn name(&self, id: &str) -> String {
        let Some((flag, env)) = SETTING_NAMES.get(id) else { return id.to_string() };
        match self.origins.0.get(id) {
            Some(Origin::Flag) => flag.clone(),
            Some(Origin::Env) => env.clone(),
            None => format!("{flag}/{env}"),
        }
    }

    /// Setting `id` as a whole number of at least `min`. When it is not one, a problem naming it
    /// is reported and `min` stands in (any problem stops the configuration).
    fn number<T>(&self, id: &str, value: &str, min: T, problems: &mut Vec<String>) -> T
    where
        T: TryFrom<i128> + PartialOrd + fmt::Display,
    {
        let problem = match value.trim().parse::<i128>() {
            Ok(n) => match T::try_from(n) {
                Ok(n) if n >= min => return n,
                Err(_) if n > 0 => "is too large".to_string(),
                _ => format!("must be at least {min}"),
            },
            Err(e) if matches!(e.kind(), IntErrorKind::PosOverflow) => "is too large".to_string(),
            Err(_) => "is not a whole number".to_string(),
        };
        problems.push(format!("{}={value:?}: {problem}", self.name(id)));
        min
    }
}

/// The storage backend named by `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Redis(RedisConfig),
}

impl StoreConfig {
    /// The short backend name, as `PointerStore::backend` reports it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::Redis(redis) if redis.cluster => "redis-cluster",
            StoreConfig::Redis(_) => "redis",
        }
    }
}

/// How callers authenticate, and the TLS the server speaks: on the gRPC listener and the FHIR
/// listener alike.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub authenticator: Authenticator,
    pub tls: Option<TlsMaterial>,
}

impl AuthConfig {
    /// No authentication, no TLS: loopback development only.
    pub fn disabled() -> Self {
        Self { authenticator: Authenticator::Disabled, tls: None }
    }
}

/// The part this node plays in a federation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// Regions this node holds pointers for; `None`: all of them.
    pub regions: Option<BTreeSet<RegionCode>>,
    /// Follow regional nodes and keep the patient → regions index.
    pub national_index: bool,
    /// The bearer token presented to regional nodes' feeds.
    pub peer_token: Option<String>,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node: NodeConfig,
    pub auth: AuthConfig,
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub reference: ReferenceData,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// Connections, in-flight calls, timeouts and header sizes of the gRPC listener.
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    /// The FHIR listener (`listen: None`: off).
    pub fhir: FhirConfig,
    /// Audit events the memory store keeps.
    pub memory_audit_retention: usize,
    /// Where traces go (`None`: nowhere).
    pub otlp: Option<OtlpConfig>,
}

impl ServerConfig {
    /// Defaults for tests and embedding: memory store, built-in directories, loopback.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: AuthConfig::disabled(),
            node: NodeConfig::default(),
            store: StoreConfig::Memory,
            reference: ReferenceData::default(),
            shutdown_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            limits: LimitsConfig::default(),
            admin: AdminConfig::default(),
            fhir: FhirConfig::default(),
            memory_audit_retention: crate::store::memory::DEFAULT_AUDIT_RETENTION,
            otlp: None,
        }
    }
}

/// Every problem found, one per line, so an operator fixes them all in one go.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The store `--store` names, or what is wrong with the value (never echoing a password).
pub fn parse_store(value: &str) -> Result<StoreConfig, String> {
    match value.trim() {
        "memory" => Ok(StoreConfig::Memory),
        other => RedisConfig::parse(other).map(StoreConfig::Redis).map_err(|e| {
            format!(
                "{:?}: {e} (expected `memory`, `redis://host:port/db` or `redis+cluster://host:port,…`)",
                crate::store::redis::redact(other)
            )
        }),
    }
}

impl TryFrom<ServeArgs> for ServerConfig {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let listen = args
            .listen
            .trim()
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("{}={:?}: {e} (expected host:port)", args.name("listen"), args.listen)))
            .ok();
        let auth = auth_config(&args).map_err(|e| problems.extend(e)).ok();
        if let (Some(AuthConfig { authenticator: Authenticator::Disabled, .. }), Some(listen)) = (&auth, listen) {
            if !listen.ip().is_loopback() {
                problems.push(format!(
                    "{}={listen}: authentication is off, so the server listens on loopback only. Configure {} (or \
                     {}) and/or mTLS to listen elsewhere",
                    args.name("listen"),
                    args.name("jwt_public_key_file"),
                    args.name("jwt_hs256_secret_file"),
                ));
            }
        }
        let mut store = parse_store(&args.store).map_err(|e| problems.push(format!("{}={e}", args.name("store")))).ok();
        // Every number is checked, whatever the store: a bad value is wrong wherever it is used.
        let p = &mut problems;
        let shutdown_grace_secs = args.number::<u64>("shutdown_grace_secs", &args.shutdown_grace_secs, 0, p);
        let request_timeout_ms = args.number::<u64>("request_timeout_ms", &args.request_timeout_ms, 1, p);
        let max_concurrent_streams = args.number::<u32>("max_concurrent_streams", &args.max_concurrent_streams, 1, p);
        let redis_timeout_ms = args.number::<u64>("redis_timeout_ms", &args.redis_timeout_ms, 1, p);
        let redis_wait_replicas = args.number::<u32>("redis_wait_replicas", &args.redis_wait_replicas, 0, p);
        let redis_wait_timeout_ms = args.number::<u64>("redis_wait_timeout_ms", &args.redis_wait_timeout_ms, 0, p);
        let startup_wait_secs = args.number::<u64>("redis_startup_wait_secs", &args.redis_startup_wait_secs, 0, p);
        let feed_retention = args.number::<u64>("feed_retention", &args.feed_retention, 1, p);
        let audit_export_retention = args.number::<u64>("audit_export_retention", &args.audit_export_retention, 1, p);
        let memory_audit_retention = args.number::<usize>("memory_audit_retention", &args.memory_audit_retention, 1, p);
        if let Some(StoreConfig::Redis(redis)) = store.as_mut() {
            redis.timeout = Duration::from_millis(redis_timeout_ms);
            redis.wait_replicas = redis_wait_replicas;
            redis.wait_timeout = Duration::from_millis(redis_wait_timeout_ms);
            redis.startup_wait = Duration::from_secs(startup_wait_secs);
            redis.feed_retention = feed_retention;
            redis.audit_export_retention = audit_export_retention;
        }
        let regions = match &args.regions {
            None => Some(RegionDirectory::default_directory()),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}={}: {e}", args.name("regions"), path.display()))
                .and_then(|json| {
                    RegionDirectory::from_json(&json)
                        .map_err(|e| format!("{}={}: {e}", args.name("regions"), path.display()))
                })
                .map_err(|e| problems.push(e))
                .ok(),
        };
        let pointer_types = match &args.pointer_types {
            None => Some(PointerTypeCatalogue::default_catalogue()),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}={}: {e}", args.name("pointer_types"), path.display()))
                .and_then(|json| {
                    PointerTypeCatalogue::from_json(&json)
                        .map_err(|e| format!("{}={}: {e}", args.name("pointer_types"), path.display()))
                })
                .map_err(|e| problems.push(e))
                .ok(),
        };
        let limits = limits_config(&args, &mut problems);
        let admin_listen = AdminConfig::parse_listen(&args.admin_listen)
            .map_err(|e| format!("{}={:?}: {e}", args.name("admin_listen"), args.admin_listen))
            .and_then(|admin| match admin {
                Some(admin) if Some(admin) == listen && admin.port() != 0 => {
                    Err(format!("{}={admin}: the same address as {}", args.name("admin_listen"), args.name("listen")))
                }
                admin => Ok(admin),
            })
            .map_err(|e| problems.push(e))
            .unwrap_or_default();
        let fhir_listen =
            fhir_listen::address(&args, listen, auth.as_ref()).map_err(|e| problems.push(e)).unwrap_or_default();
        let node = node_config(&args, regions.as_ref()).map_err(|e| problems.extend(e)).ok();
        let otlp = otlp::otlp_config(&args, node.as_ref()).map_err(|e| problems.extend(e)).unwrap_or_default();
        match (listen, store, regions, pointer_types, auth, node) {
            (Some(listen), Some(store), Some(regions), Some(pointer_types), Some(auth), Some(node))
                if problems.is_empty() =>
            {
                Ok(Self {
                    listen,
                    auth,
                    node,
                    store,
                    reference: ReferenceData { regions, pointer_types },
                    shutdown_grace: Duration::from_secs(shutdown_grace_secs),
                    request_timeout: Duration::from_millis(request_timeout_ms),
                    max_concurrent_streams,
                    limits: limits.config,
                    admin: AdminConfig {
                        listen: admin_listen,
                        connections: ConnectionLimits::admin(
                            limits.admin_max_connections,
                            limits.config.connections.handshake_timeout,
                        ),
                        ..AdminConfig::default()
                    },
                    fhir: FhirConfig { listen: fhir_listen, ..FhirConfig::default() },
                    memory_audit_retention,
                    otlp,
                })
            }
            _ => Err(ConfigError(problems)),
        }
    }
}

/// The node's part in a federation, from the flags. The region codes are checked against the
/// directory when it loaded (a broken directory is reported on its own).
fn node_config(args: &ServeArgs, directory: Option<&RegionDirectory>) -> Result<NodeConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut regions = BTreeSet::new();
    for code in args.node_regions.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match directory.map(|directory| directory.parse_code(code)) {
            Some(Ok(region)) => {
                regions.insert(region);
            }
            Some(Err(e)) => problems.push(format!("{}: {code:?} {e}", args.name("node_regions"))),
            None => {}
        }
    }
    let national_index = match args.federation.trim() {
        "off" | "" => false,
        "national" => true,
        other => {
            problems.push(format!("{}={other:?}: expected `off` or `national`", args.name("federation")));
            false
        }
    };
    if national_index && !regions.is_empty() {
        problems.push(format!(
            "{}=national is for the national node: leave {} empty",
            args.name("federation"),
            args.name("node_regions")
        ));
    }
    let peer_token = match &args.peer_token_file {
        Some(path) => read(path, &args.name("peer_token_file"))
            .map(|t| String::from_utf8_lossy(&t).trim().to_string())
            .map_err(|e| problems.push(e))
            .ok(),
        None => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NodeConfig { regions: (!regions.is_empty()).then_some(regions), national_index, peer_token })
}

fn read(path: &Path, name: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{name}={}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Wrapper::command()
            .try_get_matches_from(std::iter::once("nrl").chain(args.iter().copied()))
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut wrapper = Wrapper::from_arg_matches(&matches).map_err(|e| ConfigError(vec![e.to_string()]))?;
        wrapper.serve.origins = Origins::of(&matches);
        ServerConfig::try_from(wrapper.serve)
    }

    #[test]
    fn defaults_are_loopback_and_memory() {
        let config = parse(&[]).expect("defaults are valid");
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.store, StoreConfig::Memory);
        assert_eq!(config.reference.regions.len(), 45);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(&[
            "--listen",
            "0.0.0.0:50051",
            "--store",
            "cassandra://x",
            "--regions",
            "/nonexistent/regions.json",
            "--request-timeout-ms",
            "0",
        ])
        .expect_err("invalid");
        assert_eq!(err.0.len(), 4, "{err}");

        assert!(err.to_string().contains(ENV_JWT_PUBLIC_KEY_FILE), "{err}");
    }

    #[test]
    fn every_bad_number_is_reported_with_the_others_naming_the_flag() {
        let err = parse(&[
            "--request-timeout-ms",
            "abc",
            "--max-concurrent-streams",
            "0",
            "--memory-audit-retention",
            "-1",
            "--redis-wait-replicas",
            "5000000000",
            "--shutdown-grace-secs",
            "99999999999999999999999999999999999999999",
            "--federation",
            "bogus",
        ])
        .expect_err("invalid");
        assert_eq!(
            err.0,
            [
                r#"--shutdown-grace-secs="99999999999999999999999999999999999999999": is too large"#,
                r#"--request-timeout-ms="abc": is not a whole number"#,
                r#"--max-concurrent-streams="0": must be at least 1"#,
                r#"--redis-wait-replicas="5000000000": is too large"#,
                r#"--memory-audit-retention="-1": must be at least 1"#,
                r#"--federation="bogus": expected `off` or `national`"#,
            ]
        );
        let config = parse(&["--request-timeout-ms", " 2500 ", "--max-concurrent-streams", "8"]).expect("valid");
        assert_eq!((config.request_timeout, config.max_concurrent_streams), (Duration::from_millis(2500), 8));
    }

    #[test]
    fn a_setting_not_given_is_named_both_ways() {
        let err = parse(&["--listen", "0.0.0.0:50051", "--admin-listen", "off"]).expect_err("remote without auth");
        assert!(
            err.to_string().contains("Configure --jwt-public-key-file/NRL_JWT_PUBLIC_KEY_FILE (or --jwt-hs256"),
            "{err}"
        );
    }

    #[test]
    fn redis_urls_select_the_redis_store_and_never_echo_passwords() {
        let config =
            parse(&["--store", "redis+cluster://h1:7000,h2:7001", "--redis-wait-replicas", "1"]).expect("valid");
        match config.store {
            StoreConfig::Redis(redis) => {
                assert!(redis.cluster);
                assert_eq!(redis.wait_replicas, 1);
                assert_eq!(redis.timeout, Duration::from_millis(1000), "default timeout is at most 1 s");
            }
            other => panic!("expected redis, got {other:?}"),
        }
        let err = parse(&["--store", "mongodb://:hunter2@h:1"]).expect_err("unknown scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn admin_listener_is_on_loopback_by_default_and_can_be_turned_off() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.admin.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9090))));
        for off in ["", "off"] {
            assert_eq!(parse(&["--admin-listen", off]).expect("valid").admin.listen, None, "{off:?}");
        }
        assert!(parse(&["--admin-listen", "0.0.0.0:9090"]).is_ok(), "no patient data: no authentication needed");
        let err = parse(&["--admin-listen", "nine"]).expect_err("not an address");
        assert!(err.to_string().contains("--admin-listen=\"nine\""), "{err}");
        let err = parse(&["--admin-listen", "127.0.0.1:50051"]).expect_err("clashes with the gRPC port");
        assert!(err.to_string().contains(ENV_LISTEN), "{err}");
    }

    #[test]
    fn connection_and_call_limits_have_documented_defaults_and_every_bad_one_is_reported() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(config.limits.max_in_flight, 512);
        assert_eq!(config.limits.connections.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.admin.connections.max_connections, 64);
        let config = parse(&["--handshake-timeout-ms", "250", "--admin-max-connections", "8"]).expect("valid");
        assert_eq!(
            config.admin.connections.handshake_timeout,
            Duration::from_millis(250),
            "shared with the admin listener"
        );
        assert_eq!(config.admin.connections.max_connections, 8);
        let err = parse(&[
            "--max-connections",
            "0",
            "--idle-timeout-ms",
            "soon",
            "--max-in-flight",
            "-1",
            "--max-metadata-bytes",
            "100",
            "--max-header-list-bytes",
            "50",
        ])
        .expect_err("invalid");
        assert_eq!(
            err.0,
            [
                r#"--max-connections="0": must be at least 1"#,
                r#"--idle-timeout-ms="soon": is not a whole number"#,
                r#"--max-in-flight="-1": must be at least 1"#,
                r#"--max-metadata-bytes="100": must be at least 1024"#,
                r#"--max-header-list-bytes="50": must be at least --max-metadata-bytes (1024), or calls over that get HTTP 431 instead of a status"#,
            ]
        );
    }

    #[test]
    fn remote_listen_needs_authentication() {
        let dir = std::env::temp_dir().join(format!("nrl-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("write secret");
        let secret = secret.to_string_lossy().to_string();
        let config = parse(&["--listen", "0.0.0.0:50051", "--jwt-hs256-secret-file", &secret]).expect("valid");
        assert!(matches!(config.auth.authenticator, Authenticator::Enabled { jwt: Some(_), mtls: None }));
        std::fs::write(dir.join("short"), "short").expect("write");
        let short = dir.join("short").to_string_lossy().to_string();
        let err = parse(&["--jwt-hs256-secret-file", &short]).expect_err("short secret");
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let err = parse(&["--tls-client-ca-file", &secret]).expect_err("CA without clients file");
        assert!(err.to_string().contains(ENV_MTLS_CLIENTS_FILE), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tls_files_are_checked_before_serving_each_problem_naming_its_flag() {
        let dir = std::env::temp_dir().join(format!("nrl-config-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.to_string_lossy().to_string()
        };
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let ca = rcgen::generate_simple_self_signed(vec!["client CA".to_string()]).expect("CA");
        let cert = write("cert.pem", &server.cert.pem());
        let key = write("key.pem", &server.signing_key.serialize_pem());
        let ca = write("ca.pem", &ca.cert.pem());
        let clients =
            write("clients.json", r#"{"clients": [{"common_name": "a", "org": "RR8", "roles": ["producer"]}]}"#);
        let garbage = write("garbage.pem", "not PEM at all");

        let config = parse(&["--tls-cert-file", &cert, "--tls-key-file", &key]).expect("TLS");
        let tls = config.auth.tls.expect("TLS configured");
        assert!(!tls.requests_client_certificates());
        assert_eq!(tls.http().alpn_protocols, vec![b"http/1.1".to_vec()], "the FHIR listener's TLS");
        let mtls = ["--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-client-ca-file", &ca];
        let config = parse(&[&mtls[..], &["--mtls-clients-file", &clients]].concat()).expect("mTLS");
        assert!(config.auth.tls.expect("TLS configured").requests_client_certificates());
        assert!(matches!(config.auth.authenticator, Authenticator::Enabled { jwt: None, mtls: Some(_) }));

        let err = parse(&["--tls-cert-file", &garbage, "--tls-key-file", &key]).expect_err("bad certificate");
        assert!(err.to_string().contains("--tls-cert-file: no PEM certificate"), "{err}");
        let err = parse(&["--tls-cert-file", &cert, "--tls-key-file", &garbage]).expect_err("bad key");
        assert!(err.to_string().contains("--tls-key-file: the key file holds no PEM private key"), "{err}");
        let bad_ca = [&mtls[..4], &["--tls-client-ca-file", &garbage, "--mtls-clients-file", &clients]].concat();
        let err = parse(&bad_ca).expect_err("bad client CA");
        assert!(err.to_string().contains("--tls-client-ca-file: the client CA file"), "{err}");
        let err = parse(&["--tls-client-ca-file", &ca, "--mtls-clients-file", &clients]).expect_err("CA, no TLS");
        let needs = "--tls-client-ca-file needs --tls-cert-file/NRL_TLS_CERT_FILE and --tls-key-file/NRL_TLS_KEY_FILE";
        assert!(err.to_string().contains(needs), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
