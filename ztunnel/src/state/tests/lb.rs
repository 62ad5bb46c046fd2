//! Load balancing (spec 1.6) and waypoint resolution (spec 1.9).

use super::*;

// ----- load balancing -----

/// A client workload on the default network, in region r1 / zone z1 / node n1.
fn client() -> Workload {
    let mut w = workload("client", &["10.0.9.9"]);
    w.locality = Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: String::new(),
    };
    w.node = "n1".into();
    w
}

fn svc_with(st: &ProxyState, ports: &[(u16, u16)], lb: Option<LoadBalancer>) -> Arc<Service> {
    st.insert_service(Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc".into(),
        vips: vec![NetworkAddress::new("", ip("10.96.0.1"))],
        cidr_vips: vec![],
        ports: ports.iter().copied().collect(),
        endpoints: BTreeMap::new(),
        subject_alt_names: vec![],
        waypoint: None,
        weighted_waypoints: vec![],
        load_balancer: lb,
        ip_families: None,
        canonical: false,
        visibility: Visibility::Public,
    });
    st.service_by_key("ns/svc").unwrap()
}

fn endpoint(st: &ProxyState, uid: &str, ip_: &str, edit: impl FnOnce(&mut Workload)) {
    let mut w = workload(uid, &[ip_]);
    w.services.insert("ns/svc".into(), PortMap::new());
    edit(&mut w);
    st.insert_workload(w);
}

fn spread(st: &ProxyState, svc_port: u16, src: &Workload, n: usize) -> HashMap<String, usize> {
    let svc = st.service_by_key("ns/svc").unwrap();
    let mut counts = HashMap::new();
    for _ in 0..n {
        if let Some(up) = st.pick_endpoint(&svc, svc_port, src, ip("10.96.0.1")) {
            *counts.entry(up.workload.uid.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn lb_spreads_by_capacity() {
    let st = ProxyState::new();
    svc_with(&st, &[(80, 8080)], None);
    endpoint(&st, "small", "10.0.0.1", |w| w.capacity = 1);
    endpoint(&st, "big", "10.0.0.2", |w| w.capacity = 3);
    endpoint(&st, "zero", "10.0.0.3", |w| w.capacity = 0);
    let c = spread(&st, 80, &client(), 4000);
    let (small, big) = (c["small"], c["big"]);
    assert!(
        !c.contains_key("zero"),
        "capacity 0 is never picked while others have capacity"
    );
    // Expected 1000 / 3000; the bounds are ~10 standard deviations wide.
    assert!((700..1300).contains(&small), "{c:?}");
    assert!((2700..3300).contains(&big), "{c:?}");
}

#[test]
fn lb_filters_unhealthy_unless_allow_all() {
    let st = ProxyState::new();
    svc_with(&st, &[(80, 8080)], None);
    endpoint(&st, "sick", "10.0.0.1", |w| {
        w.status = HealthStatus::Unhealthy
    });
    let svc = st.service_by_key("ns/svc").unwrap();
    assert!(
        st.pick_endpoint(&svc, 80, &client(), ip("10.96.0.1"))
            .is_none()
    );
    endpoint(&st, "well", "10.0.0.2", |_| {});
    assert_eq!(
        spread(&st, 80, &client(), 50).keys().collect::<Vec<_>>(),
        vec!["well"]
    );
    let lb = LoadBalancer {
        health_policy: HealthPolicy::AllowAll,
        ..Default::default()
    };
    svc_with(&st, &[(80, 8080)], Some(lb));
    assert_eq!(spread(&st, 80, &client(), 200).len(), 2);
}

#[test]
fn lb_target_ports() {
    let st = ProxyState::new();
    svc_with(&st, &[(80, 8080), (81, 0), (82, 0)], None);
    endpoint(&st, "w", "10.0.0.1", |w| {
        w.services
            .insert("ns/svc".into(), PortMap::from([(81, 9191)]));
    });
    let svc = st.service_by_key("ns/svc").unwrap();
    let pick = |port| {
        st.pick_endpoint(&svc, port, &client(), ip("10.96.0.1"))
            .map(|u| (u.ip, u.port))
    };
    assert_eq!(
        pick(80),
        Some((ip("10.0.0.1"), 8080)),
        "service target port"
    );
    assert_eq!(
        pick(81),
        Some((ip("10.0.0.1"), 9191)),
        "named port resolved by the endpoint"
    );
    assert_eq!(pick(82), None, "named port the endpoint does not resolve");
    assert_eq!(pick(83), None, "not a port of the service");
    // The endpoint's own mapping wins over the service's.
    let w = st.workload_by_uid("w").unwrap();
    assert_eq!(st.target_port(&svc, 81, &w), Some(9191));
    assert_eq!(st.target_port(&svc, 80, &w), Some(8080));
    // Application-tunnel workloads take the service port for unresolved named ports.
    endpoint(&st, "w", "10.0.0.1", |w| {
        w.application_tunnel = Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088),
        });
    });
    let svc = st.service_by_key("ns/svc").unwrap();
    assert_eq!(
        st.pick_endpoint(&svc, 82, &client(), ip("10.96.0.1"))
            .map(|u| u.port),
        Some(82)
    );
}

#[test]
fn lb_network_and_ip_family() {
    let st = ProxyState::new();
    svc_with(&st, &[(80, 80)], None);
    endpoint(&st, "remote", "10.0.0.1", |w| w.network = "far".into());
    let svc = st.service_by_key("ns/svc").unwrap();
    assert!(
        st.pick_endpoint(&svc, 80, &client(), ip("10.96.0.1"))
            .is_none(),
        "other network without gateway"
    );
    endpoint(&st, "dual", "10.0.0.2", |w| {
        w.workload_ips.push(ip("fd00::2"))
    });
    let svc = st.service_by_key("ns/svc").unwrap();
    assert_eq!(
        st.pick_endpoint(&svc, 80, &client(), ip("fd00::96"))
            .unwrap()
            .ip,
        ip("fd00::2")
    );
    assert_eq!(
        st.pick_endpoint(&svc, 80, &client(), ip("10.96.0.1"))
            .unwrap()
            .ip,
        ip("10.0.0.2")
    );
    let mut v6 = (*svc).clone();
    v6.ip_families = Some(IpFamilies::Ipv6Only);
    assert_eq!(
        st.pick_endpoint(&v6, 80, &client(), ip("10.96.0.1"))
            .unwrap()
            .ip,
        ip("fd00::2")
    );
}

/// An endpoint on another network that has a network gateway needs double HBONE through that gateway, which does
/// not exist yet: it is skipped, never dialled directly (its pod IP is not routable from here).
#[test]
fn lb_skips_other_networks_even_with_a_gateway() {
    let st = ProxyState::new();
    svc_with(&st, &[(80, 80)], None);
    endpoint(&st, "gated", "10.0.0.3", |w| {
        w.network = "far".into();
        w.network_gateway = Some(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress::new("far", ip("192.0.2.1"))),
            hbone_mtls_port: 15008,
        });
    });
    let svc = st.service_by_key("ns/svc").unwrap();
    assert!(
        st.pick_endpoint(&svc, 80, &client(), ip("10.96.0.1"))
            .is_none(),
        "the only endpoint is behind a network gateway"
    );
    // A same-network endpoint next to it gets every connection.
    endpoint(&st, "local", "10.0.0.4", |_| {});
    assert_eq!(spread(&st, 80, &client(), 50).get("local"), Some(&50));
    assert_eq!(spread(&st, 80, &client(), 50).get("gated"), None);
}

