//! ghz JSON config files: which keys ghz accepts, which of them this runner honours, and Go
//! duration strings.
//!
//! The key list is ghz's own (`runner.Config` in bojand/ghz, the struct its `--config` file is
//! loaded into). ghz silently ignores a key it does not know, so a misspelt `"concurency"` would
//! quietly run with the default; here an unknown key is an error.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every key of ghz's config file (`runner.Config`).
pub const GHZ_KEYS: &[&str] = &[
    "proto",
    "protoset",
    "call",
    "cacert",
    "cert",
    "key",
    "skipTLS",
    "skipFirst",
    "cname",
    "authority",
    "insecure",
    "total",
    "async",
    "concurrency",
    "concurrency-schedule",
    "concurrency-start",
    "concurrency-end",
    "concurrency-step",
    "concurrency-step-duration",
    "concurrency-max-duration",
    "connections",
    "rps",
    "duration",
    "duration-stop",
    "max-duration",
    "timeout",
    "data",
    "data-file",
    "binary-file",
    "metadata",
    "metadata-file",
    "stream-interval",
    "output",
    "format",
    "connect-timeout",
    "keepalive",
    "cpus",
    "import-paths",
    "name",
    "tags",
    "reflect-metadata",
    "debug",
    "host",
    "enable-compression",
    "load-schedule",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
];

/// ghz keys this runner does not need: they only affect how ghz finds descriptors (compiled in
/// here), where it writes its report, or are labels.
pub const IGNORED_KEYS: &[&str] = &[
    "proto",
    "protoset",
    "import-paths",
    "output",
    "format",
    "tags",
    "cpus",
    "debug",
    "reflect-metadata",
    "keepalive",
];

/// ghz keys whose behaviour this runner does not implement; a config using them is refused
/// rather than run differently from ghz.
pub const UNSUPPORTED_KEYS: &[&str] = &[
    "cacert",
    "cert",
    "key",
    "skipTLS",
    "cname",
    "authority",
    "async",
    "concurrency-schedule",
    "concurrency-start",
    "concurrency-end",
    "concurrency-step",
    "concurrency-step-duration",
    "concurrency-max-duration",
    "binary-file",
    "stream-interval",
    "enable-compression",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
];

/// What ghz does with calls still in flight when `duration` runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurationStop {
    /// Cancel them and report them as errors (ghz's default).
    Close,
    /// Let them finish and report them.
    Wait,
    /// Cancel them and leave them out of the report.
    Ignore,
}

/// The settings of one config file, checked and typed, before the call and data are resolved
/// against the descriptors.
#[derive(Debug, Clone)]
pub struct GhzConfig {
    /// The file it came from (for messages), if any.
    pub source: Option<PathBuf>,
    pub name: Option<String>,
    pub call: String,
    pub host: String,
    pub insecure: bool,
    pub total: u64,
    pub concurrency: u64,
    pub connections: u64,
    pub rps: u64,
    pub duration: Option<Duration>,
    pub duration_stop: DurationStop,
    pub max_duration: Option<Duration>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub skip_first: u64,
    pub data: Option<Value>,
    pub data_file: Option<PathBuf>,
    pub metadata: Vec<(String, String)>,
    pub metadata_file: Option<PathBuf>,
    pub load_schedule: String,
}

