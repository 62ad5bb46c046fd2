//! In-process: the waypoint configured over delta ADS (TLS) by a scripted control plane — WDS services and
//! workloads plus `ambit.waypoint.Route` resources. A pushed route changes routing for the next request; a bad
//! resource is NACKed by name and everything else, including the routing in force, stays as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{H2Config, HboneClient};
use ambit_proto::type_url::{
    ADDRESS, WAYPOINT_AUTHORIZATION, WAYPOINT_BACKEND_POLICY, WAYPOINT_RATE_LIMIT,
    WAYPOINT_REQUEST_AUTHENTICATION, WAYPOINT_ROUTE,
};
use ambit_proto::waypoint as wp;
use ambit_proto::workload as wl;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use prost::Message;
use support::{ClientConnector, Source};
use tokio::sync::mpsc;
use tonic::Status;

const WAIT: Duration = Duration::from_secs(10);
const V1: &str = "127.0.76.21";
const V2: &str = "127.0.76.22";
const REVIEWS: &str = "reviews.demo.svc.cluster.local";

fn any<M: Message>(type_url: &str, name: &str, m: &M) -> Resource {
    Resource {
        name: name.to_owned(),
        version: format!("{:x}", m.encoded_len()),
        resource: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value: m.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn service(name: &str, port: u32, target: u32) -> Resource {
    let s = wl::Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: format!("{name}.demo.svc.cluster.local"),
        ports: vec![wl::Port {
            service_port: port,
            target_port: target,
            app_protocol: wl::AppProtocol::Http11 as i32,
        }],
        ..Default::default()
    };
    any(
        ADDRESS,
        &format!("demo/{}", s.hostname),
        &wl::Address {
            r#type: Some(wl::address::Type::Service(s)),
        },
    )
}

fn workload(name: &str, ip: &str, svc: &str) -> Resource {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let ports = wl::PortList {
        ports: vec![wl::Port {
            service_port: 9080,
            target_port: 18080,
            app_protocol: 0,
        }],
    };
    let w = wl::Workload {
        uid: format!("Kubernetes//Pod/demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        addresses: vec![ip.octets().to_vec()],
        tunnel_protocol: wl::TunnelProtocol::None as i32,
        services: HashMap::from([
            (format!("demo/{REVIEWS}"), ports.clone()),
            (format!("demo/{svc}.demo.svc.cluster.local"), ports),
        ]),
        ..Default::default()
    };
    any(
        ADDRESS,
        &w.uid.clone(),
        &wl::Address {
            r#type: Some(wl::address::Type::Workload(w)),
        },
    )
}

/// One rule on `reviews` sending everything (or one path) to `to`.
fn route(name: &str, to: &str, path: Option<(wp::MatchType, &str)>) -> Resource {
    let r = wp::Route {
        name: name.into(),
        namespace: "demo".into(),
        route_name: "reviews".into(),
        parents: vec![wp::ParentRef {
            name: REVIEWS.into(),
            ..Default::default()
        }],
        matches: path
            .map(|(t, v)| wp::RouteMatch {
                path: Some(wp::PathMatch {
                    r#type: t as i32,
                    value: v.into(),
                }),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        backends: vec![wp::BackendRef {
            hostname: format!("{to}.demo.svc.cluster.local"),
            port: 9080,
            weight: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    any(WAYPOINT_ROUTE, name, &r)
}

fn respond(
    tx: &mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
) {
    tx.send(Ok(DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        ..Default::default()
    }))
    .unwrap();
}

/// The next request for `type_url` with `nonce` (ACK or NACK).
async fn reply_to(
    rx: &mut mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    type_url: &str,
    nonce: &str,
) -> DeltaDiscoveryRequest {
    loop {
        let r = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no reply")
            .expect("stream closed");
        if r.type_url == type_url && r.response_nonce == nonce {
            return r;
        }
    }
}

async fn backend_of(s: &Source) -> String {
    let (code, _, body) = s.get(&format!("{REVIEWS}:9080"), "/", &[]).await;
    assert_eq!(code, 200, "{body}");
    body.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn routes_follow_xds_and_bad_resources_are_nacked() {
    ambit_core::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let (port, mut conns) = support::ads::serve(&ca).await;

    support::http_backend(format!("{V1}:18080").parse().unwrap(), "v1").await;
    support::http_backend(format!("{V2}:18080").parse().unwrap(), "v2").await;

    let (running, waypoint_id) = support::ads::waypoint(&ca_dir, &ca, port).await;

    let (mut rx, tx) = tokio::time::timeout(WAIT, conns.recv())
        .await
        .expect("no xDS stream")
        .unwrap();
    // One subscription per type: WDS, routes, backend policies, rate limits, request authentication and
    // authorization.
    let mut types = Vec::new();
    for _ in 0..6 {
        types.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap()
                .type_url,
        );
    }
    types.sort();
    let mut want = vec![
        ADDRESS.to_owned(),
        WAYPOINT_ROUTE.to_owned(),
        WAYPOINT_BACKEND_POLICY.to_owned(),
        WAYPOINT_RATE_LIMIT.to_owned(),
        WAYPOINT_REQUEST_AUTHENTICATION.to_owned(),
        WAYPOINT_AUTHORIZATION.to_owned(),
    ];
    want.sort();
    assert_eq!(types, want);
    assert!(
        !running.readiness.is_ready(),
        "not ready before the first configuration"
    );

    respond(
        &tx,
        ADDRESS,
        "a1",
        vec![
            service("reviews", 9080, 18080),
            service("reviews-v1", 9080, 18080),
            service("reviews-v2", 9080, 18080),
            workload("reviews-v1-0", V1, "reviews-v1"),
            workload("reviews-v2-0", V2, "reviews-v2"),
        ],
    );
    assert!(
        reply_to(&mut rx, ADDRESS, "a1")
            .await
            .error_detail
            .is_none()
    );
    respond(
        &tx,
        WAYPOINT_ROUTE,
        "r1",
        vec![route("demo/httproute/reviews/0", "reviews-v1", None)],
    );
    assert!(
        reply_to(&mut rx, WAYPOINT_ROUTE, "r1")
            .await
            .error_detail
            .is_none()
    );
    // A DestinationRule's policy applies; one with a bad field is NACKed by name and reason.
    let policy = |outlier: u32| wp::BackendPolicy {
        hostname: REVIEWS.into(),
        source: "demo/reviews".into(),
        policy: Some(wp::TrafficPolicy {
            outlier_detection: Some(wp::OutlierDetection {
                consecutive_5xx_errors: 5,
                max_ejection_percent: outlier,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    respond(
        &tx,
        WAYPOINT_BACKEND_POLICY,
        "p1",
        vec![any(WAYPOINT_BACKEND_POLICY, REVIEWS, &policy(50))],
    );
    assert!(
        reply_to(&mut rx, WAYPOINT_BACKEND_POLICY, "p1")
            .await
            .error_detail
            .is_none()
    );
    // L7 policy resources decode and apply (a bad one is NACKed by name).
    let target = |name: &str| wp::PolicyTarget {
        kind: wp::policy_target::Kind::Service as i32,
        name: name.into(),
        namespace: "demo".into(),
        port: 0,
    };
    let authn = wp::RequestAuthentication {
        name: "demo/jwt".into(),
        namespace: "demo".into(),
        targets: vec![target(REVIEWS)],
        jwt_rules: vec![wp::JwtRule {
            issuer: "https://issuer.example".into(),
            // RFC 8037's example Ed25519 public key.
            jwks: r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#
                .into(),
            ..Default::default()
        }],
    };
    respond(
        &tx,
        WAYPOINT_REQUEST_AUTHENTICATION,
        "j1",
        vec![any(WAYPOINT_REQUEST_AUTHENTICATION, "demo/jwt", &authn)],
    );
    let ack = reply_to(&mut rx, WAYPOINT_REQUEST_AUTHENTICATION, "j1").await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let allow = wp::AuthorizationPolicy {
        name: "demo/allow-all".into(),
        namespace: "demo".into(),
        targets: vec![target(REVIEWS)],
        rules: vec![wp::AuthzRule::default()],
        ..Default::default()
    };
    let bad = wp::AuthorizationPolicy {
        name: "demo/bad".into(),
        targets: vec![target(REVIEWS)],
        rules: vec![wp::AuthzRule {
            when: vec![wp::Condition {
                key: "experimental.envoy.filters.x".into(),
                values: vec!["1".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    respond(
        &tx,
        WAYPOINT_AUTHORIZATION,
        "z1",
        vec![
            any(WAYPOINT_AUTHORIZATION, "demo/allow-all", &allow),
            any(WAYPOINT_AUTHORIZATION, "demo/bad", &bad),
        ],
    );
    let nack = reply_to(&mut rx, WAYPOINT_AUTHORIZATION, "z1").await;
    let detail = nack.error_detail.expect("NACK of demo/bad").message;
    assert!(
        detail.contains("demo/bad") && !detail.contains("demo/allow-all"),
        "{detail}"
    );
    respond(
        &tx,
        WAYPOINT_AUTHORIZATION,
        "z2",
        vec![any(WAYPOINT_AUTHORIZATION, "demo/allow-all", &allow)],
    );
    let ack = reply_to(&mut rx, WAYPOINT_AUTHORIZATION, "z2").await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    respond(&tx, WAYPOINT_RATE_LIMIT, "l1", vec![]);
    assert!(
        reply_to(&mut rx, WAYPOINT_RATE_LIMIT, "l1")
            .await
            .error_detail
            .is_none()
    );
    respond(
        &tx,
        WAYPOINT_BACKEND_POLICY,
        "p2",
        vec![any(WAYPOINT_BACKEND_POLICY, REVIEWS, &policy(500))],
    );
    let dump = support::get_text(running.addresses.admin, "/config_dump").await;
    assert!(
        dump.contains("\"backendPolicies\"") && dump.contains("demo/reviews"),
        "{dump}"
    );
    let nack = reply_to(&mut rx, WAYPOINT_BACKEND_POLICY, "p2").await;
    let detail = nack.error_detail.expect("NACK").message;
    assert!(
        detail.contains(REVIEWS) && detail.contains("outlierDetection"),
        "{detail}"
    );

    let source = Source {
        hbone: HboneClient::new(
            Arc::new(H2Config::default()),
            ClientConnector {
                certs: support::certs(&ca_dir),
            },
        ),
        me: Identity::new("cluster.local", "demo", "client"),
        waypoint: waypoint_id,
        waypoint_addr: running.addresses.hbone,
        client_addr: "127.0.76.2:40000".parse().unwrap(),
    };
    for _ in 0..100 {
        if running.readiness.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        running.readiness.is_ready(),
        "pending: {:?}",
        running.readiness.pending()
    );
    for _ in 0..5 {
        assert_eq!(backend_of(&source).await, "v1");
    }

    // One rule changes: the next request follows it.
    respond(
        &tx,
        WAYPOINT_ROUTE,
        "r2",
        vec![route("demo/httproute/reviews/0", "reviews-v2", None)],
    );
    assert!(
        reply_to(&mut rx, WAYPOINT_ROUTE, "r2")
            .await
            .error_detail
            .is_none()
    );
    assert_eq!(backend_of(&source).await, "v2");

    // A bad rule (and a good one beside it): NACKed by name, the good one applies, routing stays on v2.
    respond(
        &tx,
        WAYPOINT_ROUTE,
        "r3",
        vec![
            route(
                "demo/httproute/bad/0",
                "reviews-v1",
                Some((wp::MatchType::RegularExpression, "(")),
            ),
            route(
                "demo/httproute/other/0",
                "reviews-v1",
                Some((wp::MatchType::Exact, "/other")),
            ),
        ],
    );
    let nack = reply_to(&mut rx, WAYPOINT_ROUTE, "r3").await;
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("demo/httproute/bad/0") && detail.contains("regular expression"),
        "{detail}"
    );
    assert!(!detail.contains("demo/httproute/other/0"), "{detail}");
    for _ in 0..5 {
        assert_eq!(backend_of(&source).await, "v2");
    }
    let (code, _, body) = source.get(&format!("{REVIEWS}:9080"), "/other", &[]).await;
    assert_eq!(
        (code, body.trim()),
        (200, "v1"),
        "the good resource of the NACKed response applied"
    );
}
