//! Which `ambit.waypoint.Route` resources each waypoint needs: the routes of the Services bound to it and the
//! routes attached to its own Gateway. The xDS server sends a waypoint connection (node id `router~…` with
//! `GATEWAY_NAME`/`NAMESPACE` metadata) only these; other clients get every route.
//!
//! A route is visible to waypoint `(ns, gw)` when any of its parents is
//! - `GATEWAY` `(ns, gw)`, or
//! - `SERVICE` with a hostname whose computed WDS `Service` points at that waypoint: `waypoint`, or any of
//!   `weighted_waypoints` (whatever its weight: a waypoint that may be picked needs the routes).
//!
//! Waypoints are recognised in WDS by their address (hostname or IP, exactly as [`super::waypoint`] computes it),
//! so the scopes follow what ztunnels are actually told: a Service bound to a waypoint that is not ready has no
//! waypoint in WDS and its routes are visible to nobody scoped.
//!
//! VirtualService routes have `SERVICE` parents like any other and go through the same scoping. Backend policies
//! (DestinationRules) are scoped by [`backend_policy_scopes`]: the services a waypoint serves plus every backend
//! its visible routes send to.

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::waypoint::{Route, parent_ref};
use ambit_proto::workload::{Address, GatewayAddress, address, gateway_address};

use super::waypoint::Waypoint;
use crate::index::Name;

/// Waypoint Gateway `(namespace, name)` → the names of the routes it gets.
pub type RouteScopes = BTreeMap<Name, BTreeSet<String>>;

/// A comparable form of a waypoint's address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AddressKey {
    Hostname(String, String),
    Ip(String, Vec<u8>),
}

fn address_key(a: &GatewayAddress) -> Option<AddressKey> {
    match a.destination.as_ref()? {
        gateway_address::Destination::Hostname(h) => Some(AddressKey::Hostname(
            h.namespace.clone(),
            h.hostname.clone(),
        )),
        gateway_address::Destination::Address(n) => {
            Some(AddressKey::Ip(n.network.clone(), n.address.clone()))
        }
    }
}

/// Service `(namespace, hostname)` → the waypoints that serve it (per WDS).
fn serving<'a>(
    addresses: &'a BTreeMap<String, Address>,
    waypoints: &'a BTreeMap<Name, Waypoint>,
) -> BTreeMap<(&'a str, &'a str), BTreeSet<&'a Name>> {
    let mut by_address: BTreeMap<AddressKey, Vec<&Name>> = BTreeMap::new();
    for (key, w) in waypoints {
        if let Some(a) = address_key(&w.address) {
            by_address.entry(a).or_default().push(key);
        }
    }
    // Service `(namespace, hostname)` → the waypoints that serve it.
    let mut serving: BTreeMap<(&str, &str), BTreeSet<&Name>> = BTreeMap::new();
    for a in addresses.values() {
        let Some(address::Type::Service(s)) = &a.r#type else {
            continue;
        };
        let destinations = s.waypoint.iter().chain(
            s.weighted_waypoints
                .iter()
                .filter_map(|w| w.destination.as_ref()),
        );
        for d in destinations {
            if let Some(ws) = address_key(d).and_then(|k| by_address.get(&k)) {
                serving
                    .entry((s.namespace.as_str(), s.hostname.as_str()))
                    .or_default()
                    .extend(ws.iter().copied());
            }
        }
    }
    serving
}

