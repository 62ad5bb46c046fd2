//! In-process: bad resources pushed to a running waypoint over a real delta ADS stream (TLS), one test per type —
//! WDS `Address`, `RateLimitPolicy` and `RequestAuthentication`. Each bad resource (bytes that do not decode,
//! required fields missing, values that do not convert) is NACKed with an error detail naming it and saying why;
//! the configuration in force, including an earlier good version of a resource a bad push tried to replace, keeps
//! serving; and the next good push is ACKed and applies. (Routes, backend and authorization policies:
//! `xds.rs`.) Each test has its own `127.0.<net>.x` block: 98, 99, 100.

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
use ambit_waypoint::app::Running;
use prost::Message;
use support::{ClientConnector, Source};
use tokio::sync::mpsc;
use tonic::Status;

const WAIT: Duration = Duration::from_secs(10);
const REVIEWS: &str = "reviews.demo.svc.cluster.local";
const V1_UID: &str = "Kubernetes//Pod/demo/reviews-v1-0";

fn raw(type_url: &str, name: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.to_owned(),
        version: format!("{:x}", value.len()),
        resource: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value,
        }),
        ..Default::default()
    }
}

fn any<M: Message>(type_url: &str, name: &str, m: &M) -> Resource {
    raw(type_url, name, m.encode_to_vec())
}

/// Field 1, length-delimited, says 5 bytes and has 1: no message decodes from it.
const UNDECODABLE: [u8; 3] = [0x0a, 0x05, 0x01];

fn address(name: &str, t: wl::address::Type) -> Resource {
    any(ADDRESS, name, &wl::Address { r#type: Some(t) })
}

fn service_proto(name: &str) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: format!("{name}.demo.svc.cluster.local"),
        ports: vec![wl::Port {
            service_port: 9080,
            target_port: 18080,
            app_protocol: wl::AppProtocol::Http11 as i32,
        }],
        ..Default::default()
    }
}

fn service(name: &str) -> Resource {
    let s = service_proto(name);
    address(
        &format!("demo/{}", s.hostname),
        wl::address::Type::Service(s),
    )
}

