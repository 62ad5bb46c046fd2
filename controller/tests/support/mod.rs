//! What the controller's xDS tests share: a compute from manifest text, a waypoint's node, a delta ADS client
//! that ACKs what it receives, and an xDS server on a loopback port serving one snapshot channel.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use ambit_controller::compute::{self, ComputeConfig, Resources};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_controller::xds::{Snapshot, XdsMetrics, XdsServer};
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// An xDS server for the snapshots sent on the returned channel, and its address.
pub async fn serve(first: &Resources) -> (watch::Sender<Arc<Snapshot>>, std::net::SocketAddr) {
    let (publish, rx) = watch::channel(Arc::new(Snapshot::new(1, first)));
    let mut registry = Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let (trigger, drain) = ambit_core::drain::new();
    // The server lives as long as the test process.
    std::mem::forget(trigger);
    let server = XdsServer::new(rx, metrics, None, drain);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (publish, addr)
}

pub fn resources(yaml: &str) -> Resources {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let mut idx = Index::default();
    let mut state = ManifestState::default();
    for ev in state.rescan(&[dir.path().to_path_buf()]) {
        idx.apply(ev);
    }
    assert!(state.errors().is_empty(), "{:?}", state.errors());
    compute::compute(&idx, &ComputeConfig::default())
}

pub fn waypoint_node(gateway: &str) -> Option<Node> {
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

pub struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    stream: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let stream = client
            .delta_aggregated_resources(tonic::Request::new(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        Client { tx, stream }
    }

    /// Subscribes by wildcard and returns the (acked) first response.
    pub async fn subscribe(
        &mut self,
        node: Option<Node>,
        type_url: &str,
    ) -> DeltaDiscoveryResponse {
        self.tx
            .send(DeltaDiscoveryRequest {
                node,
                type_url: type_url.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let r = self.recv().await;
        assert_eq!(r.type_url, type_url);
        r
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let r = self.stream.message().await.unwrap().expect("stream open");
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        r
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}
