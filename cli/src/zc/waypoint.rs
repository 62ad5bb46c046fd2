//! The WAYPOINT column: which waypoint a workload's or a service's traffic really goes through, by the name of the
//! waypoint (`<namespace>/<name>`), resolved the way the ztunnel resolves it from the same dump.
//!
//! A waypoint reference is an address (`<network>/<ip>`: a waypoint Service's VIP, or a waypoint pod's IP) or a
//! hostname (`<namespace>/<hostname>`: a Service, or a workload such as a WorkloadEntry). A service with weighted
//! waypoints (a waypoint canary) uses them in proportion to their weights whenever one weight is non-zero, and its
//! single `waypoint` otherwise. A reference the dump cannot resolve is shown as `NA`, as istioctl does; the
//! ztunnel refuses such traffic, and so does it when the waypoint has no healthy endpoint, so both come with a
//! warning.

use super::model::{Dump, Service, Workload};

/// What one waypoint reference resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A Service or a workload: `<namespace>/<name>`, and how many of its endpoints are healthy.
    Found { name: String, healthy: usize },
    /// Neither a Service nor a workload of the dump has this address or hostname.
    Unknown(String),
}

impl Resolved {
    pub fn cell(&self) -> String {
        match self {
            Resolved::Found { name, .. } => name.clone(),
            Resolved::Unknown(_) => "NA".to_owned(),
        }
    }
}

/// One waypoint use: the waypoint, and its weight when the choice is weighted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointUse {
    pub waypoint: Resolved,
    pub weight: Option<u32>,
}

/// Resolves waypoint references against one dump.
pub struct Resolver<'a> {
    dump: &'a Dump,
}

impl<'a> Resolver<'a> {
    pub fn new(dump: &'a Dump) -> Self {
        Resolver { dump }
    }

    /// The waypoint traffic addressed to this workload goes through (none when it has no waypoint).
    pub fn for_workload(&self, w: &Workload) -> Vec<WaypointUse> {
        w.waypoint
            .iter()
            .map(|dst| WaypointUse {
                waypoint: self.resolve(dst),
                weight: None,
            })
            .collect()
    }

    /// The waypoints traffic addressed to this service goes through.
    pub fn for_service(&self, s: &Service) -> Vec<WaypointUse> {
        let weighted: Vec<(&str, u32)> = s
            .weighted_waypoints
            .iter()
            .filter_map(|w| w.destination.as_deref().map(|d| (d, w.weight)))
            .collect();
        if weighted.iter().any(|(_, weight)| *weight > 0) {
            return weighted
                .into_iter()
                .filter(|(_, weight)| *weight > 0)
                .map(|(dst, weight)| WaypointUse {
                    waypoint: self.resolve(dst),
                    weight: Some(weight),
                })
                .collect();
        }
        s.waypoint
            .iter()
            .map(|dst| WaypointUse {
                waypoint: self.resolve(dst),
                weight: None,
            })
            .collect()
    }

    /// A waypoint reference by a Service (its `<namespace>/<hostname>` or a VIP), else by a workload (its
    /// hostname, or one of its IPs on its network).
    pub fn resolve(&self, dst: &str) -> Resolved {
        let d = self.dump;
        if let Some(s) = d
            .services
            .iter()
            .find(|s| s.key() == dst || s.vips.iter().any(|v| v == dst))
        {
            return Resolved::Found {
                name: format!("{}/{}", s.namespace, s.name),
                healthy: self.healthy_endpoints(s),
            };
        }
        if let Some(w) = d.workloads.iter().find(|w| {
            (!w.hostname.is_empty() && format!("{}/{}", w.namespace, w.hostname) == dst)
                || w.workload_ips
                    .iter()
                    .any(|ip| format!("{}/{ip}", w.network) == dst)
        }) {
            return Resolved::Found {
                name: format!("{}/{}", w.namespace, w.name),
                healthy: usize::from(w.is_healthy()),
            };
        }
        Resolved::Unknown(dst.to_owned())
    }

    /// Endpoints whose workload is in the dump and healthy (istioctl's ENDPOINTS numerator).
    pub fn healthy_endpoints(&self, s: &Service) -> usize {
        s.endpoints
            .iter()
            .filter(|uid| {
                self.dump
                    .workloads
                    .iter()
                    .any(|w| &w.uid == *uid && w.is_healthy())
            })
            .count()
    }
}

