#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ambit_proto::workload as pb;

use super::*;

mod lb;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn bytes(s: &str) -> Vec<u8> {
    match ip(s) {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn pb_workload(uid: &str, ips: &[&str]) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "ns".into(),
        addresses: ips.iter().map(|i| bytes(i)).collect(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

fn addr_w(w: pb::Workload) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    }
}

fn addr_s(s: pb::Service) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Service(s)),
    }
}

fn pb_service(ns: &str, host: &str, vip: &str, ports: &[(u32, u32)]) -> pb::Service {
    pb::Service {
        name: host.split('.').next().unwrap_or_default().into(),
        namespace: ns.into(),
        hostname: host.into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: bytes(vip),
            length: None,
        }],
        ports: ports
            .iter()
            .map(|(s, t)| pb::Port {
                service_port: *s,
                target_port: *t,
                app_protocol: 0,
            })
            .collect(),
        ..Default::default()
    }
}

fn endpoint_of(w: &mut pb::Workload, svc_key: &str, ports: &[(u32, u32)]) {
    let ports = ports
        .iter()
        .map(|(s, t)| pb::Port {
            service_port: *s,
            target_port: *t,
            app_protocol: 0,
        })
        .collect();
    w.services.insert(svc_key.into(), pb::PortList { ports });
}

fn workload(uid: &str, ips: &[&str]) -> Workload {
    Workload::try_from(pb_workload(uid, ips)).unwrap()
}

fn err(a: pb::Address) -> String {
    ProxyState::new().insert_address("x", a).unwrap_err()
}

// ----- conversions -----

#[test]
fn workload_defaults() {
    let w = workload("w1", &["10.0.0.1", "fd00::1"]);
    assert_eq!(w.workload_ips, vec![ip("10.0.0.1"), ip("fd00::1")]);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, InboundProtocol::Hbone);
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/default"
    );
    let mut p = pb_workload("w2", &[]);
    p.trust_domain = "td".into();
    p.service_account = "sa".into();
    p.cluster_id = "c1".into();
    p.capacity = Some(0);
    p.workload_type = 77; // unknown ⇒ DEPLOYMENT
    let w = Workload::try_from(p).unwrap();
    assert_eq!(
        (
            w.trust_domain.as_str(),
            w.service_account.as_str(),
            w.cluster_id.as_str()
        ),
        ("td", "sa", "c1")
    );
    assert_eq!(w.capacity, 0);
    assert_eq!(w.workload_type, WorkloadType::Deployment);
}

