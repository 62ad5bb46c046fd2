//! Istio `DestinationRule` → `ambit.waypoint.BackendPolicy`, one per Service hostname the rule's `host` names
//! (resource name = the hostname, `source` = `<ns>/<name>`): `trafficPolicy` (loadBalancer, connectionPool,
//! outlierDetection, portLevelSettings) and `subsets`, each subset's labels resolved to the WDS uids
//! (`<cluster>//Pod/<ns>/<name>`, as [`super::workload`] names them) of the Service's pods that carry them.
//!
//! **Which rule wins.** Several DestinationRules for one hostname: the one in the Service's own namespace, then the
//! oldest, then by `<ns>/<name>`; the others get `Reconciled=False Conflict` (Istio merges only rules without a
//! workload selector in one namespace; picking one is simpler and said in status).
//!
//! **Where it applies.** A policy is only useful to a waypoint that sends to the Service: one serving it, or one
//! whose routes send to it. The controller computes which waypoints need which policy
//! ([`super::route_scopes::backend_policy_scopes`]); a policy no waypoint needs is not emitted and the rule's
//! status says so (ztunnel ignores DestinationRule, as in Istio).
//!
//! **Validation.** An invalid field drops its section — `loadBalancer`, `connectionPool` or `outlierDetection` of
//! the policy it is in, one `portLevelSettings` entry, or one subset — reported as an error; the rest applies. A
//! rule without a usable `host` applies nowhere. Defaults are Istio's: `outlierDetection` present without
//! `consecutive5xxErrors` means 5; the waypoint fills in the others (0 in the schema). `tls` is ignored: HBONE already
//! carries mTLS (`ISTIO_MUTUAL` and `DISABLE` are silent no-ops), and `SIMPLE`/`MUTUAL` origination is not
//! supported (a warning). Unmodelled fields that change behaviour (`proxyProtocol`, `tunnel`, ...) are warnings.

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::waypoint::{
    BackendPolicy, ConnectionPool, ConsistentHash, LoadBalancer, OutlierDetection,
    PortTrafficPolicy, Subset, TrafficPolicy, WorkloadSet, consistent_hash, load_balancer,
};
use serde_json::Value;

use super::istio_hosts::{
    HostIndex, HostOutcomes, Messages, ResolvedHost, created, object_status, workload_uid,
};
use super::{ComputeConfig, labels_of};
use crate::index::{Index, Name};
use crate::sources::DestinationRule;
use crate::sources::istio::{
    DrConnectionPool, DrLoadBalancer, DrOutlierDetection, DrPortTrafficPolicy, DrTls,
    DrTrafficPolicy,
};
use crate::sources::routes::parse_istio_duration;

/// Istio's `consecutive5xxErrors` when `outlierDetection` is set without it.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;

/// One converted DestinationRule, before it is known where it applies.
#[derive(Clone, Debug, Default)]
pub struct ConvertedRule {
    pub policies: Vec<BackendPolicy>,
    pub messages: Messages,
    /// Hosts that resolved to nothing (or lost a conflict), with why.
    pub refused: HostOutcomes,
}

