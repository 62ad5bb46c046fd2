//! Istio's request metrics with Istio's names, labels and buckets, `reporter="waypoint"`; and the TCP metrics for
//! TCP traffic, so the dashboards people already have (Grafana, Kiali) work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::{Service, Workload};

/// `istio_request_duration_milliseconds` buckets (Istio's defaults).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// `istio_request_bytes` / `istio_response_bytes` buckets (Istio's defaults: powers of ten).
pub const SIZE_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

/// The labels of every request series, in Istio's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.to_owned()
    } else {
        s.to_owned()
    }
}

/// What one request is reported with.
pub struct Report<'a> {
    pub source: Option<&'a Workload>,
    pub source_principal: Option<String>,
    pub destination: Option<&'a Workload>,
    pub service: Option<&'a Service>,
    pub protocol: &'static str,
    pub code: u16,
    pub grpc_status: Option<String>,
    pub flags: &'static str,
}

fn workload_name(w: &Workload) -> &str {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS.iter().copied())
}

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

impl RequestLabels {
    pub fn new(r: &Report<'_>) -> RequestLabels {
        let field = |w: Option<&Workload>, f: fn(&Workload) -> &str| {
            w.map(f).map_or_else(|| UNKNOWN.into(), or_unknown)
        };
        let src_canonical = field(r.source, |w| &w.canonical_name);
        let src_rev = field(r.source, |w| &w.canonical_revision);
        let dst_canonical = field(r.destination, |w| &w.canonical_name);
        let dst_rev = field(r.destination, |w| &w.canonical_revision);
        RequestLabels {
            reporter: "waypoint",
            source_workload: field(r.source, workload_name),
            source_canonical_service: src_canonical.clone(),
            source_canonical_revision: src_rev.clone(),
            source_workload_namespace: field(r.source, |w| &w.namespace),
            source_principal: r.source_principal.clone().unwrap_or_else(|| UNKNOWN.into()),
            source_app: src_canonical,
            source_version: src_rev,
            source_cluster: field(r.source, |w| &w.cluster_id),
            destination_service: r
                .service
                .map_or_else(|| UNKNOWN.into(), |s| or_unknown(&s.hostname)),
            destination_service_namespace: r
                .service
                .map_or_else(|| UNKNOWN.into(), |s| or_unknown(&s.namespace)),
            destination_service_name: r
                .service
                .map_or_else(|| UNKNOWN.into(), |s| or_unknown(&s.name)),
            destination_workload: field(r.destination, workload_name),
            destination_canonical_service: dst_canonical.clone(),
            destination_canonical_revision: dst_rev.clone(),
            destination_workload_namespace: field(r.destination, |w| &w.namespace),
            destination_principal: r
                .destination
                .filter(|w| w.tunnel == crate::state::Tunnel::Hbone)
                .map_or_else(|| UNKNOWN.into(), |w| w.identity().to_string()),
            destination_app: dst_canonical,
            destination_version: dst_rev,
            destination_cluster: field(r.destination, |w| &w.cluster_id),
            request_protocol: r.protocol,
            response_code: r.code,
            grpc_response_status: r.grpc_status.clone().unwrap_or_default(),
            response_flags: r.flags,
            connection_security_policy: "mutual_tls",
        }
    }
}

/// The TCP metrics' labels are the request labels without the HTTP ones; kept as one struct for both.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl From<&RequestLabels> for TcpLabels {
    fn from(l: &RequestLabels) -> TcpLabels {
        TcpLabels {
            reporter: l.reporter,
            source_workload: l.source_workload.clone(),
            source_workload_namespace: l.source_workload_namespace.clone(),
            source_principal: l.source_principal.clone(),
            destination_service: l.destination_service.clone(),
            destination_workload: l.destination_workload.clone(),
            destination_workload_namespace: l.destination_workload_namespace.clone(),
            destination_principal: l.destination_principal.clone(),
            request_protocol: "tcp",
            response_flags: l.response_flags,
            connection_security_policy: l.connection_security_policy,
        }
    }
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histograms,
    pub request_bytes: Histograms,
    pub response_bytes: Histograms,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    /// Retries sent, and retries the policy asked for but that were not sent (why: `budget`, `overflow`,
    /// `not_replayable`).
    pub retries: Counter,
    pub retries_skipped: Family<ReasonLabel, Counter>,
    /// Requests answered 429 by a local rate limit.
    pub rate_limited: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            request_bytes: Family::new_with_constructor(size_histogram as fn() -> Histogram),
            response_bytes: Family::new_with_constructor(size_histogram as fn() -> Histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            retries: Counter::default(),
            retries_skipped: Family::default(),
            rate_limited: Counter::default(),
        };
        let ambit = registry.sub_registry_with_prefix("ambit_waypoint");
        ambit.register("retries", "Retries sent to backends", m.retries.clone());
        ambit.register(
            "retries_skipped",
            "Retries the route's policy asked for that were not sent, by reason",
            m.retries_skipped.clone(),
        );
        ambit.register(
            "rate_limited",
            "Requests answered 429 by a local rate limit (per replica)",
            m.rate_limited.clone(),
        );
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "requests",
            "Requests handled by the waypoint",
            m.requests.clone(),
        );
        istio.register(
            "request_duration_milliseconds",
            "Request duration",
            m.duration.clone(),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the client",
            m.tcp_sent.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client",
            m.tcp_received.clone(),
        );
        m
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn retry_skipped(&self, reason: &'static str) {
        self.retries_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The four request series of one label set (looked up, and created if new, once).
    pub fn series(&self, labels: &RequestLabels) -> Series {
        Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

/// Handles on the series of one label set: recording a request through them builds no labels and hashes nothing.
#[derive(Clone, Debug)]
pub struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Series {
    pub fn record(&self, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(req_bytes as f64);
        self.response_bytes.observe(resp_bytes as f64);
    }
}
