//! Endpoint selection (spec 1.6) and waypoint resolution (spec 1.9).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

use super::store::Store;
use super::types::*;
use super::{ResolvedWaypoint, Upstream};

/// The target port of `svc_port` on endpoint `w`: the endpoint's own mapping, else the service's target port,
/// else (application-tunnel workloads with a port) the service port itself. `None` if the service has no such
/// port, or a named port the endpoint does not resolve. In waypoint mode (the lookup of `waypoint-svc:15008`) the
/// service need not list the port when the waypoint workload has an application tunnel, as upstream allows.
pub(super) fn target_port(
    svc: &Service,
    svc_port: u16,
    w: &Workload,
    waypoint_mode: bool,
) -> Option<u16> {
    let svc_target = match svc.ports.get(&svc_port) {
        Some(t) => *t,
        None if waypoint_mode && w.application_tunnel.is_some() => 0,
        None => return None,
    };
    let own = w
        .services
        .get(&svc.key())
        .or_else(|| svc.endpoints.get(&w.uid).map(|ep| &ep.port))
        .and_then(|m| m.get(&svc_port))
        .copied()
        .filter(|p| *p != 0);
    if let Some(p) = own {
        return Some(p);
    }
    if svc_target != 0 {
        return Some(svc_target);
    }
    w.application_tunnel
        .as_ref()
        .and_then(|t| t.port)
        .map(|_| svc_port)
}

/// How many of the routing preferences, in order, `w` shares with `src`.
fn rank(prefs: &[LbScope], src: &Workload, w: &Workload) -> usize {
    prefs
        .iter()
        .take_while(|scope| match scope {
            LbScope::Region => w.locality.region == src.locality.region,
            LbScope::Zone => w.locality.zone == src.locality.zone,
            LbScope::Subzone => w.locality.subzone == src.locality.subzone,
            LbScope::Node => w.node == src.node,
            LbScope::Cluster => w.cluster_id == src.cluster_id,
            LbScope::Network => w.network == src.network,
        })
        .count()
}

/// The IP of `w` to dial: the one dialed if it is `w`'s, else one allowed by the service's IP families,
/// preferring the family of `hint`.
fn choose_ip(w: &Workload, families: Option<IpFamilies>, hint: IpAddr) -> Option<IpAddr> {
    if w.workload_ips.contains(&hint) {
        return Some(hint);
    }
    let allowed = |ip: &&IpAddr| match families {
        Some(IpFamilies::Ipv4Only) => ip.is_ipv4(),
        Some(IpFamilies::Ipv6Only) => ip.is_ipv6(),
        Some(IpFamilies::Dual) | None => true,
    };
    let mut ips = w.workload_ips.iter().filter(allowed);
    let first = ips.clone().next().copied();
    ips.find(|ip| ip.is_ipv4() == hint.is_ipv4())
        .copied()
        .or(first)
}

impl Store {
    pub(super) fn pick_endpoint(
        &self,
        svc: &Service,
        svc_port: u16,
        src: &Workload,
        hint: IpAddr,
        waypoint_mode: bool,
    ) -> Option<Upstream> {
        if !waypoint_mode && !svc.ports.contains_key(&svc_port) {
            return None;
        }
        let lb = svc.load_balancer.clone().unwrap_or_default();
        let mut candidates: Vec<(Upstream, usize)> = svc
            .endpoints
            .values()
            .filter_map(|ep| {
                let w = self.workloads.get(&ep.workload_uid)?;
                if lb.health_policy == HealthPolicy::OnlyHealthy
                    && w.status != HealthStatus::Healthy
                {
                    return None;
                }
                if w.network != src.network {
                    // Without a gateway the pod IP is unreachable from here; with one it needs double HBONE
                    // through that gateway, which is not implemented: never dial it directly. Not an error.
                    if w.network_gateway.is_some() {
                        note_gateway_skipped(w, src);
                    }
                    return None;
                }
                let port = target_port(svc, svc_port, w, waypoint_mode)?;
                let ip = choose_ip(w, svc.ip_families, hint)?;
                let r = rank(&lb.routing_preferences, src, w);
                Some((
                    Upstream {
                        workload: Arc::clone(w),
                        ip,
                        port,
                    },
                    r,
                ))
            })
            .collect();
        match lb.mode {
            LbMode::Strict => {
                let full = lb.routing_preferences.len();
                candidates.retain(|(_, r)| *r == full);
            }
            LbMode::Failover => {
                let best = candidates.iter().map(|(_, r)| *r).max().unwrap_or(0);
                candidates.retain(|(_, r)| *r == best);
            }
            LbMode::Standard | LbMode::Passthrough => {}
        }
        weighted_pick(candidates.into_iter().map(|(u, _)| u).collect())
    }

