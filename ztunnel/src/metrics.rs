//! Istio's TCP metrics, with Istio's names and labels, so existing dashboards work unchanged.
//!
//! A label set is built once per connection ([`TrafficLabels`]) and interned: the connections between the same
//! workloads share one copy (it is ~1 KiB with its strings, held for a connection's whole life). The byte counters
//! are added once, when the connection ends, so nothing on the copy path touches a metric.

pub mod runtime;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proxy::headers::Baggage;
use crate::state::{Service, Workload};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReporterLabel {
    pub reporter: Reporter,
}

/// The labels of every `istio_tcp_*` series, in Istio's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
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
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.to_owned()
    } else {
        s.to_owned()
    }
}

/// What is known about one side of a connection when it is reported.
#[derive(Default, Clone)]
pub struct Peer<'a> {
    pub workload: Option<&'a Workload>,
    /// The SPIFFE identity proven by mTLS (or, for the source side of an outbound connection, our own).
    pub principal: Option<String>,
    /// What the peer's `baggage` said about it: its labels when `workload` is not known (a peer from another
    /// network or cluster), as upstream derives them. Never used for policy.
    pub baggage: Option<&'a Baggage>,
}

impl TrafficLabels {
    pub fn new(
        reporter: Reporter,
        src: Peer<'_>,
        dst: Peer<'_>,
        dst_service: Option<&Service>,
        mutual_tls: bool,
    ) -> Self {
        let w = |p: &Peer<'_>, f: fn(&Workload) -> &str| {
            p.workload
                .map(f)
                .map(or_unknown)
                .unwrap_or_else(|| UNKNOWN.into())
        };
        // The source's labels: from its workload, else from its baggage.
        let s =
            |f: fn(&Workload) -> &str, b: fn(&Baggage) -> &str| match (src.workload, src.baggage) {
                (Some(wl), _) => or_unknown(f(wl)),
                (None, Some(bag)) => or_unknown(b(bag)),
                (None, None) => UNKNOWN.into(),
            };
        let src_canonical = s(|w| w.canonical_name.as_str(), |b| b.service_name.as_str());
        let dst_canonical = w(&dst, |w| w.canonical_name.as_str());
        let src_rev = s(|w| w.canonical_revision.as_str(), |b| b.revision.as_str());
        let dst_rev = w(&dst, |w| w.canonical_revision.as_str());
        TrafficLabels {
            reporter,
            source_workload: s(
                |w| {
                    if w.workload_name.is_empty() {
                        &w.name
                    } else {
                        &w.workload_name
                    }
                },
                |b| b.workload_name.as_str(),
            ),
            source_canonical_service: src_canonical.clone(),
            source_canonical_revision: src_rev.clone(),
            source_workload_namespace: s(|w| w.namespace.as_str(), |b| b.namespace.as_str()),
            source_principal: src.principal.clone().unwrap_or_else(|| UNKNOWN.into()),
            source_app: src_canonical,
            source_version: src_rev,
            source_cluster: s(|w| w.cluster_id.as_str(), |b| b.cluster.as_str()),
            destination_service: dst_service
                .map(|s| or_unknown(&s.hostname))
                .unwrap_or_else(|| UNKNOWN.into()),
            destination_service_namespace: dst_service
                .map(|s| or_unknown(&s.namespace))
                .unwrap_or_else(|| UNKNOWN.into()),
            destination_service_name: dst_service
                .map(|s| or_unknown(&s.name))
                .unwrap_or_else(|| UNKNOWN.into()),
            destination_workload: w(&dst, |w| {
                if w.workload_name.is_empty() {
                    &w.name
                } else {
                    &w.workload_name
                }
            }),
            destination_canonical_service: dst_canonical.clone(),
            destination_canonical_revision: dst_rev.clone(),
            destination_workload_namespace: w(&dst, |w| w.namespace.as_str()),
            destination_principal: dst.principal.clone().unwrap_or_else(|| UNKNOWN.into()),
            destination_app: dst_canonical,
            destination_version: dst_rev,
            destination_cluster: w(&dst, |w| w.cluster_id.as_str()),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: if mutual_tls { "mutual_tls" } else { UNKNOWN }.into(),
            source_region: s(|w| w.locality.region.as_str(), |b| b.region.as_str()),
            source_zone: s(|w| w.locality.zone.as_str(), |b| b.zone.as_str()),
            destination_region: w(&dst, |w| w.locality.region.as_str()),
            destination_zone: w(&dst, |w| w.locality.zone.as_str()),
        }
    }
}

