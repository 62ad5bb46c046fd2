//! DestinationRule conversion tests over the bookinfo-like mesh of the VirtualService tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_proto::waypoint::{consistent_hash, load_balancer};

use crate::compute::virtual_service::tests::compute_yaml;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn dr(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n"
    )
}

fn messages(r: &crate::compute::Resources, key: &str) -> Vec<String> {
    r.status[key]["validationMessages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["message"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn subsets_resolve_to_the_uids_of_the_services_pods_with_the_labels() {
    let r = compute_yaml("");
    let p = &r.backend_policies[REVIEWS];
    assert_eq!(p.hostname, REVIEWS);
    assert_eq!(p.source, "default/reviews");
    let subsets: Vec<(&str, Vec<String>)> = p
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.workloads.clone().unwrap().uids))
        .collect();
    assert_eq!(
        subsets,
        vec![
            ("v1", vec!["Kubernetes//Pod/default/reviews-v1".to_owned()]),
            ("v2", vec!["Kubernetes//Pod/default/reviews-v2".to_owned()]),
            ("v3", vec!["Kubernetes//Pod/default/reviews-v3".to_owned()]),
        ]
    );
    assert_eq!(p.subsets[0].labels["version"], "v1");
    // version=v1 pods of other services (ratings-v1, productpage-v1) are not in reviews' v1.
    let ratings = &r.backend_policies["ratings.default.svc.cluster.local"];
    let lb = ratings.policy.clone().unwrap().load_balancer.unwrap();
    assert_eq!(lb.kind, load_balancer::Kind::RoundRobin as i32);
    assert_eq!(
        ratings.subsets[0].workloads.as_ref().unwrap().uids,
        vec!["Kubernetes//Pod/default/ratings-v1"]
    );
    let s = &r.status["destinationrule/default/reviews"];
    assert_eq!(s["conditions"][0]["reason"], "Accepted");
    assert_eq!(s["conditions"][1]["reason"], "Applied");
    // The waypoint serving reviews gets its policy.
    let scope = &r.backend_policy_scopes[&("default".to_owned(), "waypoint".to_owned())];
    assert!(scope.contains(REVIEWS));
}

#[test]
fn every_traffic_policy_field_is_converted() {
    let r = compute_yaml(&dr(
        "details",
        r#"  host: details.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1021}}
      localityLbSetting: {enabled: true}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 5, maxRetries: 3, idleTimeout: 1m}
    outlierDetection: {consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50, minHealthPercent: 20}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
      outlierDetection: {consecutive5xxErrors: 0}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 2048}}}}"#,
    ));
    let p = &r.backend_policies["details.default.svc.cluster.local"];
    let tp = p.policy.as_ref().unwrap();
    let lb = tp.load_balancer.as_ref().unwrap();
    assert_eq!(lb.kind, load_balancer::Kind::ConsistentHash as i32);
    assert!(lb.prefer_close);
    let ch = lb.consistent_hash.as_ref().unwrap();
    assert_eq!(
        (ch.header_name.as_str(), ch.algorithm, ch.table_size),
        ("x-user", consistent_hash::Algorithm::Maglev as i32, 1021)
    );
    let cp = tp.connection_pool.unwrap();
    assert_eq!(
        (
            cp.max_connections,
            cp.connect_timeout_ms,
            cp.http1_max_pending_requests,
            cp.http2_max_requests
        ),
        (100, 250, 10, 1000)
    );
    assert_eq!(
        (
            cp.max_requests_per_connection,
            cp.max_retries,
            cp.idle_timeout_ms
        ),
        (5, 3, 60_000)
    );
    let od = tp.outlier_detection.unwrap();
    assert_eq!(
        od.consecutive_5xx_errors, 5,
        "Istio's default when outlierDetection is present"
    );
    assert_eq!(
        (
            od.consecutive_gateway_errors,
            od.interval_ms,
            od.base_ejection_time_ms,
            od.max_ejection_percent,
            od.min_health_percent
        ),
        (2, 5_000, 30_000, 50, 20)
    );
    let port = &p.ports[0];
    assert_eq!(port.port, 9080);
    let pp = port.policy.as_ref().unwrap();
    assert_eq!(
        pp.load_balancer.as_ref().unwrap().kind,
        load_balancer::Kind::Random as i32
    );
    assert_eq!(
        pp.outlier_detection.unwrap().consecutive_5xx_errors,
        0,
        "explicit 0 disables it"
    );
    assert!(pp.connection_pool.is_none());
    let sub = &p.subsets[0];
    let sch = sub
        .policy
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .consistent_hash
        .clone()
        .unwrap();
    assert!(sch.source_ip);
    assert_eq!(
        (sch.algorithm, sch.table_size),
        (consistent_hash::Algorithm::RingHash as i32, 2048)
    );
    // details-v1 runs in another namespace: the subset selects nothing.
    assert!(sub.workloads.as_ref().unwrap().uids.is_empty());
    assert!(
        messages(&r, "destinationrule/default/details").is_empty(),
        "ISTIO_MUTUAL is a silent no-op"
    );
}