/// Every DestinationRule, converted; conflicts resolved. `(ns, name)` → the rule.
pub fn convert_all(index: &Index, cfg: &ComputeConfig) -> BTreeMap<Name, ConvertedRule> {
    let hosts = HostIndex::new(index, cfg);
    let mut out: BTreeMap<Name, ConvertedRule> = BTreeMap::new();
    // hostname → (rank, rule key) of the winner so far.
    let mut winners: BTreeMap<String, ((bool, i64, Name), Name)> = BTreeMap::new();
    for (key, dr) in &index.destination_rules {
        let (ns, _) = key;
        let mut conv = ConvertedRule::default();
        let m = &mut conv.messages;
        m.unsupported("spec", &dr.spec.unknown, &["exportTo"]);
        if dr.spec.unknown.contains_key("workloadSelector") {
            m.warn(
                "spec.workloadSelector",
                "ignored: waypoints are not selected by workload",
            );
        }
        let resolved: Vec<ResolvedHost> = if dr.spec.host.is_empty() {
            m.error("host", "required");
            Vec::new()
        } else {
            hosts.resolve(&dr.spec.host, ns)
        };
        if resolved.is_empty() && !dr.spec.host.is_empty() {
            let fqdn = hosts.fqdn(&dr.spec.host, ns);
            m.warn(
                "host",
                format!("no service {fqdn} (only Services are supported)"),
            );
            conv.refused.push((fqdn, Err("no such service".to_owned())));
        }
        let policy = dr
            .spec
            .traffic_policy
            .as_ref()
            .map(|tp| traffic_policy(m, "trafficPolicy", tp));
        for (k, h) in resolved.iter().enumerate() {
            // A wildcard host resolves to several services: their subsets' messages are reported once.
            let mut again = Messages::default();
            let subsets = subsets(if k == 0 { &mut *m } else { &mut again }, index, cfg, dr, h);
            conv.policies.push(BackendPolicy {
                hostname: h.hostname.clone(),
                source: format!("{}/{}", key.0, key.1),
                policy: policy.as_ref().map(|(p, _)| p.clone()),
                ports: policy
                    .as_ref()
                    .map(|(_, ports)| ports.clone())
                    .unwrap_or_default(),
                subsets,
            });
            let rank = (h.namespace != *ns, created(&dr.metadata), key.clone());
            match winners.get(&h.hostname) {
                Some((best, _)) if *best <= rank => {}
                _ => {
                    winners.insert(h.hostname.clone(), (rank, key.clone()));
                }
            }
        }
        out.insert(key.clone(), conv);
    }
    // Losers drop their policy for the contested hostname.
    for (key, conv) in &mut out {
        let mut kept = Vec::new();
        for p in std::mem::take(&mut conv.policies) {
            match winners.get(&p.hostname) {
                Some((_, w)) if w != key => conv.refused.push((
                    p.hostname.clone(),
                    Err(format!(
                        "Conflict: DestinationRule {}/{} already applies to it",
                        w.0, w.1
                    )),
                )),
                _ => kept.push(p),
            }
        }
        conv.policies = kept;
    }
    out
}

/// Emits the policies some waypoint needs (`needed` hostnames) and writes every rule's status
/// (`destinationrule/<ns>/<name>`). `waypoints_of` says which waypoints need a hostname.
pub fn finish(
    rules: BTreeMap<Name, ConvertedRule>,
    waypoints_of: &BTreeMap<String, BTreeSet<String>>,
) -> (BTreeMap<String, BackendPolicy>, BTreeMap<String, Value>) {
    let mut policies = BTreeMap::new();
    let mut status = BTreeMap::new();
    for ((ns, name), conv) in rules {
        let mut outcomes = conv.refused.clone();
        for p in conv.policies {
            match waypoints_of.get(&p.hostname) {
                Some(ws) if !ws.is_empty() => {
                    outcomes.push((p.hostname.clone(), Ok(ws.iter().cloned().collect::<Vec<_>>().join(", "))));
                    policies.insert(p.hostname.clone(), p);
                }
                _ => outcomes.push((
                    p.hostname.clone(),
                    Err("no waypoint serves or sends to this service; ztunnel ignores DestinationRule".to_owned()),
                )),
            }
        }
        outcomes.sort();
        let nothing_valid = conv.messages.errors.iter().any(|e| e.starts_with("host:"));
        let reason = if outcomes
            .iter()
            .any(|(_, o)| o.as_ref().is_err_and(|e| e.starts_with("Conflict")))
        {
            "Conflict"
        } else {
            "NotApplied"
        };
        status.insert(
            format!("destinationrule/{ns}/{name}"),
            object_status(&conv.messages, nothing_valid, &outcomes, reason),
        );
    }
    (policies, status)
}

/// The subsets of `dr` for the Service `h`: labels resolved to the uids of the Service's pods that carry them.
fn subsets(
    m: &mut Messages,
    index: &Index,
    cfg: &ComputeConfig,
    dr: &DestinationRule,
    h: &ResolvedHost,
) -> Vec<Subset> {
    let svc = index.services.get(&(h.namespace.clone(), h.name.clone()));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let f = format!("subsets[{i}]");
        if s.name.is_empty() {
            m.error(&format!("{f}.name"), "required");
            continue;
        } else if !seen.insert(s.name.clone()) {
            m.error(
                &format!("{f}.name"),
                format!("duplicate subset {:?}", s.name),
            );
            continue;
        }
        let policy = s
            .traffic_policy
            .as_ref()
            .map(|tp| traffic_policy(m, &format!("{f}.trafficPolicy"), tp));
        let uids = index
            .pods
            .range((h.namespace.clone(), String::new())..)
            .take_while(|((pns, _), _)| *pns == h.namespace)
            .filter(|(_, p)| {
                let labels = labels_of(&p.metadata);
                svc.is_some_and(|svc| super::workload::selects(svc, &labels))
                    && s.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|((pns, pname), _)| workload_uid(cfg, pns, pname))
            .collect();
        out.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            workloads: Some(WorkloadSet { uids }),
            policy: policy.as_ref().map(|(p, _)| p.clone()),
            ports: policy.map(|(_, ports)| ports).unwrap_or_default(),
        });
    }
    out
}

