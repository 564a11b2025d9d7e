//! What a run measured, summarised like ghz's summary output and serialised like its JSON report
//! (durations in nanoseconds, `statusCodeDistribution` keyed by Go's code names).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The percentiles reported (ghz reports 10 to 99; 99.9 is added for the tail).
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Latencies are recorded in microseconds: 3 significant figures of a value up to an hour.
pub const HISTOGRAM_SIGFIGS: u8 = 3;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPoint {
    pub percentage: f64,
    /// Nanoseconds.
    pub latency: u64,
}

/// The scenario settings the run used, for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOptions {
    pub call: String,
    pub host: String,
    pub concurrency: u64,
    pub connections: u64,
    /// Requests asked for (0 when the run was bounded by `duration`).
    pub total: u64,
    /// Nanoseconds; 0 when bounded by `total`.
    pub duration: u64,
    pub rps: u64,
    /// Nanoseconds per call; 0 for none.
    pub timeout: u64,
    pub data_messages: usize,
    pub metadata_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub name: String,
    /// RFC 3339 start time.
    pub date: String,
    pub options: RunOptions,
    /// Calls made (OK and not).
    pub count: u64,
    /// Calls that did not end with grpc-status OK (including timeouts and transport failures).
    pub errors: u64,
    /// Wall time of the run in nanoseconds.
    pub total: u64,
    /// Nanoseconds; over OK calls only (ghz's default, without --count-errors).
    pub average: u64,
    pub fastest: u64,
    pub slowest: u64,
    /// count / total.
    pub rps: f64,
    pub latency_distribution: Vec<LatencyPoint>,
    pub status_code_distribution: BTreeMap<String, u64>,
    pub error_distribution: BTreeMap<String, u64>,
}

impl Report {
    pub fn new(name: String, date: String, options: RunOptions, wall: Duration, tally: &Tally) -> Self {
        let ok = tally.histogram.len();
        let count = tally.codes.values().sum::<u64>();
        let nanos = |micros: u64| micros.saturating_mul(1000);
        Self {
            name,
            date,
            options,
            count,
            errors: count - tally.codes.get("OK").copied().unwrap_or(0),
            total: wall.as_nanos() as u64,
            average: if ok == 0 { 0 } else { (tally.sum_nanos / u128::from(ok)) as u64 },
            fastest: if ok == 0 { 0 } else { tally.fastest_nanos },
            slowest: tally.slowest_nanos,
            rps: if wall.is_zero() { 0.0 } else { count as f64 / wall.as_secs_f64() },
            latency_distribution: PERCENTILES
                .iter()
                .map(|&p| LatencyPoint {
                    percentage: p,
                    latency: if ok == 0 { 0 } else { nanos(tally.histogram.value_at_quantile(p / 100.0)) },
                })
                .collect(),
            status_code_distribution: tally.codes.clone(),
            error_distribution: tally.errors.clone(),
        }
    }

    /// Latency at `percentage` (one of [`PERCENTILES`]), in nanoseconds.
    pub fn percentile(&self, percentage: f64) -> Option<u64> {
        self.latency_distribution.iter().find(|p| (p.percentage - percentage).abs() < 1e-9).map(|p| p.latency)
    }

    /// ghz's summary layout.
    pub fn summary(&self) -> String {
        let ms = |nanos: u64| format!("{:.2} ms", nanos as f64 / 1e6);
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Name:\t{}", self.name);
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", ms(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", ms(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", ms(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", ms(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        let _ = writeln!(out, "\nLatency distribution:");
        for point in &self.latency_distribution {
            let _ = writeln!(out, "  {} % in {}", point.percentage, ms(point.latency));
        }
        let _ = writeln!(out, "\nStatus code distribution:");
        for (code, n) in &self.status_code_distribution {
            let _ = writeln!(out, "  [{code}]\t{n} responses");
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (error, n) in &self.error_distribution {
                let _ = writeln!(out, "  [{n}]\t{error}");
            }
        }
        out
    }
}

/// How many distinct error texts are kept; the rest are counted under one entry.
const MAX_ERROR_KINDS: usize = 50;

/// One worker's counts, merged into the run's at the end (no sharing while calls are made).
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of OK calls, microseconds.
    pub histogram: Histogram<u64>,
    pub sum_nanos: u128,
    pub fastest_nanos: u64,
    pub slowest_nanos: u64,
    pub codes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        Self {
            // Auto-resizing: a worker's histogram grows only as far as its slowest call.
            histogram: Histogram::new(HISTOGRAM_SIGFIGS).expect("3 significant figures is a valid precision"),
            sum_nanos: 0,
            fastest_nanos: u64::MAX,
            slowest_nanos: 0,
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn ok(&mut self, latency: Duration) {
        let nanos = latency.as_nanos() as u64;
        // Auto-resizing histograms accept any value; record() fails only on u64 overflow.
        let _ = self.histogram.record((nanos / 1000).max(1));
        self.sum_nanos += u128::from(nanos);
        self.fastest_nanos = self.fastest_nanos.min(nanos);
        self.slowest_nanos = self.slowest_nanos.max(nanos);
        *self.codes.entry("OK".to_string()).or_default() += 1;
    }

    pub fn error(&mut self, code: tonic::Code, message: &str) {
        let name = go_code_name(code);
        *self.codes.entry(name.to_string()).or_default() += 1;
        let text = format!("rpc error: code = {name} desc = {message}");
        if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += 1;
        } else {
            *self.errors.entry("(other errors)".to_string()).or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.sum_nanos += other.sum_nanos;
        self.fastest_nanos = self.fastest_nanos.min(other.fastest_nanos);
        self.slowest_nanos = self.slowest_nanos.max(other.slowest_nanos);
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += n;
        }
        for (error, n) in &other.errors {
            *self.errors.entry(error.clone()).or_default() += n;
        }
    }
}

/// Go's `codes.Code.String()`, which ghz uses as the key of its status-code distribution.
pub fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_errors_apart_from_latency() {
        let mut a = Tally::new();
        for ms in 1..=100 {
            a.ok(Duration::from_millis(ms));
        }
        let mut b = Tally::new();
        b.error(tonic::Code::NotFound, "no pointer");
        b.error(tonic::Code::NotFound, "no pointer");
        a.merge(&b);
        let options = RunOptions {
            call: "x".into(),
            host: "h".into(),
            concurrency: 1,
            connections: 1,
            total: 102,
            duration: 0,
            rps: 0,
            timeout: 0,
            data_messages: 1,
            metadata_keys: vec![],
        };
        let report = Report::new("t".into(), "now".into(), options, Duration::from_secs(2), &a);
        assert_eq!(report.count, 102);
        assert_eq!(report.errors, 2);
        assert_eq!(report.status_code_distribution.get("NotFound"), Some(&2));
        assert_eq!(report.error_distribution.get("rpc error: code = NotFound desc = no pointer"), Some(&2));
        assert_eq!(report.fastest, 1_000_000);
        assert_eq!(report.slowest, 100_000_000);
        let p50 = report.percentile(50.0).expect("p50");
        assert!((49_900_000..=50_100_000).contains(&p50), "{p50}");
        assert!((report.rps - 51.0).abs() < 1e-9);
        assert!(report.summary().contains("[NotFound]\t2 responses"));
    }
}