#[test]
fn lb_routing_preferences() {
    let st = ProxyState::new();
    let same_zone = |w: &mut Workload| {
        w.locality = Locality {
            region: "r1".into(),
            zone: "z1".into(),
            ..Default::default()
        }
    };
    let same_region = |w: &mut Workload| {
        w.locality = Locality {
            region: "r1".into(),
            zone: "z2".into(),
            ..Default::default()
        }
    };
    endpoint(&st, "zone", "10.0.0.1", same_zone);
    endpoint(&st, "region", "10.0.0.2", same_region);
    let prefs = vec![LbScope::Region, LbScope::Zone];
    svc_with(
        &st,
        &[(80, 80)],
        Some(LoadBalancer {
            routing_preferences: prefs.clone(),
            mode: LbMode::Failover,
            ..Default::default()
        }),
    );
    assert_eq!(
        spread(&st, 80, &client(), 50).keys().collect::<Vec<_>>(),
        vec!["zone"]
    );
    // Failover: with the best gone, the next best takes over.
    st.remove_address("zone");
    assert_eq!(
        spread(&st, 80, &client(), 50).keys().collect::<Vec<_>>(),
        vec!["region"]
    );
    // Strict: only full matches, so nothing.
    svc_with(
        &st,
        &[(80, 80)],
        Some(LoadBalancer {
            routing_preferences: prefs,
            mode: LbMode::Strict,
            ..Default::default()
        }),
    );
    assert!(spread(&st, 80, &client(), 10).is_empty());
    // Standard ignores preferences.
    endpoint(&st, "zone", "10.0.0.1", same_zone);
    svc_with(&st, &[(80, 80)], None);
    assert_eq!(spread(&st, 80, &client(), 200).len(), 2);
}