fn workload_proto(name: &str, address: Vec<u8>, svc: &str) -> wl::Workload {
    wl::Workload {
        uid: format!("Kubernetes//Pod/demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        addresses: vec![address],
        tunnel_protocol: wl::TunnelProtocol::None as i32,
        services: HashMap::from([(
            format!("demo/{svc}.demo.svc.cluster.local"),
            wl::PortList {
                ports: vec![wl::Port {
                    service_port: 9080,
                    target_port: 18080,
                    app_protocol: 0,
                }],
            },
        )]),
        ..Default::default()
    }
}

fn workload(name: &str, ip: &str, svc: &str) -> Resource {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let w = workload_proto(name, ip.octets().to_vec(), svc);
    address(&w.uid.clone(), wl::address::Type::Workload(w))
}

fn to_reviews() -> Vec<wp::PolicyTarget> {
    vec![wp::PolicyTarget {
        kind: wp::policy_target::Kind::Service as i32,
        name: REVIEWS.into(),
        namespace: "demo".into(),
        port: 0,
    }]
}

/// A waypoint configured by a scripted control plane: WDS gives `reviews` with one endpoint, `reviews-v1-0` at
/// `127.0.<net>.21` (an HTTP backend answering `v1`); every other type starts empty.
struct World {
    running: Running,
    source: Source,
    rx: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    net: u8,
    nonces: u32,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(net: u8) -> World {
        ambit_core::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
        let (port, mut conns) = support::ads::serve(&ca).await;
        support::http_backend(format!("127.0.{net}.21:18080").parse().unwrap(), "v1").await;

        let (running, waypoint_id) = support::ads::waypoint(&ca_dir, &ca, port).await;
        let (mut rx, tx) = tokio::time::timeout(WAIT, conns.recv())
            .await
            .expect("no xDS stream")
            .unwrap();
        // The six subscriptions, then a first answer to each.
        for _ in 0..6 {
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("a subscription")
                .unwrap();
        }
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
            client_addr: format!("127.0.{net}.2:40000").parse().unwrap(),
        };
        let mut w = World {
            running,
            source,
            rx,
            tx,
            net,
            nonces: 0,
            _dir: dir,
        };
        let first = vec![
            service("reviews"),
            workload("reviews-v1-0", &w.ip(21), "reviews"),
        ];
        w.push_ok(ADDRESS, first).await;
        for t in [
            WAYPOINT_ROUTE,
            WAYPOINT_BACKEND_POLICY,
            WAYPOINT_RATE_LIMIT,
            WAYPOINT_REQUEST_AUTHENTICATION,
            WAYPOINT_AUTHORIZATION,
        ] {
            w.push_ok(t, vec![]).await;
        }
        for _ in 0..250 {
            if w.running.readiness.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            w.running.readiness.is_ready(),
            "pending: {:?}",
            w.running.readiness.pending()
        );
        w
    }

    fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.net)
    }

    /// Sends `resources` of `type_url` with a new nonce and returns the waypoint's answer to it (ACK or NACK).
    async fn push(&mut self, type_url: &str, resources: Vec<Resource>) -> DeltaDiscoveryRequest {
        self.nonces += 1;
        let nonce = format!("n{}", self.nonces);
        self.tx
            .send(Ok(DeltaDiscoveryResponse {
                type_url: type_url.into(),
                nonce: nonce.clone(),
                resources,
                ..Default::default()
            }))
            .unwrap();
        loop {
            let r = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("no answer to a push")
                .expect("the xDS stream closed");
            if r.type_url == type_url && r.response_nonce == nonce {
                return r;
            }
        }
    }

    async fn push_ok(&mut self, type_url: &str, resources: Vec<Resource>) {
        let answer = self.push(type_url, resources).await;
        assert!(
            answer.error_detail.is_none(),
            "a good push of {type_url} was NACKed: {:?}",
            answer.error_detail
        );
    }

    /// Pushes, expects a NACK and returns its message.
    async fn push_bad(&mut self, type_url: &str, resources: Vec<Resource>) -> String {
        let answer = self.push(type_url, resources).await;
        let detail = answer
            .error_detail
            .unwrap_or_else(|| panic!("a bad push of {type_url} was ACKed"));
        assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
        detail.message
    }

    /// `GET path` of `host:9080` with `headers`: the status and the first line of the body.
    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let (status, _, body) = self
            .source
            .get(&format!("{host}:9080"), path, headers)
            .await;
        (status, body.lines().next().unwrap_or("").to_owned())
    }
}

/// The NACK's message has one `<name>: <reason>` entry per rejected resource, joined by `; `.
fn reasons(detail: &str) -> HashMap<String, String> {
    detail
        .split("; ")
        .map(|entry| {
            let (name, reason) = entry
                .split_once(": ")
                .unwrap_or_else(|| panic!("not `<name>: <reason>`: {entry:?} in {detail}"));
            (name.to_owned(), reason.to_owned())
        })
        .collect()
}

