//! A restarted controller serves xDS before it has computed its first state (generation 0, empty). A ztunnel that
//! reconnects in that window with `initial_resource_versions` must not be told that everything it holds is gone:
//! the server answers only once the first state is there, and then sends just the difference (here: nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::compute::{self, ComputeConfig, Resources};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_controller::xds::{Snapshot, XdsMetrics, XdsServer};
use ambit_proto::type_url::ADDRESS;
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::xds::{DeltaDiscoveryRequest, Node};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

const PODS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: a}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: a}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.2}\n";

fn resources(yaml: &str) -> Resources {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let mut idx = Index::default();
    for ev in ManifestState::default().rescan(&[dir.path().to_path_buf()]) {
        idx.apply(ev);
    }
    compute::compute(&idx, &ComputeConfig::default())
}

#[tokio::test]
async fn a_reconnect_before_the_first_state_waits_for_it_and_removes_nothing() {
    let first = Snapshot::new(1, &resources(PODS));
    let held: HashMap<String, String> = first.types[ADDRESS]
        .iter()
        .map(|(name, v)| (name.clone(), v.version.clone()))
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");

    // The server as a restarted controller has it: listening, nothing computed yet.
    let (publish, rx) = watch::channel(Arc::new(Snapshot::default()));
    let mut registry = Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let (_trigger, drain) = ambit_core::drain::new();
    let server = XdsServer::new(rx, metrics, None, drain);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.clone().into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // The ztunnel reconnects with what it held from the controller's previous life.
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "ztunnel~10.0.0.1~p1.a~a.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: ADDRESS.into(),
        initial_resource_versions: held.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.connections().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stream shows in the connection table");
    // Give a server that would answer from the empty state ample time to do so (a wrong answer would be the
    // first message on the stream, and fail the checks below).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The first state appears (the same resources): the answer is the (empty) difference, nothing removed.
    publish.send_replace(Arc::new(first));
    let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an answer once the state is computed")
        .unwrap()
        .expect("stream open");
    assert_eq!(resp.type_url, ADDRESS);
    assert!(
        resp.removed_resources.is_empty(),
        "told to remove what it holds: {:?}",
        resp.removed_resources
    );
    assert!(
        resp.resources.is_empty(),
        "re-sent unchanged resources: {:?}",
        resp.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    assert_eq!(resp.system_version_info, "1");
    let conns = server.connections();
    let status = &conns[0].types[ADDRESS];
    assert_eq!((status.resources_sent, status.removals_sent), (0, 0));
    assert_eq!(status.resources, held.len());
}
