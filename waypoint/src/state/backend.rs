//! A backend: one service port (or a subset of its endpoints) with its traffic policy, its balancer, and the
//! state that outlives configuration snapshots (the retry budget and the circuit breaker's counters). Built for
//! every service port when a snapshot is built; the balancer (with its hash table) and the shared state carry
//! over from the previous snapshot when nothing they depend on changed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::policy::Resolved;
use super::{EndpointStats, Service, Workload};
use crate::balance::lb::{Algorithm, Balancer};
use crate::balance::limits::{Counters, RequestGuard, RetryGuard};
use crate::balance::locality::Tiers;
use crate::balance::outlier::{self, OutlierDetection};
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::Outcome;

/// One endpoint of a backend service, with its counters.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub stats: Arc<EndpointStats>,
    /// The workload's own (service port, target port) mapping for this service, resolved when the snapshot is
    /// built so a request does not look it up per endpoint.
    pub(super) ports: Vec<(u16, u16)>,
}

/// What one backend keeps across snapshots.
#[derive(Debug, Default)]
pub struct BackendShared {
    pub budget: RetryBudget,
    pub counters: Arc<Counters>,
}

/// The endpoint picked for one request: where to connect and as whom.
#[derive(Clone, Debug)]
pub struct Picked {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
    pub stats: Arc<EndpointStats>,
}

#[derive(Debug)]
pub struct Backend {
    pub service: Arc<Service>,
    pub port: u16,
    pub subset: Option<String>,
    endpoints: Arc<Vec<Endpoint>>,
    pub(super) policy: Resolved,
    pub(super) balancer: Arc<Balancer>,
    pub(super) shared: Arc<BackendShared>,
}

impl Backend {
    /// `previous`: the same backend in the last snapshot, whose balancer and shared state are kept when they
    /// still fit.
    pub(super) fn new(
        service: Arc<Service>,
        port: u16,
        subset: Option<String>,
        endpoints: Arc<Vec<Endpoint>>,
        policy: Resolved,
        tiers: Option<Tiers>,
        previous: Option<&Backend>,
    ) -> Backend {
        let algorithm = policy.algorithm.clone().unwrap_or(Algorithm::LeastRequest);
        let ids: Vec<&str> = endpoints.iter().map(|e| e.workload.uid.as_str()).collect();
        let balancer = match previous {
            Some(p) if p.balancer.same_as(&algorithm, &ids, tiers.as_ref()) => p.balancer.clone(),
            _ => Arc::new(Balancer::new(algorithm, &ids, tiers)),
        };
        let shared = previous.map(|p| p.shared.clone()).unwrap_or_default();
        Backend {
            service,
            port,
            subset,
            endpoints,
            policy,
            balancer,
            shared,
        }
    }

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

    pub fn shared(&self) -> &Arc<BackendShared> {
        &self.shared
    }

    fn outlier(&self) -> Option<&OutlierDetection> {
        self.policy.outlier.as_ref()
    }

    /// An endpoint with an address, a target port, and a healthy workload.
    fn routable(&self, e: &Endpoint) -> bool {
        e.workload.healthy && !e.workload.ips.is_empty() && self.target_port(e).is_some()
    }

    /// Chooses an endpoint by the backend's algorithm among the routable ones that outlier detection has not
    /// ejected (all routable ones when too few are left — `minHealthPercent`), preferring endpoints not in
    /// `tried` (the earlier attempts of this request).
    pub fn pick(&self, hash: Option<u64>, tried: &[usize]) -> Option<(usize, Picked)> {
        let now = tokio::time::Instant::now();
        let eps = &self.endpoints;
        let honour_ejections = match self.outlier() {
            None => false,
            Some(o) => {
                let routable = eps.iter().filter(|e| self.routable(e)).count();
                let healthy = eps
                    .iter()
                    .filter(|e| self.routable(e) && !e.stats.health.is_ejected(now))
                    .count();
                !outlier::ignore_ejections(healthy, routable, o.min_health_percent)
            }
        };
        let ok = |i: usize, avoid_tried: bool| {
            let e = &eps[i];
            self.routable(e)
                && !(honour_ejections && e.stats.health.is_ejected(now))
                && !(avoid_tried && tried.contains(&i))
        };
        let active = |i: usize| eps[i].stats.active();
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let n = eps.len();
        let i = self
            .balancer
            .pick(n, |i| ok(i, true), active, hash, &mut rng)
            .or_else(|| {
                if tried.is_empty() {
                    None
                } else {
                    self.balancer
                        .pick(n, |i| ok(i, false), active, hash, &mut rng)
                }
            })?;
        let e = &eps[i];
        let port = self.target_port(e)?;
        Some((
            i,
            Picked {
                workload: e.workload.clone(),
                addr: SocketAddr::new(e.workload.ips[0], port),
                stats: e.stats.clone(),
            },
        ))
    }

    /// Feeds outlier detection with what an attempt to endpoint `i` produced.
    pub fn record(&self, i: usize, outcome: &Outcome) {
        let (Some(o), Some(e)) = (self.outlier(), self.endpoints.get(i)) else {
            return;
        };
        if !o.enabled() {
            return;
        }
        let now = tokio::time::Instant::now();
        let ejected = || {
            self.endpoints
                .iter()
                .filter(|e| e.stats.health.is_ejected(now))
                .count()
        };
        if o.record(
            &e.stats.health,
            outlier_outcome(outcome),
            now,
            ejected,
            self.endpoints.len(),
        ) {
            tracing::info!(endpoint = %e.workload.name, backend = %self.service.hostname, "outlier ejected");
        }
    }

    /// A request slot of the circuit breaker: `None` when the backend is at its limit (`UO`).
    pub fn try_request(&self) -> Option<RequestGuard> {
        self.shared.counters.try_request(&self.policy.pool)
    }

    /// A retry slot of the circuit breaker (`maxRetries` retries in flight).
    pub fn try_retry(&self) -> Option<RetryGuard> {
        self.shared.counters.try_retry(&self.policy.pool)
    }

    /// The request's consistent-hash key, when the backend balances by one.
    pub fn hash_key(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        source: Option<IpAddr>,
    ) -> Option<u64> {
        self.balancer
            .hash_policy()?
            .key_hash(headers, query, source)
    }

    pub fn policy(&self) -> &Resolved {
        &self.policy
    }
}

/// Outlier detection's view of an attempt's outcome.
fn outlier_outcome(o: &Outcome) -> outlier::Outcome {
    match *o {
        Outcome::Response {
            grpc_status: Some(g),
            status: 200,
        } => outlier::Outcome::grpc(g),
        Outcome::Response { status, .. } => outlier::Outcome::Status(status),
        Outcome::ConnectFailed => outlier::Outcome::ConnectFailure,
        Outcome::RefusedStream | Outcome::Reset { .. } => outlier::Outcome::Reset,
        Outcome::PerTryTimeout => outlier::Outcome::Timeout,
    }
}
