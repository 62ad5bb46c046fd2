//! The delta ADS client against an in-process tonic ADS server over TLS that records what it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::ca::LocalCa;
use ambit_core::drain;
use ambit_core::grpc::{self, ControlPlaneConfig, GrpcError, RootCa, TokenSource};
use ambit_core::readiness::Readiness;
use ambit_core::xds::{Rejection, XdsClient, XdsHandler, XdsUpdate, node_from_env};
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::xds::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

type Responses = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

/// One stream the server accepted: its request metadata, what the client sent on it, and where to answer.
struct Conn {
    metadata: MetadataMap,
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: Responses,
}

impl Conn {
    async fn next(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("timed out waiting for a request")
            .expect("stream closed")
    }

    /// The first `n` requests, by type URL.
    async fn initial(&mut self, n: usize) -> HashMap<String, DeltaDiscoveryRequest> {
        let mut v = HashMap::new();
        for _ in 0..n {
            let r = self.next().await;
            assert!(
                v.insert(r.type_url.clone(), r).is_none(),
                "one initial request per type"
            );
        }
        v
    }

    fn send(&self, type_url: &str, nonce: &str, resources: Vec<Resource>, removed: &[&str]) {
        self.responses
            .send(Ok(DeltaDiscoveryResponse {
                type_url: type_url.to_owned(),
                nonce: nonce.to_owned(),
                resources,
                removed_resources: removed.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }))
            .unwrap();
    }
}

#[derive(Clone)]
struct MockAds {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for MockAds {
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(Conn {
            metadata,
            requests: req_rx,
            responses: resp_tx,
        });
        Ok(Response::new(UnboundedReceiverStream::new(resp_rx)))
    }
}

struct Server {
    port: u16,
    root_pem: String,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl Server {
    async fn start() -> Server {
        ambit_core::tls::install_default_provider();
        let ca = LocalCa::generate("cluster.local").unwrap();
        let (chain, key) = ca
            .issue_server_cert(&["localhost".to_owned()], &[], Duration::from_secs(3600))
            .unwrap();
        let identity = tonic::transport::Identity::from_pem(chain.concat(), key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, conns) = mpsc::unbounded_channel();
        let svc = AggregatedDiscoveryServiceServer::new(MockAds { conns: tx });
        let router = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(svc);
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        Server {
            port,
            root_pem: ca.root_pem(),
            conns,
        }
    }

    async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("timed out waiting for the client to connect")
            .unwrap()
    }

    fn config(&self, token: TokenSource) -> ControlPlaneConfig {
        ControlPlaneConfig {
            // scheme-less: gets https://
            address: format!("localhost:{}", self.port),
            root_ca: RootCa::Pem(self.root_pem.clone()),
            alt_hostname: None,
            token,
            cluster_id: "Kubernetes".into(),
            extra_headers: vec![("X-Extra".into(), "yes".into())],
        }
    }
}

/// What the handler saw, as `(type, "+name@version" | "-name")`; rejects every name starting with `bad`, and every
/// version (keeping the one it held, as the real handlers do).
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String)>>,
}