#[test]
fn workload_conversion_errors() {
    let mut p = pb_workload("w", &[]);
    p.addresses = vec![vec![1, 2, 3]];
    assert_eq!(err(addr_w(p)), "invalid IP address: 3 bytes (want 4 or 16)");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.tunnel_protocol = pb::TunnelProtocol::LegacyIstioMtls as i32;
    assert_eq!(
        err(addr_w(p)),
        "tunnel protocol LEGACY_ISTIO_MTLS is not supported"
    );

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.tunnel_protocol = 9;
    assert_eq!(err(addr_w(p)), "unknown tunnel_protocol value 9");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.status = 5;
    assert_eq!(err(addr_w(p)), "unknown status value 5");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.network_mode = 3;
    assert_eq!(err(addr_w(p)), "unknown network_mode value 3");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.waypoint = Some(pb::GatewayAddress {
        hbone_mtls_port: 15008,
        destination: None,
    });
    assert_eq!(err(addr_w(p)), "gateway address has no destination");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.network_gateway = Some(pb::GatewayAddress {
        hbone_mtls_port: 15008,
        destination: Some(pb::gateway_address::Destination::Address(
            pb::NetworkAddress {
                network: "n".into(),
                address: vec![0; 5],
                length: None,
            },
        )),
    });
    assert_eq!(err(addr_w(p)), "invalid IP address: 5 bytes (want 4 or 16)");

    let mut p = pb_workload("w", &["10.0.0.1"]);
    p.application_tunnel = Some(pb::ApplicationTunnel {
        protocol: 4,
        port: 0,
    });
    assert_eq!(
        err(addr_w(p)),
        "unknown application_tunnel.protocol value 4"
    );

    let mut p = pb_workload("w", &["10.0.0.1"]);
    endpoint_of(&mut p, "ns/svc", &[(80, 70000)]);
    assert_eq!(err(addr_w(p)), "target port 70000 is not a valid port");

    assert_eq!(
        err(pb::Address { r#type: None }),
        "address has neither a workload nor a service"
    );
}

#[test]
fn service_conversion() {
    let mut s = pb_service("ns", "svc.ns.svc.cluster.local", "10.96.0.1", &[(80, 8080)]);
    s.addresses.push(pb::NetworkAddress {
        network: "n".into(),
        address: bytes("10.1.2.3"),
        length: Some(16),
    });
    s.addresses.push(pb::NetworkAddress {
        network: "n".into(),
        address: bytes("10.97.0.1"),
        length: Some(32),
    });
    s.visibility = 9; // unknown ⇒ PUBLIC
    s.ip_families = pb::IpFamilies::Ipv6Only as i32;
    let svc = Service::try_from(s).unwrap();
    assert_eq!(
        svc.vips,
        vec![
            NetworkAddress::new("", ip("10.96.0.1")),
            NetworkAddress::new("n", ip("10.97.0.1"))
        ]
    );
    assert_eq!(svc.cidr_vips.len(), 1);
    assert_eq!(svc.cidr_vips[0].to_string(), "n/10.1.0.0/16");
    assert_eq!(svc.visibility, Visibility::Public);
    assert_eq!(svc.ip_families, Some(IpFamilies::Ipv6Only));
    assert_eq!(svc.ports, BTreeMap::from([(80, 8080)]));
    assert_eq!(svc.key(), "ns/svc.ns.svc.cluster.local");
}

#[test]
fn service_conversion_errors() {
    let base = || pb_service("ns", "h", "10.0.0.1", &[(80, 80)]);
    let mut s = base();
    s.addresses[0].address = vec![1; 7];
    assert_eq!(err(addr_s(s)), "invalid IP address: 7 bytes (want 4 or 16)");
    let mut s = base();
    s.addresses[0].length = Some(40);
    assert_eq!(err(addr_s(s)), "invalid prefix length 40 for 10.0.0.1");
    let mut s = base();
    s.ip_families = 8;
    assert_eq!(err(addr_s(s)), "unknown ip_families value 8");
    let mut s = base();
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![0],
        mode: 0,
        health_policy: 0,
    });
    assert_eq!(
        err(addr_s(s)),
        "routing preference UNSPECIFIED_SCOPE is not allowed"
    );
    let mut s = base();
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![12],
        mode: 0,
        health_policy: 0,
    });
    assert_eq!(err(addr_s(s)), "unknown routing_preference value 12");
    let mut s = base();
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![],
        mode: 7,
        health_policy: 0,
    });
    assert_eq!(err(addr_s(s)), "unknown load_balancing.mode value 7");
    let mut s = base();
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![],
        mode: 0,
        health_policy: 3,
    });
    assert_eq!(
        err(addr_s(s)),
        "unknown load_balancing.health_policy value 3"
    );
    let mut s = base();
    s.waypoint = Some(pb::GatewayAddress {
        hbone_mtls_port: 0,
        destination: None,
    });
    assert_eq!(err(addr_s(s)), "gateway address has no destination");
    let mut s = base();
    s.weighted_waypoints = vec![pb::WeightedWaypoint {
        destination: None,
        weight: 1,
    }];
    assert_eq!(err(addr_s(s)), "gateway address has no destination");
    let mut s = base();
    s.ports[0].service_port = 65536;
    assert_eq!(err(addr_s(s)), "service port 65536 is not a valid port");
}

#[test]
fn load_balancing_and_waypoint_conversion() {
    let mut s = pb_service("ns", "h", "10.0.0.1", &[(80, 80)]);
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![1, 2, 6],
        mode: 2,
        health_policy: 1,
    });
    s.waypoint = Some(pb::GatewayAddress {
        hbone_mtls_port: 0,
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "ns".into(),
                hostname: "wp.ns.svc.cluster.local".into(),
            },
        )),
    });
    s.visibility = pb::service::Visibility::Namespace as i32;
    let svc = Service::try_from(s).unwrap();
    let lb = svc.load_balancer.clone().unwrap();
    assert_eq!(
        lb.routing_preferences,
        vec![LbScope::Region, LbScope::Zone, LbScope::Network]
    );
    assert_eq!(
        (lb.mode, lb.health_policy),
        (LbMode::Failover, HealthPolicy::AllowAll)
    );
    let wp = svc.waypoint.clone().unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008, "0 ⇒ default HBONE port");
    assert_eq!(wp.destination.to_string(), "ns/wp.ns.svc.cluster.local");
    assert_eq!(svc.visibility, Visibility::Namespace);
}