/// ghz's defaults.
pub const DEFAULT_TOTAL: u64 = 200;
pub const DEFAULT_CONCURRENCY: u64 = 50;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl GhzConfig {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let mut config = Self::from_value(&value).map_err(|e| format!("{}: {e}", path.display()))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Checks every key and value; the error lists every problem found.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let object = value.as_object().ok_or("a ghz config is a JSON object")?;
        let mut problems = Vec::new();
        for key in object.keys() {
            if !GHZ_KEYS.contains(&key.as_str()) {
                problems.push(format!("{key:?} is not a ghz config key"));
            } else if UNSUPPORTED_KEYS.contains(&key.as_str()) {
                problems.push(format!("{key:?} is a ghz key that nrl-load does not implement"));
            }
        }
        let mut fields = Fields { object, problems: &mut problems };
        let call = fields.string("call").unwrap_or_default();
        let host = fields.string("host").unwrap_or_default();
        let name = fields.string("name");
        let insecure = fields.boolean("insecure").unwrap_or(false);
        let total = fields.uint("total").unwrap_or(DEFAULT_TOTAL);
        let concurrency = fields.uint("concurrency").unwrap_or(DEFAULT_CONCURRENCY);
        let connections = fields.uint("connections").unwrap_or(1);
        let rps = fields.uint("rps").unwrap_or(0);
        let skip_first = fields.uint("skipFirst").unwrap_or(0);
        let duration = fields.duration("duration").filter(|d| !d.is_zero());
        let max_duration = fields.duration("max-duration").filter(|d| !d.is_zero());
        let timeout = fields.duration("timeout").unwrap_or(DEFAULT_TIMEOUT);
        let connect_timeout = fields.duration("connect-timeout").unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let duration_stop = match fields.string("duration-stop").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("close") => DurationStop::Close,
            Some("wait") => DurationStop::Wait,
            Some("ignore") => DurationStop::Ignore,
            Some(other) => {
                problems.push(format!("\"duration-stop\": {other:?} is not close, wait or ignore"));
                DurationStop::Close
            }
        };
        let mut fields = Fields { object, problems: &mut problems };
        let load_schedule = fields.string("load-schedule").unwrap_or_else(|| "const".to_string());
        let data_file = fields.string("data-file").map(PathBuf::from);
        let metadata_file = fields.string("metadata-file").map(PathBuf::from);
        let metadata = match object.get("metadata") {
            None => Vec::new(),
            Some(value) => string_map(value).unwrap_or_else(|e| {
                problems.push(format!("\"metadata\": {e}"));
                Vec::new()
            }),
        };
        let data = object.get("data").cloned();
        if let Some(data) = &data {
            if let Err(e) = check_data_shape(data) {
                problems.push(format!("\"data\": {e}"));
            }
        }

        if call.is_empty() {
            problems.push("\"call\" is required".into());
        }
        if host.is_empty() {
            problems.push("\"host\" is required (host:port)".into());
        }
        if concurrency == 0 {
            problems.push("\"concurrency\" must be at least 1".into());
        }
        if connections == 0 || connections > concurrency {
            problems.push(format!("\"connections\" must be 1 to concurrency ({concurrency})"));
        }
        if duration.is_none() && total < concurrency {
            problems.push(format!("\"total\" ({total}) cannot be less than \"concurrency\" ({concurrency})"));
        }
        if load_schedule != "const" {
            problems.push(format!("\"load-schedule\": only const is implemented, not {load_schedule:?}"));
        }
        if data.is_some() && data_file.is_some() {
            problems.push("give \"data\" or \"data-file\", not both".into());
        }
        if !insecure {
            problems
                .push("\"insecure\": true is required: nrl-load speaks plaintext gRPC (loopback load tests)".into());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Self {
            source: None,
            name,
            call,
            host,
            insecure,
            total,
            concurrency,
            connections,
            rps,
            duration,
            duration_stop,
            max_duration,
            timeout: (!timeout.is_zero()).then_some(timeout),
            connect_timeout,
            skip_first,
            data,
            data_file,
            metadata,
            metadata_file,
            load_schedule,
        })
    }

    /// The scenario's name: `name`, else the file stem.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.source
                .as_deref()
                .and_then(Path::file_stem)
                .map_or_else(|| self.call.clone(), |s| s.to_string_lossy().into_owned())
        })
    }

    /// Reads the data (inline or `data-file`) as a list of message JSON values. `data_dir`, when
    /// given, replaces the directory of a relative `data-file` (ghz reads it relative to the
    /// working directory).
    pub fn load_data(&self, data_dir: Option<&Path>) -> Result<Vec<Value>, String> {
        let value = match (&self.data, &self.data_file) {
            (Some(data), _) => data.clone(),
            (None, Some(file)) => {
                let path = resolve(file, data_dir);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("\"data-file\" {}: {e} (run `nrl-load prepare` first?)", path.display()))?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("\"data-file\" {}: not valid JSON: {e}", path.display()))?;
                check_data_shape(&value).map_err(|e| format!("\"data-file\" {}: {e}", path.display()))?;
                value
            }
            (None, None) => Value::Object(Map::new()),
        };
        Ok(match value {
            Value::Array(items) => items,
            other => vec![other],
        })
    }

    /// `metadata` plus the entries of `metadata-file` (ghz: `metadata` wins on a clash).
    pub fn load_metadata(&self, data_dir: Option<&Path>) -> Result<Vec<(String, String)>, String> {
        let mut entries = match &self.metadata_file {
            Some(file) => {
                let path = resolve(file, data_dir);
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("\"metadata-file\" {}: {e}", path.display()))?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("\"metadata-file\" {}: not valid JSON: {e}", path.display()))?;
                string_map(&value).map_err(|e| format!("\"metadata-file\" {}: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        for (key, value) in &self.metadata {
            entries.retain(|(k, _)| k != key);
            entries.push((key.clone(), value.clone()));
        }
        Ok(entries)
    }
}

