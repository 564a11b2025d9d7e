//! The national node's view of each regional feed it follows: is it connected, how many changes
//! it applied, how far behind the region it is, and how often it had to resynchronise. Labelled by
//! region code only (bounded by the region directory).

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionCodeLabels {
    region: String,
    code: &'static str,
}

type SecondsGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Default)]
pub struct FederationMetrics {
    connected: Family<RegionLabels, Gauge>,
    applied: Family<RegionLabels, Counter>,
    resyncs: Family<RegionLabels, Counter>,
    failures: Family<RegionCodeLabels, Counter>,
    last_applied: Family<RegionLabels, SecondsGauge>,
    lag: Family<RegionLabels, SecondsGauge>,
}

impl FederationMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "nrl_federation_connected",
            "1 while the national node is following the region's change feed, else 0",
            metrics.connected.clone(),
        );
        registry.register(
            "nrl_federation_changes_applied",
            "Changes from the region's feed applied to the national index",
            metrics.applied.clone(),
        );
        registry.register(
            "nrl_federation_resyncs",
            "Times the region was resynchronised from a snapshot (no cursor, or the feed lost ours)",
            metrics.resyncs.clone(),
        );
        registry.register(
            "nrl_federation_follow_failures",
            "Times following the region's feed failed and was retried, by error code",
            metrics.failures.clone(),
        );
        registry.register_with_unit(
            "nrl_federation_last_applied_timestamp",
            "When the last change from the region was applied (unix time)",
            Unit::Seconds,
            metrics.last_applied.clone(),
        );
        registry.register_with_unit(
            "nrl_federation_lag",
            "How old the last applied pointer change was when the national index applied it",
            Unit::Seconds,
            metrics.lag.clone(),
        );
        metrics
    }

    fn labels(region: &str) -> RegionLabels {
        RegionLabels { region: region.to_string() }
    }

    /// The follower is (or is no longer) reading the region's feed.
    pub fn set_connected(&self, region: &str, connected: bool) {
        self.connected.get_or_create(&Self::labels(region)).set(i64::from(connected));
    }

    /// A change was applied; `changed_at` is when the region made it, where the change says.
    pub fn applied(&self, region: &str, changed_at: Option<DateTime<Utc>>) {
        let labels = Self::labels(region);
        let now = Utc::now();
        self.applied.get_or_create(&labels).inc();
        self.last_applied.get_or_create(&labels).set(now.timestamp_millis() as f64 / 1000.0);
        if let Some(at) = changed_at {
            let lag = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
            self.lag.get_or_create(&labels).set(lag);
        }
    }

    pub fn resynced(&self, region: &str) {
        self.resyncs.get_or_create(&Self::labels(region)).inc();
    }

    pub fn failed(&self, region: &str, code: &'static str) {
        self.failures.get_or_create(&RegionCodeLabels { region: region.to_string(), code }).inc();
    }
}