impl XdsHandler for Recorder {
    fn apply(&self, type_url: &str, updates: Vec<XdsUpdate>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut seen = self.seen.lock().unwrap();
        for u in updates {
            match u {
                XdsUpdate::Upsert { name, version, .. }
                    if name.starts_with("bad") || version.starts_with("bad") =>
                {
                    rejected.push(Rejection {
                        name,
                        reason: "does not decode".into(),
                    })
                }
                XdsUpdate::Upsert { name, version, .. } => {
                    seen.push((type_url.to_owned(), format!("+{name}@{version}")))
                }
                XdsUpdate::Remove { name } => seen.push((type_url.to_owned(), format!("-{name}"))),
            }
        }
        rejected
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn resource(name: &str, version: &str) -> Resource {
    Resource {
        name: name.to_owned(),
        version: version.to_owned(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS.to_owned(),
            value: vec![],
        }),
        ..Default::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

struct Client {
    readiness: Readiness,
    recorder: Arc<Recorder>,
    registry: Arc<Mutex<Registry>>,
    drain: drain::DrainTrigger,
}

fn start_client(cfg: ControlPlaneConfig, types: &[&str]) -> Client {
    let readiness = Readiness::new();
    let recorder = Arc::new(Recorder::default());
    let mut registry = Registry::default();
    let node = node_from_env(&env(&[
        ("POD_NAME", "ztunnel-1"),
        ("POD_NAMESPACE", "istio-system"),
        ("INSTANCE_IP", "10.0.0.9"),
    ]));
    let client = XdsClient::new(
        cfg,
        node,
        types.iter().map(|t| (*t).to_owned()).collect(),
        recorder.clone(),
        readiness.register_task("state manager"),
        &mut registry,
    );
    let (trigger, watcher) = drain::new();
    tokio::spawn(client.run(watcher));
    Client {
        readiness,
        recorder,
        registry: Arc::new(Mutex::new(registry)),
        drain: trigger,
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn subscribes_acks_nacks_and_resumes_with_accepted_versions() {
    let mut server = Server::start().await;
    let client = start_client(
        server.config(TokenSource::Literal("tok".into())),
        &[ADDRESS, AUTHORIZATION],
    );
    let mut conn = server.accept().await;

    // One initial wildcard request per type, each carrying the node.
    let init = conn.initial(2).await;
    assert!(init.contains_key(ADDRESS) && init.contains_key(AUTHORIZATION));
    for r in init.values() {
        let node = r.node.as_ref().expect("node in the initial request");
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.9~ztunnel-1.istio-system~istio-system.svc.cluster.local"
        );
        assert!(r.resource_names_subscribe.is_empty(), "wildcard");
        assert!(r.initial_resource_versions.is_empty());
        assert!(r.response_nonce.is_empty());
    }
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer tok");
    assert_eq!(conn.metadata.get("clusterid").unwrap(), "Kubernetes");
    assert_eq!(conn.metadata.get("x-extra").unwrap(), "yes");
    assert_eq!(client.readiness.pending(), vec!["state manager".to_owned()]);

    // A response with one good and one bad resource: the good one applies, the response is NACKed naming the bad one.
    conn.send(
        ADDRESS,
        "n1",
        vec![resource("good", "v1"), resource("bad-1", "v1")],
        &[],
    );
    let nack = conn.next().await;
    assert_eq!(nack.type_url, ADDRESS);
    assert_eq!(nack.response_nonce, "n1");
    assert!(nack.node.is_none(), "node only in the initial requests");
    assert_eq!(
        nack.error_detail.expect("NACK").message,
        "bad-1: does not decode"
    );
    assert_eq!(
        client.recorder.take(),
        vec![(ADDRESS.to_owned(), "+good@v1".to_owned())]
    );
    assert!(!client.readiness.is_ready(), "a NACK does not count");

    // Authorization answered (empty) and ACKed; Address still never ACKed, so not ready yet.
    conn.send(AUTHORIZATION, "n2", vec![], &[]);
    let ack = conn.next().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (AUTHORIZATION, "n2")
    );
    assert!(ack.error_detail.is_none());
    assert!(!client.readiness.is_ready());

    // Two rejections in one response are joined with "; ".
    conn.send(
        ADDRESS,
        "n3",
        vec![resource("bad-2", "v1"), resource("bad-3", "v1")],
        &[],
    );
    let nack = conn.next().await;
    assert_eq!(
        nack.error_detail.unwrap().message,
        "bad-2: does not decode; bad-3: does not decode"
    );
    // The client handles responses in order, so the Authorization ACK's effect on readiness has happened by now:
    // Address was only ever NACKed, so still not ready.
    assert!(!client.readiness.is_ready());

    conn.send(
        ADDRESS,
        "n4",
        vec![resource("other", "v7"), resource("good", "v2")],
        &[],
    );
    let ack = conn.next().await;
    assert_eq!(ack.response_nonce, "n4");
    assert!(ack.error_detail.is_none());
    eventually("ready after both types were ACKed", || {
        client.readiness.is_ready()
    })
    .await;

    // A type the client never subscribed to is ACKed and not handed to the handler.
    conn.send(
        "type.googleapis.com/unknown.Type",
        "n5",
        vec![resource("x", "1")],
        &[],
    );
    let ack = conn.next().await;
    assert_eq!(ack.response_nonce, "n5");
    assert!(ack.error_detail.is_none());

    // Removal reaches the handler.
    conn.send(ADDRESS, "n6", vec![], &["other"]);
    assert!(conn.next().await.error_detail.is_none());
    assert_eq!(
        client.recorder.take(),
        vec![
            (ADDRESS.to_owned(), "+other@v7".to_owned()),
            (ADDRESS.to_owned(), "+good@v2".to_owned()),
            (ADDRESS.to_owned(), "-other".to_owned()),
        ]
    );

    // A bad new version of a resource held: NACKed, and the handler keeps v2.
    conn.send(ADDRESS, "n7", vec![resource("good", "bad-v3")], &[]);
    assert_eq!(
        conn.next().await.error_detail.unwrap().message,
        "good: does not decode"
    );
    assert!(client.recorder.take().is_empty());

    // A clean end of the stream: the client reconnects, listing what it holds (not the rejected new names, not the
    // removed one) at the version in force — `good` at v2, not forgotten for its rejected update: were it left out,
    // a server that deleted it meanwhile would have no name to send a removal for, and the handler would keep it.
    drop(conn);
    let mut conn = server.accept().await;
    let init = conn.initial(2).await;
    assert_eq!(
        init[ADDRESS].initial_resource_versions,
        HashMap::from([("good".to_owned(), "v2".to_owned())])
    );
    assert!(init[AUTHORIZATION].initial_resource_versions.is_empty());
    assert!(init.values().all(|r| r.node.is_some()));

    let text = encode(&client.registry.lock().unwrap());
    assert!(
        text.contains(r#"istio_xds_connection_terminations_total{reason="Complete"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(r#"istio_xds_message_total{{url="{ADDRESS}"}} 5"#)),
        "{text}"
    );
    assert!(text.contains(&format!(
        r#"istio_xds_message_bytes_total{{url="{ADDRESS}"}}"#
    )));

    client.drain.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn token_file_is_reread_for_every_stream() {
    let mut server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("istio-token");
    std::fs::write(&token_path, "first").unwrap();
    let token = TokenSource::from_env(token_path.to_str());
    assert!(matches!(token, TokenSource::File(_)));
    let client = start_client(server.config(token), &[ADDRESS]);

    let mut conn = server.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer first");
    conn.initial(1).await;

    // The token rotates; the server ends the stream with an error: the next stream carries the new token.
    std::fs::write(&token_path, "second").unwrap();
    conn.responses
        .send(Err(Status::unavailable("going away")))
        .unwrap();
    drop(conn);
    let mut conn = server.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer second");
    assert_eq!(conn.metadata.get("clusterid").unwrap(), "Kubernetes");
    conn.initial(1).await;

    // A benign ending (Cancelled) is counted as a reconnect.
    conn.responses.send(Err(Status::cancelled("bye"))).unwrap();
    drop(conn);
    let mut conn = server.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer second");
    conn.initial(1).await;
    let text = encode(&client.registry.lock().unwrap());
    assert!(
        text.contains(r#"istio_xds_connection_terminations_total{reason="Error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"istio_xds_connection_terminations_total{reason="Reconnect"} 1"#),
        "{text}"
    );
    client.drain.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_a_token_no_authorization_is_sent_and_alt_hostname_verifies() {
    let mut server = Server::start().await;
    let mut cfg = server.config(TokenSource::None);
    // The certificate names only `localhost`; dial the IP and verify against the alternative name.
    cfg.address = format!("https://127.0.0.1:{}", server.port);
    cfg.alt_hostname = Some("localhost".into());
    let client = start_client(cfg, &[ADDRESS]);
    let mut conn = server.accept().await;
    assert!(conn.metadata.get("authorization").is_none());
    conn.initial(1).await;
    conn.send(ADDRESS, "n1", vec![], &[]);
    assert!(conn.next().await.error_detail.is_none());
    eventually("ready", || client.readiness.is_ready()).await;
    client.drain.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn untrusted_server_is_refused() {
    let mut server = Server::start().await;
    let other = LocalCa::generate("cluster.local").unwrap();
    let mut cfg = server.config(TokenSource::None);
    cfg.root_ca = RootCa::Pem(other.root_pem());
    let client = start_client(cfg, &[ADDRESS]);
    let registry = client.registry.clone();
    eventually("connection errors counted", || {
        encode(&registry.lock().unwrap())
            .contains(r#"istio_xds_connection_terminations_total{reason="ConnectionError"} 2"#)
    })
    .await;
    assert!(
        server.conns.try_recv().is_err(),
        "no stream reached the server"
    );
    assert!(!client.readiness.is_ready());
    client.drain.drain(Duration::from_secs(5)).await;
}

#[test]
fn http_addresses_are_refused() {
    let cfg = ControlPlaneConfig {
        address: "http://istiod.istio-system.svc:15010".into(),
        root_ca: RootCa::System,
        alt_hostname: None,
        token: TokenSource::None,
        cluster_id: "Kubernetes".into(),
        extra_headers: vec![],
    };
    let Err(err) = grpc::connect(&cfg) else {
        panic!("http:// must be refused");
    };
    assert!(matches!(err, GrpcError::Address(..)), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
}
