//! Runs one scenario: `concurrency` workers over `connections` HTTP/2 connections, each making
//! one call at a time until `total` calls have been made or `duration` has passed, optionally
//! paced to `rps` in total. Every worker keeps its own tally; they are merged at the end.

use super::config::{DurationStop, GhzConfig};
use super::report::{Report, RunOptions, Tally};
use super::schema::{Method, Payload, RawCodec};
use super::template::{CallData, Template};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Command-line settings that replace a config's (as ghz's flags do).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub host: Option<String>,
    pub concurrency: Option<u64>,
    pub connections: Option<u64>,
    pub total: Option<u64>,
    /// Replaces `duration` (and so makes `total` ignored).
    pub duration: Option<Duration>,
    pub rps: Option<u64>,
    pub timeout: Option<Duration>,
    /// Added to (or replacing) the config's metadata, e.g. `authorization`.
    pub metadata: Vec<(String, String)>,
    /// Where relative `data-file`/`metadata-file` names are looked up instead of the working
    /// directory.
    pub data_dir: Option<PathBuf>,
}

impl Overrides {
    /// Applies the overrides to a config, re-checking what they may break.
    pub fn apply(&self, mut config: GhzConfig) -> Result<GhzConfig, String> {
        if let Some(name) = &self.name {
            config.name = Some(name.clone());
        }
        if let Some(host) = &self.host {
            config.host = host.clone();
        }
        if let Some(c) = self.concurrency {
            config.concurrency = c;
            config.connections = config.connections.min(c);
        }
        if let Some(c) = self.connections {
            config.connections = c;
        }
        if let Some(n) = self.total {
            config.total = n;
            config.duration = None;
        }
        if let Some(d) = self.duration {
            config.duration = Some(d);
        }
        if let Some(r) = self.rps {
            config.rps = r;
        }
        if let Some(t) = self.timeout {
            config.timeout = (!t.is_zero()).then_some(t);
        }
        for (key, value) in &self.metadata {
            config.metadata.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
            config.metadata.push((key.clone(), value.clone()));
        }
        if config.concurrency == 0 || config.connections == 0 || config.connections > config.concurrency {
            return Err(format!(
                "concurrency {} and connections {}: need 1 <= connections <= concurrency",
                config.concurrency, config.connections
            ));
        }
        if config.duration.is_none() && config.total < config.concurrency {
            return Err(format!("total {} cannot be less than concurrency {}", config.total, config.concurrency));
        }
        Ok(config)
    }
}

/// A metadata value: fixed, or rendered per call.
#[derive(Debug, Clone)]
enum MetaValue {
    Static(AsciiMetadataValue),
    Template(Template),
}

/// A config resolved against the descriptors: ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub method: Method,
    pub host: String,
    pub concurrency: u64,
    pub connections: u64,
    /// `None` when bounded by `duration`.
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub duration_stop: DurationStop,
    pub max_duration: Option<Duration>,
    pub rps: u64,
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub skip_first: u64,
    pub payloads: Vec<Payload>,
    metadata: Vec<(AsciiMetadataKey, MetaValue)>,
    metadata_keys: Vec<String>,
}

