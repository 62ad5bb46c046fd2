//! An immutable view of the state with the indexes one request needs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ambit_core::hbone::Authority;

use super::backend::{Backend, BackendShared, Endpoint};
use super::policy::{BackendPolicy, Resolved};
use super::{
    EndpointStats, SelfInfo, Service, TargetIndex, Targeted, Tunnel, WaypointRef, Workload,
};
use crate::authz::PolicySet;
use crate::balance::locality::{Locality, Tiers};
use crate::jwt::JwtRule;
use crate::ratelimit::RateLimitPolicy;
use crate::route::{Attachment, RouteKind, RouteTable, Rule, ServiceRef};

/// The backends of one service: per port, the whole service and each subset its policy defines.
#[derive(Default)]
struct ServiceBackends {
    ports: Vec<(u16, Arc<Backend>, Vec<Arc<Backend>>)>,
}

/// What one HBONE CONNECT asked for.
#[derive(Clone, Debug)]
pub enum Target {
    /// Service-addressed (a VIP or a hostname) on a service port.
    Service { service: Arc<Service>, port: u16 },
    /// Workload-addressed (a pod IP) on a port of the pod.
    Workload {
        workload: Arc<Workload>,
        ip: IpAddr,
        port: u16,
    },
}

#[derive(Default)]
pub struct Snapshot {
    services: HashMap<String, Arc<Service>>,
    vips: HashMap<IpAddr, Arc<Service>>,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// By service hostname.
    endpoints: HashMap<String, Arc<Vec<Endpoint>>>,
    /// Counters by workload uid, handed from snapshot to snapshot.
    stats: HashMap<String, Arc<EndpointStats>>,
    /// (service hostname, port) → the HTTP/gRPC rules attached to it, when there are any.
    http: HashMap<(String, u16), Arc<RouteTable>>,
    /// (service hostname, port) → the TCP rule that applies (the oldest).
    tcp: HashMap<(String, u16), Arc<Rule>>,
    rules: BTreeMap<String, Arc<Rule>>,
    policies: BTreeMap<String, Arc<BackendPolicy>>,
    /// By service hostname.
    backends: HashMap<String, ServiceBackends>,
    /// What workload-addressed requests share (their retry budget).
    passthrough: Arc<BackendShared>,
    rate_limits: TargetIndex<Targeted<RateLimitPolicy>>,
    request_authns: TargetIndex<Targeted<Vec<JwtRule>>>,
    authz: PolicySet,
    workload_count: usize,
}

/// The L7 policies of a snapshot, indexed by what they target.
#[derive(Default)]
pub struct L7Policies {
    pub rate_limits: TargetIndex<Targeted<RateLimitPolicy>>,
    pub request_authns: TargetIndex<Targeted<Vec<JwtRule>>>,
    pub authz: PolicySet,
}

impl Snapshot {
    pub(super) fn build(
        me: &SelfInfo,
        services: impl Iterator<Item = Arc<Service>>,
        workloads: impl Iterator<Item = Arc<Workload>>,
        rules: impl Iterator<Item = Arc<Rule>>,
        policies: impl Iterator<Item = Arc<BackendPolicy>>,
        l7: L7Policies,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        for svc in services {
            for vip in &svc.vips {
                s.vips.insert(*vip, svc.clone());
            }
            s.services.insert(svc.hostname.clone(), svc);
        }
        let mut by_service: HashMap<String, Vec<Endpoint>> = HashMap::new();
        let key_to_host: HashMap<String, String> = s
            .services
            .values()
            .map(|svc| (svc.key(), svc.hostname.clone()))
            .collect();
        for w in workloads {
            s.workload_count += 1;
            let stats = previous
                .and_then(|p| p.stats.get(&w.uid).cloned())
                .unwrap_or_default();
            s.stats.insert(w.uid.clone(), stats.clone());
            for ip in &w.ips {
                s.workloads_by_ip.insert(*ip, w.clone());
            }
            for (key, ports) in &w.services {
                if let Some(host) = key_to_host.get(key) {
                    by_service.entry(host.clone()).or_default().push(Endpoint {
                        workload: w.clone(),
                        stats: stats.clone(),
                        ports: ports.clone(),
                    });
                }
            }
        }
        s.endpoints = by_service
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        s.rules = rules.map(|r| (r.name.clone(), r)).collect();
        s.policies = policies.map(|p| (p.hostname.clone(), p)).collect();
        s.rate_limits = l7.rate_limits;
        s.request_authns = l7.request_authns;
        s.authz = l7.authz;
        s.passthrough = previous.map(|p| p.passthrough.clone()).unwrap_or_default();
        s.index_routes(me);
        s.build_backends(me, previous);
        s
    }

