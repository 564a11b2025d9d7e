//! The FHIR listener's requests, by interaction and HTTP status: what a dashboard shows beside the
//! gRPC methods. The interaction label is one of a fixed set, never anything from the request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// Every interaction label, in the order of the CapabilityStatement.
pub const INTERACTIONS: [&str; 11] = [
    "read",
    "update",
    "delete",
    "create",
    "create-with-id",
    "search",
    "count",
    "audit-event",
    "capabilities",
    "status",
    "other",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    interaction: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InteractionLabels {
    interaction: &'static str,
}

#[derive(Debug)]
pub struct FhirMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<InteractionLabels, Histogram, fn() -> Histogram>,
}

impl FhirMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "nrl_fhir_requests",
            "FHIR API requests answered, by interaction and HTTP status",
            requests.clone(),
        );
        let duration: Family<InteractionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(super::RPC_BUCKETS.iter().copied()));
        registry.register_with_unit(
            "nrl_fhir_request_duration",
            "FHIR API latency, from the request line to the response headers",
            Unit::Seconds,
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// One request answered. `interaction` must be one of [`INTERACTIONS`].
    pub fn answered(&self, interaction: &'static str, status: u16, took: Duration) {
        self.requests.get_or_create(&RequestLabels { interaction, status }).inc();
        self.duration.get_or_create(&InteractionLabels { interaction }).observe(took.as_secs_f64());
    }
}
