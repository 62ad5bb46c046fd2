//! Delta ADS protocol tests against the real server over TCP with a test client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_controller::ca::{Subject, TokenAuthority};
use ambit_controller::compute::{self, ComputeConfig, Resources};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_controller::xds::{Snapshot, XdsMetrics, XdsServer};
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION, WAYPOINT_ROUTE};
use ambit_proto::waypoint::Route;
use ambit_proto::workload::{Address, address};
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as RpcStatus};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: a, labels: {app: x}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: a, labels: {app: y}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.2}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: a}\nspec: {clusterIP: 10.96.0.1, selector: {app: x}, ports: [{port: 80}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: z, namespace: a}\nspec: {clusterIP: 10.96.0.2, selector: {app: nobody}, ports: [{port: 80}]}\n";

const P3: &str = "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p3, namespace: a}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.3}\n";

fn resources(yaml: &str) -> Resources {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let mut idx = Index::default();
    for ev in ManifestState::default().rescan(&[dir.path().to_path_buf()]) {
        idx.apply(ev);
    }
    compute::compute(&idx, &ComputeConfig::default())
}

struct Harness {
    addr: SocketAddr,
    publish: watch::Sender<Arc<Snapshot>>,
    server: XdsServer,
    registry: Registry,
    generation: u64,
    _drain: ambit_core::drain::DrainTrigger,
}

impl Harness {
    async fn start(yaml: &str, auth: Option<Arc<TokenAuthority>>) -> Harness {
        let (publish, rx) = watch::channel(Arc::new(Snapshot::new(1, &resources(yaml))));
        let mut registry = Registry::default();
        let metrics = Arc::new(XdsMetrics::new(&mut registry));
        let (trigger, drain) = ambit_core::drain::new();
        let auth = auth.map(|a| a as Arc<dyn ambit_controller::ca::Authenticator>);
        let server = XdsServer::new(rx, metrics, auth, drain);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = server.clone().into_service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Harness {
            addr,
            publish,
            server,
            registry,
            generation: 1,
            _drain: trigger,
        }
    }

    /// Publishes the next snapshot with its change set, as the controller does.
    fn update(&mut self, yaml: &str) {
        self.generation += 1;
        let prev = self.publish.borrow().clone();
        self.publish.send_replace(Arc::new(Snapshot::next(
            &prev,
            self.generation,
            &resources(yaml),
        )));
    }

    /// Publishes a snapshot without a change set: connections must work out the difference themselves.
    fn update_without_changes(&mut self, yaml: &str) {
        self.generation += 1;
        self.publish
            .send_replace(Arc::new(Snapshot::new(self.generation, &resources(yaml))));
    }

    fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }

    async fn connect(&self, token: Option<&str>) -> Result<Client, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let stream = client.delta_aggregated_resources(req).await?.into_inner();
        Ok(Client { tx, stream })
    }
}

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    stream: tonic::Streaming<DeltaDiscoveryResponse>,
}