/// `want`: each rejected resource with a fragment of its reason; nothing else is rejected.
fn assert_rejected(detail: &str, want: &[(&str, &str)]) {
    let got = reasons(detail);
    for (name, fragment) in want {
        let reason = got
            .get(*name)
            .unwrap_or_else(|| panic!("{name} not named in the NACK: {detail}"));
        assert!(
            reason.contains(fragment),
            "{name}: {reason:?} does not say {fragment:?}"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "exactly these are rejected: {detail}"
    );
}

#[tokio::test]
async fn bad_address_resources_are_nacked_by_name_and_the_last_good_ones_keep_serving() {
    let mut w = World::start(98).await;
    support::http_backend(format!("{}:18080", w.ip(22)).parse().unwrap(), "v1-moved").await;
    support::http_backend(format!("{}:18080", w.ip(23)).parse().unwrap(), "details").await;
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));

    let mut bad_port = service_proto("reviews");
    bad_port.ports[0].target_port = 70_000;
    let mut bad_vip = service_proto("reviews");
    bad_vip.addresses = vec![wl::NetworkAddress {
        network: String::new(),
        address: vec![10, 96, 0],
        length: None,
    }];
    let five_bytes = workload_proto("reviews-v1-0", vec![127, 0, w.net, 22, 0], "reviews");
    let mut bad_service_port = workload_proto("reviews-v1-1", vec![127, 0, w.net, 22], "reviews");
    bad_service_port
        .services
        .values_mut()
        .for_each(|l| l.ports[0].service_port = 1 << 20);
    let mut no_uid = workload_proto("anonymous", vec![127, 0, w.net, 22], "reviews");
    no_uid.uid.clear();
    let mut no_hostname = service_proto("nameless");
    no_hostname.hostname.clear();
    let detail = w
        .push_bad(
            ADDRESS,
            vec![
                raw(ADDRESS, "demo/garbage", UNDECODABLE.to_vec()),
                any(ADDRESS, "demo/neither", &wl::Address { r#type: None }),
                Resource {
                    name: "demo/bodiless".into(),
                    version: "1".into(),
                    resource: None,
                    ..Default::default()
                },
                // Updates of resources in force, each bad in one field.
                address(
                    &format!("demo/{REVIEWS}"),
                    wl::address::Type::Service(bad_port),
                ),
                address("demo/reviews-bad-vip", wl::address::Type::Service(bad_vip)),
                address(V1_UID, wl::address::Type::Workload(five_bytes)),
                address(
                    "Kubernetes//Pod/demo/reviews-v1-1",
                    wl::address::Type::Workload(bad_service_port),
                ),
                address("demo/no-uid", wl::address::Type::Workload(no_uid)),
                address("demo/nameless", wl::address::Type::Service(no_hostname)),
                // A good service and its endpoint beside them.
                service("details"),
                workload("details-0", &w.ip(23), "details"),
            ],
        )
        .await;
    assert_rejected(
        &detail,
        &[
            ("demo/garbage", "decode"),
            ("demo/neither", "address without a workload or service"),
            ("demo/bodiless", "resource has no body"),
            (&format!("demo/{REVIEWS}"), "target port 70000 out of range"),
            ("demo/reviews-bad-vip", "addresses: address of 3 bytes"),
            (V1_UID, "addresses: address of 5 bytes"),
            (
                "Kubernetes//Pod/demo/reviews-v1-1",
                "service port 1048576 out of range",
            ),
            ("demo/no-uid", "workload without uid"),
            ("demo/nameless", "service without hostname"),
        ],
    );
    // What was in force still is: the service with its port mapping and its endpoint at .21; the good resources
    // of the NACKed response applied.
    for _ in 0..5 {
        assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));
    }
    assert_eq!(
        w.get("details.demo.svc.cluster.local", "/", &[]).await,
        (200, "details".into())
    );
    let snapshot = w.running.store.load();
    assert_eq!(
        snapshot.service(REVIEWS).unwrap().ports[0].target_port,
        18080
    );
    assert!(
        snapshot
            .service("nameless.demo.svc.cluster.local")
            .is_none()
    );

    // The next good push, moving the endpoint to .22, is ACKed and applies.
    w.push_ok(
        ADDRESS,
        vec![workload("reviews-v1-0", &w.ip(22), "reviews")],
    )
    .await;
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1-moved".into()));
}

