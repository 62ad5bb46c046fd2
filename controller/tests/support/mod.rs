//! What the controller's tests share: a compute from manifest text, a waypoint's node, a delta ADS client
//! that ACKs what it receives, and an xDS server on a loopback port serving one snapshot channel; the whole
//! controller in-process on temporary directories with a TLS channel to its secure port; CSRs and certificate
//! requests as a ztunnel sends them.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::app::{self, Config};
use ambit_controller::compute::{self, ComputeConfig, Resources};
use ambit_controller::index::Index;
use ambit_controller::sources::manifest::ManifestState;
use ambit_controller::xds::{Snapshot, XdsMetrics, XdsServer};
use ambit_core::ca::LocalCa;
use ambit_proto::ca::IstioCertificateRequest;
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A namespace in the ambient mesh with a client pod on node1 and a server pod on node2.
pub const MANIFESTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec: {nodeName: node1, serviceAccountName: client}\nstatus: {podIP: 10.0.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: demo, labels: {app: server}}\nspec: {nodeName: node2, serviceAccountName: server}\nstatus: {podIP: 10.0.0.2}\n";

/// Denies the client pod's identity in `demo`.
pub const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: demo}\n\
spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]}\n";

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
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, stream) = open_delta(channel, None).await.unwrap();
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

/// Opens a delta ADS stream on `channel`, with `authorization` as that header when given; the requests go on
/// the returned sender.
pub async fn open_delta(
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
) -> Result<
    (
        mpsc::Sender<DeltaDiscoveryRequest>,
        tonic::Streaming<DeltaDiscoveryResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(8);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(value) = authorization {
        req.metadata_mut().insert("authorization", value);
    }
    let stream = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(req)
        .await?
        .into_inner();
    Ok((tx, stream))
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

/// The in-process controller's configuration for `manifests` and `state`: every port picked free on loopback,
/// a serving certificate for `localhost` and `127.0.0.1`, tokens required for xDS, no deploy directory.
pub fn config(manifests: &Path, state: &Path) -> Config {
    Config {
        manifests: vec![manifests.to_path_buf()],
        state_dir: state.to_path_buf(),
        tls_sans: vec!["localhost".into(), "127.0.0.1".into()],
        listen: "127.0.0.1".parse().unwrap(),
        xds_port: 0,
        secure_port: 0,
        monitoring_port: 0,
        compute: ComputeConfig::default(),
        debounce: Duration::from_millis(20),
        require_xds_token: true,
        drain_deadline: Duration::from_secs(1),
        deploy_dir: None,
    }
}

/// Starts the controller with a local CA kept in `<state_dir>/ca` (installing the TLS provider first).
pub async fn start(cfg: Config) -> app::Running {
    ambit_core::tls::install_default_provider();
    let ca = Arc::new(LocalCa::load_or_create(&cfg.state_dir.join("ca"), "cluster.local").unwrap());
    app::start(cfg, ca).await.unwrap()
}

/// [`start`], then waits (60 s at most) until the controller reports ready.
pub async fn start_ready(cfg: Config) -> app::Running {
    let running = start(cfg).await;
    let mut ready = running.outputs.ready.clone();
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
        .await
        .expect("controller ready within 60 s")
        .unwrap();
    running
}

/// The root certificate the controller wrote to its state directory.
pub fn root_pem(state: &Path) -> String {
    std::fs::read_to_string(state.join("root-cert.pem")).unwrap()
}

/// A TLS channel to the controller's secure port, verified against `root` by the name `localhost`.
pub async fn secure_channel(running: &app::Running, root: &str) -> Channel {
    Channel::from_shared(format!("https://{}", running.secure_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the whole response, head and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A PEM CSR with a fresh key and `uri` as its only SAN.
pub fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(uri).unwrap(),
    )];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// The request metadata a shared ztunnel sends to ask for `identity` on a pod's behalf.
pub fn impersonating(identity: &str) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())),
            },
        )]
        .into(),
    }
}

/// A one-hour certificate request for `identity`, impersonated when `impersonate`, without credentials.
pub fn cert_request(identity: &str, impersonate: bool) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: csr(identity),
        validity_duration: 3600,
        metadata: impersonate.then(|| impersonating(identity)),
    }
}
