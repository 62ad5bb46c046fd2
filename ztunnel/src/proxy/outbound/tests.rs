//! `route` (spec 1.6) for waypoints (spec 1.9): service- and workload-addressed traffic, the waypoint's own
//! traffic, and waypoints that cannot be resolved.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::localconfig;
use crate::state::{AppTunnelProtocol, ApplicationTunnel, HealthStatus, WeightedWaypoint};

const WAYPOINT: &str = "default/waypoint.default.svc.cluster.local";

/// The world every case starts from (in the local config's shape):
/// * `client` 10.0.0.1; `server` 10.0.0.2 behind `server` (10.96.0.2:80 → 8080), no waypoint anywhere;
/// * `reviews` 10.0.0.3 behind `reviews` (10.96.0.3:9080) whose Service uses the `waypoint` waypoint;
/// * `ratings` 10.0.0.4 behind `ratings` (10.96.0.4:80 → 8080): the pod (not the Service) uses the waypoint;
/// * the waypoint: Service `waypoint` (10.96.0.50, port 15008) with two native-HBONE pods, `waypoint-a`
///   10.0.0.50 and `waypoint-b` 10.0.0.51, service account `waypoint`.
const WORLD: &str = r#"
workloads:
- {uid: client, name: client, namespace: default, serviceAccount: client, workloadIps: [10.0.0.1], protocol: HBONE}
- uid: server
  name: server
  namespace: default
  serviceAccount: server
  workloadIps: [10.0.0.2]
  protocol: HBONE
  services: {default/server.default.svc.cluster.local: {}}
- uid: reviews
  name: reviews
  namespace: default
  serviceAccount: reviews
  workloadIps: [10.0.0.3]
  protocol: HBONE
  services: {default/reviews.default.svc.cluster.local: {}}
- uid: ratings
  name: ratings
  namespace: default
  serviceAccount: ratings
  workloadIps: [10.0.0.4]
  protocol: HBONE
  waypoint: {destination: default/waypoint.default.svc.cluster.local}
  services: {default/ratings.default.svc.cluster.local: {}}
- uid: waypoint-a
  name: waypoint-a
  namespace: default
  serviceAccount: waypoint
  workloadIps: [10.0.0.50]
  protocol: HBONE
  nativeTunnel: true
  services: {default/waypoint.default.svc.cluster.local: {}}
- uid: waypoint-b
  name: waypoint-b
  namespace: default
  serviceAccount: waypoint
  workloadIps: [10.0.0.51]
  protocol: HBONE
  nativeTunnel: true
  status: Unhealthy
  services: {default/waypoint.default.svc.cluster.local: {}}
services:
- {name: server, namespace: default, hostname: server.default.svc.cluster.local, vips: [/10.96.0.2], ports: {80: 8080}}
- name: reviews
  namespace: default
  hostname: reviews.default.svc.cluster.local
  vips: [/10.96.0.3]
  ports: {9080: 9080}
  waypoint: {destination: default/waypoint.default.svc.cluster.local}
- {name: ratings, namespace: default, hostname: ratings.default.svc.cluster.local, vips: [/10.96.0.4], ports: {80: 8080}}
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  vips: [/10.96.0.50]
  ports: {15008: 15008}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn world() -> ProxyState {
    let st = ProxyState::new();
    st.replace_all(localconfig::parse(WORLD).unwrap());
    st
}

fn gw(destination: &str) -> GatewayAddress {
    GatewayAddress {
        destination: destination.parse().unwrap(),
        hbone_mtls_port: 15008,
    }
}

fn edit_service(st: &ProxyState, key: &str, edit: impl FnOnce(&mut Service)) {
    let mut s = (*st.service_by_key(key).unwrap()).clone();
    s.endpoints.clear(); // derived again from the workloads
    edit(&mut s);
    st.insert_service(s);
}

fn edit_workload(st: &ProxyState, uid: &str, edit: impl FnOnce(&mut Workload)) {
    let mut w = (*st.workload_by_uid(uid).unwrap()).clone();
    edit(&mut w);
    st.insert_workload(w);
}

/// The route as one comparable line.
fn show(r: &Result<Route, ProxyError>) -> String {
    match r {
        Ok(Route::Hbone {
            next_hop,
            authority,
            expected,
            workload,
            service,
            via_waypoint,
        }) => {
            let expected: Vec<String> = expected.iter().map(|i| i.to_string()).collect();
            format!(
                "hbone {next_hop} authority={authority} expected={expected:?} workload={} service={} waypoint={via_waypoint}",
                workload.uid,
                service.as_ref().map_or("-", |s| s.name.as_str()),
            )
        }
        Ok(Route::Tcp {
            dst,
            workload,
            service,
        }) => format!(
            "tcp {dst} workload={} service={}",
            workload.uid,
            service.as_ref().map_or("-", |s| s.name.as_str())
        ),
        Ok(Route::Passthrough { dst }) => format!("passthrough {dst}"),
        Err(e) => format!("error {e}"),
    }
}