#[test]
fn waypoints_resolve() {
    let st = ProxyState::new();
    // A waypoint service that does not list 15008, and its pod.
    st.insert_service(Service {
        hostname: "wp.ns.svc".into(),
        name: "wp".into(),
        subject_alt_names: vec!["spiffe://cluster.local/ns/ns/sa/wp-svc".into()],
        ..(*svc_with(&st, &[(80, 80)], None)).clone()
    });
    let mut wp = workload("wp-pod", &["10.0.5.5"]);
    wp.services.insert("ns/wp.ns.svc".into(), PortMap::new());
    st.insert_workload(wp.clone());
    let by_host = GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: "ns".into(),
            hostname: "wp.ns.svc".into(),
        }),
        hbone_mtls_port: 15008,
    };
    // Upstream: the waypoint Service must list the HBONE port, unless the waypoint has an application tunnel.
    assert_eq!(st.resolve_waypoint(&by_host, &client()), None);
    let mut tunneled = wp.clone();
    tunneled.application_tunnel = Some(ApplicationTunnel {
        protocol: AppTunnelProtocol::None,
        port: Some(15088),
    });
    st.insert_workload(tunneled);
    let r = st.resolve_waypoint(&by_host, &client()).unwrap();
    assert_eq!((r.upstream.ip, r.upstream.port), (ip("10.0.5.5"), 15008));
    st.insert_workload(wp.clone());

    // Listing 15008: its target port, unless the pod maps the port itself.
    st.insert_service(Service {
        ports: [(15008, 15008)].into_iter().collect(),
        ..(*st.service_by_key("ns/wp.ns.svc").unwrap()).clone()
    });
    let r = st.resolve_waypoint(&by_host, &client()).unwrap();
    assert_eq!(
        (
            r.upstream.workload.uid.as_str(),
            r.upstream.ip,
            r.upstream.port
        ),
        ("wp-pod", ip("10.0.5.5"), 15008)
    );
    assert_eq!(
        r.service_sans,
        vec!["spiffe://cluster.local/ns/ns/sa/wp-svc"]
    );
    wp.services
        .insert("ns/wp.ns.svc".into(), PortMap::from([(15008, 15099)]));
    st.insert_workload(wp);
    let r = st.resolve_waypoint(&by_host, &client()).unwrap();
    assert_eq!(r.upstream.port, 15099, "the endpoint's own mapping wins");

    let by_ip = GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("", ip("10.0.5.5"))),
        hbone_mtls_port: 15009,
    };
    let r = st.resolve_waypoint(&by_ip, &client()).unwrap();
    assert_eq!(
        (r.upstream.workload.uid.as_str(), r.upstream.port),
        ("wp-pod", 15009)
    );
    assert!(r.service_sans.is_empty(), "resolved as a workload");
    let unknown = GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("", ip("10.9.9.9"))),
        hbone_mtls_port: 15008,
    };
    assert!(st.resolve_waypoint(&unknown, &client()).is_none());
    assert!(st.waypoint_workloads(&unknown).is_empty());
}

#[test]
fn waypoint_workloads_are_every_replica() {
    let st = ProxyState::new();
    st.insert_service(Service {
        hostname: "wp.ns.svc".into(),
        name: "wp".into(),
        ports: [(15008, 15008)].into_iter().collect(),
        ..(*svc_with(&st, &[], None)).clone()
    });
    for (uid, addr) in [("wp-a", "10.0.5.1"), ("wp-b", "10.0.5.2")] {
        let mut w = workload(uid, &[addr]);
        w.services.insert("ns/wp.ns.svc".into(), PortMap::new());
        st.insert_workload(w);
    }
    let gw = GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: "ns".into(),
            hostname: "wp.ns.svc".into(),
        }),
        hbone_mtls_port: 15008,
    };
    let mut uids: Vec<String> = st
        .waypoint_workloads(&gw)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    uids.sort();
    assert_eq!(uids, vec!["wp-a", "wp-b"]);
}

#[test]
fn weighted_waypoints() {
    let gw = |h: &str| GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: "ns".into(),
            hostname: h.into(),
        }),
        hbone_mtls_port: 15008,
    };
    let st = ProxyState::new();
    let mut svc = (*svc_with(&st, &[(80, 80)], None)).clone();
    svc.waypoint = Some(gw("primary"));
    assert_eq!(svc.choose_waypoint(), Some(&gw("primary")));
    svc.weighted_waypoints = vec![
        WeightedWaypoint {
            destination: gw("a"),
            weight: 0,
        },
        WeightedWaypoint {
            destination: gw("b"),
            weight: 0,
        },
    ];
    assert_eq!(
        svc.choose_waypoint(),
        Some(&gw("primary")),
        "all-zero weights are ignored"
    );
    svc.weighted_waypoints[1].weight = 5;
    for _ in 0..20 {
        assert_eq!(svc.choose_waypoint(), Some(&gw("b")));
    }
}

#[test]
fn dump_shape() {
    let st = ProxyState::new();
    let mut w = workload("w1", &["10.0.0.1"]);
    w.services
        .insert("ns/svc".into(), PortMap::from([(80, 8080)]));
    st.insert_workload(w);
    svc_with(&st, &[(80, 8080)], None);
    let d = st.snapshot_for_dump();
    assert_eq!(d["workloads"][0]["uid"], "w1");
    assert_eq!(d["workloads"][0]["workloadIps"][0], "10.0.0.1");
    assert_eq!(d["workloads"][0]["protocol"], "HBONE");
    assert_eq!(d["workloads"][0]["trustDomain"], "cluster.local");
    assert_eq!(d["services"][0]["vips"][0], "/10.96.0.1");
    assert_eq!(d["services"][0]["ports"]["80"], 8080);
    assert_eq!(d["services"][0]["endpoints"]["w1"]["workloadUid"], "w1");
    assert!(d["policies"].as_array().unwrap().is_empty());
}
