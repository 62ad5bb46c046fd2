//! What the waypoint knows: services, workloads (from WDS, the same `istio.workload.Address` resources ztunnel
//! gets) and route rules (`ambit.waypoint.Route`).
//!
//! One writer (the xDS handler or the local file watcher) keeps the resources by name and, after each update,
//! builds a new immutable [`Snapshot`] with the indexes requests need (services by VIP and hostname, workloads by
//! IP, endpoints per service, a sorted route table per service port). Requests load the current snapshot without
//! locking (`ArcSwap`) and never see a half-applied update.

mod backend;
mod convert;
mod policy;
mod snapshot;
mod targets;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ambit_core::Identity;
use arc_swap::ArcSwap;

use crate::authz::{Policy, PolicySet};
use crate::jwt::{JwksCache, JwtRule};
use crate::ratelimit::RateLimitPolicy;
use crate::route::Rule;

pub use backend::{Backend, BackendShared, Picked};
pub use convert::address_from_proto;
pub use policy::{BackendPolicy, Resolved};
pub use snapshot::{L7Policies, Snapshot, Target};
pub use targets::{TargetIndex, TargetRef, targets_from_proto};

use crate::balance::locality::Locality;
use crate::balance::outlier::EndpointHealth;

/// How a service port speaks, from the Service's `appProtocol` or port name as Istio reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Detected from the first bytes (HTTP/1.1, the HTTP/2 preface, else TCP).
    Unknown,
    Http1,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl AppProtocol {
    /// Whether requests to this port are proxied as HTTP (as opposed to bytes).
    pub fn is_tcp(self) -> bool {
        matches!(self, AppProtocol::Tcp | AppProtocol::Tls)
    }

    /// Whether the backend is spoken to in HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, AppProtocol::Http2 | AppProtocol::Grpc)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// 0: a named port, resolved per endpoint.
    pub target_port: u16,
    pub protocol: AppProtocol,
}

/// A waypoint reference in WDS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum WaypointRef {
    Hostname { namespace: String, hostname: String },
    Address(IpAddr),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub waypoint: Option<WaypointRef>,
}

