//! Waypoint binding (`istio.io/use-waypoint`), following istiod's `waypoints.go`:
//! the object's own label wins (`none` opts out), then its namespace's; the named Gateway must exist, be of a
//! waypoint class and have an address; and it must accept the traffic type (`istio.io/waypoint-for`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::workload::{GatewayAddress, NamespacedHostname, NetworkAddress, gateway_address};

use super::{ComputeConfig, ip_bytes, labels_of, service_hostname};
use crate::index::{Index, Name};

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const MANAGED: &str = "gateway.istio.io/managed";
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// GatewayClasses whose Gateways are waypoints.
pub const WAYPOINT_CLASSES: [&str; 3] = [
    "ambit-waypoint",
    "istio-waypoint",
    "istio-agentgateway-waypoint",
];
/// Port of the waypoint's HBONE listener.
pub const HBONE_PORT: u32 = 15008;

/// Which traffic a waypoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

/// Which kind of object asks for a waypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Service,
    Workload,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    pub address: GatewayAddress,
    pub accepts: WaypointFor,
}

impl Waypoint {
    fn accepts(&self, target: Target) -> bool {
        matches!(
            (self.accepts, target),
            (WaypointFor::All, _)
                | (WaypointFor::Service, Target::Service)
                | (WaypointFor::Workload, Target::Workload)
        )
    }
}

/// Every usable waypoint: Gateways of a waypoint class that have an address.
pub fn waypoints(index: &Index, cfg: &ComputeConfig) -> BTreeMap<Name, Waypoint> {
    let mut out = BTreeMap::new();
    for ((ns, name), gw) in &index.gateways {
        if !WAYPOINT_CLASSES.contains(&gw.spec.gateway_class_name.as_str()) {
            continue;
        }
        let accepts = match labels_of(&gw.metadata)
            .get(WAYPOINT_FOR)
            .map(String::as_str)
        {
            None | Some("service") => WaypointFor::Service,
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some(_) => WaypointFor::None,
        };
        let published = gw
            .status
            .as_ref()
            .and_then(|s| s.addresses.first())
            .or(gw.spec.addresses.first());
        let destination = match published {
            Some(a) => match (a.kind.as_deref(), a.value.parse::<IpAddr>()) {
                (None | Some("IPAddress"), Ok(ip)) => {
                    gateway_address::Destination::Address(NetworkAddress {
                        network: cfg.network.clone(),
                        address: ip_bytes(ip),
                        length: None,
                    })
                }
                _ => gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: ns.clone(),
                    hostname: a.value.clone(),
                }),
            },
            // Local mode: nobody writes Gateway status, so a Service named like the Gateway is its address.
            None if index.services.contains_key(&(ns.clone(), name.clone())) => {
                gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: ns.clone(),
                    hostname: service_hostname(name, ns, cfg),
                })
            }
            None => continue,
        };
        out.insert(
            (ns.clone(), name.clone()),
            Waypoint {
                address: GatewayAddress {
                    destination: Some(destination),
                    hbone_mtls_port: HBONE_PORT,
                },
                accepts,
            },
        );
    }
    out
}

/// The waypoint for an object with `labels` in namespace `ns`, or `None`.
pub fn resolve(
    labels: &BTreeMap<String, String>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
    target: Target,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> Option<GatewayAddress> {
    let lookup = |l: &BTreeMap<String, String>| -> Option<Result<Name, ()>> {
        let name = l.get(USE_WAYPOINT)?;
        if name == "none" {
            return Some(Err(()));
        }
        let wns = l
            .get(USE_WAYPOINT_NAMESPACE)
            .filter(|s| !s.is_empty())
            .map_or(ns, String::as_str);
        Some(Ok((wns.to_owned(), name.clone())))
    };
    // The object's own label decides when present (including `none`); then the namespace's.
    let key = match lookup(labels) {
        Some(k) => k,
        None => lookup(ns_labels)?,
    };
    let wp = waypoints.get(&key.ok()?)?;
    // A mismatching traffic type means no binding (istiod reports it on the object's status).
    wp.accepts(target).then(|| wp.address.clone())
}

/// Whether the object is (part of) a waypoint itself; those never get a waypoint.
pub fn is_waypoint_object(
    labels: &BTreeMap<String, String>,
    ns: &str,
    name: Option<&str>,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> bool {
    if labels
        .get(MANAGED)
        .is_some_and(|v| v == "istio.io-mesh-controller")
    {
        return true;
    }
    if let Some(gw) = labels.get(GATEWAY_NAME)
        && waypoints.contains_key(&(ns.to_owned(), gw.clone()))
    {
        return true;
    }
    name.is_some_and(|n| waypoints.contains_key(&(ns.to_owned(), n.to_owned())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn wps() -> BTreeMap<Name, Waypoint> {
        let addr = |h: &str| GatewayAddress {
            destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                namespace: "a".into(),
                hostname: h.into(),
            })),
            hbone_mtls_port: HBONE_PORT,
        };
        BTreeMap::from([
            (
                ("a".into(), "svc-wp".into()),
                Waypoint {
                    address: addr("svc"),
                    accepts: WaypointFor::Service,
                },
            ),
            (
                ("a".into(), "all-wp".into()),
                Waypoint {
                    address: addr("all"),
                    accepts: WaypointFor::All,
                },
            ),
        ])
    }

    fn host(g: Option<GatewayAddress>) -> Option<String> {
        match g?.destination? {
            gateway_address::Destination::Hostname(h) => Some(h.hostname),
            gateway_address::Destination::Address(_) => None,
        }
    }

    #[test]
    fn object_label_beats_namespace_and_none_opts_out() {
        let w = wps();
        let ns = map(&[(USE_WAYPOINT, "all-wp")]);
        assert_eq!(
            host(resolve(&map(&[]), "a", &ns, Target::Workload, &w)).as_deref(),
            Some("all")
        );
        assert_eq!(
            host(resolve(
                &map(&[(USE_WAYPOINT, "none")]),
                "a",
                &ns,
                Target::Workload,
                &w
            )),
            None
        );
        assert_eq!(
            host(resolve(
                &map(&[(USE_WAYPOINT, "svc-wp")]),
                "a",
                &ns,
                Target::Service,
                &w
            ))
            .as_deref(),
            Some("svc")
        );
    }

    #[test]
    fn traffic_type_and_namespace_are_checked() {
        let w = wps();
        let none = map(&[]);
        // A service waypoint does not take workload traffic.
        assert_eq!(
            resolve(
                &map(&[(USE_WAYPOINT, "svc-wp")]),
                "a",
                &none,
                Target::Workload,
                &w
            ),
            None
        );
        // Cross-namespace needs use-waypoint-namespace.
        assert_eq!(
            resolve(
                &map(&[(USE_WAYPOINT, "all-wp")]),
                "b",
                &none,
                Target::Service,
                &w
            ),
            None
        );
        let l = map(&[(USE_WAYPOINT, "all-wp"), (USE_WAYPOINT_NAMESPACE, "a")]);
        assert!(resolve(&l, "b", &none, Target::Service, &w).is_some());
        // Unknown waypoint: no binding.
        assert_eq!(
            resolve(
                &map(&[(USE_WAYPOINT, "missing")]),
                "a",
                &none,
                Target::Service,
                &w
            ),
            None
        );
    }
}