// ----- indexes -----

#[test]
fn workload_indexes_follow_updates_and_removal() {
    let st = ProxyState::new();
    st.insert_address("a", addr_w(pb_workload("a", &["10.0.0.1"])))
        .unwrap();
    assert_eq!(st.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "a");
    assert!(
        st.workload_by_ip("other", ip("10.0.0.1")).is_none(),
        "keyed by network"
    );
    // The IP moves from a to b.
    st.insert_address("a", addr_w(pb_workload("a", &["10.0.0.2"])))
        .unwrap();
    st.insert_address("b", addr_w(pb_workload("b", &["10.0.0.1"])))
        .unwrap();
    assert_eq!(st.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "b");
    assert_eq!(st.workload_by_ip("", ip("10.0.0.2")).unwrap().uid, "a");
    // b takes a's IP while a still lists it; removing a must not unindex b.
    st.insert_address("b", addr_w(pb_workload("b", &["10.0.0.1", "10.0.0.2"])))
        .unwrap();
    st.remove_address("a");
    assert_eq!(st.workload_by_ip("", ip("10.0.0.2")).unwrap().uid, "b");
    assert!(st.workload_by_uid("a").is_none());
    assert!(st.find_workload("ns", "a", "").is_none());
    assert_eq!(st.find_workload("ns", "b", "default").unwrap().uid, "b");
    assert!(st.find_workload("ns", "b", "other-sa").is_none());
    st.remove_address("b");
    assert!(st.workload_by_ip("", ip("10.0.0.1")).is_none());
}

#[test]
fn host_network_workloads_are_not_indexed_by_ip() {
    let st = ProxyState::new();
    let mut p = pb_workload("h", &["10.0.0.9"]);
    p.network_mode = pb::NetworkMode::HostNetwork as i32;
    st.insert_address("h", addr_w(p)).unwrap();
    assert!(st.workload_by_ip("", ip("10.0.0.9")).is_none());
    assert!(st.workload_by_uid("h").is_some());
}

#[test]
fn service_vip_change_and_removal() {
    let st = ProxyState::new();
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.1", &[(80, 8080)])),
    )
    .unwrap();
    assert_eq!(
        st.service_by_vip("", ip("10.96.0.1"), "ns")
            .unwrap()
            .hostname,
        "svc"
    );
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.2", &[(80, 8080)])),
    )
    .unwrap();
    assert!(
        st.service_by_vip("", ip("10.96.0.1"), "ns").is_none(),
        "old VIP unindexed"
    );
    assert!(st.service_by_vip("", ip("10.96.0.2"), "ns").is_some());
    assert!(st.service_by_hostname("svc", "ns").is_some());
    st.remove_address("ns/svc");
    assert!(st.service_by_vip("", ip("10.96.0.2"), "ns").is_none());
    assert!(st.service_by_hostname("svc", "ns").is_none());
}

#[test]
fn cidr_vips_longest_prefix() {
    let st = ProxyState::new();
    let mut wide = pb_service("ns", "wide", "10.0.0.0", &[(80, 80)]);
    wide.addresses[0].length = Some(8);
    let mut narrow = pb_service("ns", "narrow", "10.1.0.0", &[(80, 80)]);
    narrow.addresses[0].length = Some(16);
    st.insert_address("ns/wide", addr_s(wide)).unwrap();
    st.insert_address("ns/narrow", addr_s(narrow)).unwrap();
    st.insert_address(
        "ns/exact",
        addr_s(pb_service("ns", "exact", "10.1.2.3", &[(80, 80)])),
    )
    .unwrap();
    assert_eq!(
        st.service_by_vip("", ip("10.1.2.3"), "ns")
            .unwrap()
            .hostname,
        "exact"
    );
    assert_eq!(
        st.service_by_vip("", ip("10.1.9.9"), "ns")
            .unwrap()
            .hostname,
        "narrow"
    );
    assert_eq!(
        st.service_by_vip("", ip("10.2.0.1"), "ns")
            .unwrap()
            .hostname,
        "wide"
    );
    assert!(st.service_by_vip("", ip("11.0.0.1"), "ns").is_none());
}