impl Service {
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// `<ns>/<hostname>`, the key of `Workload::services`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// How a workload accepts mesh traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Tunnel {
    /// HBONE to `ip:15008` (captured pods, waypoints).
    Hbone,
    /// Plain TCP (outside the mesh).
    None,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub ips: Vec<IpAddr>,
    pub tunnel: Tunnel,
    pub workload_name: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub cluster_id: String,
    /// `<ns>/<hostname>` → (service port, target port).
    pub services: HashMap<String, Vec<(u16, u16)>>,
    pub healthy: bool,
    pub waypoint: Option<WaypointRef>,
    pub locality: Locality,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// Per-endpoint counters that live across snapshots: requests in flight (least-request balancing) and outlier
/// detection's state (one per workload, whichever backend it is reached through).
#[derive(Debug, Default)]
pub struct EndpointStats {
    active: AtomicU32,
    pub health: EndpointHealth,
}

impl EndpointStats {
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

pub struct ActiveRequest(Arc<EndpointStats>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who this waypoint is, for deciding which routes and services are its own.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SelfInfo {
    /// The waypoint Gateway (namespace, name).
    pub gateway: (String, String),
    /// The waypoint's Service hostname (`<gateway>.<ns>.svc.<domain>`).
    pub service_hostname: String,
    /// The waypoint pod's own address (`INSTANCE_IP`): its workload's locality is "close".
    pub ip: Option<IpAddr>,
}

#[derive(Default)]
struct Raw {
    services: BTreeMap<String, Arc<Service>>,
    workloads: BTreeMap<String, Arc<Workload>>,
    rules: BTreeMap<String, Arc<Rule>>,
    policies: BTreeMap<String, Arc<BackendPolicy>>,
    rate_limits: BTreeMap<String, Arc<Targeted<RateLimitPolicy>>>,
    request_authns: BTreeMap<String, Arc<Targeted<Vec<JwtRule>>>>,
    authz: BTreeMap<String, Policy>,
}

/// An L7 policy with what it applies to.
#[derive(Debug)]
pub struct Targeted<T> {
    pub targets: Vec<TargetRef>,
    pub policy: T,
}

/// A resource to add or replace, by name.
pub enum Resource {
    Service(Service),
    Workload(Workload),
    Rule(Rule),
    Policy(BackendPolicy),
    RateLimit(Targeted<RateLimitPolicy>),
    /// A RequestAuthentication's JWT rules.
    RequestAuthn(Targeted<Vec<JwtRule>>),
    Authz(Policy),
}

/// The one writer's handle and every reader's source of snapshots.
#[derive(Clone)]
pub struct Store {
    raw: Arc<Mutex<Raw>>,
    current: Arc<ArcSwap<Snapshot>>,
    me: Arc<SelfInfo>,
    /// The JWKS cache to keep in step with the RequestAuthentications, and the runtime its fetches run on.
    jwks: Option<Arc<(JwksCache, tokio::runtime::Handle)>>,
}

impl Store {
    pub fn new(me: SelfInfo) -> Store {
        let me = Arc::new(me);
        Store {
            raw: Arc::new(Mutex::new(Raw::default())),
            current: Arc::new(ArcSwap::from_pointee(Snapshot::build(
                &me,
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
                L7Policies::default(),
                None,
            ))),
            jwks: None,
            me,
        }
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn me(&self) -> &SelfInfo {
        &self.me
    }

    /// Keeps `cache` in step with the RequestAuthentications this store receives (fetches on `runtime`).
    pub fn with_jwks(mut self, cache: JwksCache, runtime: tokio::runtime::Handle) -> Store {
        self.jwks = Some(Arc::new((cache, runtime)));
        self
    }

    /// Adds/replaces `upserts` and removes `removes` (names of any kind), then publishes one new snapshot.
    pub fn update(&self, upserts: Vec<(String, Resource)>, removes: Vec<String>) {
        let Ok(mut raw) = self.raw.lock() else {
            return;
        };
        for name in removes {
            raw.services.remove(&name);
            raw.workloads.remove(&name);
            raw.rules.remove(&name);
            raw.policies.remove(&name);
            raw.rate_limits.remove(&name);
            raw.request_authns.remove(&name);
            raw.authz.remove(&name);
        }
        for (name, r) in upserts {
            match r {
                Resource::Service(s) => {
                    raw.services.insert(name, Arc::new(s));
                }
                Resource::Workload(w) => {
                    raw.workloads.insert(name, Arc::new(w));
                }
                Resource::Rule(r) => {
                    raw.rules.insert(name, Arc::new(r));
                }
                Resource::Policy(p) => {
                    raw.policies.insert(name, Arc::new(p));
                }
                Resource::RateLimit(p) => {
                    raw.rate_limits.insert(name, Arc::new(p));
                }
                Resource::RequestAuthn(p) => {
                    raw.request_authns.insert(name, Arc::new(p));
                }
                Resource::Authz(p) => {
                    raw.authz.insert(name, p);
                }
            }
        }
        self.publish(&raw);
    }

    /// Replaces everything (the local file).
    pub fn replace_all(&self, resources: Vec<(String, Resource)>) {
        let Ok(mut raw) = self.raw.lock() else {
            return;
        };
        *raw = Raw::default();
        drop(raw);
        self.update(resources, vec![]);
    }

    fn publish(&self, raw: &Raw) {
        let previous = self.current.load();
        let next = Snapshot::build(
            &self.me,
            raw.services.values().cloned(),
            raw.workloads.values().cloned(),
            raw.rules.values().cloned(),
            raw.policies.values().cloned(),
            L7Policies {
                rate_limits: TargetIndex::new(
                    raw.rate_limits
                        .values()
                        .map(|p| (p.targets.as_slice(), p.clone())),
                ),
                request_authns: TargetIndex::new(
                    raw.request_authns
                        .values()
                        .map(|p| (p.targets.as_slice(), p.clone())),
                ),
                authz: PolicySet::new(raw.authz.values().cloned().collect()),
            },
            Some(&previous),
        );
        // Keys named by URI are fetched (and refreshed) for the rules there are now, and no longer for others.
        if let Some(j) = &self.jwks {
            j.0.sync(
                raw.request_authns.values().flat_map(|p| p.policy.iter()),
                &j.1,
            );
        }
        self.current.store(Arc::new(next));
    }
}
