//! The waypoint's L7 policies over delta ADS: each waypoint gets the AuthorizationPolicies, RequestAuthentications
//! and RateLimitPolicies that target its Gateway, its GatewayClass (root-namespace defaults), the Services it
//! serves and the route rules it gets — and not the others'; a client that is no waypoint gets them all; when a
//! Service moves to another waypoint, its policies move with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ambit_controller::xds::Snapshot;
use ambit_proto::type_url::{
    WAYPOINT_AUTHORIZATION, WAYPOINT_RATE_LIMIT, WAYPOINT_REQUEST_AUTHENTICATION,
};
use ambit_proto::waypoint::{
    AuthorizationPolicy, RateLimitPolicy, authorization_policy, policy_target,
};
use ambit_proto::xds::Node;
use prost::Message;
use support::{Client, names, resources, waypoint_node};

/// Waypoints `wa` (serves `reviews`, which has an HTTPRoute) and `wb` (serves `ratings`), and one policy of each
/// kind aimed at each.
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wa, namespace: a}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wb, namespace: a}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wa-0, namespace: a, labels: {gateway.networking.k8s.io/gateway-name: wa}}
status: {podIP: 10.0.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: wb-0, namespace: a, labels: {gateway.networking.k8s.io/gateway-name: wb}}
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: a, labels: {istio.io/use-waypoint: wa}}
spec: {clusterIP: 10.96.0.1, selector: {app: reviews}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: a, labels: {istio.io/use-waypoint: wb}}
spec: {clusterIP: 10.96.0.2, selector: {app: ratings}, ports: [{port: 9080, name: http}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - {name: writes, matches: [{method: POST}], backendRefs: [{name: reviews, port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-get-only, namespace: a}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wb-deny-admin, namespace: a}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wb}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: default-deny, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ratings-jwt, namespace: a}
spec:
  targetRefs: [{kind: Service, group: "", name: ratings}]
  jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/keys}]
---
apiVersion: ambit.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews-writes, namespace: a}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: writes}]
  limits: [{key: {type: ClientIdentity}, requests: 5, interval: 1m}]
"#;

/// Subscribes to the three policy types; their resource names, per type.
async fn policies(c: &mut Client, node: Option<Node>) -> [Vec<String>; 3] {
    let authz = names(&c.subscribe(node, WAYPOINT_AUTHORIZATION).await);
    let jwt = names(&c.subscribe(None, WAYPOINT_REQUEST_AUTHENTICATION).await);
    let rl = names(&c.subscribe(None, WAYPOINT_RATE_LIMIT).await);
    [authz, jwt, rl]
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn each_waypoint_gets_the_policies_that_target_it() {
    let (publish, addr) = support::serve(&resources(MESH)).await;

    let mut wa = Client::connect(addr).await;
    let r = wa
        .subscribe(waypoint_node("wa"), WAYPOINT_AUTHORIZATION)
        .await;
    assert_eq!(
        names(&r),
        strings(&["a/reviews-get-only", "istio-system/default-deny"])
    );
    let get_only = r
        .resources
        .iter()
        .find(|x| x.name == "a/reviews-get-only")
        .and_then(|x| x.resource.as_ref())
        .unwrap();
    assert_eq!(get_only.type_url, WAYPOINT_AUTHORIZATION);
    let p = AuthorizationPolicy::decode(get_only.value.as_slice()).unwrap();
    assert_eq!(p.action, authorization_policy::Action::Allow as i32);
    assert_eq!(p.targets[0].kind, policy_target::Kind::Service as i32);
    assert_eq!(p.targets[0].name, "reviews.a.svc.cluster.local");
    assert_eq!(p.rules[0].to[0].methods, vec!["GET"]);
    let r = wa.subscribe(None, WAYPOINT_REQUEST_AUTHENTICATION).await;
    assert!(r.resources.is_empty(), "{:?}", names(&r));
    let r = wa.subscribe(None, WAYPOINT_RATE_LIMIT).await;
    assert_eq!(names(&r), strings(&["a/reviews-writes"]));
    let rl = RateLimitPolicy::decode(r.resources[0].resource.as_ref().unwrap().value.as_slice())
        .unwrap();
    assert_eq!(rl.targets[0].name, "a/httproute/reviews/0");
    assert_eq!(
        (rl.limits[0].requests, rl.limits[0].interval_ms),
        (5, 60_000)
    );

    let mut wb = Client::connect(addr).await;
    assert_eq!(
        policies(&mut wb, waypoint_node("wb")).await,
        [
            strings(&["a/wb-deny-admin", "istio-system/default-deny"]),
            strings(&["a/ratings-jwt"]),
            vec![],
        ]
    );

    // A client that is no waypoint gets everything.
    let mut other = Client::connect(addr).await;
    assert_eq!(
        policies(&mut other, None).await,
        [
            strings(&[
                "a/reviews-get-only",
                "a/wb-deny-admin",
                "istio-system/default-deny"
            ]),
            strings(&["a/ratings-jwt"]),
            strings(&["a/reviews-writes"]),
        ]
    );

    // reviews moves to wb: its AuthorizationPolicy leaves wa and reaches wb. (Its route goes with it, and so does
    // the rate limit on the route's rule.)
    let moved = MESH.replace("istio.io/use-waypoint: wa", "istio.io/use-waypoint: wb");
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(&prev, 2, &resources(&moved))));
    let mut removed = Vec::new();
    for _ in 0..2 {
        let d = wa.recv().await;
        removed.extend(d.removed_resources.clone());
    }
    removed.sort();
    assert_eq!(
        removed,
        strings(&["a/reviews-get-only", "a/reviews-writes"])
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = wb.recv().await;
        got.extend(names(&d));
    }
    got.sort();
    assert_eq!(got, strings(&["a/reviews-get-only", "a/reviews-writes"]));
}