#[test]
fn vip_and_hostname_preference_and_visibility() {
    let st = ProxyState::new();
    st.insert_address(
        "a/h",
        addr_s(pb_service("a", "h", "10.96.0.1", &[(80, 80)])),
    )
    .unwrap();
    let mut b = pb_service("b", "h", "10.96.0.1", &[(80, 80)]);
    b.canonical = true;
    st.insert_address("b/h", addr_s(b)).unwrap();
    let mut c = pb_service("c", "h", "10.96.0.1", &[(80, 80)]);
    c.visibility = pb::service::Visibility::Namespace as i32;
    st.insert_address("c/h", addr_s(c)).unwrap();
    // Same namespace wins, then canonical.
    assert_eq!(
        st.service_by_vip("", ip("10.96.0.1"), "a")
            .unwrap()
            .namespace,
        "a"
    );
    assert_eq!(
        st.service_by_vip("", ip("10.96.0.1"), "c")
            .unwrap()
            .namespace,
        "c"
    );
    assert_eq!(
        st.service_by_vip("", ip("10.96.0.1"), "z")
            .unwrap()
            .namespace,
        "b"
    );
    assert_eq!(st.service_by_hostname("h", "z").unwrap().namespace, "b");
    assert_eq!(st.service_by_hostname("h", "c").unwrap().namespace, "c");
    // A namespace-visible service alone is invisible from elsewhere.
    let mut only = pb_service("p", "private", "10.96.0.5", &[(80, 80)]);
    only.visibility = pb::service::Visibility::Namespace as i32;
    st.insert_address("p/private", addr_s(only)).unwrap();
    assert!(st.service_by_vip("", ip("10.96.0.5"), "other").is_none());
    assert!(st.service_by_hostname("private", "other").is_none());
    assert!(st.service_by_vip("", ip("10.96.0.5"), "p").is_some());
}

#[test]
fn endpoints_staged_until_service_arrives() {
    let st = ProxyState::new();
    let mut w = pb_workload("w1", &["10.0.0.1"]);
    endpoint_of(&mut w, "ns/svc", &[(80, 9090)]);
    st.insert_address("w1", addr_w(w)).unwrap();
    let dump = st.snapshot_for_dump();
    assert_eq!(dump["stagedServices"]["ns/svc"]["w1"]["port"]["80"], 9090);
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.1", &[(80, 8080)])),
    )
    .unwrap();
    let svc = st.service_by_key("ns/svc").unwrap();
    assert!(svc.endpoints.contains_key("w1"));
    assert!(
        st.snapshot_for_dump()["stagedServices"]
            .as_object()
            .unwrap()
            .is_empty()
    );
    // A service update keeps its endpoints.
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.2", &[(80, 8080)])),
    )
    .unwrap();
    assert!(
        st.service_by_key("ns/svc")
            .unwrap()
            .endpoints
            .contains_key("w1")
    );
    // Removing the service stages the endpoints again; re-adding reattaches them.
    st.remove_address("ns/svc");
    assert!(st.snapshot_for_dump()["stagedServices"]["ns/svc"]["w1"].is_object());
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.2", &[(80, 8080)])),
    )
    .unwrap();
    assert!(
        st.service_by_key("ns/svc")
            .unwrap()
            .endpoints
            .contains_key("w1")
    );
    // Removing the workload detaches it.
    st.remove_address("w1");
    assert!(st.service_by_key("ns/svc").unwrap().endpoints.is_empty());
    assert_eq!(st.services_for_workload(&workload("x", &[])).len(), 0);
}