/// Routes `dst` for the connection from workload `src_uid` at `downstream`.
fn route_from(st: &ProxyState, src_uid: &str, downstream: &str, dst: &str) -> String {
    let src = st.workload_by_uid(src_uid).unwrap();
    show(&route(st, &src, ip(downstream), addr(dst)))
}

const TO_WAYPOINT_A: &str = "hbone 10.0.0.50:15008";
const WAYPOINT_ID: &str = "[\"spiffe://cluster.local/ns/default/sa/waypoint\"]";

struct Case {
    name: &'static str,
    setup: fn(&ProxyState),
    src: (&'static str, &'static str),
    dst: &'static str,
    want: String,
}

fn no_setup(_: &ProxyState) {}

fn cases() -> Vec<Case> {
    let client = ("client", "10.0.0.1");
    let direct = |ip: &str, port: u16, uid: &str, svc: &str| {
        format!(
            "hbone {ip}:15008 authority={ip}:{port} expected=[\"spiffe://cluster.local/ns/default/sa/{uid}\"] \
             workload={uid} service={svc} waypoint=false"
        )
    };
    let via = |authority: &str, svc: &str| {
        format!(
            "{TO_WAYPOINT_A} authority={authority} expected={WAYPOINT_ID} workload=waypoint-a service={svc} \
             waypoint=true"
        )
    };
    vec![
        Case {
            name: "no waypoint: service VIP load-balanced to the endpoint's target port",
            setup: no_setup,
            src: client,
            dst: "10.96.0.2:80",
            want: direct("10.0.0.2", 8080, "server", "server"),
        },
        Case {
            name: "service waypoint by hostname: waypoint pod's 15008, authority = VIP:service port",
            setup: no_setup,
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "service waypoint: a port the service does not list is still the original destination",
            setup: no_setup,
            src: client,
            dst: "10.96.0.3:7777",
            want: via("10.96.0.3:7777", "reviews"),
        },
        Case {
            name: "service waypoint: the waypoint pod's own mapping of 15008 wins over the Service's",
            setup: |st| {
                edit_workload(st, "waypoint-a", |w| {
                    w.services
                        .insert(WAYPOINT.into(), [(15008, 15019)].into_iter().collect());
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: format!(
                "hbone 10.0.0.50:15019 authority=10.96.0.3:9080 expected={WAYPOINT_ID} workload=waypoint-a \
                 service=reviews waypoint=true"
            ),
        },
        Case {
            name: "service waypoint whose Service lacks 15008: resolvable only with an application tunnel",
            setup: |st| {
                edit_service(st, WAYPOINT, |s| s.ports = [(80, 80)].into_iter().collect());
                edit_workload(st, "waypoint-a", |w| {
                    w.application_tunnel = Some(ApplicationTunnel {
                        protocol: AppTunnelProtocol::Proxy,
                        port: Some(15088),
                    })
                });
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "service waypoint whose Service lacks 15008, no application tunnel: unresolvable (upstream)",
            setup: |st| edit_service(st, WAYPOINT, |s| s.ports = [(80, 80)].into_iter().collect()),
            src: client,
            dst: "10.96.0.3:9080",
            want: "error waypoint for reviews.default.svc.cluster.local could not be resolved"
                .into(),
        },
        Case {
            name: "service waypoint by address (the waypoint pod's IP)",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.waypoint = Some(gw("/10.0.0.50"))
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "service waypoint by address (the waypoint Service's VIP ⇒ one of its endpoints)",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.waypoint = Some(gw("/10.96.0.50"))
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "weighted waypoints with all-zero weights are ignored: `waypoint` is used",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.weighted_waypoints = vec![WeightedWaypoint {
                        destination: gw("default/nowhere.default.svc.cluster.local"),
                        weight: 0,
                    }];
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "weighted waypoints: only non-zero weights are sampled, and they win over `waypoint`",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.waypoint = Some(gw("default/nowhere.default.svc.cluster.local"));
                    s.weighted_waypoints = vec![
                        WeightedWaypoint {
                            destination: gw("default/nowhere.default.svc.cluster.local"),
                            weight: 0,
                        },
                        WeightedWaypoint {
                            destination: gw(WAYPOINT),
                            weight: 3,
                        },
                    ];
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "service without waypoint whose pod has one: service-addressed traffic skips the workload waypoint",
            setup: no_setup,
            src: client,
            dst: "10.96.0.4:80",
            want: direct("10.0.0.4", 8080, "ratings", "ratings"),
        },
        Case {
            name: "pod IP with a workload waypoint: to the waypoint, authority = pod IP:port",
            setup: no_setup,
            src: client,
            dst: "10.0.0.4:8080",
            want: via("10.0.0.4:8080", "-"),
        },
        Case {
            name: "pod IP whose waypoint is the source: direct",
            setup: no_setup,
            src: ("waypoint-a", "10.0.0.50"),
            dst: "10.0.0.4:8080",
            want: direct("10.0.0.4", 8080, "ratings", "-"),
        },
        Case {
            name: "pod IP whose waypoint is the source, another (unhealthy) replica than LB would pick: direct",
            setup: no_setup,
            src: ("waypoint-b", "10.0.0.51"),
            dst: "10.0.0.4:8080",
            want: direct("10.0.0.4", 8080, "ratings", "-"),
        },
        Case {
            name: "the waypoint's identity from an address that is not the waypoint's: to the waypoint",
            setup: no_setup,
            src: ("waypoint-a", "10.0.0.99"),
            dst: "10.0.0.4:8080",
            want: via("10.0.0.4:8080", "-"),
        },
        Case {
            name: "pod bound only to a service waypoint, addressed by pod IP: direct",
            setup: no_setup,
            src: client,
            dst: "10.0.0.3:9080",
            want: direct("10.0.0.3", 9080, "reviews", "-"),
        },
        Case {
            // Upstream does the same: only workload-addressed traffic from a waypoint skips the waypoint. A real
            // waypoint is never captured (native HBONE), so its traffic never reaches an outbound ztunnel.
            name: "service VIP the source waypoint serves: still to the waypoint (as upstream)",
            setup: no_setup,
            src: ("waypoint-a", "10.0.0.50"),
            dst: "10.96.0.3:9080",
            want: via("10.96.0.3:9080", "reviews"),
        },
        Case {
            name: "service waypoint that does not exist: error",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.waypoint = Some(gw("default/nowhere.default.svc.cluster.local"))
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: "error waypoint for reviews.default.svc.cluster.local could not be resolved"
                .into(),
        },
        Case {
            name: "service waypoint by an address nobody has: error",
            setup: |st| {
                edit_service(st, "default/reviews.default.svc.cluster.local", |s| {
                    s.waypoint = Some(gw("/10.9.9.9"))
                })
            },
            src: client,
            dst: "10.96.0.3:9080",
            want: "error waypoint for reviews.default.svc.cluster.local could not be resolved"
                .into(),
        },
        Case {
            name: "workload waypoint without a healthy pod: error",
            setup: |st| edit_workload(st, "waypoint-a", |w| w.status = HealthStatus::Unhealthy),
            src: client,
            dst: "10.0.0.4:8080",
            want: "error waypoint for ratings could not be resolved".into(),
        },
    ]
}

#[test]
fn waypoint_routes() {
    for c in cases() {
        let st = world();
        (c.setup)(&st);
        // Weighted sampling and load balancing are random: the answer must be the same every time.
        for _ in 0..20 {
            assert_eq!(
                route_from(&st, c.src.0, c.src.1, c.dst),
                c.want,
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn waypoint_expects_the_waypoint_services_sans_too() {
    let st = world();
    edit_service(&st, WAYPOINT, |s| {
        s.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/waypoint-svc".into()]
    });
    let r = route_from(&st, "client", "10.0.0.1", "10.96.0.3:9080");
    assert!(
        r.contains(
            "expected=[\"spiffe://cluster.local/ns/default/sa/waypoint\", \
             \"spiffe://cluster.local/ns/default/sa/waypoint-svc\"]"
        ),
        "{r}"
    );
}

#[test]
fn weighted_waypoints_follow_the_weights() {
    let st = world();
    // A second waypoint, reachable by address.
    edit_service(&st, "default/reviews.default.svc.cluster.local", |s| {
        s.weighted_waypoints = vec![
            WeightedWaypoint {
                destination: gw(WAYPOINT),
                weight: 1,
            },
            WeightedWaypoint {
                destination: gw("/10.0.0.2"),
                weight: 3,
            },
        ];
    });
    let mut to_server = 0;
    for _ in 0..2000 {
        let r = route_from(&st, "client", "10.0.0.1", "10.96.0.3:9080");
        assert!(
            r.contains("authority=10.96.0.3:9080") && r.contains("waypoint=true"),
            "{r}"
        );
        if r.starts_with("hbone 10.0.0.2:15008") {
            to_server += 1;
        } else {
            assert!(r.starts_with(TO_WAYPOINT_A), "{r}");
        }
    }
    // Expected 1500; the bounds are ~10 standard deviations wide.
    assert!((1300..1700).contains(&to_server), "{to_server}");
}