#[test]
fn each_invalid_section_is_dropped_with_a_precise_message_and_the_rest_applies() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "loadBalancer: {consistentHash: {httpHeaderName: a, useSourceIp: true}}",
            "trafficPolicy.loadBalancer: consistentHash needs exactly one key",
            "loadBalancer",
        ),
        (
            "loadBalancer: {consistentHash: {}}",
            "trafficPolicy.loadBalancer: consistentHash needs exactly one key",
            "loadBalancer",
        ),
        (
            "loadBalancer: {simple: FASTEST}",
            "trafficPolicy.loadBalancer.simple: unknown value \"FASTEST\"",
            "loadBalancer",
        ),
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "trafficPolicy.loadBalancer: simple and consistentHash are mutually exclusive",
            "loadBalancer",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}",
            "trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime",
            "loadBalancer",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}, ringHash: {minimumRingSize: 8}}}",
            "trafficPolicy.loadBalancer.consistentHash: ringHash and maglev are mutually exclusive",
            "loadBalancer",
        ),
        (
            "connectionPool: {tcp: {maxConnections: -1}}",
            "trafficPolicy.connectionPool.tcp.maxConnections: -1 is negative or too large",
            "connectionPool",
        ),
        (
            "connectionPool: {http: {idleTimeout: later}}",
            "trafficPolicy.connectionPool.http.idleTimeout: invalid duration \"later\"",
            "connectionPool",
        ),
        (
            "outlierDetection: {maxEjectionPercent: 150}",
            "trafficPolicy.outlierDetection.maxEjectionPercent: 150 is not between 0 and 100",
            "outlierDetection",
        ),
        (
            "outlierDetection: {interval: 1x}",
            "trafficPolicy.outlierDetection.interval: invalid duration \"1x\"",
            "outlierDetection",
        ),
    ];
    for (section, want, dropped) in cases {
        let all = [
            "loadBalancer: {simple: ROUND_ROBIN}",
            "connectionPool: {tcp: {maxConnections: 1}}",
            "outlierDetection: {interval: 1s}",
        ];
        let sections: Vec<&str> = all
            .iter()
            .filter(|s| !s.starts_with(dropped))
            .copied()
            .chain(std::iter::once(*section))
            .collect();
        let spec = format!(
            "  host: reviews\n  trafficPolicy:\n{}",
            sections
                .iter()
                .map(|s| format!("    {s}\n"))
                .collect::<String>()
        );
        let r = compute_yaml(&dr("reviews", &spec));
        let msgs = messages(&r, "destinationrule/default/reviews");
        assert!(
            msgs.iter().any(|m| m == want),
            "{section}: want {want:?}, got {msgs:?}"
        );
        let tp = r.backend_policies[REVIEWS].policy.clone().unwrap();
        let present = [
            ("loadBalancer", tp.load_balancer.is_some()),
            ("connectionPool", tp.connection_pool.is_some()),
            ("outlierDetection", tp.outlier_detection.is_some()),
        ];
        for (name, is) in present {
            assert_eq!(is, name != *dropped, "{section}: {name}");
        }
        assert_eq!(
            r.status["destinationrule/default/reviews"]["conditions"][0]["reason"],
            "PartiallyInvalid"
        );
    }
}