/// The `istio_tcp_*` families.
#[derive(Default)]
pub struct Metrics {
    opened: Family<TrafficLabels, Counter>,
    closed: Family<TrafficLabels, Counter>,
    failed: Family<TrafficLabels, Counter>,
    received_bytes: Family<TrafficLabels, Counter>,
    sent_bytes: Family<TrafficLabels, Counter>,
    sockets_open: Family<ReporterLabel, Gauge>,
    /// The label sets of live connections, one copy each.
    interned: Mutex<Interned>,
}

/// Interned label sets; ones no connection holds any more are swept when the set has doubled since the last sweep.
#[derive(Default)]
struct Interned {
    set: HashSet<Arc<TrafficLabels>>,
    sweep_at: usize,
}

/// The set never sweeps below this many entries.
const MIN_SWEEP: usize = 1024;

impl Interned {
    fn get(&mut self, labels: TrafficLabels) -> Arc<TrafficLabels> {
        if let Some(shared) = self.set.get(&labels) {
            return shared.clone();
        }
        if self.set.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.set.retain(|l| Arc::strong_count(l) > 1);
            self.sweep_at = self.set.len() * 2;
        }
        let shared = Arc::new(labels);
        self.set.insert(shared.clone());
        shared
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        registry.register(
            "istio_tcp_connections_opened",
            "The total number of TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "The total number of TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "The total number of TCP connections that failed",
            m.failed.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            m.received_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            m.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sockets_open",
            "The number of open TCP sockets",
            m.sockets_open.clone(),
        );
        m
    }

    /// Counts a connection as opened; the returned guard reports it closed.
    pub fn open(&self, labels: TrafficLabels) -> ConnectionGuard<'_> {
        self.opened.get_or_create(&labels).inc();
        let labels = self
            .interned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels);
        self.sockets_open
            .get_or_create(&ReporterLabel {
                reporter: labels.reporter,
            })
            .inc();
        ConnectionGuard {
            metrics: self,
            labels,
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            flag: None,
        }
    }

    /// A connection that failed before it could be counted as opened.
    pub fn failed_early(&self, mut labels: TrafficLabels, flag: &'static str) {
        labels.response_flags = flag.into();
        self.failed.get_or_create(&labels).inc();
    }
}

/// Reports the end of one connection when dropped.
pub struct ConnectionGuard<'a> {
    metrics: &'a Metrics,
    labels: Arc<TrafficLabels>,
    from_client: AtomicU64,
    to_client: AtomicU64,
    flag: Option<&'static str>,
}

