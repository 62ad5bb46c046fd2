//! An immutable view of the state with the indexes one request needs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_core::hbone::Authority;
use rand::Rng;

use super::{EndpointStats, SelfInfo, Service, Tunnel, WaypointRef, Workload};
use crate::route::{RouteKind, RouteTable, Rule};

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

/// One endpoint of a backend service, with its counters.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub stats: Arc<EndpointStats>,
    /// The workload's own (service port, target port) mapping for this service, resolved when the snapshot is
    /// built so a request does not look it up per endpoint.
    ports: Vec<(u16, u16)>,
}

/// A backend: one service port and its endpoints (the per-backend object that resilience settings hang on).
#[derive(Clone, Debug)]
pub struct Backend {
    pub service: Arc<Service>,
    pub port: u16,
    endpoints: Arc<Vec<Endpoint>>,
}

/// The endpoint picked for one request: where to connect and as whom.
#[derive(Clone, Debug)]
pub struct Picked {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
    pub stats: Arc<EndpointStats>,
}

impl Backend {
    /// The target port of endpoint `e` for this backend's service port: the workload's own mapping, else the
    /// service's target port, else the service port itself.
    fn target_port(&self, e: &Endpoint) -> Option<u16> {
        if let Some((_, t)) = e.ports.iter().find(|(s, _)| *s == self.port)
            && *t != 0
        {
            return Some(*t);
        }
        match self.service.port(self.port) {
            Some(p) if p.target_port != 0 => Some(p.target_port),
            Some(_) => None,
            None => Some(self.port),
        }
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// Power of two choices, least requests in flight (healthy endpoints with an address and a target port).
    pub fn pick(&self) -> Option<Picked> {
        let usable: Vec<(&Endpoint, u16)> = self
            .endpoints
            .iter()
            .filter(|e| e.workload.healthy && !e.workload.ips.is_empty())
            .filter_map(|e| Some((e, self.target_port(e)?)))
            .collect();
        let chosen = match usable.len() {
            0 => return None,
            1 => &usable[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (x, y) = (&usable[a], &usable[b]);
                if y.0.stats.active() < x.0.stats.active() {
                    y
                } else {
                    x
                }
            }
        };
        let (e, port) = chosen;
        Some(Picked {
            workload: e.workload.clone(),
            addr: SocketAddr::new(e.workload.ips[0], *port),
            stats: e.stats.clone(),
        })
    }
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
    workload_count: usize,
}

impl Snapshot {
    pub(super) fn build(
        me: &SelfInfo,
        services: impl Iterator<Item = Arc<Service>>,
        workloads: impl Iterator<Item = Arc<Workload>>,
        rules: impl Iterator<Item = Arc<Rule>>,
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
        s.index_routes(me);
        s
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
            if direct.is_empty() { via_gw } else { direct }
        };
        self.http = http
            .into_iter()
            .map(|(k, v)| (k, Arc::new(RouteTable::new(&pick(v)))))
            .collect();
        self.tcp = tcp
            .into_iter()
            .filter_map(|(k, v)| {
                let mut rules = pick(v);
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

    /// The backend for `hostname:port`, if the service is known.
    pub fn backend(&self, hostname: &str, port: u16) -> Option<Backend> {
        let service = self.services.get(hostname)?.clone();
        let endpoints = self.endpoints.get(hostname).cloned().unwrap_or_default();
        Some(Backend {
            service,
            port,
            endpoints,
        })
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
        })
    }
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
