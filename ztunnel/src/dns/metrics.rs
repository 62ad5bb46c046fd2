//! The DNS proxy's Prometheus series, with Istio's names and labels (spec 6.1): requests, upstream requests,
//! upstream failures and upstream latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::Workload;

const UNKNOWN: &str = "unknown";
const BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// Lower case record type, e.g. `a`.
    pub request_query_type: String,
    /// `udp` or `tcp`.
    pub request_protocol: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

impl DnsLabels {
    pub fn new(query_type: &str, tcp: bool, client: Option<&Workload>) -> DnsLabels {
        let or_unknown = |s: Option<&String>| match s {
            Some(s) if !s.is_empty() => s.clone(),
            _ => UNKNOWN.to_owned(),
        };
        DnsLabels {
            request_query_type: query_type.to_ascii_lowercase(),
            request_protocol: if tcp { "tcp" } else { "udp" }.to_owned(),
            source_canonical_service: or_unknown(client.map(|c| &c.canonical_name)),
            source_canonical_revision: or_unknown(client.map(|c| &c.canonical_revision)),
        }
    }
}

type HistogramFamily = Family<DnsLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub requests: Family<DnsLabels, Counter>,
    pub upstream_requests: Family<DnsLabels, Counter>,
    pub upstream_failures: Family<DnsLabels, Counter>,
    pub upstream_duration: HistogramFamily,
}

impl DnsMetrics {
    /// Registers the series in `registry` (names carry the `istio_` prefix themselves).
    pub fn new(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
        };
        registry.register(
            "istio_dns_requests",
            "Total number of DNS requests",
            m.requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_requests",
            "Total number of DNS requests forwarded upstream",
            m.upstream_requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_failures",
            "Total number of DNS requests that failed upstream",
            m.upstream_failures.clone(),
        );
        registry.register(
            "istio_dns_upstream_request_duration_seconds",
            "Duration of DNS requests forwarded upstream",
            m.upstream_duration.clone(),
        );
        m
    }

    pub(super) fn upstream(&self, labels: &DnsLabels, took: Duration, ok: bool) {
        self.upstream_requests.get_or_create(labels).inc();
        self.upstream_duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.upstream_failures.get_or_create(labels).inc();
        }
    }
}