fn rate_limit(name: &str, requests: u32) -> wp::RateLimitPolicy {
    wp::RateLimitPolicy {
        name: name.into(),
        namespace: "demo".into(),
        targets: to_reviews(),
        limits: vec![wp::RateLimit {
            requests,
            interval_ms: 3_600_000,
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn bad_rate_limit_policies_are_nacked_by_name_and_the_limit_in_force_stays() {
    let mut w = World::start(99).await;
    // One request an hour on reviews: the first is served, the next limited.
    w.push_ok(
        WAYPOINT_RATE_LIMIT,
        vec![any(
            WAYPOINT_RATE_LIMIT,
            "demo/rl",
            &rate_limit("demo/rl", 1),
        )],
    )
    .await;
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));
    assert_eq!(w.get(REVIEWS, "/", &[]).await.0, 429);

    let mut no_targets = rate_limit("demo/no-targets", 5);
    no_targets.targets.clear();
    let mut no_limits = rate_limit("demo/no-limits", 5);
    no_limits.limits.clear();
    let mut no_interval = rate_limit("demo/no-interval", 5);
    no_interval.limits[0].interval_ms = 0;
    let mut bad_header = rate_limit("demo/bad-header", 5);
    bad_header.limits[0].key = wp::rate_limit::Key::Header as i32;
    bad_header.limits[0].header = "x y".into();
    let mut bad_key = rate_limit("demo/bad-key", 5);
    bad_key.limits[0].key = 42;
    let mut bad_regex = rate_limit("demo/bad-regex", 5);
    bad_regex.limits[0].matches = vec![wp::RouteMatch {
        path: Some(wp::PathMatch {
            r#type: wp::MatchType::RegularExpression as i32,
            value: "(".into(),
        }),
        ..Default::default()
    }];
    let mut bad_target = rate_limit("demo/bad-target", 5);
    bad_target.targets[0].port = 70_000;
    let mut unnamed_target = rate_limit("demo/unnamed-target", 5);
    unnamed_target.targets[0].name.clear();
    let detail = w
        .push_bad(
            WAYPOINT_RATE_LIMIT,
            vec![
                // The policy in force, replaced by one that allows no request.
                any(WAYPOINT_RATE_LIMIT, "demo/rl", &rate_limit("demo/rl", 0)),
                raw(WAYPOINT_RATE_LIMIT, "demo/garbage", UNDECODABLE.to_vec()),
                any(WAYPOINT_RATE_LIMIT, "demo/no-targets", &no_targets),
                any(WAYPOINT_RATE_LIMIT, "demo/no-limits", &no_limits),
                any(WAYPOINT_RATE_LIMIT, "demo/no-interval", &no_interval),
                any(WAYPOINT_RATE_LIMIT, "demo/bad-header", &bad_header),
                any(WAYPOINT_RATE_LIMIT, "demo/bad-key", &bad_key),
                any(WAYPOINT_RATE_LIMIT, "demo/bad-regex", &bad_regex),
                any(WAYPOINT_RATE_LIMIT, "demo/bad-target", &bad_target),
                any(WAYPOINT_RATE_LIMIT, "demo/unnamed-target", &unnamed_target),
            ],
        )
        .await;
    assert_rejected(
        &detail,
        &[
            ("demo/rl", "limits[0].requests: must be at least 1"),
            ("demo/garbage", "decode"),
            ("demo/no-targets", "targets: empty"),
            ("demo/no-limits", "limits: empty"),
            (
                "demo/no-interval",
                "limits[0].intervalMs: must be at least 1",
            ),
            ("demo/bad-header", "limits[0].header"),
            ("demo/bad-key", "limits[0].key: unknown key 42"),
            ("demo/bad-regex", "limits[0].matches[0]"),
            ("demo/bad-target", "targets[0].port: 70000 out of range"),
            ("demo/unnamed-target", "targets[0].name: empty"),
        ],
    );
    // The limit in force, with its empty bucket, still applies (a replacement would have started with a full
    // bucket, a removal with none).
    for _ in 0..3 {
        assert_eq!(w.get(REVIEWS, "/", &[]).await.0, 429);
    }

    // A good replacement is ACKed and applies.
    w.push_ok(
        WAYPOINT_RATE_LIMIT,
        vec![any(
            WAYPOINT_RATE_LIMIT,
            "demo/rl",
            &rate_limit("demo/rl", 1000),
        )],
    )
    .await;
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));
}

/// RFC 8037's example Ed25519 public key.
const JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn request_authn(name: &str, rule: wp::JwtRule) -> wp::RequestAuthentication {
    wp::RequestAuthentication {
        name: name.into(),
        namespace: "demo".into(),
        targets: to_reviews(),
        jwt_rules: vec![rule],
    }
}

