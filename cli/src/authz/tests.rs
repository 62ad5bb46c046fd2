#![allow(clippy::unwrap_used)]

use std::time::SystemTime;

use serde_json::json;

use super::*;

#[test]
fn parses_sources_destinations_and_headers() {
    let sa = |ns: &str, n: &str| Source::ServiceAccount {
        namespace: ns.into(),
        name: n.into(),
    };
    assert_eq!(
        request::parse_from("demo/client").unwrap(),
        sa("demo", "client")
    );
    assert_eq!(
        request::parse_from("pod/demo/client-1").unwrap(),
        Source::Pod {
            namespace: "demo".into(),
            name: "client-1".into()
        }
    );
    for bad in ["", "demo", "demo/", "/x", "a/b/c", "pod/demo"] {
        assert!(request::parse_from(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        request::parse_to("server.demo:80").unwrap(),
        Dest::Service {
            name: "server.demo".into(),
            port: Some(80)
        }
    );
    assert_eq!(
        request::parse_to("server").unwrap(),
        Dest::Service {
            name: "server".into(),
            port: None
        }
    );
    assert_eq!(
        request::parse_to("pod/demo/server-0:8080").unwrap(),
        Dest::Pod {
            namespace: "demo".into(),
            name: "server-0".into(),
            port: 8080
        }
    );
    for bad in [
        "",
        "server:0",
        "server:x",
        "server:70000",
        "pod/demo/server-0",
        "a/b:1",
    ] {
        assert!(request::parse_to(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        request::parse_header("End-User=jason").unwrap(),
        ("end-user".into(), "jason".into())
    );
    assert_eq!(request::parse_header("x: a=b").unwrap().1, "a=b".to_owned());
    assert!(request::parse_header("novalue").is_err());
    assert!(request::parse_header("bad name=1").is_err());
}

/// A namespace `ns` bound to waypoint `wp`, a service `web` with one pod, an L7 policy allowing GET from `client`,
/// and an L4 policy on the pod allowing only the waypoint.
fn resources() -> Value {
    json!({
        "addresses": {
            "ns/web.ns.svc.cluster.local": {"service": {
                "name": "web", "namespace": "ns", "hostname": "web.ns.svc.cluster.local",
                "addresses": ["/10.96.0.1"], "ports": [{"servicePort": 80, "targetPort": 8080}],
                "waypoint": {"destination": "ns/wp.ns.svc.cluster.local", "hboneMtlsPort": 15008}}},
            "Kubernetes//Pod/ns/web-0": {"workload": {
                "name": "web-0", "namespace": "ns", "addresses": ["10.0.0.2"], "serviceAccount": "web",
                "trustDomain": "cluster.local", "authorizationPolicies": ["ns/only-waypoint"],
                "services": {"ns/web.ns.svc.cluster.local": [{"servicePort": 80, "targetPort": 8080}]}}},
            "Kubernetes//Pod/ns/client-0": {"workload": {
                "name": "client-0", "namespace": "ns", "addresses": ["10.0.0.3"], "serviceAccount": "client",
                "trustDomain": "cluster.local"}},
            "Kubernetes//Pod/ns/wp-0": {"workload": {
                "name": "wp-0", "namespace": "ns", "addresses": ["10.0.0.9"], "serviceAccount": "wp",
                "trustDomain": "cluster.local"}}
        },
        "authorizations": {
            "ns/only-waypoint": {"name": "only-waypoint", "namespace": "ns", "scope": "WORKLOAD_SELECTOR",
                "action": "ALLOW", "rules": [[[{"principals": [{"Exact": "cluster.local/ns/ns/sa/wp"}]}]]]}
        },
        "waypointAuthorizations": {
            "ns/get-only": {"name": "ns/get-only", "namespace": "ns", "action": "ALLOW",
                "targets": [{"kind": "SERVICE", "name": "web.ns.svc.cluster.local", "namespace": "ns"}],
                "rules": [{"from": [{"principals": ["cluster.local/ns/ns/sa/client"]}],
                           "to": [{"methods": ["GET"]}]}]}
        },
        "waypointAuthorizationScopes": {"ns/wp": ["ns/get-only"]}
    })
}

fn spec(from: &str, to: &str, method: &str) -> RequestSpec {
    RequestSpec {
        from: request::parse_from(from).unwrap(),
        to: request::parse_to(to).unwrap(),
        to_text: to.into(),
        method: method.into(),
        path: "/".into(),
        headers: vec![],
        auth: AuthInput::None,
    }
}

#[test]
fn every_tier_with_the_deciding_rule() {
    let mesh = Mesh::from_resources(&resources()).unwrap();
    let r = check(
        &mesh,
        &spec("ns/client", "web.ns:80", "GET"),
        SystemTime::now(),
    )
    .unwrap();
    assert!(r.allowed);
    let tiers: Vec<(&str, bool)> = r.tiers.iter().map(|t| (t.tier, t.allowed)).collect();
    assert_eq!(
        tiers,
        [
            ("sourceZtunnel", true),
            ("waypoint", true),
            ("destinationZtunnel", true)
        ]
    );
    let wp = &r.tiers[1];
    assert_eq!(
        (wp.proxy.as_str(), wp.policy.as_deref(), wp.rule),
        ("ns/wp", Some("ns/get-only"), Some(0))
    );
    let dst = &r.tiers[2];
    assert_eq!(
        dst.peer.as_deref(),
        Some("spiffe://cluster.local/ns/ns/sa/wp"),
        "the waypoint's identity"
    );
    assert_eq!(dst.proxy, "ns/web-0 (10.0.0.2:8080)");
    assert_eq!(
        (dst.policy.as_deref(), dst.rule),
        (Some("ns/only-waypoint"), Some(0))
    );

    let r = check(
        &mesh,
        &spec("ns/client", "web.ns.svc.cluster.local", "POST"),
        SystemTime::now(),
    )
    .unwrap();
    assert!(!r.allowed);
    let text = render_text(&r);
    assert!(
        text.contains("waypoint ns/wp: DENY: ALLOW policies apply, none matched"),
        "{text}"
    );
    assert!(
        text.contains(r#"rule 0: to[0].operation.methods: "POST" not in ["GET"]"#),
        "{text}"
    );
    assert!(text.ends_with("result: DENIED\n"), "{text}");
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["allowed"], false);
    assert_eq!(
        j["tiers"][1]["explanation"]["policies"][0]["rules"][0]["matched"],
        false
    );
    assert_eq!(
        j["request"]["port"], 80,
        "the service's only port by default"
    );
}

#[test]
fn pod_destination_skips_the_waypoint_and_sees_the_client() {
    let mesh = Mesh::from_resources(&resources()).unwrap();
    let r = check(
        &mesh,
        &spec("pod/ns/client-0", "pod/ns/web-0:8080", "GET"),
        SystemTime::now(),
    )
    .unwrap();
    assert!(!r.allowed);
    assert_eq!(r.tiers.len(), 2, "no waypoint for a pod without one");
    let dst = &r.tiers[1];
    assert_eq!(
        dst.peer.as_deref(),
        Some("spiffe://cluster.local/ns/ns/sa/client")
    );
    assert!(
        dst.text
            .contains("principals: \"cluster.local/ns/ns/sa/client\" not in"),
        "{}",
        dst.text
    );
}

#[test]
fn claims_give_a_request_principal_unverified() {
    let mut res = resources();
    res["waypointAuthorizations"]["ns/get-only"]["rules"][0]["from"][0] =
        json!({"requestPrincipals": ["issuer/alice"]});
    let mesh = Mesh::from_resources(&res).unwrap();
    let mut s = spec("ns/client", "web.ns:80", "GET");
    assert!(!check(&mesh, &s, SystemTime::now()).unwrap().tiers[1].allowed);
    s.auth = AuthInput::Claims(json!({"iss": "issuer", "sub": "alice"}));
    let r = check(&mesh, &s, SystemTime::now()).unwrap();
    assert!(r.tiers[1].allowed);
    assert!(r.tiers[1].notes[0].contains("taken as verified"));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mesh = Mesh::from_resources(&resources()).unwrap();
    for (from, to) in [
        ("ns/client", "nope:80"),
        ("ns/client", "web.ns:81"),
        ("pod/ns/x", "web.ns:80"),
    ] {
        assert!(
            check(&mesh, &spec(from, to, "GET"), SystemTime::now()).is_err(),
            "{from} {to}"
        );
    }
    assert!(Mesh::from_resources(&json!({})).is_err());
    assert!(
        Mesh::from_resources(&json!({"addresses": {}, "authorizations": {"x": {"bogus": 1}}}))
            .is_err()
    );
}