impl Scenario {
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, String> {
        let config = GhzConfig::from_file(path)?;
        Self::from_config(config, overrides).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Resolves the call, checks every data message against the request type (after template
    /// expansion) and every metadata entry.
    pub fn from_config(config: GhzConfig, overrides: &Overrides) -> Result<Self, String> {
        let config = overrides.apply(config)?;
        let method = Method::resolve(&config.call)?;
        let data_dir = overrides.data_dir.as_deref();
        let messages = config.load_data(data_dir)?;
        let payloads = messages
            .iter()
            .enumerate()
            .map(|(i, json)| Payload::build(&method, json).map_err(|e| format!("data[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = Vec::new();
        let mut metadata_keys = Vec::new();
        for (key, value) in config.load_metadata(data_dir)? {
            let lower = key.to_ascii_lowercase();
            if lower.ends_with("-bin") {
                return Err(format!("metadata {key:?}: binary metadata is not supported"));
            }
            let name = AsciiMetadataKey::from_bytes(lower.as_bytes())
                .map_err(|_| format!("metadata {key:?}: not a valid header name"))?;
            let template = Template::parse(&value).map_err(|e| format!("metadata {key:?}: {e}"))?;
            let value = if template.is_static() {
                MetaValue::Static(value.parse().map_err(|_| format!("metadata {key:?}: value is not printable ASCII"))?)
            } else {
                MetaValue::Template(template)
            };
            metadata_keys.push(lower);
            metadata.push((name, value));
        }
        Ok(Self {
            name: config.display_name(),
            method,
            host: config.host,
            concurrency: config.concurrency,
            connections: config.connections,
            total: config.duration.is_none().then_some(config.total),
            duration: config.duration,
            duration_stop: config.duration_stop,
            max_duration: config.max_duration,
            rps: config.rps,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            skip_first: config.skip_first,
            payloads,
            metadata,
            metadata_keys,
        })
    }

    /// The request message and metadata of call number `n`, as [`run`] sends them (data message
    /// `n` mod their number, templates rendered for request number `n`): what `nrl-load frame`
    /// hands to load tools that cannot read a config (h2load).
    pub fn request(&self, n: u64) -> Result<(bytes::Bytes, Vec<(String, String)>), String> {
        let call = CallData::new("w0", n, &self.method.names);
        let payload = &self.payloads[(n % self.payloads.len() as u64) as usize];
        let message = payload.bytes(&self.method, &call)?;
        let metadata = self
            .metadata
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    MetaValue::Static(v) => v.to_str().map_err(|_| format!("metadata {key}: not ASCII"))?.to_string(),
                    MetaValue::Template(t) => t.render(&call),
                };
                Ok((key.as_str().to_string(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok((message, metadata))
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            call: self.method.names.fully_qualified_name.clone(),
            host: self.host.clone(),
            concurrency: self.concurrency,
            connections: self.connections,
            total: self.total.unwrap_or(0),
            duration: self.duration.map_or(0, |d| d.as_nanos() as u64),
            rps: self.rps,
            timeout: self.timeout.map_or(0, |d| d.as_nanos() as u64),
            data_messages: self.payloads.len(),
            metadata_keys: self.metadata_keys.clone(),
        }
    }
}

/// Opens `scenario.connections` connections and runs the scenario to the end.
pub async fn run(scenario: &Scenario) -> Result<Report, String> {
    let address =
        if scenario.host.contains("://") { scenario.host.clone() } else { format!("http://{}", scenario.host) };
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|e| format!("host {:?}: {e}", scenario.host))?
        .connect_timeout(scenario.connect_timeout)
        .tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..scenario.connections {
        channels.push(endpoint.connect().await.map_err(|e| format!("cannot connect to {address}: {e}"))?);
    }
    let path: http::uri::PathAndQuery =
        scenario.method.path.parse().map_err(|e| format!("method path {}: {e}", scenario.method.path))?;

    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = Instant::now();
    let bound = [scenario.duration, scenario.max_duration].into_iter().flatten().min();
    let shared = Arc::new(Shared {
        scenario: scenario.clone(),
        path,
        start,
        stop_at: bound.map(|d| start + d),
        next: AtomicU64::new(0),
        completed: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..scenario.concurrency)
        .map(|id| {
            let channel = channels[(id % scenario.connections) as usize].clone();
            tokio::spawn(worker(id, shared.clone(), channel))
        })
        .collect();
    let mut tally = Tally::new();
    for worker in workers {
        let worker_tally = worker.await.map_err(|e| format!("a worker failed: {e}"))?;
        tally.merge(&worker_tally);
    }
    let wall = start.elapsed();
    Ok(Report::new(scenario.name.clone(), date, scenario.options(), wall, &tally))
}

struct Shared {
    scenario: Scenario,
    path: http::uri::PathAndQuery,
    start: Instant,
    /// When `duration` (or `max-duration`) runs out.
    stop_at: Option<Instant>,
    /// The next request number (ghz's RequestNumber: 0, 1, 2, …, shared by all workers).
    next: AtomicU64,
    /// Calls finished so far, for `skipFirst`.
    completed: AtomicU64,
}

enum Outcome {
    Ok,
    Failed(Code, String),
    /// Cut off by the end of `duration`.
    Stopped,
}

async fn worker(id: u64, shared: Arc<Shared>, channel: Channel) -> Tally {
    let scenario = &shared.scenario;
    let worker_id = format!("w{id}");
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut tally = Tally::new();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if scenario.total.is_some_and(|total| n >= total) {
            break;
        }
        if scenario.rps > 0 {
            let due = shared.start + Duration::from_secs_f64(n as f64 / scenario.rps as f64);
            if shared.stop_at.is_some_and(|stop| due >= stop) {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        if shared.stop_at.is_some_and(|stop| Instant::now() >= stop) {
            break;
        }
        let call = CallData::new(&worker_id, n, &scenario.method.names);
        let payload = &scenario.payloads[(n % scenario.payloads.len() as u64) as usize];
        let started = Instant::now();
        let outcome = match build_request(scenario, payload, &call) {
            Ok(request) => call_once(&shared, &mut grpc, request).await,
            Err(e) => Outcome::Failed(Code::InvalidArgument, format!("nrl-load could not build the request: {e}")),
        };
        let latency = started.elapsed();
        let counted = shared.completed.fetch_add(1, Ordering::Relaxed) >= scenario.skip_first;
        match outcome {
            Outcome::Ok if counted => tally.ok(latency),
            Outcome::Failed(code, message) if counted => tally.error(code, &message),
            Outcome::Stopped => {
                if scenario.duration_stop == DurationStop::Close && counted {
                    tally.error(Code::Unavailable, "transport is closing");
                }
                break;
            }
            _ => {}
        }
    }
    tally
}

fn build_request(
    scenario: &Scenario,
    payload: &Payload,
    call: &CallData<'_>,
) -> Result<tonic::Request<bytes::Bytes>, String> {
    let mut request = tonic::Request::new(payload.bytes(&scenario.method, call)?);
    let metadata = request.metadata_mut();
    for (key, value) in &scenario.metadata {
        let value = match value {
            MetaValue::Static(v) => v.clone(),
            MetaValue::Template(t) => {
                t.render(call).parse().map_err(|_| format!("metadata {key}: rendered value is not ASCII"))?
            }
        };
        metadata.insert(key.clone(), value);
    }
    if let Some(timeout) = scenario.timeout {
        request.set_timeout(timeout);
    }
    Ok(request)
}

async fn call_once(
    shared: &Shared,
    grpc: &mut tonic::client::Grpc<Channel>,
    request: tonic::Request<bytes::Bytes>,
) -> Outcome {
    let scenario = &shared.scenario;
    let path = shared.path.clone();
    let call = async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        grpc.unary::<_, bytes::Bytes, _>(request, path, RawCodec).await
    };
    let timed = async {
        match scenario.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("context deadline exceeded"))),
            None => call.await,
        }
    };
    let result = match (shared.stop_at, scenario.duration_stop) {
        (Some(stop), DurationStop::Close | DurationStop::Ignore) => {
            tokio::select! {
                result = timed => Some(result),
                () = tokio::time::sleep_until(stop) => None,
            }
        }
        _ => Some(timed.await),
    };
    match result {
        None => Outcome::Stopped,
        Some(Ok(_)) => Outcome::Ok,
        Some(Err(status)) => Outcome::Failed(status.code(), status.message().to_string()),
    }
}