fn tls(m: &mut Messages, f: &str, t: Option<&DrTls>) {
    match t.and_then(|t| t.mode.as_deref()) {
        None | Some("DISABLE" | "ISTIO_MUTUAL") => {}
        Some(mode) => m.warn(
            &format!("{f}.tls.mode"),
            format!("{mode} TLS origination is not supported at waypoints; traffic stays on HBONE (mTLS)"),
        ),
    }
}

/// A traffic policy and its port-level settings. Each section that has an error is left out.
fn traffic_policy(
    m: &mut Messages,
    f: &str,
    tp: &DrTrafficPolicy,
) -> (TrafficPolicy, Vec<PortTrafficPolicy>) {
    m.unsupported(f, &tp.unknown, &[]);
    tls(m, f, tp.tls.as_ref());
    let policy = sections(
        m,
        f,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
    );
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, p) in tp.port_level_settings.iter().enumerate() {
        let fp = format!("{f}.portLevelSettings[{k}]");
        if let Some(port) = port_level(m, &fp, p, &mut seen) {
            ports.push(port);
        }
    }
    (policy, ports)
}

fn port_level(
    m: &mut Messages,
    f: &str,
    p: &DrPortTrafficPolicy,
    seen: &mut BTreeSet<u32>,
) -> Option<PortTrafficPolicy> {
    m.unsupported(f, &p.unknown, &[]);
    tls(m, f, p.tls.as_ref());
    let port = match p.port.as_ref().and_then(|p| p.number) {
        Some(n) if (1..=65535).contains(&n) => n,
        Some(n) => {
            m.error(&format!("{f}.port.number"), format!("{n} is not a port"));
            return None;
        }
        None => {
            m.error(&format!("{f}.port.number"), "required");
            return None;
        }
    };
    if !seen.insert(port) {
        m.error(
            &format!("{f}.port.number"),
            format!("port {port} is set twice"),
        );
        return None;
    }
    let policy = sections(
        m,
        f,
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
    );
    Some(PortTrafficPolicy {
        port,
        policy: Some(policy),
    })
}

fn sections(
    m: &mut Messages,
    f: &str,
    lb: Option<&DrLoadBalancer>,
    cp: Option<&DrConnectionPool>,
    od: Option<&DrOutlierDetection>,
) -> TrafficPolicy {
    // Each section is kept only when it converted without an error.
    let keep = |m: &Messages, before: usize| m.errors.len() == before;
    let before = m.errors.len();
    let load_balancer = lb.map(|lb| load_balancer(m, &format!("{f}.loadBalancer"), lb));
    let load_balancer = load_balancer.filter(|_| keep(m, before));
    let before = m.errors.len();
    let connection_pool = cp.map(|cp| connection_pool(m, &format!("{f}.connectionPool"), cp));
    let connection_pool = connection_pool.filter(|_| keep(m, before));
    let before = m.errors.len();
    let outlier_detection = od.map(|od| outlier_detection(m, &format!("{f}.outlierDetection"), od));
    let outlier_detection = outlier_detection.filter(|_| keep(m, before));
    TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn load_balancer(m: &mut Messages, f: &str, lb: &DrLoadBalancer) -> LoadBalancer {
    m.unsupported(f, &lb.unknown, &[]);
    let mut out = LoadBalancer {
        prefer_close: lb
            .locality_lb_setting
            .as_ref()
            .and_then(|l| l.enabled)
            .unwrap_or(false),
        ..Default::default()
    };
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => m.error(f, "simple and consistentHash are mutually exclusive"),
        (Some(simple), None) => {
            out.kind = match simple.as_str() {
                "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => load_balancer::Kind::LeastRequest,
                "ROUND_ROBIN" => load_balancer::Kind::RoundRobin,
                "RANDOM" => load_balancer::Kind::Random,
                "PASSTHROUGH" => load_balancer::Kind::Passthrough,
                other => {
                    m.error(&format!("{f}.simple"), format!("unknown value {other:?}"));
                    load_balancer::Kind::LeastRequest
                }
            } as i32;
        }
        (None, Some(ch)) => {
            let fc = format!("{f}.consistentHash");
            m.unsupported(&fc, &ch.unknown, &[]);
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                m.error(f, "consistentHash needs exactly one key");
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    m.error(&format!("{fc}.httpCookie.name"), "required");
                }
                if c.ttl.is_some() || c.path.is_some() {
                    m.warn(
                        &format!("{fc}.httpCookie"),
                        "ttl/path ignored: the waypoint hashes the cookie when the client sends it and does not set it",
                    );
                }
            }
            let mut hash = ConsistentHash {
                header_name: ch.http_header_name.clone().unwrap_or_default(),
                cookie_name: ch
                    .http_cookie
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                source_ip: ch.use_source_ip == Some(true),
                query_parameter: ch.http_query_parameter_name.clone().unwrap_or_default(),
                ..Default::default()
            };
            let ring = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size);
            match (ring, &ch.maglev) {
                (Some(_), Some(_)) => m.error(&fc, "ringHash and maglev are mutually exclusive"),
                (ring, None) => {
                    hash.algorithm = consistent_hash::Algorithm::RingHash as i32;
                    hash.table_size = ring.unwrap_or(0);
                }
                (None, Some(mg)) => {
                    hash.algorithm = consistent_hash::Algorithm::Maglev as i32;
                    let size = mg.table_size.unwrap_or(0);
                    if size != 0 && !is_prime(size) {
                        m.error(
                            &format!("{fc}.maglev.tableSize"),
                            format!("{size} is not a prime"),
                        );
                    }
                    hash.table_size = size;
                }
            }
            out.kind = load_balancer::Kind::ConsistentHash as i32;
            out.consistent_hash = Some(hash);
        }
        (None, None) => {}
    }
    out
}