    /// A backend per service port, and per subset of it that the service's policy defines, keeping each one's
    /// shared state (and, when its inputs did not change, its balancer) from the previous snapshot.
    fn build_backends(&mut self, me: &SelfInfo, previous: Option<&Snapshot>) {
        let my_locality = me
            .ip
            .and_then(|ip| self.workloads_by_ip.get(&ip))
            .map(|w| w.locality.clone());
        let mut backends = HashMap::with_capacity(self.services.len());
        for svc in self.services.values() {
            let endpoints = self
                .endpoints
                .get(&svc.hostname)
                .cloned()
                .unwrap_or_default();
            let policy = self.policies.get(&svc.hostname);
            let before = previous.and_then(|p| p.backends.get(&svc.hostname));
            let mut sb = ServiceBackends::default();
            for p in &svc.ports {
                let prev_of = |subset: Option<&str>| before.and_then(|b| b.find(p.port, subset));
                let resolved =
                    policy.map_or_else(Resolved::default, |pol| pol.resolve(p.port, None));
                let all = Arc::new(new_backend(
                    svc,
                    p.port,
                    None,
                    endpoints.clone(),
                    resolved,
                    my_locality.as_ref(),
                    prev_of(None),
                ));
                let subsets = policy
                    .map(|pol| {
                        pol.subsets
                            .iter()
                            .map(|sub| {
                                let eps: Vec<Endpoint> = endpoints
                                    .iter()
                                    .filter(|e| sub.workloads.contains(&e.workload.uid))
                                    .cloned()
                                    .collect();
                                Arc::new(new_backend(
                                    svc,
                                    p.port,
                                    Some(sub.name.clone()),
                                    Arc::new(eps),
                                    pol.resolve(p.port, Some(sub)),
                                    my_locality.as_ref(),
                                    prev_of(Some(&sub.name)),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                sb.ports.push((p.port, all, subsets));
            }
            backends.insert(svc.hostname.clone(), sb);
        }
        self.backends = backends;
    }

    /// Sorted route tables per service port: rules attached to the Service itself win over rules attached to the
    /// waypoint Gateway (which apply to every service the waypoint serves).
    fn index_routes(&mut self, me: &SelfInfo) {
        let gw = (me.gateway.0.as_str(), me.gateway.1.as_str());
        // (service, port) → (rules attached to the service, rules attached to the waypoint Gateway).
        type Attached = HashMap<(String, u16), (Vec<Arc<Rule>>, Vec<Arc<Rule>>)>;
        let mut http: Attached = HashMap::new();
        let mut tcp: Attached = HashMap::new();
        for svc in self.services.values() {
            let served = self.serves(me, svc);
            for p in &svc.ports {
                for rule in self.rules.values() {
                    let Some(direct) = rule.attaches_to(&svc.hostname, p.port, gw) else {
                        continue;
                    };
                    if !direct && !served {
                        continue;
                    }
                    let map = if rule.kind == RouteKind::Tcp {
                        &mut tcp
                    } else {
                        &mut http
                    };
                    let e = map.entry((svc.hostname.clone(), p.port)).or_default();
                    if direct {
                        e.0.push(rule.clone())
                    } else {
                        e.1.push(rule.clone())
                    }
                }
            }
        }
        let pick = |(direct, via_gw): (Vec<Arc<Rule>>, Vec<Arc<Rule>>)| {
            if direct.is_empty() {
                (via_gw, false)
            } else {
                (direct, true)
            }
        };
        self.http = http
            .into_iter()
            .map(|((hostname, port), v)| {
                let (rules, direct) = pick(v);
                // Only rules attached through the waypoint Gateway select by `hostnames` (see `route`).
                let attachment = if direct {
                    Attachment::Service
                } else {
                    Attachment::Gateway {
                        default: ServiceRef {
                            hostname: hostname.clone(),
                            port,
                            subset: None,
                        },
                    }
                };
                let table = RouteTable::new(&rules, attachment);
                ((hostname, port), Arc::new(table))
            })
            .collect();
        self.tcp = tcp
            .into_iter()
            .filter_map(|(k, v)| {
                let (mut rules, _) = pick(v);
                rules.sort_by(|a, b| {
                    (a.created, &a.namespace, &a.route_name, a.rule_index).cmp(&(
                        b.created,
                        &b.namespace,
                        &b.route_name,
                        b.rule_index,
                    ))
                });
                Some((k, rules.into_iter().next()?))
            })
            .collect();
    }

    /// Whether `svc` names this waypoint as its waypoint.
    pub fn serves(&self, me: &SelfInfo, svc: &Service) -> bool {
        match &svc.waypoint {
            Some(WaypointRef::Hostname { hostname, .. }) => *hostname == me.service_hostname,
            Some(WaypointRef::Address(ip)) => self
                .vips
                .get(ip)
                .is_some_and(|s| s.hostname == me.service_hostname),
            None => false,
        }
    }

    /// What a CONNECT authority refers to.
    pub fn target(&self, authority: &Authority) -> Option<Target> {
        match authority {
            Authority::Addr(a) => {
                if let Some(svc) = self.vips.get(&a.ip()) {
                    return Some(Target::Service {
                        service: svc.clone(),
                        port: a.port(),
                    });
                }
                self.workloads_by_ip.get(&a.ip()).map(|w| Target::Workload {
                    workload: w.clone(),
                    ip: a.ip(),
                    port: a.port(),
                })
            }
            Authority::Host(h, port) => self.services.get(h).map(|s| Target::Service {
                service: s.clone(),
                port: *port,
            }),
        }
    }

    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(hostname)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    /// The backend for `hostname:port` (a subset of it when `subset` is set), if the service is known — and,
    /// for a subset, defined by the service's policy. A port the service does not list gets a backend of its own
    /// with the service's policy and fresh state.
    pub fn backend(&self, hostname: &str, port: u16, subset: Option<&str>) -> Option<Arc<Backend>> {
        if let Some(b) = self
            .backends
            .get(hostname)
            .and_then(|b| b.find(port, subset))
        {
            return Some(b.clone());
        }
        if subset.is_some() {
            return None;
        }
        let service = self.services.get(hostname)?;
        let endpoints = self.endpoints.get(hostname).cloned().unwrap_or_default();
        let resolved = self
            .policies
            .get(hostname)
            .map_or_else(Resolved::default, |p| p.resolve(port, None));
        Some(Arc::new(new_backend(
            service, port, None, endpoints, resolved, None, None,
        )))
    }

    /// The rate limits of a request for `service:port` matched by `rule`.
    pub fn rate_limits(&self) -> &TargetIndex<Targeted<RateLimitPolicy>> {
        &self.rate_limits
    }

    /// The AuthorizationPolicies that target this waypoint, its class or its services.
    pub fn authz(&self) -> &PolicySet {
        &self.authz
    }

    /// The RequestAuthentications' JWT rules by target.
    pub fn request_authns(&self) -> &TargetIndex<Targeted<Vec<JwtRule>>> {
        &self.request_authns
    }

    /// What requests addressed to a workload share.
    pub fn passthrough(&self) -> &Arc<BackendShared> {
        &self.passthrough
    }

    pub fn policy(&self, hostname: &str) -> Option<&Arc<BackendPolicy>> {
        self.policies.get(hostname)
    }

    /// The HTTP/gRPC rules of a service port (`None`: no route attached; traffic goes to the service itself).
    pub fn http_routes(&self, hostname: &str, port: u16) -> Option<&Arc<RouteTable>> {
        self.http.get(&(hostname.to_owned(), port))
    }

    pub fn tcp_route(&self, hostname: &str, port: u16) -> Option<&Arc<Rule>> {
        self.tcp.get(&(hostname.to_owned(), port))
    }

    /// The stats of a workload addressed directly.
    pub fn stats_of(&self, uid: &str) -> Arc<EndpointStats> {
        self.stats.get(uid).cloned().unwrap_or_default()
    }

    /// For `/config_dump`.
    pub fn dump(&self, me: &SelfInfo) -> serde_json::Value {
        let mut services: Vec<serde_json::Value> = self
            .services
            .values()
            .map(|s| {
                serde_json::json!({
                    "service": &**s,
                    "servedByThisWaypoint": self.serves(me, s),
                    "endpoints": self.endpoints.get(&s.hostname).map_or(0, |e| e.len()),
                })
            })
            .collect();
        services.sort_by(|a, b| {
            a["service"]["hostname"]
                .as_str()
                .cmp(&b["service"]["hostname"].as_str())
        });
        let mut routes: Vec<serde_json::Value> = self
            .http
            .iter()
            .map(|((h, p), t)| {
                serde_json::json!({
                    "service": h, "port": p,
                    "rules": t.rules().map(|(r, m)| format!("{}#match{}", r.name, m)).collect::<Vec<_>>(),
                })
            })
            .collect();
        routes.sort_by(|a, b| {
            (a["service"].as_str(), a["port"].as_u64())
                .cmp(&(b["service"].as_str(), b["port"].as_u64()))
        });
        serde_json::json!({
            "services": services,
            "workloads": self.workload_count,
            "rules": self.rules.values().map(|r| &**r).collect::<Vec<&Rule>>(),
            "routeTables": routes,
            "tcpRoutes": self.tcp.iter().map(|((h, p), r)| format!("{h}:{p} -> {}", r.name)).collect::<Vec<_>>(),
            "backendPolicies": self.policies.values().map(|p| {
                let backends = self.backends.get(&p.hostname);
                serde_json::json!({
                    "hostname": p.hostname,
                    "source": p.source,
                    "subsets": p.subsets.iter().map(|s| serde_json::json!({
                        "name": s.name, "labels": s.labels, "workloads": s.workloads.len(),
                    })).collect::<Vec<_>>(),
                    "backends": backends.map(|b| b.ports.iter().flat_map(|(port, all, subsets)| {
                        std::iter::once(all).chain(subsets).map(move |b| serde_json::json!({
                            "port": port,
                            "subset": b.subset,
                            "endpoints": b.endpoints(),
                            "policy": format!("{:?}", b.policy()),
                        }))
                    }).collect::<Vec<_>>()),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

impl ServiceBackends {
    fn find(&self, port: u16, subset: Option<&str>) -> Option<&Arc<Backend>> {
        let (_, all, subsets) = self.ports.iter().find(|(p, _, _)| *p == port)?;
        match subset {
            None => Some(all),
            Some(name) => subsets.iter().find(|b| b.subset.as_deref() == Some(name)),
        }
    }
}

fn new_backend(
    svc: &Arc<Service>,
    port: u16,
    subset: Option<String>,
    endpoints: Arc<Vec<Endpoint>>,
    policy: Resolved,
    me: Option<&Locality>,
    previous: Option<&Arc<Backend>>,
) -> Backend {
    let tiers = match (policy.prefer_close, me) {
        (true, Some(me)) => Some(Tiers::new(
            me,
            endpoints.iter().map(|e| &e.workload.locality),
        )),
        _ => None,
    };
    Backend::new(
        svc.clone(),
        port,
        subset,
        endpoints,
        policy,
        tiers,
        previous.map(|b| &**b),
    )
}

impl Target {
    /// The tunnel to use toward a workload-addressed target.
    pub fn tunnel(&self) -> Option<Tunnel> {
        match self {
            Target::Workload { workload, .. } => Some(workload.tunnel),
            Target::Service { .. } => None,
        }
    }
}