impl ConnectionGuard<'_> {
    /// Bytes seen in each direction, from the point of view of the connection's client (the source workload).
    pub fn record_bytes(&self, from_client: u64, to_client: u64) {
        self.from_client.fetch_add(from_client, Ordering::Relaxed);
        self.to_client.fetch_add(to_client, Ordering::Relaxed);
    }

    /// Marks the connection failed with an Istio response flag (`DENY`, `CONNECT`, ...).
    pub fn fail(&mut self, flag: &'static str) {
        self.flag = Some(flag);
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        let flagged;
        let labels = match self.flag {
            Some(flag) => {
                let mut l = TrafficLabels::clone(&self.labels);
                l.response_flags = flag.into();
                self.metrics.failed.get_or_create(&l).inc();
                flagged = l;
                &flagged
            }
            None => &*self.labels,
        };
        self.metrics.closed.get_or_create(labels).inc();
        // Istio's convention: "received" is what the reporting proxy got from the client side for destination
        // reports, and the direction is flipped for source reports.
        let (received, sent) = match labels.reporter {
            Reporter::destination => (
                self.from_client.load(Ordering::Relaxed),
                self.to_client.load(Ordering::Relaxed),
            ),
            Reporter::source => (
                self.to_client.load(Ordering::Relaxed),
                self.from_client.load(Ordering::Relaxed),
            ),
        };
        self.metrics
            .received_bytes
            .get_or_create(labels)
            .inc_by(received);
        self.metrics.sent_bytes.get_or_create(labels).inc_by(sent);
        self.metrics
            .sockets_open
            .get_or_create(&ReporterLabel {
                reporter: labels.reporter,
            })
            .dec();
    }
}

/// Shared mode's proxies, with upstream's names (`workload_manager_*`).
#[derive(Default)]
pub struct WorkloadManagerMetrics {
    pub active: Gauge,
    pub pending: Gauge,
    pub started: Counter,
    pub stopped: Counter,
}

impl WorkloadManagerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = WorkloadManagerMetrics::default();
        let r = registry.sub_registry_with_prefix("workload_manager");
        r.register(
            "active_proxy_count",
            "The total number current workloads with active proxies",
            m.active.clone(),
        );
        r.register(
            "pending_proxy_count",
            "The total number current workloads with pending proxies",
            m.pending.clone(),
        );
        r.register(
            "proxies_started",
            "The total number of proxies that were started",
            m.started.clone(),
        );
        r.register(
            "proxies_stopped",
            "The total number of proxies that were stopped",
            m.stopped.clone(),
        );
        m
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn labels(workload: &str) -> TrafficLabels {
        TrafficLabels::new(
            Reporter::source,
            Peer {
                workload: None,
                principal: Some(workload.to_owned()),
                baggage: None,
            },
            Peer {
                workload: None,
                principal: None,
                baggage: None,
            },
            None,
            true,
        )
    }

    #[test]
    fn live_connections_share_one_label_set_and_released_ones_are_swept() {
        let mut interned = Interned::default();
        let a = interned.get(labels("a"));
        let a2 = interned.get(labels("a"));
        assert!(Arc::ptr_eq(&a, &a2), "equal label sets are one copy");
        let b = interned.get(labels("b"));
        assert!(!Arc::ptr_eq(&a, &b));
        drop(b);
        // Fill past the sweep point with sets no connection holds: 1,026 sets went in, the sweep at 1,024 kept
        // `a`'s, and only the few added after it are left besides.
        for i in 0..MIN_SWEEP {
            drop(interned.get(labels(&format!("gone-{i}"))));
        }
        assert!(
            interned.set.len() < 8,
            "{} entries after the sweep",
            interned.set.len()
        );
        assert!(interned.set.contains(&labels("a")));
        assert!(Arc::ptr_eq(&interned.get(labels("a")), &a));
    }

    #[test]
    fn a_failed_connection_is_counted_under_its_flag_and_the_shared_set_stays_unflagged() {
        let metrics = Metrics::default();
        let mut failing = metrics.open(labels("a"));
        let ok = metrics.open(labels("a"));
        failing.fail("CONNECT");
        drop(failing);
        drop(ok);
        let mut flagged = labels("a");
        flagged.response_flags = "CONNECT".into();
        assert_eq!(metrics.failed.get_or_create(&flagged).get(), 1);
        assert_eq!(metrics.closed.get_or_create(&flagged).get(), 1);
        assert_eq!(metrics.closed.get_or_create(&labels("a")).get(), 1);
        assert_eq!(metrics.opened.get_or_create(&labels("a")).get(), 2);
    }
}