/// The WAYPOINT cell: `None`, one waypoint, or weighted ones as `<ns>/<name>(<weight>)`, comma-separated.
pub fn cell(uses: &[WaypointUse]) -> String {
    if uses.is_empty() {
        return "None".to_owned();
    }
    uses.iter()
        .map(|u| match u.weight {
            Some(w) => format!("{}({w})", u.waypoint.cell()),
            None => u.waypoint.cell(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Warnings about the waypoints `what` (e.g. `workload bookinfo/ratings-v1`) cannot use.
pub fn warnings(what: &str, uses: &[WaypointUse]) -> Vec<String> {
    uses.iter()
        .filter_map(|u| match &u.waypoint {
            Resolved::Unknown(dst) => Some(format!(
                "{what}: waypoint {dst} is not in this ztunnel's config: its traffic is refused (unknown waypoint)"
            )),
            Resolved::Found { name, healthy: 0 } => Some(format!(
                "{what}: waypoint {name} has no healthy endpoint: its traffic fails until one is ready"
            )),
            Resolved::Found { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Dump {
        Dump::parse(
            br#"{
            "workloads": [
              {"uid": "wp-1", "name": "waypoint-abc", "namespace": "bookinfo", "workloadIps": ["10.244.1.9"]},
              {"uid": "vm", "name": "vm", "namespace": "ext", "workloadIps": [], "hostname": "vm.example.com"},
              {"uid": "sick", "name": "sick-wp", "namespace": "x", "workloadIps": ["10.244.1.10"],
               "network": "n1", "status": "Unhealthy"}
            ],
            "services": [
              {"name": "waypoint", "namespace": "bookinfo", "hostname": "waypoint.bookinfo.svc.cluster.local",
               "vips": ["/10.96.0.20"], "endpoints": {"wp-1": {"workloadUid": "wp-1"}}},
              {"name": "canary", "namespace": "bookinfo", "hostname": "canary.bookinfo.svc.cluster.local",
               "vips": ["/10.96.0.21"], "endpoints": {}},
              {"name": "web", "namespace": "default", "hostname": "web.default.svc.cluster.local",
               "waypoint": {"destination": "/10.96.0.20"},
               "weightedWaypoints": [
                 {"destination": {"destination": "/10.96.0.20"}, "weight": 90},
                 {"destination": {"destination": "bookinfo/canary.bookinfo.svc.cluster.local"}, "weight": 10}]},
              {"name": "plain", "namespace": "default", "hostname": "plain.default.svc.cluster.local",
               "waypoint": {"destination": "/10.96.0.21"},
               "weightedWaypoints": [{"destination": {"destination": "/10.96.0.20"}, "weight": 0}]}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn resolves_by_vip_hostname_and_workload() {
        let d = dump();
        let r = Resolver::new(&d);
        let found = |name: &str, healthy| Resolved::Found {
            name: name.into(),
            healthy,
        };
        assert_eq!(r.resolve("/10.96.0.20"), found("bookinfo/waypoint", 1));
        assert_eq!(
            r.resolve("bookinfo/waypoint.bookinfo.svc.cluster.local"),
            found("bookinfo/waypoint", 1)
        );
        assert_eq!(r.resolve("/10.244.1.9"), found("bookinfo/waypoint-abc", 1));
        assert_eq!(r.resolve("ext/vm.example.com"), found("ext/vm", 1));
        assert_eq!(r.resolve("n1/10.244.1.10"), found("x/sick-wp", 0));
        // The right IP on another network is another address.
        assert_eq!(
            r.resolve("n2/10.244.1.10"),
            Resolved::Unknown("n2/10.244.1.10".into())
        );
    }

    #[test]
    fn weighted_waypoints_win_when_a_weight_is_set() {
        let d = dump();
        let r = Resolver::new(&d);
        let web = &d.services[2];
        assert_eq!(
            cell(&r.for_service(web)),
            "bookinfo/waypoint(90),bookinfo/canary(10)"
        );
        let plain = &d.services[3];
        assert_eq!(cell(&r.for_service(plain)), "bookinfo/canary");
        assert_eq!(cell(&r.for_service(&d.services[0])), "None");
        let w = warnings("service default/web", &r.for_service(web));
        assert_eq!(
            w,
            [
                "service default/web: waypoint bookinfo/canary has no healthy endpoint: its traffic fails until one is ready"
            ]
        );
    }

    #[test]
    fn unknown_waypoints_show_na_and_warn() {
        let d = dump();
        let r = Resolver::new(&d);
        let uses = vec![WaypointUse {
            waypoint: r.resolve("bookinfo/gone.bookinfo.svc.cluster.local"),
            weight: None,
        }];
        assert_eq!(cell(&uses), "NA");
        let w = warnings("workload bookinfo/ratings", &uses);
        assert!(
            w[0].contains(
                "bookinfo/gone.bookinfo.svc.cluster.local is not in this ztunnel's config"
            )
        );
    }
}