fn node() -> Option<Node> {
    Some(Node {
        id: "ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    })
}

impl Client {
    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }
    async fn subscribe(&self, type_url: &str, initial: HashMap<String, String>) {
        self.send(DeltaDiscoveryRequest {
            node: node(),
            type_url: type_url.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
    }
    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        self.stream.message().await.unwrap().expect("stream open")
    }
    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

fn versions(r: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

#[tokio::test]
async fn wildcard_subscribe_ack_and_one_delta_per_change() {
    let mut h = Harness::start(BASE, None).await;
    let mut c = h.connect(None).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await;
    c.subscribe(AUTHORIZATION, HashMap::new()).await;
    let a = c.recv().await;
    assert_eq!(a.type_url, ADDRESS);
    assert_eq!(
        names(&a),
        vec![
            "Kubernetes//Pod/a/p1",
            "Kubernetes//Pod/a/p2",
            "a/x.a.svc.cluster.local",
            "a/z.a.svc.cluster.local"
        ]
    );
    assert!(a.resources.iter().all(|r| !r.version.is_empty()));
    // Resources decode as Addresses; the workload carries its service port map.
    let p1 = a.resources.iter().find(|r| r.name.ends_with("p1")).unwrap();
    let any = p1.resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS);
    let Some(address::Type::Workload(w)) = Address::decode(any.value.as_slice()).unwrap().r#type
    else {
        panic!()
    };
    assert!(w.services.contains_key("a/x.a.svc.cluster.local"));
    let z = c.recv().await;
    assert_eq!(z.type_url, AUTHORIZATION);
    assert_eq!(
        names(&z),
        vec!["istio-system/istio_converted_static_strict"]
    );
    c.ack(&a).await;
    c.ack(&z).await;

    // A new pod: exactly one Address delta with just that pod, no Authorization push.
    h.update(&format!("{BASE}{P3}"));
    let d = c.recv().await;
    assert_eq!(d.type_url, ADDRESS);
    assert_eq!(names(&d), vec!["Kubernetes//Pod/a/p3"]);
    assert!(d.removed_resources.is_empty());
    c.ack(&d).await;
    // Removing it again: one delta with only the removal (had an Authorization push been queued, it would come
    // first; the push counts below also say there was none).
    h.update(BASE);
    let d = c.recv().await;
    assert_eq!(d.type_url, ADDRESS);
    assert!(d.resources.is_empty());
    assert_eq!(d.removed_resources, vec!["Kubernetes//Pod/a/p3"]);

    let conns = h.server.connections();
    assert_eq!(conns.len(), 1);
    assert!(conns[0].node_id.starts_with("ztunnel~"));
    assert_eq!(conns[0].node_type, "ztunnel");
    assert!(conns[0].connected_at > 0);
    assert_eq!(conns[0].acks, 3);
    // proxy-status' view: the Authorization response is ACKed (synced); the last Address one was sent with the
    // current generation, and once its ACK is in, the ACKed generation is that one.
    let authz = &conns[0].types[AUTHORIZATION];
    assert_eq!(authz.acked_nonce, authz.sent_nonce);
    assert_eq!(authz.acked_generation, authz.sent_generation);
    let addr = &conns[0].types[ADDRESS];
    assert_eq!(addr.sent_nonce, d.nonce);
    assert_eq!(addr.sent_generation, conns[0].generation);
    c.ack(&d).await;
    let mut synced = false;
    for _ in 0..100 {
        let conns = h.server.connections();
        let addr = &conns[0].types[ADDRESS];
        if addr.acked_nonce == d.nonce {
            assert_eq!(addr.acked_generation, conns[0].generation);
            synced = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(synced, "the ACK of the removal was not recorded");
    let text = h.metrics_text();
    assert!(text.contains("pilot_xds 1"), "{text}");
    assert!(
        text.contains("pilot_xds_pushes_total{type=\"wds\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("pilot_xds_pushes_total{type=\"wads\"} 1"),
        "only the initial Authorization push: {text}"
    );
}

#[tokio::test]
async fn nack_is_recorded_and_later_pushes_send_only_changes() {
    let mut h = Harness::start(BASE, None).await;
    let mut c = h.connect(None).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await;
    let a = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        response_nonce: a.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "Kubernetes//Pod/a/p1: bad address".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    h.update(&format!("{BASE}{P3}"));
    let d = c.recv().await;
    assert_eq!(
        names(&d),
        vec!["Kubernetes//Pod/a/p3"],
        "the NACK does not cause a resend of everything"
    );
    let conns = h.server.connections();
    assert_eq!(conns[0].nacks, 1);
    let addr = &conns[0].types[ADDRESS];
    assert_eq!(addr.nacked_nonce, a.nonce);
    assert_eq!(addr.nack_error, "Kubernetes//Pod/a/p1: bad address");
    assert_eq!(
        conns[0].last_nack.as_deref(),
        Some("Kubernetes//Pod/a/p1: bad address")
    );
    assert!(
        h.metrics_text()
            .contains("pilot_total_xds_rejects_total{type=\"wds\"} 1")
    );
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_the_difference() {
    let mut h = Harness::start(BASE, None).await;
    let mut c = h.connect(None).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await;
    c.subscribe(AUTHORIZATION, HashMap::new()).await;
    let a = c.recv().await;
    let z = c.recv().await;
    drop(c);
    // While disconnected: p2 changes node, p3 appears, service z (no endpoints) goes away; p1 and x stay as they were.
    let changed = BASE.replace(
        "name: p2, namespace: a, labels: {app: y}}\nspec: {nodeName: n1}",
        "name: p2, namespace: a, labels: {app: y}}\nspec: {nodeName: n9}",
    );
    let without_svc = changed
        .split("\n---\napiVersion: v1\nkind: Service\nmetadata: {name: z")
        .next()
        .unwrap()
        .to_owned();
    h.update(&format!("{without_svc}{P3}"));
    let mut c = h.connect(None).await.unwrap();
    c.subscribe(ADDRESS, versions(&a)).await;
    c.subscribe(AUTHORIZATION, versions(&z)).await;
    let a2 = c.recv().await;
    assert_eq!(
        names(&a2),
        vec!["Kubernetes//Pod/a/p2", "Kubernetes//Pod/a/p3"]
    );
    assert_eq!(a2.removed_resources, vec!["a/z.a.svc.cluster.local"]);
    // Nothing changed for Authorization: still one (empty) response, which readiness needs.
    let z2 = c.recv().await;
    assert_eq!(z2.type_url, AUTHORIZATION);
    assert!(z2.resources.is_empty() && z2.removed_resources.is_empty());
}

#[tokio::test]
async fn on_demand_lookup_by_address_and_missing_names() {
    let h = Harness::start(BASE, None).await;
    let mut c = h.connect(None).await.unwrap();
    // ztunnel's on-demand start: subscribe and unsubscribe "*" in one message = nothing.
    c.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        ..Default::default()
    })
    .await;
    let first = c.recv().await;
    assert!(first.resources.is_empty());
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        resource_names_subscribe: vec!["/10.0.0.2".into(), "/10.9.9.9".into()],
        ..Default::default()
    })
    .await;
    let r = c.recv().await;
    assert_eq!(
        names(&r),
        vec!["/10.0.0.2"],
        "answered under the requested key"
    );
    assert_eq!(
        r.removed_resources,
        vec!["/10.9.9.9"],
        "an unknown key is released as removed"
    );
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let auth = Arc::new(TokenAuthority::from_key(&[1; 32]));
    let good = auth.issue(
        Subject::Node("n1".into()),
        std::time::Duration::from_secs(600),
        std::time::SystemTime::now(),
    );
    let h = Harness::start(BASE, Some(auth)).await;
    let err = h
        .connect(None)
        .await
        .err()
        .expect("refused without a token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = h
        .connect(Some("ambit1.e30.AAAA"))
        .await
        .err()
        .expect("refused with a forged token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut c = h.connect(Some(&good)).await.unwrap();
    c.subscribe(AUTHORIZATION, HashMap::new()).await;
    assert_eq!(c.recv().await.type_url, AUTHORIZATION);
}

/// The change set is relative to one snapshot; a connection that has not seen that one (snapshots published faster
/// than it reads them), or a snapshot without a change set, gets the full difference instead.
#[tokio::test]
async fn pushes_are_right_without_a_usable_change_set() {
    let mut h = Harness::start(BASE, None).await;
    let mut c = h.connect(None).await.unwrap();
    c.subscribe(ADDRESS, HashMap::new()).await;
    let a = c.recv().await;
    c.ack(&a).await;
    // Two snapshots before the connection runs: the second's change set (relative to the first) is empty, yet the
    // client still lacks p3.
    h.update(&format!("{BASE}{P3}"));
    h.update(&format!("{BASE}{P3}"));
    let d = c.recv().await;
    assert_eq!(names(&d), vec!["Kubernetes//Pod/a/p3"]);
    c.ack(&d).await;
    // No change set at all: the removal is still found.
    h.update_without_changes(BASE);
    let d = c.recv().await;
    assert!(d.resources.is_empty());
    assert_eq!(d.removed_resources, vec!["Kubernetes//Pod/a/p3"]);
    c.ack(&d).await;
    // And the change-set path works again after a full push.
    h.update(&format!("{BASE}{P3}"));
    let d = c.recv().await;
    assert_eq!(names(&d), vec!["Kubernetes//Pod/a/p3"]);
}

const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: x, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /one}}]
    backendRefs: [{name: x, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /two}}]
    backendRefs: [{name: z, port: 80}]
"#;

/// Waypoints subscribe to routes and get one resource per rule, with per-rule deltas; a ztunnel, which subscribes
/// to addresses and authorizations only, never sees a route.
#[tokio::test]
async fn waypoint_routes_are_sent_per_rule_and_only_to_subscribers() {
    let mut h = Harness::start(&format!("{BASE}{ROUTES}"), None).await;
    let mut wp = h.connect(None).await.unwrap();
    let waypoint_node = Some(Node {
        id: "router~10.0.0.50~waypoint-6d5f-abcde.a~a.svc.cluster.local".into(),
        ..Default::default()
    });
    wp.send(DeltaDiscoveryRequest {
        node: waypoint_node,
        type_url: WAYPOINT_ROUTE.into(),
        ..Default::default()
    })
    .await;
    let r = wp.recv().await;
    assert_eq!(r.type_url, WAYPOINT_ROUTE);
    assert_eq!(names(&r), vec!["a/httproute/r/0", "a/httproute/r/1"]);
    let any = r.resources[1].resource.as_ref().unwrap();
    assert_eq!(any.type_url, WAYPOINT_ROUTE);
    let route = Route::decode(any.value.as_slice()).unwrap();
    assert_eq!(route.parents[0].name, "x.a.svc.cluster.local");
    assert_eq!(route.backends[0].hostname, "z.a.svc.cluster.local");
    assert_eq!(route.backends[0].weight, 1);
    wp.ack(&r).await;

    let mut zt = h.connect(None).await.unwrap();
    zt.subscribe(ADDRESS, HashMap::new()).await;
    zt.subscribe(AUTHORIZATION, HashMap::new()).await;
    let a = zt.recv().await;
    let z = zt.recv().await;
    assert_eq!(
        (a.type_url.as_str(), z.type_url.as_str()),
        (ADDRESS, AUTHORIZATION)
    );
    zt.ack(&a).await;
    zt.ack(&z).await;

    // Changing rule 1 pushes just that resource to the waypoint ...
    let changed = ROUTES.replace("value: /two", "value: /three");
    h.update(&format!("{BASE}{changed}"));
    let d = wp.recv().await;
    assert_eq!(d.type_url, WAYPOINT_ROUTE);
    assert_eq!(names(&d), vec!["a/httproute/r/1"]);
    assert!(d.removed_resources.is_empty());
    wp.ack(&d).await;
    // ... and nothing to the ztunnel: its next message is the address change that follows.
    h.update(&format!("{BASE}{changed}{P3}"));
    let d = zt.recv().await;
    assert_eq!(d.type_url, ADDRESS);
    assert_eq!(names(&d), vec!["Kubernetes//Pod/a/p3"]);
    // Removing the route removes both rules.
    h.update(&format!("{BASE}{P3}"));
    let d = wp.recv().await;
    assert_eq!(d.type_url, WAYPOINT_ROUTE);
    assert_eq!(
        d.removed_resources,
        vec!["a/httproute/r/0", "a/httproute/r/1"]
    );
    let conns = h.server.connections();
    let zt_info = conns
        .iter()
        .find(|c| c.node_id.starts_with("ztunnel~"))
        .unwrap();
    assert!(!zt_info.resources.contains_key(WAYPOINT_ROUTE));
}

/// Two waypoints in namespace `a` (`wa`, `wb`, each with a ready pod); service `x` is bound to `wa`, `y` to `wb`,
/// `n` to none. Routes: `rx` on x, `ry` on y, `rg` on the Gateway `wb`, `rn` on n.
const SCOPED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wa, namespace: a}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wb, namespace: a}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wa-pod, namespace: a, labels: {gateway.networking.k8s.io/gateway-name: wa}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: wb-pod, namespace: a, labels: {gateway.networking.k8s.io/gateway-name: wb}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: x, namespace: a, labels: {istio.io/use-waypoint: wa}}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: y, namespace: a, labels: {istio.io/use-waypoint: wb}}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: n, namespace: a}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rx, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: x}]
  rules: [{backendRefs: [{name: x, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ry, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: y}]
  rules: [{backendRefs: [{name: y, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rg, namespace: a}
spec:
  parentRefs: [{name: wb}]
  rules: [{backendRefs: [{name: y, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rn, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: n}]
  rules: [{backendRefs: [{name: n, port: 80}]}]
"#;

const ALL_ROUTES: [&str; 4] = [
    "a/httproute/rg/0",
    "a/httproute/rn/0",
    "a/httproute/rx/0",
    "a/httproute/ry/0",
];

/// The node a waypoint of Gateway `a/<gateway>` sends (`NODE_TYPE=router`, `ISTIO_META_GATEWAY_NAME`).
fn waypoint_node(gateway: &str) -> Option<Node> {
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    };
    Some(Node {
        id: format!("router~10.0.0.10~{gateway}-6d5f-abcde.a~a.svc.cluster.local"),
        metadata: Some(prost_types::Struct {
            fields: [
                ("NAMESPACE".to_owned(), string("a")),
                ("GATEWAY_NAME".to_owned(), string(gateway)),
            ]
            .into(),
        }),
        ..Default::default()
    })
}

impl Client {
    async fn subscribe_routes(
        &mut self,
        node: Option<Node>,
        initial: HashMap<String, String>,
    ) -> DeltaDiscoveryResponse {
        self.send(DeltaDiscoveryRequest {
            node,
            type_url: WAYPOINT_ROUTE.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
        let r = self.recv().await;
        assert_eq!(r.type_url, WAYPOINT_ROUTE);
        self.ack(&r).await;
        r
    }
}

/// A waypoint gets only the routes of its services and of its own Gateway; re-binding a service moves its routes
/// (a removal for the old waypoint, the route for the new one) although no route changed; unscoped clients get
/// everything and see nothing of the move; ztunnels get no routes at all.
#[tokio::test]
async fn waypoints_get_only_the_routes_in_their_scope() {
    let mut h = Harness::start(SCOPED, None).await;
    let mut wa = h.connect(None).await.unwrap();
    let r = wa
        .subscribe_routes(waypoint_node("wa"), HashMap::new())
        .await;
    assert_eq!(names(&r), vec!["a/httproute/rx/0"]);
    let mut wb = h.connect(None).await.unwrap();
    let r = wb
        .subscribe_routes(waypoint_node("wb"), HashMap::new())
        .await;
    assert_eq!(names(&r), vec!["a/httproute/rg/0", "a/httproute/ry/0"]);
    // A router without GATEWAY_NAME (a debug tool, an upstream-compatible client) is unscoped.
    let mut all = h.connect(None).await.unwrap();
    let unscoped = Some(Node {
        id: "router~10.0.0.99~tool.a~a.svc.cluster.local".into(),
        ..Default::default()
    });
    let r = all.subscribe_routes(unscoped, HashMap::new()).await;
    assert_eq!(names(&r), ALL_ROUTES);
    let mut zt = h.connect(None).await.unwrap();
    zt.subscribe(ADDRESS, HashMap::new()).await;
    zt.subscribe(AUTHORIZATION, HashMap::new()).await;
    for _ in 0..2 {
        let r = zt.recv().await;
        assert_ne!(r.type_url, WAYPOINT_ROUTE);
        zt.ack(&r).await;
    }
    let conns = h.server.connections();
    let mut scoped: Vec<Option<&str>> = conns.iter().map(|c| c.waypoint.as_deref()).collect();
    scoped.sort();
    assert_eq!(scoped, vec![None, None, Some("a/wa"), Some("a/wb")]);

    // x moves from wa to wb: no route resource changes, only who sees rx.
    let moved = SCOPED.replace(
        "{name: x, namespace: a, labels: {istio.io/use-waypoint: wa}}",
        "{name: x, namespace: a, labels: {istio.io/use-waypoint: wb}}",
    );
    h.update(&moved);
    let d = wa.recv().await;
    assert_eq!(d.type_url, WAYPOINT_ROUTE);
    assert!(d.resources.is_empty());
    assert_eq!(d.removed_resources, vec!["a/httproute/rx/0"]);
    wa.ack(&d).await;
    let d = wb.recv().await;
    assert_eq!(d.type_url, WAYPOINT_ROUTE);
    assert_eq!(names(&d), vec!["a/httproute/rx/0"]);
    assert!(d.removed_resources.is_empty());
    wb.ack(&d).await;
    // The ztunnel is told about x's new waypoint, and nothing else.
    let d = zt.recv().await;
    assert_eq!(d.type_url, ADDRESS);
    assert_eq!(names(&d), vec!["a/x.a.svc.cluster.local"]);
    zt.ack(&d).await;

    // The unscoped client got nothing from the move: its next message is the next route change.
    let changed = moved.replace(
        "rules: [{backendRefs: [{name: n, port: 80}]}]",
        "rules: [{backendRefs: [{name: n, port: 8080}]}]",
    );
    h.update(&changed);
    let d = all.recv().await;
    assert_eq!(names(&d), vec!["a/httproute/rn/0"]);
    assert!(d.removed_resources.is_empty());
    all.ack(&d).await;
    // rn is nobody's: the scoped waypoints hear nothing of it; the ztunnel never sees a route.
    h.update(&format!("{changed}{P3}"));
    let d = zt.recv().await;
    assert_eq!(d.type_url, ADDRESS);
    assert_eq!(names(&d), vec!["Kubernetes//Pod/a/p3"]);
    // Moving x back: wa gets it again (the messages for rn above, had there been any, would come first).
    h.update(&format!(
        "{}{P3}",
        changed.replace(
            "use-waypoint: wb}}\nspec: {clusterIP: 10.96.0.1",
            "use-waypoint: wa}}\nspec: {clusterIP: 10.96.0.1"
        )
    ));
    let d = wa.recv().await;
    assert_eq!(names(&d), vec!["a/httproute/rx/0"]);
    let d = wb.recv().await;
    assert_eq!(d.removed_resources, vec!["a/httproute/rx/0"]);

    let conns = h.server.connections();
    let zt_info = conns
        .iter()
        .find(|c| c.node_id.starts_with("ztunnel~"))
        .unwrap();
    assert!(!zt_info.resources.contains_key(WAYPOINT_ROUTE));
}

/// The full-difference paths filter by scope too: a waypoint reconnecting with routes it should not have gets
/// them removed, and a snapshot without a change set still moves routes between waypoints.
#[tokio::test]
async fn scoped_full_difference_removes_what_is_out_of_scope() {
    let mut h = Harness::start(SCOPED, None).await;
    let mut all = h.connect(None).await.unwrap();
    let everything = all.subscribe_routes(node(), HashMap::new()).await;
    assert_eq!(names(&everything), ALL_ROUTES);
    let mut wa = h.connect(None).await.unwrap();
    let r = wa
        .subscribe_routes(waypoint_node("wa"), versions(&everything))
        .await;
    assert!(
        r.resources.is_empty(),
        "it already holds rx at this version"
    );
    assert_eq!(
        r.removed_resources,
        vec!["a/httproute/rg/0", "a/httproute/rn/0", "a/httproute/ry/0"]
    );
    let moved = SCOPED.replace(
        "{name: x, namespace: a, labels: {istio.io/use-waypoint: wa}}",
        "{name: x, namespace: a, labels: {istio.io/use-waypoint: wb}}",
    );
    h.update_without_changes(&moved);
    let d = wa.recv().await;
    assert_eq!(d.removed_resources, vec!["a/httproute/rx/0"]);
    wa.ack(&d).await;
    // Named subscriptions are explicit and served whatever the scope.
    wa.send(DeltaDiscoveryRequest {
        type_url: WAYPOINT_ROUTE.into(),
        resource_names_subscribe: vec!["a/httproute/rn/0".into()],
        ..Default::default()
    })
    .await;
    let d = wa.recv().await;
    assert_eq!(names(&d), vec!["a/httproute/rn/0"]);
}