/// Service `(namespace, hostname)` → the waypoints that serve it per WDS (`waypoint` or any of
/// `weighted_waypoints`); what scopes Service-targeted waypoint policies ([`super::waypoint_policy`]).
pub fn service_waypoints(
    addresses: &BTreeMap<String, Address>,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> BTreeMap<(String, String), BTreeSet<Name>> {
    serving(addresses, waypoints)
        .into_iter()
        .map(|((ns, h), ws)| {
            (
                (ns.to_owned(), h.to_owned()),
                ws.into_iter().cloned().collect(),
            )
        })
        .collect()
}

/// Computes the scopes from the computed routes and WDS addresses, and the waypoints (for their addresses).
pub fn route_scopes(
    routes: &BTreeMap<String, Route>,
    addresses: &BTreeMap<String, Address>,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> RouteScopes {
    let serving = serving(addresses, waypoints);
    let mut out = RouteScopes::new();
    for (name, r) in routes {
        for p in &r.parents {
            match parent_ref::Kind::try_from(p.kind) {
                Ok(parent_ref::Kind::Gateway) => {
                    out.entry((p.namespace.clone(), p.name.clone()))
                        .or_default()
                        .insert(name.clone());
                }
                Ok(parent_ref::Kind::Service) => {
                    for w in serving
                        .get(&(p.namespace.as_str(), p.name.as_str()))
                        .into_iter()
                        .flatten()
                    {
                        out.entry((*w).clone()).or_default().insert(name.clone());
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// Which `ambit.waypoint.BackendPolicy` (by service hostname) each waypoint needs: the policy of every service
/// it serves (WDS `waypoint`/`weighted_waypoints`) and of every backend (and mirror target) of the routes in its
/// scope, since a waypoint sends straight to a backend's endpoints. Only hostnames in `policies` are listed.
pub fn backend_policy_scopes(
    routes: &BTreeMap<String, Route>,
    scopes: &RouteScopes,
    addresses: &BTreeMap<String, Address>,
    waypoints: &BTreeMap<Name, Waypoint>,
    policies: &BTreeSet<String>,
) -> RouteScopes {
    let mut out = RouteScopes::new();
    for ((_, hostname), ws) in serving(addresses, waypoints) {
        if policies.contains(hostname) {
            for w in ws {
                out.entry(w.clone())
                    .or_default()
                    .insert(hostname.to_owned());
            }
        }
    }
    for (w, names) in scopes {
        for r in names.iter().filter_map(|n| routes.get(n)) {
            let mirrors = r
                .filters
                .iter()
                .chain(r.backends.iter().flat_map(|b| b.filters.iter()))
                .filter_map(|f| f.request_mirror.as_ref()?.backend.as_ref());
            for b in r.backends.iter().chain(mirrors) {
                if policies.contains(&b.hostname) {
                    out.entry(w.clone()).or_default().insert(b.hostname.clone());
                }
            }
        }
    }
    out
}

/// The route names whose visibility differs between `before` and `now` for some waypoint.
pub fn changed_visibility(before: &RouteScopes, now: &RouteScopes) -> BTreeSet<String> {
    let empty = BTreeSet::new();
    let mut out = BTreeSet::new();
    for key in before.keys().chain(now.keys()) {
        let (b, n) = (
            before.get(key).unwrap_or(&empty),
            now.get(key).unwrap_or(&empty),
        );
        if b != n {
            out.extend(b.symmetric_difference(n).cloned());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use ambit_proto::waypoint::ParentRef;
    use ambit_proto::workload::{NamespacedHostname, NetworkAddress, Service, WeightedWaypoint};

    use super::super::waypoint::{AllowedFrom, HBONE_PORT, WaypointFor};
    use super::*;

    fn hostname(ns: &str, h: &str) -> GatewayAddress {
        GatewayAddress {
            destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                namespace: ns.into(),
                hostname: h.into(),
            })),
            hbone_mtls_port: HBONE_PORT,
        }
    }

    fn ip(last: u8) -> GatewayAddress {
        GatewayAddress {
            destination: Some(gateway_address::Destination::Address(NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 5, last],
                length: None,
            })),
            hbone_mtls_port: HBONE_PORT,
        }
    }

    fn waypoints() -> BTreeMap<Name, Waypoint> {
        let wp = |address| Waypoint {
            address,
            accepts: WaypointFor::Service,
            ready: true,
            allowed: AllowedFrom::Same,
            service_account: None,
            identities: Vec::new(),
        };
        BTreeMap::from([
            (
                ("n".into(), "a".into()),
                wp(hostname("n", "a.n.svc.cluster.local")),
            ),
            (
                ("n".into(), "b".into()),
                wp(hostname("n", "b.n.svc.cluster.local")),
            ),
            (("n".into(), "c".into()), wp(ip(5))),
        ])
    }

    fn service(
        name: &str,
        waypoint: Option<GatewayAddress>,
        weighted: &[GatewayAddress],
    ) -> Address {
        Address {
            r#type: Some(address::Type::Service(Service {
                name: name.into(),
                namespace: "n".into(),
                hostname: format!("{name}.n.svc.cluster.local"),
                waypoint,
                weighted_waypoints: weighted
                    .iter()
                    .map(|d| WeightedWaypoint {
                        destination: Some(d.clone()),
                        weight: 1,
                    })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn route(parents: &[(parent_ref::Kind, &str)]) -> Route {
        Route {
            parents: parents
                .iter()
                .map(|(kind, name)| ParentRef {
                    kind: *kind as i32,
                    name: (*name).into(),
                    namespace: "n".into(),
                    port: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn scopes() -> RouteScopes {
        use parent_ref::Kind::{Gateway, Service};
        let addresses = BTreeMap::from([
            (
                "n/on-a".into(),
                service("on-a", Some(hostname("n", "a.n.svc.cluster.local")), &[]),
            ),
            ("n/unbound".into(), service("unbound", None, &[])),
            (
                "n/split".into(),
                service(
                    "split",
                    Some(hostname("n", "a.n.svc.cluster.local")),
                    &[hostname("n", "a.n.svc.cluster.local"), ip(5)],
                ),
            ),
            (
                "n/elsewhere".into(),
                service(
                    "elsewhere",
                    Some(hostname("n", "gone.n.svc.cluster.local")),
                    &[],
                ),
            ),
        ]);
        let routes = BTreeMap::from([
            (
                "svc-a".into(),
                route(&[(Service, "on-a.n.svc.cluster.local")]),
            ),
            ("gw-b".into(), route(&[(Gateway, "b")])),
            (
                "unbound".into(),
                route(&[(Service, "unbound.n.svc.cluster.local")]),
            ),
            (
                "split".into(),
                route(&[(Service, "split.n.svc.cluster.local")]),
            ),
            (
                "unknown-waypoint".into(),
                route(&[(Service, "elsewhere.n.svc.cluster.local")]),
            ),
            (
                "both".into(),
                route(&[(Service, "on-a.n.svc.cluster.local"), (Gateway, "c")]),
            ),
        ]);
        route_scopes(&routes, &addresses, &waypoints())
    }

    fn names(s: &RouteScopes, gw: &str) -> Vec<String> {
        s.get(&("n".to_owned(), gw.to_owned()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn routes_go_to_the_waypoints_of_their_parents() {
        let s = scopes();
        // Service parent bound to a: a only; gateway parent b: b only; a weighted waypoint (by IP) counts.
        assert_eq!(names(&s, "a"), vec!["both", "split", "svc-a"]);
        assert_eq!(names(&s, "b"), vec!["gw-b"]);
        assert_eq!(names(&s, "c"), vec!["both", "split"]);
        // Unbound services' routes, and services pointing at an address that is no waypoint, are nobody's.
        assert!(s.values().all(|v| !v.contains("unbound")));
        assert!(s.values().all(|v| !v.contains("unknown-waypoint")));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn changed_visibility_is_the_per_waypoint_difference() {
        let before = scopes();
        let mut now = before.clone();
        // "svc-a" moves from a to b; c loses "split"; a new waypoint d gets "gw-d".
        now.get_mut(&("n".to_owned(), "a".to_owned()))
            .unwrap()
            .remove("svc-a");
        now.get_mut(&("n".to_owned(), "b".to_owned()))
            .unwrap()
            .insert("svc-a".into());
        now.get_mut(&("n".to_owned(), "c".to_owned()))
            .unwrap()
            .remove("split");
        now.insert(
            ("n".into(), "d".into()),
            BTreeSet::from(["gw-d".to_owned()]),
        );
        let changed: Vec<String> = changed_visibility(&before, &now).into_iter().collect();
        assert_eq!(changed, vec!["gw-d", "split", "svc-a"]);
        assert!(changed_visibility(&now, &now).is_empty());
    }
}