    pub(super) fn resolve_waypoint(
        &self,
        gw: &GatewayAddress,
        src: &Workload,
    ) -> Option<ResolvedWaypoint> {
        let port = gw.hbone_mtls_port;
        let hint = src
            .workload_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let via_service = |svc: &Service, hint| {
            self.pick_endpoint(svc, port, src, hint, true)
                .map(|upstream| ResolvedWaypoint {
                    upstream,
                    service_sans: svc.subject_alt_names.clone(),
                })
        };
        match &gw.destination {
            GatewayDestination::Hostname(nh) => {
                if let Some(svc) = self.services.get(&nh.to_string()) {
                    return via_service(svc, hint);
                }
                // A workload addressed by hostname (e.g. a WorkloadEntry).
                let w = self.workloads_by_hostname(nh).into_iter().next()?;
                let ip = choose_ip(&w, None, hint)?;
                Some(ResolvedWaypoint {
                    upstream: Upstream {
                        workload: w,
                        ip,
                        port,
                    },
                    service_sans: Vec::new(),
                })
            }
            GatewayDestination::Address(na) => {
                if let Some(svc) = self.svc_by_vip_any(&na.network, na.address) {
                    return via_service(&svc, na.address);
                }
                let w = self.workload_by_ip(&na.network, na.address)?;
                Some(ResolvedWaypoint {
                    upstream: Upstream {
                        workload: w,
                        ip: na.address,
                        port,
                    },
                    service_sans: Vec::new(),
                })
            }
        }
    }

    /// Every workload that makes up the waypoint `gw` (all endpoints of its Service, or the workload itself),
    /// whether or not load balancing would pick it.
    pub(super) fn waypoint_workloads(&self, gw: &GatewayAddress) -> Vec<Arc<Workload>> {
        let svc = match &gw.destination {
            GatewayDestination::Hostname(nh) => self.services.get(&nh.to_string()).cloned(),
            GatewayDestination::Address(na) => self.svc_by_vip_any(&na.network, na.address),
        };
        if let Some(svc) = svc {
            return svc
                .endpoints
                .values()
                .filter_map(|ep| self.workloads.get(&ep.workload_uid).cloned())
                .collect();
        }
        match &gw.destination {
            GatewayDestination::Hostname(nh) => self.workloads_by_hostname(nh),
            GatewayDestination::Address(na) => self
                .workload_by_ip(&na.network, na.address)
                .into_iter()
                .collect(),
        }
    }

    /// Workloads with this hostname and namespace, by uid.
    fn workloads_by_hostname(&self, nh: &NamespacedHostname) -> Vec<Arc<Workload>> {
        let mut ws: Vec<Arc<Workload>> = self
            .workloads
            .values()
            .filter(|w| w.hostname == nh.hostname && w.namespace == nh.namespace)
            .cloned()
            .collect();
        ws.sort_by(|a, b| a.uid.cmp(&b.uid));
        ws
    }

    /// A service with this VIP, regardless of visibility (waypoint addresses are not client-chosen).
    fn svc_by_vip_any(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        let keys = self.svc_by_vip.get(&NetworkAddress::new(network, ip))?;
        keys.iter().find_map(|k| self.services.get(k)).cloned()
    }
}

/// Logs (once per process, at debug) that an endpoint behind a network gateway was skipped.
fn note_gateway_skipped(w: &Workload, src: &Workload) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        debug!(endpoint = %w.uid, endpoint.network = %w.network, src.network = %src.network,
            "skipping endpoints behind network gateways: double HBONE is not supported (logged once)");
    }
}

/// Weighted random by capacity; all-zero capacities fall back to uniform.
fn weighted_pick(mut candidates: Vec<Upstream>) -> Option<Upstream> {
    if candidates.len() <= 1 {
        return candidates.pop();
    }
    let total: u64 = candidates
        .iter()
        .map(|u| u64::from(u.workload.capacity))
        .sum();
    if total == 0 {
        let i = rand::random_range(0..candidates.len());
        return Some(candidates.swap_remove(i));
    }
    let mut pick = rand::random_range(0..total);
    for (i, u) in candidates.iter().enumerate() {
        let c = u64::from(u.workload.capacity);
        if pick < c {
            return Some(candidates.swap_remove(i));
        }
        pick -= c;
    }
    candidates.pop()
}