fn jwt_rule() -> wp::JwtRule {
    wp::JwtRule {
        issuer: "https://issuer.example".into(),
        jwks: JWKS.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_request_authentications_are_nacked_by_name_and_the_rules_in_force_stay() {
    let mut w = World::start(100).await;
    w.push_ok(
        WAYPOINT_REQUEST_AUTHENTICATION,
        vec![any(
            WAYPOINT_REQUEST_AUTHENTICATION,
            "demo/jwt",
            &request_authn("demo/jwt", jwt_rule()),
        )],
    )
    .await;
    // Under the rule: no token passes, a token that is not a JWT is refused.
    let bearer = [("authorization", "Bearer not-a-jwt")];
    let in_header = [("x-jwt", "not-a-jwt")];
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));
    assert_eq!(w.get(REVIEWS, "/", &bearer).await.0, 401);
    assert_eq!(w.get(REVIEWS, "/", &in_header).await.0, 200);

    let rule = |f: &dyn Fn(&mut wp::JwtRule)| {
        let mut r = jwt_rule();
        f(&mut r);
        r
    };
    // `name` with the good rule as `f` changes it.
    let authn = |name: &str, f: &dyn Fn(&mut wp::JwtRule)| {
        any(
            WAYPOINT_REQUEST_AUTHENTICATION,
            name,
            &request_authn(name, rule(f)),
        )
    };
    let mut no_targets = request_authn("demo/no-targets", jwt_rule());
    no_targets.targets.clear();
    let mut bad_target_kind = request_authn("demo/bad-target-kind", jwt_rule());
    bad_target_kind.targets[0].kind = 42;
    let detail = w
        .push_bad(
            WAYPOINT_REQUEST_AUTHENTICATION,
            vec![
                // The policy in force, replaced by one whose keys do not parse.
                authn("demo/jwt", &|r| r.jwks = "not json".into()),
                raw(
                    WAYPOINT_REQUEST_AUTHENTICATION,
                    "demo/garbage",
                    UNDECODABLE.to_vec(),
                ),
                authn("demo/no-issuer", &|r| r.issuer.clear()),
                authn("demo/no-keys", &|r| r.jwks.clear()),
                authn("demo/no-signing-key", &|r| {
                    r.jwks = r#"{"keys": []}"#.into()
                }),
                authn("demo/unknown-kty", &|r| {
                    r.jwks = r#"{"keys": [{"kty": "XYZ", "kid": "k"}]}"#.into();
                }),
                authn("demo/ftp-uri", &|r| {
                    r.jwks.clear();
                    r.jwks_uri = "ftp://issuer.example/keys".into();
                }),
                authn("demo/bad-header", &|r| {
                    r.from_headers = vec![wp::JwtHeader {
                        name: "x y".into(),
                        prefix: String::new(),
                    }];
                }),
                authn("demo/bad-cookie", &|r| r.from_cookies = vec!["a=b".into()]),
                authn("demo/bad-claim-header", &|r| {
                    r.output_claim_to_headers = vec![wp::ClaimToHeader {
                        header: "x-sub".into(),
                        claim: String::new(),
                    }];
                }),
                any(
                    WAYPOINT_REQUEST_AUTHENTICATION,
                    "demo/no-targets",
                    &no_targets,
                ),
                any(
                    WAYPOINT_REQUEST_AUTHENTICATION,
                    "demo/bad-target-kind",
                    &bad_target_kind,
                ),
            ],
        )
        .await;
    assert_rejected(
        &detail,
        &[
            ("demo/jwt", "jwtRules[0].jwks"),
            ("demo/garbage", "decode"),
            ("demo/no-issuer", "jwtRules[0].issuer: empty"),
            ("demo/no-keys", "neither jwks nor jwksUri is set"),
            ("demo/no-signing-key", "no signing key"),
            ("demo/unknown-kty", "XYZ"),
            ("demo/ftp-uri", "jwtRules[0].jwksUri"),
            ("demo/bad-header", "jwtRules[0].fromHeaders[0].name"),
            ("demo/bad-cookie", "jwtRules[0].fromCookies[0]"),
            (
                "demo/bad-claim-header",
                "jwtRules[0].outputClaimToHeaders[0].claim: empty",
            ),
            ("demo/no-targets", "targets: empty"),
            ("demo/bad-target-kind", "targets[0].kind: unknown kind 42"),
        ],
    );
    // The rule in force still applies as it did.
    assert_eq!(w.get(REVIEWS, "/", &[]).await, (200, "v1".into()));
    assert_eq!(w.get(REVIEWS, "/", &bearer).await.0, 401);
    assert_eq!(w.get(REVIEWS, "/", &in_header).await.0, 200);

    // A good replacement that reads the token from `x-jwt` instead is ACKed and applies.
    w.push_ok(
        WAYPOINT_REQUEST_AUTHENTICATION,
        vec![authn("demo/jwt", &|r| {
            r.from_headers = vec![wp::JwtHeader {
                name: "x-jwt".into(),
                prefix: String::new(),
            }];
        })],
    )
    .await;
    assert_eq!(w.get(REVIEWS, "/", &bearer).await, (200, "v1".into()));
    assert_eq!(w.get(REVIEWS, "/", &in_header).await.0, 401);
}