/// A count field that must fit a u32 (0: unlimited / unset).
fn count(m: &mut Messages, f: &str, v: Option<i64>) -> u32 {
    let Some(v) = v else { return 0 };
    match u32::try_from(v) {
        Ok(n) => n,
        Err(_) => {
            m.error(f, format!("{v} is negative or too large"));
            0
        }
    }
}

fn percent(m: &mut Messages, f: &str, v: Option<i64>) -> u32 {
    let n = count(m, f, v);
    if n > 100 {
        m.error(f, format!("{n} is not between 0 and 100"));
    }
    n
}

fn duration(m: &mut Messages, f: &str, d: Option<&String>) -> u64 {
    let Some(d) = d else { return 0 };
    parse_istio_duration(d).unwrap_or_else(|| {
        m.error(f, format!("invalid duration {d:?}"));
        0
    })
}

fn connection_pool(m: &mut Messages, f: &str, cp: &DrConnectionPool) -> ConnectionPool {
    let mut out = ConnectionPool::default();
    if let Some(tcp) = &cp.tcp {
        let ft = format!("{f}.tcp");
        m.unsupported(&ft, &tcp.unknown, &[]);
        out.max_connections = count(m, &format!("{ft}.maxConnections"), tcp.max_connections);
        out.connect_timeout_ms = duration(
            m,
            &format!("{ft}.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        );
    }
    if let Some(http) = &cp.http {
        let fh = format!("{f}.http");
        m.unsupported(&fh, &http.unknown, &[]);
        out.http1_max_pending_requests = count(
            m,
            &format!("{fh}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        out.http2_max_requests = count(
            m,
            &format!("{fh}.http2MaxRequests"),
            http.http2_max_requests,
        );
        out.max_requests_per_connection = count(
            m,
            &format!("{fh}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        out.max_retries = count(m, &format!("{fh}.maxRetries"), http.max_retries);
        out.idle_timeout_ms = duration(m, &format!("{fh}.idleTimeout"), http.idle_timeout.as_ref());
    }
    out
}

fn outlier_detection(m: &mut Messages, f: &str, od: &DrOutlierDetection) -> OutlierDetection {
    m.unsupported(f, &od.unknown, &[]);
    OutlierDetection {
        consecutive_5xx_errors: match od.consecutive_5xx_errors {
            None => DEFAULT_CONSECUTIVE_5XX,
            v => count(m, &format!("{f}.consecutive5xxErrors"), v),
        },
        consecutive_gateway_errors: count(
            m,
            &format!("{f}.consecutiveGatewayErrors"),
            od.consecutive_gateway_errors,
        ),
        interval_ms: duration(m, &format!("{f}.interval"), od.interval.as_ref()),
        base_ejection_time_ms: duration(
            m,
            &format!("{f}.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        ),
        max_ejection_percent: percent(
            m,
            &format!("{f}.maxEjectionPercent"),
            od.max_ejection_percent,
        ),
        min_health_percent: percent(m, &format!("{f}.minHealthPercent"), od.min_health_percent),
    }
}

/// Hostname → the subsets the DestinationRules define for it (for the VirtualService's "subset not found").
pub fn subset_names(rules: &BTreeMap<Name, ConvertedRule>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for conv in rules.values() {
        for p in &conv.policies {
            out.entry(p.hostname.clone())
                .or_default()
                .extend(p.subsets.iter().map(|s| s.name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