#[test]
fn subsets_ports_tls_and_unknown_fields() {
    let r = compute_yaml(&dr(
        "reviews",
        r#"  host: reviews
  trafficPolicy:
    tls: {mode: SIMPLE}
    proxyProtocol: {version: V1}
    portLevelSettings:
    - loadBalancer: {simple: RANDOM}
    - port: {number: 9080}
    - port: {number: 9080}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1, labels: {version: v2}}
  - {labels: {version: v3}}"#,
    ));
    let msgs = messages(&r, "destinationrule/default/reviews");
    for want in [
        "trafficPolicy.portLevelSettings[0].port.number: required",
        "trafficPolicy.portLevelSettings[2].port.number: port 9080 is set twice",
        "subsets[1].name: duplicate subset \"v1\"",
        "subsets[2].name: required",
        "trafficPolicy.tls.mode: SIMPLE TLS origination is not supported at waypoints; traffic stays on HBONE (mTLS)",
        "trafficPolicy.proxyProtocol: not supported; ignored",
    ] {
        assert!(
            msgs.iter().any(|m| m == want),
            "want {want:?}, got {msgs:?}"
        );
    }
    let p = &r.backend_policies[REVIEWS];
    assert_eq!(p.ports.len(), 1);
    assert_eq!(p.subsets.len(), 1);
}

#[test]
fn conflicts_and_services_no_waypoint_needs() {
    let r = compute_yaml(&format!(
        "{}---\n{}---\n{}",
        dr(
            "reviews-newer",
            "  host: reviews.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}"
        ),
        dr(
            "productpage",
            "  host: productpage\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}"
        ),
        dr("missing", "  host: missing"),
    ));
    // Both are undated: ties go by name, and "reviews" < "reviews-newer".
    assert_eq!(r.backend_policies[REVIEWS].source, "default/reviews");
    let s = &r.status["destinationrule/default/reviews-newer"];
    assert_eq!(s["conditions"][1]["reason"], "Conflict");
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("DestinationRule default/reviews already applies")
    );
    // productpage has no waypoint and no waypoint route sends to it.
    assert!(
        !r.backend_policies
            .contains_key("productpage.default.svc.cluster.local")
    );
    let s = &r.status["destinationrule/default/productpage"];
    assert_eq!(s["conditions"][1]["reason"], "NotApplied");
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("ztunnel ignores DestinationRule")
    );
    assert_eq!(
        messages(&r, "destinationrule/default/missing"),
        vec!["host: no service missing.default.svc.cluster.local (only Services are supported)"]
    );
}

#[test]
fn a_backend_of_a_waypoint_route_gets_its_policy_there() {
    // productpage is not bound, but a VirtualService on reviews sends to it: the waypoint needs its policy.
    let r = compute_yaml(&format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: to-pp, namespace: default}}\n\
         spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]}}]}}\n",
        dr(
            "productpage",
            "  host: productpage\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}"
        ),
    ));
    assert!(
        r.backend_policies
            .contains_key("productpage.default.svc.cluster.local")
    );
    let scope = &r.backend_policy_scopes[&("default".to_owned(), "waypoint".to_owned())];
    assert!(scope.contains("productpage.default.svc.cluster.local"));
    assert_eq!(
        r.status["destinationrule/default/productpage"]["conditions"][1]["reason"],
        "Applied"
    );
}
