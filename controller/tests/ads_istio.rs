//! VirtualService routes and DestinationRule backend policies over delta ADS: a waypoint subscribed to
//! `ambit.waypoint.Route` and `ambit.waypoint.BackendPolicy` gets the VirtualService's rules and the policy (with its
//! subsets resolved to workload uids) of the services it serves, a waypoint that serves neither gets nothing, and a
//! changed DestinationRule is one delta.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ambit_controller::xds::Snapshot;
use ambit_proto::type_url::{WAYPOINT_BACKEND_POLICY, WAYPOINT_ROUTE};
use ambit_proto::waypoint::{BackendPolicy, Route, RouteOrigin, load_balancer};
use prost::Message;
use support::{Client, names, resources, waypoint_node};

/// Waypoints `wa` (serves `reviews`) and `wb` (serves nothing); bookinfo's reviews VirtualService and
/// DestinationRule.
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
spec: {clusterIP: 10.96.0.1, selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: a, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: a, labels: {app: reviews, version: v2}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: a}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: a}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

const REVIEWS: &str = "reviews.a.svc.cluster.local";

#[tokio::test]
async fn waypoints_get_virtual_service_routes_and_backend_policies_of_their_services() {
    let (publish, addr) = support::serve(&resources(MESH)).await;

    let mut wa = Client::connect(addr).await;
    let r = wa.subscribe(waypoint_node("wa"), WAYPOINT_ROUTE).await;
    assert_eq!(
        names(&r),
        vec!["a/virtualservice/reviews/0", "a/virtualservice/reviews/1"]
    );
    let jason = Route::decode(
        r.resources
            .iter()
            .find(|x| x.name.ends_with("/0"))
            .unwrap()
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(jason.origin, RouteOrigin::VirtualService as i32);
    assert_eq!(jason.backends[0].subset, "v2");
    assert_eq!(jason.matches[0].headers[0].value, "jason");

    let r = wa.subscribe(None, WAYPOINT_BACKEND_POLICY).await;
    assert_eq!(names(&r), vec![REVIEWS]);
    let any = r.resources[0].resource.as_ref().unwrap();
    assert_eq!(any.type_url, WAYPOINT_BACKEND_POLICY);
    let p = BackendPolicy::decode(any.value.as_slice()).unwrap();
    assert_eq!(p.source, "a/reviews");
    assert_eq!(
        p.policy.unwrap().load_balancer.unwrap().kind,
        load_balancer::Kind::RoundRobin as i32
    );
    let v2 = p.subsets.iter().find(|s| s.name == "v2").unwrap();
    assert_eq!(
        v2.workloads.as_ref().unwrap().uids,
        vec!["Kubernetes//Pod/a/reviews-v2"]
    );

    // wb serves nothing: no routes, no policies (but an answer for each type).
    let mut wb = Client::connect(addr).await;
    let r = wb.subscribe(waypoint_node("wb"), WAYPOINT_ROUTE).await;
    assert!(r.resources.is_empty());
    let r = wb.subscribe(None, WAYPOINT_BACKEND_POLICY).await;
    assert!(r.resources.is_empty());

    // The DestinationRule changes: wa gets just the new policy.
    let changed = MESH.replace("simple: ROUND_ROBIN", "simple: RANDOM");
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(&prev, 2, &resources(&changed))));
    let d = wa.recv().await;
    assert_eq!(d.type_url, WAYPOINT_BACKEND_POLICY);
    assert_eq!(names(&d), vec![REVIEWS]);
    let p =
        BackendPolicy::decode(d.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(
        p.policy.unwrap().load_balancer.unwrap().kind,
        load_balancer::Kind::Random as i32
    );

    // reviews moves to wb: its routes and policy leave wa and reach wb.
    let moved = changed.replace("istio.io/use-waypoint: wa", "istio.io/use-waypoint: wb");
    let prev = publish.borrow().clone();
    publish.send_replace(Arc::new(Snapshot::next(&prev, 3, &resources(&moved))));
    let mut removed = Vec::new();
    for _ in 0..2 {
        let d = wa.recv().await;
        removed.extend(d.removed_resources.clone());
    }
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "a/virtualservice/reviews/0".to_owned(),
            "a/virtualservice/reviews/1".to_owned(),
            REVIEWS.to_owned()
        ]
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = wb.recv().await;
        got.extend(names(&d));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            "a/virtualservice/reviews/0",
            "a/virtualservice/reviews/1",
            REVIEWS
        ]
    );
}