fn resolve(file: &Path, data_dir: Option<&Path>) -> PathBuf {
    match (data_dir, file.is_relative(), file.file_name()) {
        (Some(dir), true, Some(name)) => dir.join(name),
        _ => file.to_path_buf(),
    }
}

/// ghz's `checkData`: an object, or a non-empty array of objects.
fn check_data_shape(data: &Value) -> Result<(), String> {
    match data {
        Value::Object(_) => Ok(()),
        Value::Array(items) if items.is_empty() => Err("an array of messages must not be empty".into()),
        Value::Array(items) if items.iter().all(Value::is_object) => Ok(()),
        Value::Array(_) => Err("every element of the array must be a JSON object (one message)".into()),
        _ => Err("must be a JSON object (one message) or an array of them".into()),
    }
}

fn string_map(value: &Value) -> Result<Vec<(String, String)>, String> {
    let object = value.as_object().ok_or("must be a JSON object of strings")?;
    object
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(format!("{k:?} must be a string")),
        })
        .collect()
}

struct Fields<'a> {
    object: &'a Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl Fields<'_> {
    fn string(&mut self, key: &str) -> Option<String> {
        match self.object.get(key)? {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.problems.push(format!("{key:?} must be a string"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.object.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.problems.push(format!("{key:?} must be true or false"));
                None
            }
        }
    }

    fn uint(&mut self, key: &str) -> Option<u64> {
        match self.object.get(key)? {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
            _ => {
                self.problems.push(format!("{key:?} must be a non-negative integer"));
                None
            }
        }
    }

    /// ghz reads durations as Go duration strings ("10s", "1m30s", "500ms").
    fn duration(&mut self, key: &str) -> Option<Duration> {
        match self.object.get(key)? {
            Value::String(s) => match parse_go_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problems.push(format!("{key:?}: {e}"));
                    None
                }
            },
            _ => {
                self.problems.push(format!("{key:?} must be a Go duration string such as \"10s\""));
                None
            }
        }
    }
}

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with units ns, us (µs),
/// ms, s, m, h, e.g. "300ms", "1.5h", "2h45m". "0" alone is zero. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a Go duration (e.g. \"500ms\", \"10s\", \"1m30s\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "-1s", "10 s", "1d", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    fn base() -> Value {
        json!({"call": "grpc.health.v1.Health/Check", "host": "127.0.0.1:50051", "insecure": true,
               "total": 100, "concurrency": 10})
    }

    #[test]
    fn a_minimal_config_loads_with_ghz_defaults() {
        let config = GhzConfig::from_value(&base()).expect("valid");
        assert_eq!(config.connections, 1);
        assert_eq!(config.timeout, Some(DEFAULT_TIMEOUT));
        assert_eq!(config.duration_stop, DurationStop::Close);
    }

    #[test]
    fn unknown_and_unimplemented_keys_and_bad_values_are_all_reported() {
        let mut value = base();
        value["concurency"] = json!(5);
        value["async"] = json!(true);
        value["duration"] = json!(10);
        value["connections"] = json!(11);
        let error = GhzConfig::from_value(&value).expect_err("invalid");
        assert!(error.contains("\"concurency\" is not a ghz config key"), "{error}");
        assert!(error.contains("\"async\""), "{error}");
        assert!(error.contains("\"duration\" must be a Go duration"), "{error}");
        assert!(error.contains("\"connections\""), "{error}");
    }

    #[test]
    fn data_must_be_an_object_or_a_non_empty_array_of_objects() {
        for bad in [json!([]), json!([1]), json!("x")] {
            let mut value = base();
            value["data"] = bad;
            assert!(GhzConfig::from_value(&value).is_err());
        }
    }
}