#[test]
fn workload_leaving_a_service() {
    let st = ProxyState::new();
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.1", &[(80, 8080)])),
    )
    .unwrap();
    let mut w = pb_workload("w1", &["10.0.0.1"]);
    endpoint_of(&mut w, "ns/svc", &[]);
    st.insert_address("w1", addr_w(w.clone())).unwrap();
    let w1 = st.workload_by_uid("w1").unwrap();
    assert_eq!(st.services_for_workload(&w1).len(), 1);
    w.services.clear();
    st.insert_address("w1", addr_w(w)).unwrap();
    assert!(st.service_by_key("ns/svc").unwrap().endpoints.is_empty());
}

#[test]
fn removal_by_resource_name() {
    let st = ProxyState::new();
    // A workload whose resource name differs from its uid, and a service named by namespace/hostname.
    st.insert_address("res-1", addr_w(pb_workload("uid-1", &["10.0.0.1"])))
        .unwrap();
    st.insert_address(
        "ns/svc",
        addr_s(pb_service("ns", "svc", "10.96.0.1", &[(80, 80)])),
    )
    .unwrap();
    st.remove_address("res-1");
    assert!(st.workload_by_uid("uid-1").is_none());
    st.remove_address("ns/svc");
    assert!(st.service_by_key("ns/svc").is_none());
    // A uid works even if the resource was never seen by that name.
    st.insert_workload(workload("direct", &["10.0.0.5"]));
    st.remove_address("direct");
    assert!(st.workload_by_ip("", ip("10.0.0.5")).is_none());
    st.remove_address("never-existed");
}

#[test]
fn policy_changes_are_signalled() {
    use ambit_proto::security as sec;
    let st = ProxyState::new();
    let mut rx = st.policy_changes();
    let p = sec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        ..Default::default()
    };
    st.insert_authorization("ns/p", p).unwrap();
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    assert!(st.policy("ns/p").is_some());
    // A new workload bumps: the policy it names may have arrived before it (item order is not guaranteed).
    st.insert_address("w", addr_w(pb_workload("w", &[])))
        .unwrap();
    assert!(rx.has_changed().unwrap(), "a new workload");
    rx.mark_unchanged();
    st.insert_address("w", addr_w(pb_workload("w", &[])))
        .unwrap();
    assert!(!rx.has_changed().unwrap(), "the same workload again");
    // Health and the like do not decide authorization and do not wake live connections.
    let mut unhealthy = pb_workload("w", &[]);
    unhealthy.status = pb::WorkloadStatus::Unhealthy as i32;
    st.insert_address("w", addr_w(unhealthy)).unwrap();
    assert!(!rx.has_changed().unwrap(), "a health change");
    // Its identity does.
    let mut other_sa = pb_workload("w", &[]);
    other_sa.service_account = "other".into();
    st.insert_address("w", addr_w(other_sa)).unwrap();
    assert!(rx.has_changed().unwrap(), "a service account change");
    rx.mark_unchanged();
    // So do the policies selecting the workload (they travel with the workload).
    let mut selected = pb_workload("w", &[]);
    selected.authorization_policies = vec!["ns/p".into()];
    st.insert_address("w", addr_w(selected.clone())).unwrap();
    assert!(
        rx.has_changed().unwrap(),
        "a workload's policy list changed"
    );
    rx.mark_unchanged();
    st.insert_address("w", addr_w(selected)).unwrap();
    assert!(!rx.has_changed().unwrap(), "the same list again");
    // Removing a workload bumps (it may come back with another list, as a new workload).
    st.remove_address("w");
    assert!(rx.has_changed().unwrap(), "a workload removed");
    rx.mark_unchanged();
    st.remove_address("w");
    assert!(!rx.has_changed().unwrap(), "nothing left to remove");
    st.remove_authorization("ns/p");
    assert!(rx.has_changed().unwrap());
    assert!(st.policy("ns/p").is_none());
    let bad = sec::Authorization {
        name: "q".into(),
        namespace: "ns".into(),
        action: 5,
        ..Default::default()
    };
    assert_eq!(
        st.insert_authorization("ns/q", bad).unwrap_err(),
        "unknown action value 5"
    );
    let bad = sec::Authorization {
        name: "q".into(),
        namespace: "ns".into(),
        scope: 5,
        ..Default::default()
    };
    assert_eq!(
        st.insert_authorization("ns/q", bad).unwrap_err(),
        "unknown scope value 5"
    );
}
